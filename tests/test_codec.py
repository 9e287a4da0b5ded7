"""The value codec (``_codec``): faithful round trips, clear refusals, hostile bytes.

The promises tested here:

* every supported value comes back equal *and of the same type*, recursively (a tuple stays a
  tuple, a bytearray a bytearray, -0.0 stays negative, an aware datetime keeps its offset);
* anything else is refused with a ``TypeError`` naming its type, and structures too deep (or
  referring to themselves) with a ``ValueError``;
* ``decode_value`` on any bytes at all returns a value or raises ``ValueDecodeError``, and
  ``check_value`` (what the server runs before storing) also refuses msgpack timestamps.

What exactly a valid extension payload is lives in test_value_grammar.py, and the structure
the server's check asks of a value (distinct set items, shared hashes) in test_value_check.py.

Cases that can crash the interpreter (C stack exhaustion on deeply nested extensions) run in a
subprocess, so that a crash fails one test instead of killing the whole run.
"""

from __future__ import annotations

import collections
import datetime as dt
import enum
import math
import subprocess
import sys
import textwrap
import uuid
from decimal import Decimal
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aionamespace.protocol.codec import (
    MAX_DEPTH,
    ExtCode,
    ValueDecodeError,
    decode_value,
    encode_value,
)
from aionamespace.protocol.values import check_value

# ----------------------------------------------------------------------------- comparison


def assert_same_float(original: float, decoded: float, path: str) -> None:
    """Equal floats, where nan equals nan and 0.0 differs from -0.0."""
    if math.isnan(original):
        assert math.isnan(decoded), f"{path}: nan became {decoded!r}"
        return
    assert decoded == original, f"{path}: {original!r} became {decoded!r}"
    assert math.copysign(1.0, decoded) == math.copysign(1.0, original), (
        f"{path}: sign of {original!r} lost ({decoded!r})"
    )


def assert_same(original: Any, decoded: Any, path: str = "value") -> None:
    """``decoded`` equals ``original`` with the same type at every level."""
    cls = type(original)
    assert type(decoded) is cls, f"{path}: {cls.__name__} came back as {type(decoded).__name__}"
    if cls is float:
        assert_same_float(original, decoded, path)
    elif cls is complex:
        assert_same_float(original.real, decoded.real, f"{path}.real")
        assert_same_float(original.imag, decoded.imag, f"{path}.imag")
    elif cls is Decimal:
        # as_tuple() tells apart NaN/sNaN, their payloads, -0, and 1.0 from 1.00; == cannot
        # (and raises on a signalling NaN).
        assert decoded.as_tuple() == original.as_tuple(), f"{path}: {original!r} -> {decoded!r}"
    elif cls is list or cls is tuple:
        assert len(decoded) == len(original), f"{path}: length changed"
        for index, (item, back) in enumerate(zip(original, decoded, strict=True)):
            assert_same(item, back, f"{path}[{index}]")
    elif cls is dict:
        assert len(decoded) == len(original), f"{path}: size changed"
        for (key, item), (key_back, item_back) in zip(
            original.items(), decoded.items(), strict=True
        ):
            assert_same(key, key_back, f"{path} key {key!r}")
            assert_same(item, item_back, f"{path}[{key!r}]")
    elif cls is set or cls is frozenset:
        assert len(decoded) == len(original), f"{path}: size changed"
        counterparts = {item: item for item in decoded}
        for item in original:
            assert item in counterparts, f"{path}: {item!r} missing from {decoded!r}"
            assert_same(item, counterparts[item], f"{path} member {item!r}")
    elif cls is dt.datetime or cls is dt.time:
        assert (decoded.tzinfo is None) == (original.tzinfo is None), f"{path}: awareness lost"
        assert decoded.replace(tzinfo=None) == original.replace(tzinfo=None), (
            f"{path}: {original!r} -> {decoded!r}"
        )
        assert decoded.utcoffset() == original.utcoffset(), f"{path}: offset changed"
    else:
        assert decoded == original, f"{path}: {original!r} -> {decoded!r}"


def round_trip(value: Any) -> Any:
    blob = encode_value(value)
    assert type(blob) is bytes
    return decode_value(blob)


# ----------------------------------------------------------------------------- strategies

BIG_INTS = [
    2**63 - 1,
    2**63,
    2**64 - 1,
    2**64,
    2**64 + 1,
    -(2**63),
    -(2**63) - 1,
    -(2**64),
    2**1000,
    -(2**1000),
    2**4000 + 12345,
    -(2**4000) - 1,
]


def big_int(index: int) -> int:
    return BIG_INTS[index]


ints = st.one_of(
    st.integers(),
    st.integers(min_value=-(2**300), max_value=2**300),
    st.integers(0, len(BIG_INTS) - 1).map(big_int),  # sampled_from() would print them all
)

fixed_offsets = st.builds(
    dt.timezone,
    st.timedeltas(
        min_value=dt.timedelta(hours=-24) + dt.timedelta(microseconds=1),
        max_value=dt.timedelta(hours=24) - dt.timedelta(microseconds=1),
    ),
)
maybe_tz = st.none() | fixed_offsets | st.just(dt.timezone.utc)

special_decimals = st.sampled_from(
    [
        Decimal("0"),
        Decimal("-0"),
        Decimal("-0E-1000"),
        Decimal("1.00"),
        Decimal("NaN"),
        Decimal("-NaN"),
        Decimal("NaN123"),
        Decimal("sNaN"),
        Decimal("-sNaN45"),
        Decimal("Infinity"),
        Decimal("-Infinity"),
        Decimal("1E+999999999"),
        Decimal("-1E-999999999"),
        Decimal("1E+999999999999999999"),
        Decimal("123456789012345678901234567890.0987654321"),
    ]
)
huge_exponent_decimals = st.builds(
    lambda sign, digits, exponent: Decimal((sign, tuple(digits), exponent)),
    st.integers(0, 1),
    st.lists(st.integers(0, 9), min_size=1, max_size=30),
    st.integers(-(10**17), 10**17),
)
all_decimals = st.one_of(
    st.decimals(allow_nan=True, allow_infinity=True), special_decimals, huge_exponent_decimals
)

hashable_leaves = st.one_of(
    st.none(),
    st.booleans(),
    ints,
    st.floats(allow_nan=False),
    st.text(),
    st.binary(),
    st.complex_numbers(allow_nan=False),
    all_decimals.filter(lambda d: not d.is_nan()),
    st.datetimes(timezones=maybe_tz),
    st.dates(),
    st.times(timezones=maybe_tz),
    st.timedeltas(),
    st.uuids(),
)

hashables = st.recursive(
    hashable_leaves,
    lambda inner: st.lists(inner, max_size=4).map(tuple) | st.frozensets(inner, max_size=4),
    max_leaves=8,
)

unhashable_only_leaves = st.one_of(
    st.floats(allow_nan=True),  # mostly to get nan, which never makes a usable key
    st.complex_numbers(allow_nan=True),
    all_decimals,
)


def containers(inner: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.one_of(
        st.lists(inner, max_size=5),
        st.lists(inner, max_size=5).map(tuple),
        st.dictionaries(hashables, inner, max_size=5),
        st.sets(hashables, max_size=5),
        st.frozensets(hashables, max_size=5),
    )


values_without_bytearray = st.recursive(
    hashable_leaves | unhashable_only_leaves, containers, max_leaves=20
)
values = st.recursive(
    hashable_leaves | unhashable_only_leaves | st.binary().map(bytearray),
    containers,
    max_leaves=20,
)

ROUND_TRIP_SETTINGS = settings(
    max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)


# ----------------------------------------------------------------------------- round trips


@ROUND_TRIP_SETTINGS
@given(values)
def test_round_trip_any_value(value: Any) -> None:
    assert_same(value, round_trip(value))


@ROUND_TRIP_SETTINGS
@given(values_without_bytearray)
def test_round_trip_values_without_bytearray(value: Any) -> None:
    """The fast path (no container holds a bytearray) on its own."""
    assert_same(value, round_trip(value))


@settings(max_examples=200, deadline=None)
@given(hashables, values_without_bytearray)
def test_round_trip_tuple_and_frozenset_keys(key: Any, value: Any) -> None:
    original = {key: value, (key, 1): [key], frozenset({key}): (value,)}
    assert_same(original, round_trip(original))


@pytest.mark.parametrize(
    "value",
    [
        None,
        True,
        False,
        0,
        -1,
        1,
        *BIG_INTS,
        0.0,
        -0.0,
        1.5,
        math.inf,
        -math.inf,
        math.nan,
        5e-324,
        -1.7976931348623157e308,
        "",
        "naïve ☃ \U0001f600",
        b"",
        b"\x00\xff",
        bytearray(),
        bytearray(b"\x00abc"),
        [],
        (),
        {},
        set(),
        frozenset(),
        (1,),
        ((),),
        [()],
        complex(1, -2),
        complex(math.nan, -0.0),
        complex(-math.inf, 0.0),
        dt.datetime(2024, 2, 29, 23, 59, 59, 999999),
        dt.datetime(1, 1, 1),
        dt.datetime(9999, 12, 31, 23, 59, 59, 999999),
        dt.datetime(2024, 1, 1, 12, tzinfo=dt.timezone.utc),
        dt.datetime(2024, 1, 1, 12, tzinfo=dt.timezone(dt.timedelta(hours=5, minutes=30))),
        dt.datetime(2024, 1, 1, 12, tzinfo=dt.timezone(-dt.timedelta(hours=23, minutes=59))),
        dt.datetime(2024, 1, 1, tzinfo=dt.timezone(dt.timedelta(seconds=1, microseconds=7))),
        dt.date(1, 1, 1),
        dt.date(2024, 2, 29),
        dt.time(),
        dt.time(23, 59, 59, 999999),
        dt.time(1, 2, 3, tzinfo=dt.timezone.utc),
        dt.time(1, 2, tzinfo=dt.timezone(dt.timedelta(hours=-3, minutes=-15))),
        dt.timedelta(),
        dt.timedelta(days=-1),
        dt.timedelta(microseconds=-1),
        dt.timedelta.max,
        dt.timedelta.min,
        dt.timedelta(days=3, seconds=7, microseconds=9),
        Decimal("-0"),
        Decimal("NaN"),
        Decimal("-NaN7"),
        Decimal("sNaN"),
        Decimal("Infinity"),
        Decimal("-Infinity"),
        Decimal("1E+999999999999999999"),
        Decimal("1.000"),
        uuid.UUID(int=0),
        uuid.UUID(int=2**128 - 1),
        uuid.UUID("12345678-1234-5678-1234-567812345678"),
        {(1, 2): "tuple key", frozenset({1, 2}): "frozenset key", b"k": 1, None: 2, True: 3},
        {(): {(1, (2, (3,))): [(4, 5), {6, frozenset({(7,)})}]}},
        [bytearray(b"a"), (bytearray(b"b"), [bytearray(b"c")]), {"k": bytearray(b"d")}],
        {"nested": {1: (bytearray(b"x"), {frozenset({"y"})})}},
        {-0.0: "negative zero key", 2**70: "big int key", Decimal("-0.0"): 1},
        [2**64, (-(2**64),), {2**65: {2**66}}],
    ],
    ids=repr,
)
def test_round_trip_examples(value: Any) -> None:
    assert_same(value, round_trip(value))


@pytest.mark.parametrize(
    "value",
    [
        {frozenset({1}): bytearray(b"x")},
        {(1, frozenset({2})): bytearray(b"x")},
        [bytearray(b"x"), {frozenset(): 1}],
        {(1, 2): bytearray(b"x"), frozenset({(3,)}): [bytearray(b"y")]},
    ],
    ids=repr,
)
def test_round_trip_frozenset_keys_next_to_a_bytearray(value: Any) -> None:
    """A bytearray anywhere in a dict makes the encoder rebuild its keys: they must survive."""
    assert_same(value, round_trip(value))


def test_encoded_value_is_plain_msgpack_for_native_types() -> None:
    """Other clients (docs/PROTOCOL.md) read native values without knowing the extensions."""
    value = {"a": [1, 2.5, None, True, "s", b"b"], "n": -(2**63)}
    assert msgpack.unpackb(encode_value(value), raw=False) == value


@pytest.mark.parametrize(
    ("value", "code"),
    [
        (2**64, ExtCode.BIGINT),
        ((1,), ExtCode.TUPLE),
        ({1}, ExtCode.SET),
        (frozenset({1}), ExtCode.FROZENSET),
        (bytearray(b"x"), ExtCode.BYTEARRAY),
        (1j, ExtCode.COMPLEX),
        (dt.datetime(2000, 1, 1), ExtCode.DATETIME),
        (dt.date(2000, 1, 1), ExtCode.DATE),
        (dt.time(1), ExtCode.TIME),
        (dt.timedelta(1), ExtCode.TIMEDELTA),
        (Decimal("1.5"), ExtCode.DECIMAL),
        (uuid.UUID(int=5), ExtCode.UUID),
    ],
    ids=repr,
)
def test_extension_codes(value: Any, code: ExtCode) -> None:
    decoded = msgpack.unpackb(encode_value(value), raw=False)
    if code in (ExtCode.TUPLE, ExtCode.SET, ExtCode.FROZENSET):
        # Containers are arrays led by a zero-length marker extension, then the items.
        assert decoded == [msgpack.ExtType(code, b""), *value]
        return
    assert isinstance(decoded, msgpack.ExtType)
    assert decoded.code == code


def test_bigint_payload_is_twos_complement_big_endian() -> None:
    ext = msgpack.unpackb(encode_value(-(2**64)), raw=False)
    assert ext == msgpack.ExtType(ExtCode.BIGINT, (-(2**64)).to_bytes(9, "big", signed=True))


# ----------------------------------------------------------------------------- refusals


class Color(enum.IntEnum):
    RED = 1


class MyStr(str):
    pass


class MyDatetime(dt.datetime):
    pass


class Opaque:
    pass


def a_function() -> None:
    pass


@pytest.mark.parametrize(
    ("value", "type_name"),
    [
        (object(), "object"),
        (Opaque(), "Opaque"),
        (a_function, "function"),
        (len, "builtin_function_or_method"),
        (memoryview(b"abc"), "memoryview"),
        ([1, memoryview(b"abc")], "memoryview"),
        ({"k": (memoryview(b"abc"),)}, "memoryview"),
        ({memoryview(b"abc")}, "memoryview"),
        ({memoryview(b"abc"): 1}, "memoryview"),
        (Color.RED, "Color"),
        ([Color.RED], "Color"),
        (MyStr("x"), "MyStr"),
        ({MyStr("x"): 1}, "MyStr"),
        (collections.OrderedDict(a=1), "OrderedDict"),
        (collections.defaultdict(list), "defaultdict"),
        (MyDatetime(2020, 1, 1), "MyDatetime"),
        ([[[[[[[[[[[[[[[[[[[[object()]]]]]]]]]]]]]]]]]]]], "object"),
        ({"a": {"b": [(1, {2: {frozenset({Opaque()})}})]}}, "Opaque"),
        ([bytearray(b"x"), Opaque()], "Opaque"),
        ({"k": bytearray(b"x"), "o": (Color.RED,)}, "Color"),
        (range(3), "range"),
        (type, "type"),
        (Ellipsis, "ellipsis"),
    ],
)
def test_unsupported_values_raise_type_error_naming_the_type(value: Any, type_name: str) -> None:
    with pytest.raises(TypeError) as info:
        encode_value(value)
    assert type_name in str(info.value)


def nest_lists(depth: int, leaf: Any = 0) -> Any:
    value = leaf
    for _ in range(depth):
        value = [value]
    return value


def nest_tuples(depth: int, leaf: Any = 0) -> Any:
    value = leaf
    for _ in range(depth):
        value = (value,)
    return value


def nest_dicts(depth: int, leaf: Any = 0) -> Any:
    value = leaf
    for _ in range(depth):
        value = {"k": value}
    return value


def nest_frozensets(depth: int, leaf: Any = 0) -> Any:
    value = leaf
    for _ in range(depth):
        value = frozenset({value})
    return value


def test_self_referencing_list_raises_value_error() -> None:
    loop: list[Any] = [1]
    loop.append(loop)
    with pytest.raises(ValueError, match="nested"):
        encode_value(loop)


def test_self_referencing_dict_raises_value_error() -> None:
    loop: dict[str, Any] = {}
    loop["me"] = [loop]
    with pytest.raises(ValueError, match="nested"):
        encode_value(loop)


def test_self_referencing_list_holding_a_bytearray_raises_value_error() -> None:
    loop: list[Any] = [bytearray(b"x")]
    loop.append(loop)
    with pytest.raises(ValueError, match="nested"):
        encode_value(loop)


@pytest.mark.parametrize("nest", [nest_lists, nest_tuples, nest_dicts, nest_frozensets])
def test_nesting_deeper_than_max_depth_raises_value_error(nest: Any) -> None:
    with pytest.raises(ValueError, match="nested"):
        encode_value(nest(MAX_DEPTH + 1))
    with pytest.raises(ValueError, match="nested"):
        encode_value(nest(10 * MAX_DEPTH))


def test_nesting_deeper_than_max_depth_next_to_a_bytearray_raises_value_error() -> None:
    with pytest.raises(ValueError, match="nested"):
        encode_value([bytearray(b"x"), nest_lists(MAX_DEPTH + 10)])


@pytest.mark.parametrize("nest", [nest_lists, nest_dicts])
def test_native_nesting_up_to_max_depth_round_trips(nest: Any) -> None:
    value = nest(MAX_DEPTH)
    assert round_trip(value) == value


def test_unencodable_str_error_does_not_blame_nesting() -> None:
    """A lone surrogate cannot be UTF-8: the error must say so, not claim deep nesting."""
    with pytest.raises(ValueError, match="surrogate") as info:
        encode_value("\ud800")
    assert "nested" not in str(info.value)


# ----------------------------------------------------------------------------- hostile bytes


def decode_or_reject(data: bytes) -> None:
    """decode_value either returns or raises ValueDecodeError; any other exception fails."""
    try:
        decode_value(data)
    except ValueDecodeError:
        pass


def test_value_decode_error_is_a_value_error() -> None:
    assert issubclass(ValueDecodeError, ValueError)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_decode_arbitrary_bytes(data: bytes) -> None:
    decode_or_reject(data)


@st.composite
def mutated_encodings(draw: st.DrawFn) -> bytes:
    blob = bytearray(encode_value(draw(values_without_bytearray)))
    how = draw(st.sampled_from(["flip", "truncate", "extend", "insert", "delete", "overwrite"]))
    at = draw(st.integers(0, len(blob) - 1))
    if how == "flip":
        blob[at] ^= draw(st.integers(1, 255))
    elif how == "truncate":
        del blob[at:]
    elif how == "extend":
        blob += draw(st.binary(min_size=1, max_size=16))
    elif how == "insert":
        blob[at:at] = draw(st.binary(min_size=1, max_size=8))
    elif how == "delete":
        del blob[at : at + draw(st.integers(1, 8))]
    else:
        chunk = draw(st.binary(min_size=1, max_size=8))
        blob[at : at + len(chunk)] = chunk
    return bytes(blob)


@settings(max_examples=300, deadline=None)
@given(mutated_encodings())
def test_decode_mutated_encodings(data: bytes) -> None:
    decode_or_reject(data)


def ext(code: int, data: bytes) -> bytes:
    """An encoded extension; by hand, since msgpack.ExtType refuses negative (reserved) codes."""
    assert len(data) < 256
    return b"\xc7" + bytes([len(data)]) + code.to_bytes(1, "big", signed=True) + data


def packb(value: Any) -> bytes:
    packed: bytes = msgpack.packb(value, use_bin_type=True)
    return packed


HOSTILE = {
    "empty": b"",
    "reserved byte 0xc1": b"\xc1",
    "truncated array": b"\x93\x01",
    "trailing bytes": b"\x01\x02",
    "str with invalid utf-8": b"\xa2\xff\xfe",
    "map with an array key": b"\x81\x91\x01\x02",
    "map with a set key": b"\x81" + ext(ExtCode.SET, packb([1])) + b"\x02",
    "unknown ext code 99": ext(99, b""),
    "unknown ext code 13": ext(13, b"abc"),
    "unknown negative ext code": ext(-5, b"\x00"),
    "nested unknown ext code": packb([1, msgpack.ExtType(77, b"")]),
    "tuple payload not an array": ext(ExtCode.TUPLE, packb(5)),
    "tuple payload a map": ext(ExtCode.TUPLE, packb({"a": 1})),
    "tuple payload truncated": ext(ExtCode.TUPLE, b"\x92\x01"),
    "tuple payload with trailing bytes": ext(ExtCode.TUPLE, packb([1]) + b"\x01"),
    "tuple payload empty": ext(ExtCode.TUPLE, b""),
    "set payload not an array": ext(ExtCode.SET, packb("abc")),
    "set of an unhashable list": ext(ExtCode.SET, packb([[1, 2]])),
    "frozenset of an unhashable dict": ext(ExtCode.FROZENSET, packb([{"a": 1}])),
    "set of a signalling NaN": ext(ExtCode.SET, packb([msgpack.ExtType(ExtCode.DECIMAL, b"sNaN")])),
    "complex with one part": ext(ExtCode.COMPLEX, packb([1.0])),
    "complex with three parts": ext(ExtCode.COMPLEX, packb([1.0, 2.0, 3.0])),
    "complex with int parts": ext(ExtCode.COMPLEX, packb([1, 2])),
    "complex with str parts": ext(ExtCode.COMPLEX, packb(["1", "2"])),
    "complex payload not an array": ext(ExtCode.COMPLEX, packb(1.0)),
    "timedelta with floats": ext(ExtCode.TIMEDELTA, packb([1.0, 2.0, 3.0])),
    "timedelta with one float": ext(ExtCode.TIMEDELTA, packb([1, 2, 3.5])),
    "timedelta with bools": ext(ExtCode.TIMEDELTA, packb([True, 0, 0])),
    "timedelta with two parts": ext(ExtCode.TIMEDELTA, packb([1, 2])),
    "timedelta overflowing": ext(ExtCode.TIMEDELTA, packb([10**9, 0, 0])),
    "timedelta with a bigint": ext(
        ExtCode.TIMEDELTA, packb([msgpack.ExtType(ExtCode.BIGINT, b"\x7f" + b"\xff" * 20), 0, 0])
    ),
    "decimal with invalid utf-8": ext(ExtCode.DECIMAL, b"\xff\xfe1"),
    "decimal garbage": ext(ExtCode.DECIMAL, b"one point five"),
    "decimal empty": ext(ExtCode.DECIMAL, b""),
    "decimal exponent too large": ext(ExtCode.DECIMAL, b"1e99999999999999999999"),
    "datetime with invalid utf-8": ext(ExtCode.DATETIME, b"\xff2024-01-01"),
    "datetime garbage": ext(ExtCode.DATETIME, b"yesterday"),
    "datetime out of range": ext(ExtCode.DATETIME, b"2024-13-01T00:00:00"),
    "date with invalid utf-8": ext(ExtCode.DATE, b"\xc3\x28"),
    "date garbage": ext(ExtCode.DATE, b"2024-02-30"),
    "time with invalid utf-8": ext(ExtCode.TIME, b"\xed\xa0\x80"),
    "time garbage": ext(ExtCode.TIME, b"25:00"),
    "uuid too short": ext(ExtCode.UUID, b"\x00" * 15),
    "uuid too long": ext(ExtCode.UUID, b"\x00" * 17),
    "timestamp extension, bad length": ext(-1, b"\x00\x00"),
}


@pytest.mark.parametrize("data", list(HOSTILE.values()), ids=list(HOSTILE))
def test_hostile_bytes_raise_value_decode_error(data: bytes) -> None:
    with pytest.raises(ValueDecodeError):
        decode_value(data)


# msgpack's own timestamp extension (-1) in every header form a decoder must accept
# (PROTOCOL.md 9.4): fixext 4/8, ext 8 (lengths 4, 8, 12), ext 16, ext 32.
TIMESTAMPS = {
    "fixext 4": b"\xd6\xff" + b"\x00" * 4,
    "fixext 8": b"\xd7\xff" + b"\x00" * 8,
    "ext 8, 12 bytes": b"\xc7\x0c\xff" + b"\x00" * 12,
    "ext 8, 4 bytes": b"\xc7\x04\xff" + b"\x00" * 4,
    "ext 8, 8 bytes": b"\xc7\x08\xff" + b"\x00" * 8,
    "ext 16, 4 bytes": b"\xc8\x00\x04\xff" + b"\x00" * 4,
    "ext 32, 12 bytes": b"\xc9\x00\x00\x00\x0c\xff" + b"\x00" * 12,
}


@pytest.mark.parametrize("timestamp", list(TIMESTAMPS.values()), ids=list(TIMESTAMPS))
def test_check_value_refuses_msgpack_timestamps(timestamp: bytes) -> None:
    """Not a value of ours (PROTOCOL.md 9.4): the server must not store one, in any form."""
    decode_or_reject(timestamp)
    with pytest.raises(ValueDecodeError):
        check_value(timestamp)


@pytest.mark.parametrize(
    "wrap",
    [
        lambda blob: b"\x92\x01" + blob,  # [1, ts]
        lambda blob: b"\x81\xa1k" + blob,  # {"k": ts}
        lambda blob: b"\x81" + blob + b"\x01",  # {ts: 1}
        lambda blob: ext(ExtCode.TUPLE, b"\x91" + blob),  # (ts,)
        lambda blob: ext(ExtCode.FROZENSET, b"\x91" + blob),  # frozenset({ts})
        lambda blob: ext(ExtCode.TUPLE, b"\x91" + ext(ExtCode.SET, b"\x91" + blob)),  # ({ts},)
    ],
    ids=["in-list", "dict-value", "dict-key", "in-tuple", "in-frozenset", "in-set-in-tuple"],
)
def test_check_value_refuses_nested_msgpack_timestamps(wrap: Any) -> None:
    blob = wrap(TIMESTAMPS["fixext 4"])
    decode_or_reject(blob)
    with pytest.raises(ValueDecodeError):
        check_value(blob)


@pytest.mark.parametrize(
    "value",
    [
        None,
        1,
        -1,
        2**64,
        -(2**64),
        "\xff",
        (1, 2),
        {"a": [b"\xff\xff"]},
        [*TIMESTAMPS.values()],
        {b"\xd6\xff\x00\x00\x00\x00": bytearray(b"\xc7\x04\xff")},
        dt.datetime(2024, 1, 1, tzinfo=dt.timezone.utc),
        (Decimal("-1"), frozenset({-1})),
    ],
    ids=repr,
)
def test_check_value_accepts_values(value: Any) -> None:
    """Including bytes that merely look like a timestamp extension."""
    blob = encode_value(value)
    check_value(blob)
    assert_same(value, decode_value(blob))


@pytest.mark.parametrize("data", list(HOSTILE.values()), ids=list(HOSTILE))
def test_check_value_refuses_hostile_bytes(data: bytes) -> None:
    with pytest.raises(ValueDecodeError):
        check_value(data)


@pytest.mark.parametrize(
    "number",
    [
        2**64,
        -(2**64),
        2**64 - 1 + 2**64,
        -(2**71),
        -(2**71) - 1,
        2**71,
        -(2**63) - 1,
        2**1000,
        -(2**1000),
    ],
)
def test_bigint_payload_has_minimal_length(number: int) -> None:
    """PROTOCOL.md 9.4: ((n if n >= 0 else ~n).bit_length() // 8) + 1 bytes."""
    ext_value = msgpack.unpackb(encode_value(number), raw=False)
    assert ext_value.code == ExtCode.BIGINT
    length = (number if number >= 0 else ~number).bit_length() // 8 + 1
    assert ext_value.data == number.to_bytes(length, "big", signed=True)


# ----------------------------------------------------------------------------- deep nesting
#
# Each extension level is decoded by a nested msgpack.unpackb call, whose C frame is large:
# a few hundred levels can exhaust the C stack and kill the process, so these run isolated.

ISOLATED_PRELUDE = """
import msgpack
from aionamespace.protocol.codec import MAX_DEPTH, ValueDecodeError, decode_value, encode_value

def nest_tuples(depth, leaf=0):
    value = leaf
    for _ in range(depth):
        value = (value,)
    return value

def ext_tuples(depth):
    # A tuple is an array led by the zero-length TUPLE marker (ext 2): [marker, item].
    blob = msgpack.packb(0)
    for _ in range(depth):
        blob = b"\\x92" + msgpack.packb(msgpack.ExtType(2, b"")) + blob
    return blob

def outcome(call):
    try:
        result = call()
    except Exception as exc:
        return type(exc).__name__
    return result
"""


def run_isolated(body: str) -> str:
    """Run ``body`` after the prelude in a fresh interpreter; return what it printed."""
    code = ISOLATED_PRELUDE + textwrap.dedent(body)
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=50, check=False
    )
    assert proc.returncode == 0, (
        f"the interpreter died (exit status {proc.returncode}); stderr: {proc.stderr[-2000:]}"
    )
    return proc.stdout.strip()


@pytest.mark.parametrize("depth", [MAX_DEPTH + 1, 4 * MAX_DEPTH])
def test_decode_ext_tuples_nested_beyond_max_depth_raises(depth: int) -> None:
    """decode_value stays liberal (and alive); check_value, which the server runs, refuses."""
    printed = run_isolated(f"""
        from aionamespace.protocol.values import check_value
        decoded = outcome(lambda: type(decode_value(ext_tuples({depth}))).__name__)
        checked = outcome(lambda: check_value(ext_tuples({depth})))
        print(decoded in ("tuple", "ValueDecodeError"), checked)
    """)
    assert printed == "True ValueDecodeError"


def test_decode_ext_tuples_nested_within_max_depth() -> None:
    """Within MAX_DEPTH the value comes back (and the process survives)."""
    printed = run_isolated("""
        depth = MAX_DEPTH - 1
        print(outcome(lambda: decode_value(ext_tuples(depth)) == nest_tuples(depth)))
    """)
    assert printed == "True"


def test_decode_ext_tuples_nested_within_max_depth_on_a_small_thread_stack() -> None:
    """A server thread with a 1 MiB stack (macOS gives 512 KiB) must survive 64 levels."""
    printed = run_isolated("""
        import threading
        threading.stack_size(1024 * 1024)
        results = []
        thread = threading.Thread(
            target=lambda: results.append(outcome(lambda: decode_value(ext_tuples(64)) is not None))
        )
        thread.start()
        thread.join()
        print(results[0])
    """)
    assert printed in {"True", "ValueDecodeError"}


def test_tuples_nested_to_max_depth_round_trip() -> None:
    printed = run_isolated("""
        value = nest_tuples(MAX_DEPTH)
        print(outcome(lambda: decode_value(encode_value(value)) == value))
    """)
    assert printed == "True"


def test_encoder_and_decoder_agree_on_the_depth_limit() -> None:
    """What encode_value accepts, decode_value must give back (257 tuples, innermost empty)."""
    printed = run_isolated("""
        value = nest_tuples(MAX_DEPTH, ())
        def check():
            try:
                blob = encode_value(value)
            except ValueError:
                return "refused"
            return decode_value(blob) == value
        print(outcome(check))
    """)
    assert printed in {"refused", "True"}


def test_tuples_nested_deep_next_to_a_bytearray_are_refused() -> None:
    printed = run_isolated("""
        result = outcome(lambda: encode_value([bytearray(b"x"), nest_tuples(MAX_DEPTH + 50)]))
        print("encoded" if type(result) is bytes else result)
    """)
    assert printed == "ValueError"
