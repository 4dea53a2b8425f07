"""Exact money: purchase amounts as Decimal, serialised as strings, summed per currency.

Amounts are bounded (at most ``MAX_DIGITS`` significant digits, exponent within ``MAX_EXPONENT``) so
that products and sums stay exact in the ``MONEY`` context; anything else counts as "not numeric".

The contract (topics/README.md): a purchase amount is ``amount x quantity`` where the amount is a
number >= 0 (zero is a valid amount) and the quantity a whole number >= 1 (``2``, ``"2"`` and ``2.0``
alike). A negative amount, or a quantity that is zero, negative or fractional, makes the amount
missing, exactly like a non-numeric one: the conversion counts with ``amount: null``.
"""

from __future__ import annotations

import math
import re
from decimal import Context, Decimal, DecimalException, Inexact, InvalidOperation, Overflow, Rounded
from typing import Any

from attribution.core.rules import Purchase

MAX_DIGITS = 24
MAX_EXPONENT = 18
#: Wide enough that no sum of bounded amounts is ever rounded; rounding raises instead of hiding.
MONEY = Context(prec=120, Emax=999, Emin=-999, traps=[InvalidOperation, Overflow, Inexact, Rounded])
_NUMBER = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?$")


def to_decimal(value: Any) -> Decimal | None:
    """A JSON number or numeric string as an exact, bounded Decimal; None for anything else."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int):
        d = Decimal(value)
    elif isinstance(value, float):
        if not math.isfinite(value):
            return None
        d = Decimal(repr(value))  # repr() is the shortest round-trip: 19.99 stays 19.99
    elif isinstance(value, str) and value.isascii() and _NUMBER.match(value.strip()):
        d = Decimal(value.strip())
    else:
        return None
    digits = len(d.as_tuple().digits)
    if digits > MAX_DIGITS or abs(d.adjusted()) > MAX_EXPONENT:
        return None
    return d


def purchase_amount(purchase: Purchase, properties: dict[str, Any]) -> Decimal | None:
    """``amount * quantity`` read from a goal's properties, or None when the amount is missing, not
    numeric or negative, or the quantity (when configured) is missing, not numeric or not a whole
    number >= 1."""
    amount = to_decimal(properties.get(purchase.amount_key))
    if amount is None or amount < 0:
        return None
    if purchase.quantity_key is None:
        return amount
    quantity = to_decimal(properties.get(purchase.quantity_key))
    if quantity is None or quantity < 1 or quantity != quantity.to_integral_value():
        return None
    try:
        return MONEY.multiply(amount, quantity)
    except DecimalException:
        return None


def add(a: Decimal, b: Decimal) -> Decimal:
    """Exact sum (raises rather than round)."""
    return MONEY.add(a, b)


def fmt(value: Decimal) -> str:
    """Canonical decimal string: no exponent, no trailing fractional zeros, ``0`` for zero."""
    if value == 0:
        return "0"
    text = format(value, "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return text
