"""What the server's check makes of a value's structure (PROTOCOL.md 9.3): sets, frozensets and
maps hold pairwise unequal, hashable items (keys), few of them sharing a hash; markers lead
arrays; and the check itself costs linear time whatever the bytes.

Equality is Python's: a set of two items is refused exactly when Python would collapse the two
(``len({a, b}) == 1``), for items decoded separately (so two NaNs are two items).
"""

from __future__ import annotations

import datetime as dt
import math
import time
import uuid
from decimal import Decimal
from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aionamespace import Limits
from aionamespace.protocol.codec import ExtCode, ValueDecodeError, decode_value, encode_value
from aionamespace.protocol.ops import check_args
from aionamespace.protocol.values import MAX_INT_BITS_NEXT_TO_A_DECIMAL, check_value
from test_codec import hashables

P = 2**61 - 1  # CPython hashes an integer n to n mod P (and -1 to -2)
MARKER = {code: bytes([0xC7, 0, code]) for code in (ExtCode.TUPLE, ExtCode.SET, ExtCode.FROZENSET)}


def array(*encoded: bytes) -> bytes:
    """An encoded array of already encoded items (any count)."""
    count = len(encoded)
    if count < 16:
        header = bytes([0x90 | count])
    elif count < 2**16:
        header = b"\xdc" + count.to_bytes(2, "big")
    else:
        header = b"\xdd" + count.to_bytes(4, "big")
    return header + b"".join(encoded)


def marked(code: int, *encoded: bytes) -> bytes:
    return array(MARKER[code], *encoded)


def mapping(*pairs: tuple[bytes, bytes]) -> bytes:
    assert len(pairs) < 16
    return bytes([0x80 | len(pairs)]) + b"".join(key + value for key, value in pairs)


def shapes(first: Any, second: Any) -> dict[str, bytes]:
    """Two items side by side in every place that wants them distinct."""
    one, two = encode_value(first), encode_value(second)
    return {
        "set": marked(ExtCode.SET, one, two),
        "frozenset in a list": array(marked(ExtCode.FROZENSET, one, two)),
        "map keys": mapping((one, b"\x01"), (two, b"\x02")),
        "set in a frozenset key": mapping((marked(ExtCode.FROZENSET, one, two), b"\xc0")),
    }


def aware(hour: int, offset_hours: float) -> dt.datetime:
    return dt.datetime(2024, 5, 17, hour, tzinfo=dt.timezone(dt.timedelta(hours=offset_hours)))


PAIRS = [
    (1, 1.0),
    (1, True),
    (0, False),
    (0, -0.0),
    (0.0, -0.0),
    (1, Decimal("1.00")),
    (1, complex(1, 0)),
    (0, complex(0, -0.0)),
    (0.5, Decimal("0.5")),
    (0.1, Decimal("0.1")),  # unequal: the float is not exactly 0.1
    (2**64, Decimal(2**64)),
    (2**64, float(2**64)),
    (Decimal("-0"), 0),
    (Decimal("Infinity"), math.inf),
    (Decimal("1E+3"), 1000),
    (math.nan, math.nan),  # decoded apart: two NaNs, never equal
    (Decimal("NaN"), Decimal("NaN")),
    (complex(math.nan, 0), complex(math.nan, 0)),
    (aware(13, 2), aware(11, 0)),  # the same instant
    (aware(13, 2), aware(13, 0)),
    (dt.datetime(2024, 5, 17, 11), aware(11, 0)),  # naive and aware: never equal
    (dt.date(2024, 5, 17), dt.datetime(2024, 5, 17)),
    (dt.time(12, tzinfo=dt.timezone(dt.timedelta(hours=1))), dt.time(11, tzinfo=dt.timezone.utc)),
    (dt.time(0, tzinfo=dt.timezone(dt.timedelta(hours=1))), dt.time(23, tzinfo=dt.timezone.utc)),
    (dt.time(11), dt.time(11, tzinfo=dt.timezone.utc)),
    (dt.timedelta(days=1), dt.timedelta(hours=24)),
    (frozenset({1, 2}), frozenset({2.0, 1})),
    (frozenset(), frozenset()),
    ((1, "a"), (1.0, "a")),
    ((), ()),
    ((1, 2), (2, 1)),
    ("a", b"a"),  # same hash in CPython, never equal
    ("a", "a"),
    (b"", b""),
    (None, None),
    (uuid.UUID(int=5), uuid.UUID(int=5)),
    (uuid.UUID(int=5), 5),
    (-1, -2),  # the same hash, unequal
]


@pytest.mark.parametrize(("first", "second"), PAIRS, ids=repr)
def test_items_are_distinct_exactly_when_python_keeps_both(first: Any, second: Any) -> None:
    one, two = decode_value(encode_value(first)), decode_value(encode_value(second))
    python_collapses = len({one, two}) == 1
    for where, blob in shapes(first, second).items():
        if python_collapses:
            with pytest.raises(ValueDecodeError, match="duplicate"):
                check_value(blob)
        else:
            check_value(blob)
        assert decode_value(blob) is not None, where  # the decoder collapses, as Python does


@settings(max_examples=300, deadline=None)
@given(st.lists(hashables, max_size=6))
def test_random_sets_are_refused_exactly_when_python_would_collapse_them(items: list[Any]) -> None:
    decoded = [decode_value(encode_value(item)) for item in items]  # fresh objects: NaNs apart
    blob = marked(ExtCode.SET, *map(encode_value, items))
    if len(set(decoded)) == len(decoded):
        check_value(blob)
    else:  # (equal items holding a long int and a Decimal may be refused for that instead)
        with pytest.raises(ValueDecodeError, match=r"duplicate|shares its hash"):
            check_value(blob)


@pytest.mark.parametrize(
    ("blob", "problem"),
    [
        (marked(ExtCode.SET, array(b"\x01")), "a set item must be hashable, not a list"),
        (marked(ExtCode.SET, mapping()), "not a map"),
        (marked(ExtCode.SET, marked(ExtCode.SET)), "not a set"),
        (marked(ExtCode.FROZENSET, b"\xd5\x05ab"), "not a bytearray"),
        (mapping((marked(ExtCode.TUPLE, b"\x01", array()), b"\xc0")), "tuple holding a list"),
        (marked(ExtCode.SET, b"\xd6\x0bsNaN"), "signaling NaN"),
        (mapping((b"\xa1a", b"\x01"), (b"\xa1a", b"\x02")), "duplicate map key: 'a'"),
        (marked(ExtCode.SET, b"\xc4\x01x", b"\xc4\x01x"), "duplicate set item: b'x'"),
    ],
    ids=repr,
)
def test_what_cannot_be_a_key_is_named(blob: bytes, problem: str) -> None:
    with pytest.raises(ValueDecodeError, match=problem):
        check_value(blob)


# ---------------------------------------------------------------------------- shared hashes


def colliding(count: int) -> list[bytes]:
    """``count`` distinct integers that all hash to 0 (multiples of 2**61 - 1)."""
    return [encode_value(k * P) for k in range(count)]


@pytest.mark.parametrize("limit", [1, 8, 20])
def test_at_most_max_keys_per_hash_items_share_a_hash(limit: int) -> None:
    check_value(marked(ExtCode.SET, *colliding(limit)), max_keys_per_hash=limit)
    with pytest.raises(
        ValueDecodeError, match=f"share one hash value.*max_keys_per_hash \\({limit}\\)"
    ):
        check_value(marked(ExtCode.SET, *colliding(limit + 1)), max_keys_per_hash=limit)
    keys = [(key, b"\xc0") for key in colliding(limit + 1)]
    with pytest.raises(ValueDecodeError, match="map keys share"):
        check_value(
            b"\xde" + len(keys).to_bytes(2, "big") + b"".join(k + v for k, v in keys),
            max_keys_per_hash=limit,
        )


def test_the_server_takes_the_bound_from_its_limits() -> None:
    nine = encode_value(frozenset(k * P for k in range(9)))  # Python builds this slowly, fine
    assert check_args(Limits(), "set", ("k", "n", nine)) is not None
    assert check_args(Limits(max_keys_per_hash=9), "set", ("k", "n", nine)) is None
    assert check_args(Limits(max_keys_per_hash=9), "append", ("k", "n", [nine])) is None
    assert "max_keys_per_hash (8)" in (check_args(Limits(), "append", ("k", "n", [nine])) or "")


def test_python_values_with_few_shared_hashes_pass() -> None:
    """-1 and -2 hash alike in CPython; a few such pairs are ordinary values."""
    value = {-1, -2, 2**61 - 2, -(2**61) + 1, 1.5, "x", (1, 2)}
    check_value(encode_value(value))
    check_value(encode_value({key: None for key in value}))


def test_a_flood_of_equal_hashes_is_refused_in_linear_time() -> None:
    """The set that froze the old check for seconds (items built one by one would take
    quadratic time) is refused at once; so are its map and frozenset forms."""
    count = 30_000
    items = [encode_value(k * P) for k in range(1, count)]  # BIGINTs past 2**64
    for blob in (
        marked(ExtCode.SET, *items),
        array(marked(ExtCode.FROZENSET, *items)),
        b"\xdf" + count.to_bytes(4, "big") + b"".join(i + b"\xc0" for i in [*items, b"\x00"]),
    ):
        started = time.monotonic()
        with pytest.raises(ValueDecodeError, match="share one hash value"):
            check_value(blob)
        assert time.monotonic() - started < 2.0  # generous: the old check took many times that


def big_int_sharing_a_hash_with(number: int, bits: int) -> int:
    """An integer of ``bits`` bits that CPython hashes like ``number``."""
    base = 1 << (bits - 1)
    big = base + (number - base) % P
    assert big.bit_length() == bits
    return big


def test_a_big_integer_and_a_decimal_may_not_share_a_hash() -> None:
    """Python compares an int with a Decimal by converting the int to decimal, in quadratic
    time: the check would stall on such a pair, and so would every reader."""
    for bits in (MAX_INT_BITS_NEXT_TO_A_DECIMAL + 1, 3_000_000):
        big = big_int_sharing_a_hash_with(7, bits)
        assert hash(big) == hash(7) == hash(Decimal(7))
        started = time.monotonic()
        for pair in [
            (big, Decimal(7)),
            ((big,), (Decimal(7),)),
            (frozenset({big}), frozenset({Decimal(7)})),
        ]:
            one, two = map(encode_value, pair)
            with pytest.raises(ValueDecodeError, match="more than 1024 bits shares its hash"):
                check_value(marked(ExtCode.SET, one, two))
            with pytest.raises(ValueDecodeError, match="holding a DECIMAL"):
                check_value(mapping((two, b"\xc0"), (one, b"\xc0")))
        assert time.monotonic() - started < 2.0  # generous: the old check took many times that
        check_value(encode_value({big, 7, 7.5, (8, Decimal(7))}))  # sharing, with no Decimal
        check_value(encode_value({big, Decimal(8)}))  # a Decimal with its own hash
        check_value(encode_value({(big, Decimal(7)), 7}))  # both in one item
        with pytest.raises(ValueDecodeError, match="duplicate"):
            check_value(marked(ExtCode.SET, encode_value(big), encode_value(big)))
    fits = big_int_sharing_a_hash_with(7, MAX_INT_BITS_NEXT_TO_A_DECIMAL)
    check_value(marked(ExtCode.SET, encode_value(fits), encode_value(Decimal(7))))


# ---------------------------------------------------------------------------- markers, depth


@pytest.mark.parametrize(
    "marker",
    [b"\xc7\x00\x03", b"\xc8\x00\x00\x03", b"\xc9\x00\x00\x00\x00\x02"],
    ids=["ext 8", "ext 16", "ext 32"],
)
@pytest.mark.parametrize(
    "place",
    [
        lambda m: b"\x92\x01" + m,  # [1, marker]
        lambda m: b"\x81\x01" + m,  # {1: marker}
        lambda m: b"\x81" + m + b"\x01",  # {marker: 1}
        lambda m: b"\x93" + m + b"\x01" + m,  # (1, marker)
        lambda m: b"\xdc\x01\x2c" + b"\x01" * 299 + m,  # a long list
    ],
    ids=["list item", "map value", "map key", "tuple item", "long list"],
)
def test_a_marker_anywhere_but_first_is_refused(marker: bytes, place: Any) -> None:
    """Once accepted in the ext 16 and ext 32 forms (the check looked for ``c7 00`` only),
    and stored: readers then got a marker object inside a list."""
    with pytest.raises(ValueDecodeError, match="first element of an array"):
        check_value(place(marker))


@pytest.mark.parametrize(
    "blob",
    [b"\xc7\x00\x02", b"\xc8\x00\x00\x03", b"\xd4\x04\x00"],
    ids=["marker alone", "ext 16 marker alone", "marker with a payload"],
)
def test_a_marker_is_not_a_value(blob: bytes) -> None:
    with pytest.raises(ValueDecodeError):
        check_value(blob)


def nested(depth: int, leaf: bytes = b"\xc0", wrap: bytes = b"\x91") -> bytes:
    return wrap * depth + leaf


@pytest.mark.parametrize("wrap", [b"\x91", b"\x81\xc0", b"\x92" + MARKER[ExtCode.TUPLE]])
def test_depth_is_counted_by_containers(wrap: bytes) -> None:
    check_value(nested(256, wrap=wrap))
    with pytest.raises(ValueDecodeError, match="nested deeper than 256"):
        check_value(nested(257, wrap=wrap))
    check_value(nested(255, wrap=wrap), max_depth=255)
    with pytest.raises(ValueDecodeError, match="nested deeper"):
        check_value(nested(256, wrap=wrap), max_depth=255)


def test_depth_counts_map_keys() -> None:
    key = nested(255, wrap=b"\x92" + MARKER[ExtCode.TUPLE])  # 255 tuples, one in the other
    check_value(b"\x81" + key + b"\xc0")  # under a map: 256 levels
    with pytest.raises(ValueDecodeError, match="nested deeper"):
        check_value(b"\x81\xc0\x81" + key + b"\xc0")


def test_every_encoded_value_passes() -> None:
    for value in (
        {frozenset({1, (2, frozenset({3}))}): [{"a": {1.5: {None}}}]},
        [bytearray(b"x"), {(): set()}, {b"k": dt.time(1, tzinfo=dt.timezone.utc)}],
        {uuid.UUID(int=1): Decimal("sNaN"), Decimal("NaN"): 1, math.nan: {math.nan, 2}},
        {2**64 * k: k for k in range(-100, 100)},
    ):
        check_value(encode_value(value))


def test_tuples_keep_their_items_apart_from_the_list_token() -> None:
    blob = msgpack.packb([msgpack.ExtType(ExtCode.SET, b""), [msgpack.ExtType(2, b""), 1, [2]]])
    with pytest.raises(ValueDecodeError, match="tuple holding a list"):
        check_value(blob)


def test_groups_of_plain_items_sharing_hashes_are_checked_by_a_set(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Groups of at most max_keys_per_hash ints sharing a hash are valid; the check of a set of
    them used to compare each group pair by pair in Python (a 16 MiB one stalled a server for
    seconds: benchmarks/attacks). Items of one plain kind go through a set now, in C: not one
    pair is compared in Python, and a duplicate among them is still found."""
    from aionamespace.protocol import values

    compared: list[tuple[Any, Any]] = []
    real_equal = values._equal
    monkeypatch.setattr(
        values, "_equal", lambda one, other: compared.append((one, other)) or real_equal(one, other)
    )
    groups = [k * P + r for r in range(100) for k in range(1, 8)]  # 100 hashes, 7 items each
    check_value(marked(ExtCode.SET, *map(encode_value, groups)))
    assert compared == []
    with pytest.raises(ValueDecodeError, match="duplicate set item"):
        check_value(marked(ExtCode.SET, *map(encode_value, [*groups, groups[5]])))
    mixed = [*groups[:7], Decimal(3)]  # not one plain kind: compared pair by pair, as before
    check_value(marked(ExtCode.SET, *map(encode_value, mixed)))
    assert compared != []
