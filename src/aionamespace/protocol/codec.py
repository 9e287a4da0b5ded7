"""The value codec: Python values <-> msgpack bytes, faithfully, without pickle.

msgpack carries None, bool, int (64-bit), float, str, bytes, list and dict natively. Everything
else a namespace may hold travels as a msgpack *extension* (``ExtType(code, data)``); the codes
are listed in ``ExtCode`` and described byte for byte in docs/PROTOCOL.md, "Values".

Containers other than list and dict (tuple, set, frozenset) are msgpack *arrays whose first
element is a marker*: a zero-length extension of the container's code. They are built by
``list_hook`` as the C unpacker finishes each array, so decoding never calls msgpack
recursively: nesting depth costs no C stack (a payload-in-extension design decoded each level
with a nested ``unpackb``, whose 40 KB of stack per level let a 1.5 KB request crash a server),
and msgpack's own bounded stack refuses bombs with an ordinary error.

Two msgpack behaviours would silently change a value, so they are handled here:

* ``tuple`` would become ``list``: the packer runs with ``strict_types=True``, which sends
  tuples (and every subclass of a native type, e.g. an ``IntEnum``) to ``default``, where a tuple
  becomes its marked array and anything unknown raises ``TypeError`` naming its type.
* ``bytearray`` and ``memoryview`` are packed as ``bin`` even with ``strict_types`` and would
  come back as ``bytes``. ``_needs_rewrite`` walks containers once, cheaply, and only the rare
  value that holds one is rebuilt: a bytearray becomes its extension, a memoryview a TypeError.

Decoding never runs code: extension payloads are parsed by the exact grammar of ``extensions``
(the same on every Python version), and any failure is one ``ValueError`` subclass
(``ValueDecodeError``) the caller turns into a protocol error. Decoding is not the whole check
of a value: like Python, it collapses equal set items and map keys, it builds sets and dicts
with Python's own hashing (PROTOCOL.md 9.3 says what that costs a reader), and it reads msgpack
timestamps and misplaced markers. ``values.check_value`` is the whole check, which the server
runs on every value it stores.
"""

from __future__ import annotations

import datetime as _dt
import decimal
import threading
import uuid
from collections.abc import Callable
from typing import Any

import msgpack

from .extensions import MAX_DEPTH, PAYLOAD_PARSERS, ExtCode, ValueDecodeError

__all__ = [
    "MARKER_CODES",
    "MAX_DEPTH",
    "ONE_BYTE_VALUES",
    "SCALAR_LENGTHS",
    "ExtCode",
    "ValueDecodeError",
    "decode_array",
    "decode_value",
    "decode_values",
    "encode_value",
    "encode_values",
]


_NATIVE_SCALARS = frozenset({type(None), bool, int, float, str, bytes})
_CONTAINERS = (list, tuple, set, frozenset, dict)


_MARKERS = {
    code: msgpack.ExtType(code, b"") for code in (ExtCode.TUPLE, ExtCode.SET, ExtCode.FROZENSET)
}


def _default(obj: Any) -> msgpack.ExtType | list[Any]:
    """Encode what msgpack cannot carry natively (called by the packer)."""
    cls = type(obj)
    if cls is int:  # only reached when it does not fit in 64 bits
        length = (obj if obj >= 0 else ~obj).bit_length() // 8 + 1  # minimal, with a sign bit
        return msgpack.ExtType(ExtCode.BIGINT, obj.to_bytes(length, "big", signed=True))
    if cls is tuple:
        return [_MARKERS[ExtCode.TUPLE], *obj]
    if cls is set:
        return [_MARKERS[ExtCode.SET], *obj]
    if cls is frozenset:
        return [_MARKERS[ExtCode.FROZENSET], *obj]
    if cls is _MarkedBytearray:
        return msgpack.ExtType(ExtCode.BYTEARRAY, obj.data)
    if cls is complex:
        return msgpack.ExtType(ExtCode.COMPLEX, msgpack.packb([obj.real, obj.imag]))
    if cls is _dt.datetime:
        if obj.tzinfo is not None and obj.utcoffset() is None:
            raise _no_offset(obj)
        return msgpack.ExtType(ExtCode.DATETIME, obj.isoformat().encode())
    if cls is _dt.date:
        return msgpack.ExtType(ExtCode.DATE, obj.isoformat().encode())
    if cls is _dt.time:
        if obj.tzinfo is not None and obj.utcoffset() is None:
            raise _no_offset(obj)
        return msgpack.ExtType(ExtCode.TIME, obj.isoformat().encode())
    if cls is _dt.timedelta:
        return msgpack.ExtType(
            ExtCode.TIMEDELTA, msgpack.packb([obj.days, obj.seconds, obj.microseconds])
        )
    if cls is decimal.Decimal:
        return msgpack.ExtType(ExtCode.DECIMAL, str(obj).encode())
    if cls is uuid.UUID:
        return msgpack.ExtType(ExtCode.UUID, obj.bytes)
    raise TypeError(
        f"cannot share a value of type {cls.__module__}.{cls.__qualname__}: "
        "aionamespace carries only the types listed in README.md ('Supported values')"
    )


def _no_offset(obj: _dt.datetime | _dt.time) -> TypeError:
    """A time zone that gives no UTC offset would come back naive without a word."""
    what = type(obj).__name__
    advice = (
        "a time of day has no offset in a zone with daylight saving time: share a datetime "
        "(it keeps its instant and offset) or a time with a fixed datetime.timezone"
        if what == "time"
        else "pass a datetime.timezone with a fixed offset"
    )
    return TypeError(
        f"cannot share a {what} whose tzinfo {obj.tzinfo!r} gives no UTC offset "
        f"(it would come back naive): {advice}"
    )


class _MarkedBytearray:
    """A bytearray wrapped so that the packer hands it to ``_default`` instead of packing bin."""

    __slots__ = ("data",)

    def __init__(self, data: bytearray) -> None:
        self.data = bytes(data)


_packers = threading.local()


def _packer() -> msgpack.Packer:
    # One Packer per thread, reused: msgpack.packb builds a new one on every call, a large
    # part of encoding a small value. Per thread, because ``default`` runs Python code, so a
    # thread switch can happen in the middle of a pack (and _default never packs with it).
    packer = getattr(_packers, "packer", None)
    if packer is None:
        packer = _packers.packer = msgpack.Packer(
            default=_default, strict_types=True, use_bin_type=True, datetime=False
        )
    return packer


def _packb(obj: Any) -> bytes:
    packer = _packer()
    try:
        packed: bytes = packer.pack(obj)
        return packed
    except BaseException as exc:
        packer.reset()  # a failed pack may leave half a value in the packer's buffer
        if isinstance(exc, ValueError) and "recursion limit" in str(exc):
            raise ValueError(f"value nested deeper than msgpack allows ({exc})") from None
        raise


def _needs_rewrite(obj: Any, depth: int) -> bool:
    """True when ``obj`` holds a bytearray or memoryview that msgpack would mangle.

    Walks everything (no early exit), so the depth limit is always enforced.
    """
    cls = type(obj)
    if cls in _NATIVE_SCALARS:
        return False
    if cls is bytearray or cls is memoryview:
        return True
    if depth >= MAX_DEPTH and cls in _CONTAINERS:
        raise ValueError(f"value nested deeper than {MAX_DEPTH} levels (or refers to itself)")
    found = False
    if cls is list or cls is tuple or cls is set or cls is frozenset:
        for item in obj:
            found = _needs_rewrite(item, depth + 1) or found
    elif cls is dict:
        for key, value in obj.items():
            found = _needs_rewrite(key, depth + 1) or found
            found = _needs_rewrite(value, depth + 1) or found
    return found


def _rewrite(obj: Any) -> Any:
    """Copy ``obj`` with bytearrays marked and memoryviews refused (the rare slow path).

    Only reached after ``_needs_rewrite`` checked the depth. Set items and dict keys are
    hashable, so they never hold a bytearray; they are only searched for a (hashable,
    read-only) memoryview, and kept as they are.
    """
    cls = type(obj)
    if cls is bytearray:
        return _MarkedBytearray(obj)
    if cls is memoryview:
        raise TypeError(
            "cannot share a value of type memoryview: pass bytes(view) or bytearray(view)"
        )
    if cls is list:
        return [_rewrite(item) for item in obj]
    if cls is tuple:
        return tuple(_rewrite(item) for item in obj)
    if cls is set or cls is frozenset:
        for item in obj:
            _rewrite(item)
        return obj
    if cls is dict:
        rewritten = {}
        for key, value in obj.items():
            _rewrite(key)
            rewritten[key] = _rewrite(value)
        return rewritten
    return obj


def encode_value(value: Any) -> bytes:
    """Encode one value; ``TypeError`` names the type of anything that cannot be shared."""
    if type(value) in _NATIVE_SCALARS:
        return _packb(value)
    if _needs_rewrite(value, 0):
        return _packb(_rewrite(value))
    return _packb(value)


def encode_values(values: dict[str, Any]) -> dict[str, bytes]:
    """``encode_value`` of each value (a batch of scalars is packed without a call each)."""
    blobs = values.values()
    if _SMALL_KINDS.issuperset(map(type, blobs)):
        try:  # every value a small int or None: each one's one byte, looked up in C
            return dict(zip(values, map(_SMALL_ENCODINGS.__getitem__, blobs), strict=True))
        except KeyError:  # an int of more than one byte
            pass
    pack = _packer().pack  # a scalar of a native type cannot fail half-way through
    return {
        name: pack(value) if type(value) in _NATIVE_SCALARS else encode_value(value)
        for name, value in values.items()
    }


#: The one-byte encodings of None and of the ints msgpack packs in one byte, by value (no
#: bool or float among them: True == 1 and 1.0 == 1 would find an int's).
_SMALL_KINDS = frozenset({int, type(None)})
_SMALL_ENCODINGS = {value: msgpack.packb(value) for value in (None, *range(-32, 128))}

_ARRAY_HEADER = msgpack.Packer().pack_array_header


# ---------------------------------------------------------------------------- decoding


class _Marker:
    """What a container marker decodes to, until ``_list_hook`` turns its array into one."""

    __slots__ = ("build",)

    def __init__(self, build: Callable[[list[Any]], Any]) -> None:
        self.build = build


_DECODED_MARKERS: dict[int, _Marker] = {
    ExtCode.TUPLE: _Marker(tuple),
    ExtCode.SET: _Marker(set),
    ExtCode.FROZENSET: _Marker(frozenset),
}


def _list_hook(items: list[Any]) -> Any:
    if items and type(items[0]) is _Marker:
        return items[0].build(items[1:])
    return items


def _ext_hook(code: int, data: bytes) -> Any:
    if code in _DECODED_MARKERS:
        if data:
            raise ValueDecodeError(f"extension {code} is a zero-length container marker")
        return _DECODED_MARKERS[code]
    parse = PAYLOAD_PARSERS.get(code)
    if parse is None:
        raise ValueDecodeError(f"unknown value extension code {code}")
    return parse(data)


def decode_value(data: bytes | bytearray) -> Any:
    """Decode bytes made by ``encode_value`` (or by another client following PROTOCOL.md)."""
    if len(data) == 1:  # small ints, None, booleans: the commonest values, looked up
        value = _ONE_BYTE_VALUES[data[0]]
        if value is not _NOT_ONE_BYTE:
            return value
    value = _unpack(data)
    if type(value) is _Marker:
        raise ValueDecodeError("a container marker alone is not a value")
    return value


def decode_array(data: bytes) -> list[Any]:
    """Decode bytes holding an array of values (as ``snapshot_packed`` carries them), in one
    call into msgpack, whatever their number: ``[decode_value(v) for v in encoded]``."""
    values = _unpack(data)
    if type(values) is not list:  # (an array led by a lone marker became a container)
        raise ValueDecodeError(f"expected an array of values, not a {type(values).__name__}")
    if _Marker in map(type, values):
        raise ValueDecodeError("a container marker alone is not a value")
    return values


def _unpack(data: bytes | bytearray) -> Any:
    try:
        return msgpack.unpackb(
            data,
            ext_hook=_ext_hook,
            list_hook=_list_hook,
            raw=False,
            strict_map_key=False,
            use_list=True,
            timestamp=0,
        )
    except ValueDecodeError:
        raise
    except (
        ValueError,
        TypeError,
        OverflowError,
        RecursionError,
        decimal.InvalidOperation,
        msgpack.UnpackException,
    ) as exc:
        raise ValueDecodeError(f"malformed value: {type(exc).__name__}: {exc}") from None


# Every one-byte encoding that is a whole value (fixints, nil, false, true), by its byte.
_NOT_ONE_BYTE = object()
_ONE_BYTE_VALUES: list[Any] = [_NOT_ONE_BYTE] * 256
for _byte in [*range(0x80), *range(0xE0, 0x100), 0xC0, 0xC2, 0xC3]:
    _ONE_BYTE_VALUES[_byte] = msgpack.unpackb(bytes([_byte]))

# The length of a whole fixed-size scalar (int, float, nil, bool) by its first byte; 0 for the
# first bytes of anything else. A value of that length needs no further check.
_FIXED_LENGTHS = {
    0xCA: 5,
    0xCB: 9,
    0xCC: 2,
    0xCD: 3,
    0xCE: 5,
    0xCF: 9,
    0xD0: 2,
    0xD1: 3,
    0xD2: 5,
    0xD3: 9,
}
SCALAR_LENGTHS = bytes(
    1 if _ONE_BYTE_VALUES[b] is not _NOT_ONE_BYTE else _FIXED_LENGTHS.get(b, 0) for b in range(256)
)
#: Every byte that is a whole value alone (``bytes.translate`` deletes them all at once).
ONE_BYTE_VALUES = bytes(b for b in range(256) if SCALAR_LENGTHS[b] == 1)


def decode_values(blobs: dict[str, bytes]) -> dict[str, Any]:
    """``decode_value`` of each value (one-byte values looked up without a call each)."""
    one_byte = _ONE_BYTE_VALUES
    values = {}
    for name, blob in blobs.items():
        value = one_byte[blob[0]] if len(blob) == 1 else _NOT_ONE_BYTE
        values[name] = decode_value(blob) if value is _NOT_ONE_BYTE else value
    return values


#: The extension codes of the container markers (tuple, set, frozenset): an array led by one
#: is that container, not a list.
MARKER_CODES = frozenset(_DECODED_MARKERS)
