"""Encoded lists taken apart and put together without decoding their elements.

A list is a msgpack array whose first element is not a container marker (``codec``: tuples,
sets and frozensets are arrays led by one), so a list is its array header followed by its
elements' bytes: ``split_list`` finds where the elements begin, ``array_header`` writes the
header of a list of any length. A store appends to a list by keeping the elements' bytes and
adding the new ones, never decoding or re-encoding what it holds.
"""

from __future__ import annotations

import struct

from .codec import MARKER_CODES

__all__ = ["EMPTY_LIST", "MAX_LIST_LENGTH", "array_header", "split_list"]

EMPTY_LIST = b"\x90"

#: msgpack's largest array (array 32): a list of more elements cannot be encoded.
MAX_LIST_LENGTH = 0xFFFF_FFFF

# A zero-length extension is written ext 8, 16 or 32: header byte, length bytes, type byte.
_ZERO_LENGTH_EXT = {0xC7: b"\x00", 0xC8: b"\x00\x00", 0xC9: b"\x00\x00\x00\x00"}
_ARRAY_HEADERS = {0xDC: (3, ">H"), 0xDD: (5, ">I")}  # array 16, array 32: length, format


def _starts_with_marker(encoded: bytes, at: int) -> bool:
    """Whether the element at ``at`` is a container marker (in any of its encodings)."""
    length = _ZERO_LENGTH_EXT.get(encoded[at])
    if length is None or encoded[at + 1 : at + 1 + len(length)] != length:
        return False
    return encoded[at + 1 + len(length)] in MARKER_CODES


def split_list(encoded: bytes) -> tuple[int, int] | None:
    """``(length, where its elements begin)`` if ``encoded`` is a list; None if it is not."""
    first = encoded[0]
    if 0x90 <= first <= 0x9F:
        count, header = first & 0x0F, 1
    elif first in _ARRAY_HEADERS:
        header, fmt = _ARRAY_HEADERS[first]
        count = struct.unpack_from(fmt, encoded, 1)[0]
    else:
        return None
    if count and _starts_with_marker(encoded, header):
        return None  # a tuple, set or frozenset
    return count, header


def array_header(count: int) -> bytes:
    """The header of a msgpack array of ``count`` elements, in its shortest form."""
    if count < 16:
        return bytes((0x90 | count,))
    if count < 1 << 16:
        return b"\xdc" + struct.pack(">H", count)
    return b"\xdd" + struct.pack(">I", count)
