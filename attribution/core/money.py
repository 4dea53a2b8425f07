"""Exact money: purchase amounts as Decimal, serialised as strings, summed per currency."""

from __future__ import annotations

import math
from decimal import Decimal, InvalidOperation
from typing import Any

from attribution.core.rules import Purchase


def to_decimal(value: Any) -> Decimal | None:
    """A JSON number or numeric string as an exact Decimal; None for anything else (bool, NaN, text)."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int):
        return Decimal(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            return None
        # repr() is the shortest string that round-trips: 19.99 stays 19.99, not 19.989999...
        return Decimal(repr(value))
    if isinstance(value, str):
        try:
            d = Decimal(value.strip())
        except InvalidOperation:
            return None
        return d if d.is_finite() else None
    return None


def purchase_amount(purchase: Purchase, properties: dict[str, Any]) -> Decimal | None:
    """``amount * quantity`` read from a goal's properties, or None when either is missing or not numeric."""
    amount = to_decimal(properties.get(purchase.amount_key))
    if purchase.quantity_key is None:
        return amount
    quantity = to_decimal(properties.get(purchase.quantity_key))
    if amount is None or quantity is None:
        return None
    return amount * quantity


def fmt(value: Decimal) -> str:
    """Canonical decimal string: no exponent, no trailing fractional zeros, ``0`` for zero."""
    if value == 0:
        return "0"
    text = format(value, "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return text
