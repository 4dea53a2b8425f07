"""Exact money: parsing amounts, amount x quantity, and the canonical decimal string."""

from __future__ import annotations

import re
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from attribution.core.money import fmt, purchase_amount, to_decimal
from attribution.core.rules import Purchase

CANONICAL = re.compile(r"^-?(0|[1-9][0-9]*)(\.[0-9]*[1-9])?$")

# --- to_decimal ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "want"),
    [
        (0, Decimal(0)),
        (19900, Decimal(19900)),
        (-5, Decimal(-5)),
        (10**18, Decimal(10**18)),
        (1234567890123456789, Decimal(1234567890123456789)),
        (19.99, Decimal("19.99")),
        (0.1, Decimal("0.1")),
        (1e-7, Decimal("1e-7")),
        (1e18, Decimal("1e18")),
        (-0.0, Decimal(0)),
        ("19.99", Decimal("19.99")),
        ("  42 ", Decimal(42)),
        ("-3.50", Decimal("-3.5")),
        ("1e2", Decimal(100)),
        ("0", Decimal(0)),
        ("123456789012.123456789012", Decimal("123456789012.123456789012")),
    ],
)
def test_to_decimal_accepts_numbers(value: Any, want: Decimal) -> None:
    got = to_decimal(value)
    assert isinstance(got, Decimal)
    assert got == want


@pytest.mark.parametrize(
    "value",
    [10**40, 1e22, "1e999999", "123456789012345678901234567890.123456789012", "1_000", "١٢٣", "1e-30"],
)
def test_to_decimal_refuses_amounts_too_large_or_oddly_written(value: Any) -> None:
    # bounded so products and sums stay exact; a huge exponent must never reach fmt() or Redis
    assert to_decimal(value) is None


def test_purchase_amount_of_huge_inputs_is_missing_not_a_crash() -> None:

    p = Purchase(amount_key="price", quantity_key="qty", currency="KRW")
    assert purchase_amount(p, {"price": "1e999999", "qty": 10}) is None


def test_to_decimal_keeps_the_short_float_repr() -> None:
    # not Decimal(19.99) == 19.989999999999998436805981327779591083526611328125
    got = to_decimal(19.99)
    assert got is not None
    assert str(got) == "19.99"
    assert to_decimal(0.1) != Decimal(0.1)  # noqa: RUF032 - the exact binary value, on purpose


@pytest.mark.parametrize(
    "value",
    [
        True,
        False,
        None,
        float("nan"),
        float("inf"),
        float("-inf"),
        "NaN",
        "nan",
        "sNaN",
        "Infinity",
        "-inf",
        "abc",
        "",
        "   ",
        "1,000",
        "19.99 KRW",
        [1],
        {"amount": 1},
        Decimal(1),  # not a JSON value
    ],
)
def test_to_decimal_refuses_non_numbers(value: Any) -> None:
    assert to_decimal(value) is None


# --- purchase_amount --------------------------------------------------------------------------------

WITH_QTY = Purchase(amount_key="price", quantity_key="qty", currency="KRW")
NO_QTY = Purchase(amount_key="price", currency="USD")


@pytest.mark.parametrize(
    ("properties", "want"),
    [
        ({"price": 19900, "qty": 3}, Decimal(59700)),
        ({"price": "19.99", "qty": 3}, Decimal("59.97")),
        ({"price": 0.1, "qty": 3}, Decimal("0.3")),
        ({"price": 19.99, "qty": "2"}, Decimal("39.98")),
        ({"price": "1.5", "qty": 2.0}, Decimal(3)),  # a whole number written as a float
        ({"price": "1.5", "qty": "3.00"}, Decimal("4.5")),
        ({"price": 7, "qty": "1e1"}, Decimal(70)),
        ({"price": 0, "qty": 3}, Decimal(0)),  # zero is a valid amount
        ({"price": "0.00", "qty": 1}, Decimal(0)),
        ({"price": -0.0, "qty": 1}, Decimal(0)),
    ],
)
def test_purchase_amount_multiplies_exactly(properties: dict[str, Any], want: Decimal) -> None:
    got = purchase_amount(WITH_QTY, properties)
    assert got == want
    assert got is not None
    assert fmt(got) == fmt(want)


def test_purchase_amount_without_quantity_key_is_the_amount() -> None:
    assert purchase_amount(NO_QTY, {"price": "19.99", "qty": 7}) == Decimal("19.99")
    assert purchase_amount(NO_QTY, {"price": 5}) == Decimal(5)
    assert purchase_amount(NO_QTY, {"price": 0}) == Decimal(0)
    assert purchase_amount(NO_QTY, {"price": 5, "qty": -1}) == Decimal(5)  # no quantity_key: not read
    assert purchase_amount(NO_QTY, {}) is None
    assert purchase_amount(NO_QTY, {"price": "abc"}) is None
    assert purchase_amount(NO_QTY, {"price": -5}) is None


def test_zero_amount_is_a_zero_amount_not_a_missing_one() -> None:
    got = purchase_amount(WITH_QTY, {"price": "0", "qty": 2})
    assert got is not None
    assert fmt(got) == "0"


@pytest.mark.parametrize(
    "properties",
    [
        {"price": -5, "qty": 2},
        {"price": "-19.99", "qty": 1},
        {"price": -0.01, "qty": 1},
        {"price": "-1e2", "qty": 1},
        {"price": 100, "qty": 0},
        {"price": 100, "qty": "0"},
        {"price": 100, "qty": 0.0},
        {"price": 100, "qty": -1},
        {"price": 100, "qty": "-2"},
        {"price": 100, "qty": 0.5},
        {"price": 100, "qty": "1.5"},
        {"price": 100, "qty": 2.25},
        {"price": 100, "qty": "1e-1"},
        {"price": 0, "qty": 0},
        {"price": -5, "qty": -2},  # a positive product of two refused values is still refused
    ],
)
def test_negative_amount_and_zero_negative_or_fractional_quantity_are_missing(
    properties: dict[str, Any],
) -> None:
    """The contract: such an amount is missing (``amount: null``), exactly like a non-numeric one."""
    assert purchase_amount(WITH_QTY, properties) is None


@pytest.mark.parametrize(
    "properties",
    [
        {},
        {"qty": 2},
        {"price": 100},
        {"price": None, "qty": 1},
        {"price": 100, "qty": None},
        {"price": "abc", "qty": 1},
        {"price": 100, "qty": "two"},
        {"price": True, "qty": 1},
        {"price": 100, "qty": float("nan")},
    ],
)
def test_purchase_amount_missing_or_not_numeric_is_none(properties: dict[str, Any]) -> None:
    assert purchase_amount(WITH_QTY, properties) is None


# --- fmt ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "want"),
    [
        ("0", "0"),
        ("-0", "0"),
        ("0.000", "0"),
        ("-0.000", "0"),
        ("0E+5", "0"),
        ("0E-12", "0"),
        ("1", "1"),
        ("10", "10"),
        ("100.00", "100"),
        ("10.0", "10"),
        ("1.500", "1.5"),
        ("-1.50", "-1.5"),
        ("0.1", "0.1"),
        ("-0.001", "-0.001"),
        ("1E+2", "100"),
        ("1.2E+3", "1200"),
        ("-5E+1", "-50"),
        ("1E-12", "0.000000000001"),
        ("1.23E-7", "0.000000123"),
        ("123456789012345678901234567890.123456789012", "123456789012345678901234567890.123456789012"),
        ("1E+30", "1000000000000000000000000000000"),
    ],
)
def test_fmt_canonical_forms(value: str, want: str) -> None:
    assert fmt(Decimal(value)) == want


@st.composite
def decimals(draw: st.DrawFn) -> Decimal:
    """Finite decimals with up to 40 digits and exponents from -30 to +30, either sign."""
    if draw(st.booleans()):
        return draw(st.decimals(min_value=-(10**20), max_value=10**20, allow_nan=False, allow_infinity=False))
    magnitude = draw(st.integers(0, 10**40 - 1))
    exponent = draw(st.integers(-30, 30))
    sign = int(draw(st.booleans()))
    return Decimal((sign, tuple(int(c) for c in str(magnitude)), exponent))


@settings(max_examples=500, deadline=None)
@given(decimals())
def test_fmt_round_trips_and_is_canonical(x: Decimal) -> None:
    text = fmt(x)
    assert Decimal(text) == x
    assert fmt(Decimal(text)) == text
    assert CANONICAL.match(text), text
    assert text != "-0"
    assert "E" not in text.upper()
