"""Lists spliced in place: ``_append`` without decoding or re-encoding what is stored.

A list is a msgpack array whose first element is not a container marker (``codec``: tuples,
sets and frozensets are arrays led by one), so appending is a new array header, the old
elements' bytes, then the new ones.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

from .codec import MARKER_CODES

__all__ = ["EMPTY_LIST", "extend_list"]

# A zero-length extension is written ext 8, 16 or 32: header byte, length bytes, type byte.
_ZERO_LENGTH_EXT = {0xC7: b"\x00", 0xC8: b"\x00\x00", 0xC9: b"\x00\x00\x00\x00"}


def _starts_with_marker(body: bytes) -> bool:
    """Whether an array's first element is a container marker (in any of its encodings)."""
    length = _ZERO_LENGTH_EXT.get(body[0])
    if length is None or body[1 : 1 + len(length)] != length:
        return False
    return body[1 + len(length)] in MARKER_CODES


EMPTY_LIST = b"\x90"
_ARRAY_HEADERS = {0xDC: (3, ">H"), 0xDD: (5, ">I")}  # array 16, array 32: length, format


def extend_list(encoded: bytes, items: Sequence[bytes]) -> tuple[bytes, int] | None:
    """Append encoded ``items`` to an encoded list without decoding it; None if not a list.

    A list is a msgpack array whose first element is not a container marker, so splicing is
    a new array header, the old elements' bytes, then the new ones: linear in bytes, with no
    per-element work (decoding and re-encoding made repeated appends quadratic).
    """
    first = encoded[0]
    if 0x90 <= first <= 0x9F:
        count, header = first & 0x0F, 1
    elif first in _ARRAY_HEADERS:
        header, fmt = _ARRAY_HEADERS[first]
        count = struct.unpack_from(fmt, encoded, 1)[0]
    else:
        return None
    body = encoded[header:]
    if count and _starts_with_marker(body):
        return None  # a tuple, set or frozenset
    total = count + len(items)
    if total < 16:
        new_header = bytes([0x90 | total])
    elif total < 1 << 16:
        new_header = b"\xdc" + struct.pack(">H", total)
    else:
        new_header = b"\xdd" + struct.pack(">I", total)
    return b"".join((new_header, body, *items)), total
