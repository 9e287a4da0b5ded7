"""The value codec: Python values <-> msgpack bytes, faithfully, without pickle.

msgpack carries None, bool, int (64-bit), float, str, bytes, list and dict natively. Everything
else a namespace may hold travels as a msgpack *extension* (``ExtType(code, data)``); the codes
are listed in ``ExtCode`` and described byte for byte in docs/PROTOCOL.md, "Values".

Two msgpack behaviours would silently change a value, so they are handled here:

* ``tuple`` would become ``list``: the packer runs with ``strict_types=True``, which sends
  tuples (and every subclass of a native type, e.g. an ``IntEnum``) to ``default``, where a tuple
  becomes its own extension and anything unknown raises ``TypeError`` naming its type.
* ``bytearray`` and ``memoryview`` are packed as ``bin`` even with ``strict_types`` and would
  come back as ``bytes``. ``_prepare`` walks containers once, cheaply, and only rebuilds the rare
  value that holds one: a bytearray becomes its extension, a memoryview a ``TypeError``.

Decoding never runs code: extension data is parsed by fixed rules, nesting is bounded, and any
failure is one ``ValueError`` subclass (``ValueDecodeError``) the caller turns into a protocol
error.
"""

from __future__ import annotations

import datetime as _dt
import decimal
import enum
import functools
import uuid
from collections.abc import Callable
from typing import Any

import msgpack

__all__ = [
    "MAX_DEPTH",
    "ExtCode",
    "ValueDecodeError",
    "check_value",
    "decode_value",
    "encode_value",
]

#: Containers nested deeper than this are refused both ways (a self-referencing list, a bomb).
MAX_DEPTH = 256


class ExtCode(enum.IntEnum):
    """msgpack extension type codes used for values (docs/PROTOCOL.md, "Values")."""

    BIGINT = 1  # two's complement, big-endian, minimal length
    TUPLE = 2  # data: a msgpack array of values
    SET = 3  # data: a msgpack array of values
    FROZENSET = 4  # data: a msgpack array of values
    BYTEARRAY = 5  # data: the raw bytes
    COMPLEX = 6  # data: msgpack array [real, imag] of floats
    DATETIME = 7  # data: ISO 8601 text, as datetime.isoformat()
    DATE = 8  # data: ISO 8601 text
    TIME = 9  # data: ISO 8601 text
    TIMEDELTA = 10  # data: msgpack array [days, seconds, microseconds]
    DECIMAL = 11  # data: the decimal's str() as UTF-8
    UUID = 12  # data: the 16 bytes


class ValueDecodeError(ValueError):
    """Bytes that are not a valid encoded value."""


_NATIVE_SCALARS = frozenset({type(None), bool, int, float, str, bytes})


def _pack_items(items: Any) -> bytes:
    return _packb(list(items))


def _default(obj: Any) -> msgpack.ExtType:
    """Encode what msgpack cannot carry natively (called by the packer)."""
    cls = type(obj)
    if cls is int:  # only reached when it does not fit in 64 bits
        length = (obj if obj >= 0 else ~obj).bit_length() // 8 + 1  # minimal, with a sign bit
        return msgpack.ExtType(ExtCode.BIGINT, obj.to_bytes(length, "big", signed=True))
    if cls is tuple:
        return msgpack.ExtType(ExtCode.TUPLE, _pack_items(obj))
    if cls is set:
        return msgpack.ExtType(ExtCode.SET, _pack_items(obj))
    if cls is frozenset:
        return msgpack.ExtType(ExtCode.FROZENSET, _pack_items(obj))
    if cls is _MarkedBytearray:
        return msgpack.ExtType(ExtCode.BYTEARRAY, obj.data)
    if cls is complex:
        return msgpack.ExtType(ExtCode.COMPLEX, _packb([obj.real, obj.imag]))
    if cls is _dt.datetime:
        return msgpack.ExtType(ExtCode.DATETIME, obj.isoformat().encode())
    if cls is _dt.date:
        return msgpack.ExtType(ExtCode.DATE, obj.isoformat().encode())
    if cls is _dt.time:
        return msgpack.ExtType(ExtCode.TIME, obj.isoformat().encode())
    if cls is _dt.timedelta:
        return msgpack.ExtType(ExtCode.TIMEDELTA, _packb([obj.days, obj.seconds, obj.microseconds]))
    if cls is decimal.Decimal:
        return msgpack.ExtType(ExtCode.DECIMAL, str(obj).encode())
    if cls is uuid.UUID:
        return msgpack.ExtType(ExtCode.UUID, obj.bytes)
    raise TypeError(
        f"cannot share a value of type {cls.__module__}.{cls.__qualname__}: "
        "aionamespace carries only the types listed in README.md ('Supported values')"
    )


class _MarkedBytearray:
    """A bytearray wrapped so that the packer hands it to ``_default`` instead of packing bin."""

    __slots__ = ("data",)

    def __init__(self, data: bytearray) -> None:
        self.data = bytes(data)


def _packb(obj: Any) -> bytes:
    try:
        packed: bytes = msgpack.packb(obj, default=_default, strict_types=True,
                                      use_bin_type=True, datetime=False)
        return packed
    except ValueError as exc:  # msgpack's own nesting limit
        raise ValueError(f"value nested too deeply to share ({exc})") from None


def _needs_rewrite(obj: Any, depth: int) -> bool:
    """True when ``obj`` holds a bytearray or memoryview that msgpack would mangle."""
    if depth > MAX_DEPTH:
        raise ValueError(f"value nested deeper than {MAX_DEPTH} levels (or refers to itself)")
    cls = type(obj)
    if cls in _NATIVE_SCALARS:
        return False
    if cls is bytearray or cls is memoryview:
        return True
    if cls is list or cls is tuple or cls is set or cls is frozenset:
        return any(_needs_rewrite(item, depth + 1) for item in obj)
    if cls is dict:
        return any(
            _needs_rewrite(k, depth + 1) or _needs_rewrite(v, depth + 1) for k, v in obj.items()
        )
    return False


def _rewrite(obj: Any) -> Any:
    """Copy ``obj`` with bytearrays marked and memoryviews refused (the rare slow path).

    Set items and dict keys are hashable, so they never hold a bytearray; they are only
    searched for a (hashable, read-only) memoryview, and kept as they are.
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


def _default_with_rewrites(obj: Any) -> msgpack.ExtType:
    if type(obj) is tuple:  # may hold marked bytearrays: pack its items on this path too
        return msgpack.ExtType(ExtCode.TUPLE, _packb_rewritten(list(obj)))
    return _default(obj)


def _packb_rewritten(obj: Any) -> bytes:
    packed: bytes = msgpack.packb(obj, default=_default_with_rewrites, strict_types=True,
                                  use_bin_type=True, datetime=False)
    return packed


def encode_value(value: Any) -> bytes:
    """Encode one value; ``TypeError`` names the type of anything that cannot be shared."""
    if type(value) in _NATIVE_SCALARS:
        return _packb(value)
    if _needs_rewrite(value, 0):
        return _packb_rewritten(_rewrite(value))
    return _packb(value)


# ---------------------------------------------------------------------------- decoding


def _items(data: bytes, depth: int) -> list[Any]:
    items = _unpackb(data, depth + 1)
    if type(items) is not list:
        raise ValueDecodeError("extension payload is not an array")
    return items


def _ext_hook(depth: int, code: int, data: bytes) -> Any:
    if depth >= MAX_DEPTH:
        raise ValueDecodeError(f"value nested deeper than {MAX_DEPTH} levels")
    if code == ExtCode.BIGINT:
        return int.from_bytes(data, "big", signed=True)
    if code == ExtCode.TUPLE:
        return tuple(_items(data, depth))
    if code == ExtCode.SET:
        return set(_items(data, depth))
    if code == ExtCode.FROZENSET:
        return frozenset(_items(data, depth))
    if code == ExtCode.BYTEARRAY:
        return bytearray(data)
    if code == ExtCode.COMPLEX:
        parts = _items(data, depth)
        if len(parts) != 2 or not all(type(p) is float for p in parts):
            raise ValueDecodeError("complex payload is not [real, imag]")
        return complex(parts[0], parts[1])
    if code in _ISO_PARSERS:
        return _ISO_PARSERS[code](data.decode())
    if code == ExtCode.TIMEDELTA:
        parts = _items(data, depth)
        if len(parts) != 3 or not all(type(p) is int for p in parts):
            raise ValueDecodeError("timedelta payload is not [days, seconds, microseconds]")
        return _dt.timedelta(days=parts[0], seconds=parts[1], microseconds=parts[2])
    if code == ExtCode.DECIMAL:
        return decimal.Decimal(data.decode())
    if code == ExtCode.UUID:
        return uuid.UUID(bytes=data)
    raise ValueDecodeError(f"unknown value extension code {code}")


_ISO_PARSERS: dict[int, Callable[[str], Any]] = {
    ExtCode.DATETIME: _dt.datetime.fromisoformat,
    ExtCode.DATE: _dt.date.fromisoformat,
    ExtCode.TIME: _dt.time.fromisoformat,
}

_HOOKS = [functools.partial(_ext_hook, depth) for depth in range(MAX_DEPTH + 1)]


def _unpackb(data: bytes, depth: int) -> Any:
    return msgpack.unpackb(data, ext_hook=_HOOKS[min(depth, MAX_DEPTH)], raw=False,
                           strict_map_key=False, use_list=True, timestamp=0)


def decode_value(data: bytes) -> Any:
    """Decode bytes made by ``encode_value`` (or by another client following PROTOCOL.md)."""
    try:
        return _unpackb(data, 0)
    except ValueDecodeError:
        raise
    except (ValueError, TypeError, OverflowError, RecursionError, decimal.InvalidOperation,
            msgpack.UnpackException) as exc:
        raise ValueDecodeError(f"malformed value: {type(exc).__name__}: {exc}") from None


# msgpack decodes its timestamp extension (code -1) itself, into msgpack.Timestamp, which is
# not a value we carry. Its three encodings start with these bytes; only a value holding one
# of them needs the walk that looks for a Timestamp.
_TIMESTAMP_MARKERS = (b"\xd6\xff", b"\xd7\xff", b"\xc7\x0c\xff")


def check_value(data: bytes) -> None:
    """Raise ValueDecodeError unless ``data`` is a value another client can read back.

    Stricter than ``decode_value``: it also refuses msgpack timestamps. The server runs it on
    every value it is asked to store.
    """
    value = decode_value(data)
    if any(marker in data for marker in _TIMESTAMP_MARKERS) and _holds_timestamp(value):
        raise ValueDecodeError("msgpack timestamps (extension -1) are not supported values")


def _holds_timestamp(value: Any) -> bool:
    cls = type(value)
    if cls is msgpack.Timestamp:
        return True
    if cls in (list, tuple, set, frozenset):
        return any(_holds_timestamp(item) for item in value)
    if cls is dict:
        return any(_holds_timestamp(k) or _holds_timestamp(v) for k, v in value.items())
    return False
