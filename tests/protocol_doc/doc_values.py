"""Values as PROTOCOL.md section 9 encodes them, written from the document with msgpack alone.

``encode`` and ``decode`` are the independent client's value codec: they import nothing from
aionamespace, so a value they exchange with a real proxy shows the document says enough.
``assert_same`` compares values and their types all the way down (a tuple is not a list).
"""

from __future__ import annotations

import datetime as dt
import decimal
import uuid
from typing import Any

import msgpack

BIGINT, TUPLE, SET, FROZENSET, BYTEARRAY, COMPLEX = 1, 2, 3, 4, 5, 6
DATETIME, DATE, TIME, TIMEDELTA, DECIMAL, UUID = 7, 8, 9, 10, 11, 12
INT_MIN, INT_MAX = -(2**63), 2**64 - 1


def _numbers(code: int, numbers: list[int] | list[float]) -> msgpack.ExtType:
    return msgpack.ExtType(code, msgpack.packb(numbers))


def _container(code: int, items: Any) -> tuple[Any, ...]:
    """A marker-led array: a zero-length extension of the container's code, then the items.

    A Python tuple, which msgpack packs as an array, so that it can also be a map key.
    """
    return (msgpack.ExtType(code, b""), *(_to_msgpack(item) for item in items))


def _to_msgpack(value: Any) -> Any:
    """``value`` rebuilt from what msgpack packs natively, extensions as ``ExtType``.

    Only marker-led arrays are tuples in the result, so msgpack can pack it as it is.
    """
    cls = type(value)
    if value is None or cls in (bool, float, str, bytes):
        return value
    if cls is int:
        if INT_MIN <= value <= INT_MAX:
            return value
        length = (value if value >= 0 else ~value).bit_length() // 8 + 1
        return msgpack.ExtType(BIGINT, value.to_bytes(length, "big", signed=True))
    if cls is list:
        return [_to_msgpack(item) for item in value]
    if cls is dict:
        return {_to_msgpack(k): _to_msgpack(v) for k, v in value.items()}
    if cls in (tuple, set, frozenset):
        return _container({tuple: TUPLE, set: SET, frozenset: FROZENSET}[cls], value)
    if cls is bytearray:
        return msgpack.ExtType(BYTEARRAY, bytes(value))
    if cls is complex:
        return _numbers(COMPLEX, [value.real, value.imag])
    if cls in (dt.datetime, dt.date, dt.time):
        code = {dt.datetime: DATETIME, dt.date: DATE, dt.time: TIME}[cls]
        return msgpack.ExtType(code, value.isoformat().encode())
    if cls is dt.timedelta:
        return _numbers(TIMEDELTA, [value.days, value.seconds, value.microseconds])
    if cls is decimal.Decimal:
        return msgpack.ExtType(DECIMAL, str(value).encode())
    if cls is uuid.UUID:
        return msgpack.ExtType(UUID, value.bytes)
    raise TypeError(f"not a shareable value: {cls.__name__}")


def encode(value: Any) -> bytes:
    return msgpack.packb(_to_msgpack(value), use_bin_type=True)


class Marker:
    """A decoded container marker, until the array it leads is complete."""

    def __init__(
        self,
        build: type[tuple[Any, ...]] | type[set[Any]] | type[frozenset[Any]],
    ) -> None:
        self.build = build


MARKERS = {TUPLE: Marker(tuple), SET: Marker(set), FROZENSET: Marker(frozenset)}


def _list_hook(items: list[Any]) -> Any:
    if items and isinstance(items[0], Marker):
        return items[0].build(items[1:])
    return items


def _ext_hook(code: int, data: bytes) -> Any:
    if code in MARKERS:
        assert data == b"", "a container marker has no payload"
        return MARKERS[code]
    if code == BIGINT:
        return int.from_bytes(data, "big", signed=True)
    if code in (COMPLEX, TIMEDELTA):
        numbers = msgpack.unpackb(data)
        assert type(numbers) is list
        if code == COMPLEX:
            return complex(*numbers)
        return dt.timedelta(days=numbers[0], seconds=numbers[1], microseconds=numbers[2])
    if code == BYTEARRAY:
        return bytearray(data)
    if code == DATETIME:
        return dt.datetime.fromisoformat(data.decode())
    if code == DATE:
        return dt.date.fromisoformat(data.decode())
    if code == TIME:
        return dt.time.fromisoformat(data.decode())
    if code == DECIMAL:
        return decimal.Decimal(data.decode())
    if code == UUID:
        return uuid.UUID(bytes=data)
    raise ValueError(f"unknown value extension code {code}")


def decode(data: bytes) -> Any:
    value = msgpack.unpackb(
        data, ext_hook=_ext_hook, list_hook=_list_hook, raw=False, strict_map_key=False
    )
    assert not isinstance(value, Marker)
    return value


def assert_same(actual: Any, expected: Any) -> None:
    """Equal, and of the same types all the way down (a tuple is not a list)."""
    assert type(actual) is type(expected), (actual, expected)
    assert actual == expected
    if type(expected) in (list, tuple):
        for a, e in zip(actual, expected, strict=True):
            assert_same(a, e)
    elif type(expected) is dict:
        assert list(map(type, actual)) == list(map(type, expected))
        for key in expected:
            assert_same(actual[key], expected[key])
