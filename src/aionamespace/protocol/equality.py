"""What ``cas`` calls equal (docs/PROTOCOL.md 5.3): the same bytes, or the same type at the top
level and equal by Python's ``==``.

Python compares an int with a Decimal by converting the int to a Decimal, which takes time
quadratic in the int's length: comparing ``[10**400_000]`` with ``[Decimal(1)]`` would stall a
server for seconds. So when one value holds an integer of more than
``MAX_INT_BITS_NEXT_TO_A_DECIMAL`` bits and the other a Decimal, they are not equal (unless
their bytes are): the one place the rule departs from ``==``, documented with it.
"""

from __future__ import annotations

import decimal
from typing import Any

from .codec import decode_value
from .values import MAX_INT_BITS_NEXT_TO_A_DECIMAL

__all__ = ["cas_equal"]


def cas_equal(stored: bytes, expected: bytes) -> bool:
    """Whether ``stored`` holds a value ``cas`` counts as equal to ``expected``."""
    if stored == expected:
        return True
    current, wanted = decode_value(stored), decode_value(expected)
    if type(current) is not type(wanted):
        return False
    big_ints, decimals = _kinds(current)
    other_big_ints, other_decimals = _kinds(wanted)
    if (big_ints and other_decimals) or (decimals and other_big_ints):
        return False
    try:
        return bool(current == wanted)
    except ArithmeticError:  # Decimal('sNaN') refuses to be compared: not equal
        return False


def _kinds(value: Any) -> tuple[bool, bool]:
    """Whether ``value`` holds an integer too long to compare with a Decimal, and a Decimal."""
    big_int = has_decimal = False
    pending = [value]
    while pending:
        item = pending.pop()
        kind = type(item)
        if kind is int:
            big_int = big_int or item.bit_length() > MAX_INT_BITS_NEXT_TO_A_DECIMAL
        elif kind is decimal.Decimal:
            has_decimal = True
        elif kind is dict:
            pending.extend(item)
            pending.extend(item.values())
        elif kind in (list, tuple, set, frozenset):
            pending.extend(item)
    return big_int, has_decimal
