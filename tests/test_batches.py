"""The shortcuts that make `_update` and `_snapshot` of many names cheap say what the long way says.

Each shortcut is held against the general path it skips: one-byte values looked up instead of
decoded, whole fixed-size scalars accepted by length instead of decoded, whole strings, binaries
and extensions checked without the unpacker, short values checked without scanning their
items' types, names checked by loops in C, values encoded with one packer lookup, and the
store's history kept as the mappings it was given. Whatever a shortcut cannot decide goes the
long way, with the long way's message.
"""

from __future__ import annotations

import datetime as dt
import decimal
import enum
import os
import uuid
from typing import Any

import msgpack
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from aionamespace import Limits, Namespace, ServerThread
from aionamespace.protocol.codec import (
    SCALAR_LENGTHS,
    ValueDecodeError,
    decode_value,
    decode_values,
    encode_value,
    encode_values,
)
from aionamespace.protocol.connection import ClientConnection
from aionamespace.protocol.frames import LARGE_VALUE_BYTES
from aionamespace.protocol.ops import check_args, check_names
from aionamespace.protocol.values import check_unpacked, check_value
from aionamespace.server.stores import Change, MemoryStore
from dispatch_rig import ONE, TWO, Rig, invalidation
from memory_peer import unpack_all


@pytest.mark.parametrize("byte", range(256))
def test_one_byte_values_are_what_msgpack_decodes(byte: int) -> None:
    data = bytes([byte])
    try:
        expected: Any = msgpack.unpackb(data)
    except Exception:  # an incomplete or reserved byte: the long way refuses it
        with pytest.raises(ValueDecodeError):
            decode_value(data)
        return
    value = decode_value(data)
    assert value == expected
    assert type(value) is type(expected)
    assert decode_value(bytearray(data)) == expected  # what the large-value path hands over


@given(st.binary(min_size=1, max_size=10))
def test_the_scalar_shortcut_accepts_exactly_the_whole_scalars(data: bytes) -> None:
    fixed = len(data) == SCALAR_LENGTHS[data[0]]
    try:
        msgpack.unpackb(data)  # ExtraData for trailing bytes, errors for short ones
        decodes = True
    except Exception:
        decodes = False
    if fixed:  # the shortcut said yes: the long way must agree it is a whole int/float/nil/bool
        assert decodes
        assert type(msgpack.unpackb(data)) in (int, float, bool, type(None))
        check_value(data)
    elif SCALAR_LENGTHS[data[0]]:  # a scalar's first byte, the wrong length: refused
        with pytest.raises(ValueDecodeError):
            check_value(data)


@pytest.mark.parametrize(
    "value",
    [0, -32, 127, 128, -33, 2**63 - 1, -(2**63), 2**64 - 1, 1.5, float("inf"), None, True, False],
)
def test_every_fixed_size_scalar_takes_the_shortcut(value: Any) -> None:
    data = encode_value(value)
    assert len(data) == SCALAR_LENGTHS[data[0]]
    assert decode_value(data) == value


def verdict(check: Any, *args: Any) -> bool:
    try:
        check(*args)
    except ValueDecodeError:
        return False
    return True


@st.composite
def near_values(draw: st.DrawFn) -> bytes:
    """Encoded values, and their bytes changed a little (shortcuts live on the edges)."""
    blob = bytearray(draw(st.sampled_from(SHORTCUT_SAMPLES)))
    for _ in range(draw(st.integers(0, 2))):
        at = draw(st.integers(0, len(blob)))
        if draw(st.booleans()) and at < len(blob):
            blob[at] = draw(st.integers(0, 255))
        else:
            blob[at:at] = bytes([draw(st.integers(0, 255))])
    return bytes(blob)


SHORTCUT_SAMPLES = [
    encode_value(value)
    for value in [
        "text",
        "é" * 40,
        "x" * 300,
        b"\xff" * 70_000,
        bytearray(b"ab"),
        2**70,
        -(2**64),
        1.5j,
        dt.datetime(2024, 1, 1, tzinfo=dt.timezone.utc),
        dt.date(2024, 1, 1),
        dt.time(1, 2, 3, 4),
        dt.timedelta(1, 2, 3),
        decimal.Decimal("-1.5E+7"),
        uuid.UUID(int=7),
        [1, (2, 3), {4}],
        {"a": frozenset({1})},
    ]
] + [b"\xd6\xff\x00\x00\x00\x00", b"\xc7\x00\x02", b"\xc8\x00\x00\x03", b"\xa2\xff\xfe"]


@settings(max_examples=600, deadline=None)
@given(near_values())
@example(b"\xd9\x05abc")  # a str 8 whose length runs past the end
@example(b"\xc7\x04\x05ab")  # an ext 8 likewise
def test_whole_scalars_and_short_values_are_judged_as_the_long_way_judges_them(data: bytes) -> None:
    """check_value takes a whole str, bin or extension without the unpacker, and a short value
    without scanning item types; the long way scans everything."""
    assert verdict(check_value, data) == verdict(check_unpacked, data, 256, 8, True)


VALUES: dict[str, Any] = {
    "small": 7,
    "negative": -3,
    "none": None,
    "true": True,
    "big": 2**70,
    "float": 0.1,
    "text": "é" * 40,
    "blob": os.urandom(100),
    "tuple": (1, (2, 3)),
    "set": {1, 2},
    "when": dt.datetime(2026, 11, 25, 12, 0, tzinfo=dt.timezone.utc),
    "nested": [{"a": b"x"}],
    "array": bytearray(b"ab"),
}


def test_encode_values_is_encode_value_of_each() -> None:
    encoded = encode_values(VALUES)
    assert encoded == {name: encode_value(value) for name, value in VALUES.items()}
    assert list(encoded) == list(VALUES)


class IntFlag(enum.IntEnum):
    A = 1


@pytest.mark.parametrize(
    "values",
    [
        [0, 1, -32, 127, None],  # the one-byte table
        [1, True],  # equal to 1, packed as true
        [1, 1.0],  # equal to 1, packed as a float
        [1, 128],  # no longer one byte
        [1, -33],
        [5, 2**61 + 4],  # (hash(2**61 + 4) == hash(5))
        [1, IntFlag.A],  # an int of a subclass: refused as encode_value refuses it
    ],
)
def test_encode_values_of_small_ints_is_encode_value_of_each(values: list[Any]) -> None:
    batch = {f"n{i}": value for i, value in enumerate(values)}
    try:
        expected = {name: encode_value(value) for name, value in batch.items()}
    except TypeError:
        with pytest.raises(TypeError):
            encode_values(batch)
        return
    encoded = encode_values(batch)
    assert list(encoded.items()) == list(expected.items())


def test_encode_values_names_an_unshareable_type() -> None:
    with pytest.raises(TypeError, match="object"):
        encode_values({"a": 1, "b": object()})
    assert encode_values({"a": 1}) == {"a": encode_value(1)}  # the packer was left clean


def test_decode_values_is_decode_value_of_each() -> None:
    blobs = encode_values(VALUES)
    decoded = decode_values(blobs)
    assert decoded == VALUES
    assert {name: type(value) for name, value in decoded.items()} == {
        name: type(value) for name, value in VALUES.items()
    }


@pytest.mark.parametrize(
    ("names", "problem"),
    [
        (["a", 5], "names must be str, not int"),
        (["a", ""], "names must not be empty"),
        (["a", "n" * 300], "name longer than 256 characters"),
        ([b"a"], "names must be str, not bytes"),
    ],
)
def test_many_names_are_checked_with_the_single_name_messages(
    names: list[Any], problem: str
) -> None:
    limits = Limits()
    assert check_names(limits, "snapshot", ("k", names)) == problem
    assert check_args(limits, "snapshot", ("k", names)) == problem
    values = {name: encode_value(1) for name in names}
    assert check_names(limits, "update", ("k", values)) == problem
    assert check_args(limits, "update", ("k", values)) == problem


def test_a_batch_of_values_is_checked_like_one_value() -> None:
    limits = Limits()
    good = {f"n{i}": encode_value(i) for i in range(100)}
    assert check_args(limits, "update", ("k", good)) is None
    for bad, problem in [
        (b"\xcb\x00", "malformed value"),
        (b"", "malformed value"),
        ("text", "values travel as bin"),
        (b"\x01\x02", "malformed value"),
    ]:
        batch = {**good, "bad": bad}
        found = check_args(limits, "update", ("k", batch))
        assert found is not None
        assert problem in found


@pytest.mark.parametrize(
    "blobs",
    [
        [b"", b"\x01\x02"],  # as many bytes as values, but not one each
        [b"\x01", b"\xc1"],  # a byte msgpack never uses
        [b"\x01", b"\xcc"],  # a uint8 without its byte
        [b"\x01", b"\xd9"],  # a str8 without its length
        [b"\x01", bytearray(b"\x02")],  # bin, not bytes: never from the decoder, refused
    ],
)
def test_a_batch_of_one_byte_values_is_refused_for_any_bad_one(blobs: list[Any]) -> None:
    values = {f"n{i}": blob for i, blob in enumerate(blobs)}
    assert check_args(Limits(), "update", ("k", values)) is not None


@given(st.lists(st.binary(min_size=0, max_size=3), max_size=8))
@example([b"", b"\x01\x02"])
@example([b"\x90", b"\xa0", b"\x80", b"\xc0", b"\xc2", b"\xc3", b"\xe0", b"\x7f"])
def test_a_batch_is_accepted_exactly_when_each_value_is(blobs: list[bytes]) -> None:
    values = {f"n{i}": blob for i, blob in enumerate(blobs)}
    alone = [check_args(Limits(), "set", ("k", "n", blob)) for blob in blobs]
    batch = check_args(Limits(), "update", ("k", values))
    assert (batch is None) == all(problem is None for problem in alone)


def test_the_history_replays_what_each_revision_changed() -> None:
    store = MemoryStore()
    seen: list[tuple[str, int, dict[str, bytes | None]]] = []
    store.on_commit = lambda key, revision, changes: seen.append((key, revision, dict(changes)))
    one, two = encode_value(1), encode_value(2)
    store.set("k", "a", one)
    store.update("k", {"b": one, "c": two})
    store.delete("k", "a")
    assert store.update("k", {}) == 3  # nothing: no revision
    assert seen == [("k", 1, {"a": one}), ("k", 2, {"b": one, "c": two}), ("k", 3, {"a": None})]
    assert store.history("k", 0) == [
        Change("k", 1, "a", one),
        Change("k", 2, "b", one),
        Change("k", 2, "c", two),
        Change("k", 3, "a", None),
    ]
    assert store.history("k", 2) == [Change("k", 3, "a", None)]
    assert store.snapshot("k", None) == (3, {"b": one, "c": two})


def test_private_names_in_a_batch_are_refused_before_sending(server: ServerThread) -> None:
    ns = Namespace(server.address, "batch")
    ns._update(**{f"n{i}": i for i in range(100)})
    with pytest.raises(ValueError, match="'_secret' starts with '_'"):
        ns._update(a=1, _secret=2)
    with pytest.raises(ValueError, match="'_secret' starts with '_'"):
        ns._snapshot("n1", "_secret")
    with pytest.raises(ValueError, match="'_first' starts with '_'"):
        ns._update(_first=1, b=2)
    with pytest.raises(ValueError, match="names must be str, not int"):
        ns._snapshot("n1", 5)  # type: ignore[arg-type]
    snapshot = ns._snapshot(*(f"n{i}" for i in range(100)))
    assert snapshot == {f"n{i}": i for i in range(100)}
    assert snapshot.revision == 1
    assert not hasattr(ns, "a")  # the refused update changed nothing
    ns._update(**{"a\0_b": 1})  # "_" after a NUL, inside a name: shared all the same
    assert ns._snapshot("a\0_b") == {"a\0_b": 1}


def test_names_found_valid_once_are_still_checked_against_each_limit() -> None:
    names = {f"name{i:04d}": encode_value(i) for i in range(100)}  # 8 characters each
    assert check_args(Limits(), "update", ("k", names)) is None  # now remembered as valid
    assert check_args(Limits(), "update", ("k", names)) is None
    assert check_args(Limits(max_name_length=7), "update", ("k", names)) == (
        "name longer than 7 characters"
    )
    assert check_names(Limits(max_name_length=8), "snapshot", ("k", list(names))) is None
    assert check_names(Limits(), "snapshot", ("k", [*names, ["unhashable"]])) == (
        "names must be str, not list"
    )


def test_the_memory_of_valid_names_is_bounded() -> None:
    from aionamespace.protocol import ops as _ops

    limits = Limits(max_name_length=200)
    for batch in range(30):
        check_names(limits, "snapshot", ("k", [f"b{batch}-{i}" for i in range(5_000)]))
    assert len(_ops._VALID_NAMES[200]) <= _ops._MAX_VALID_NAMES + 5_000


@given(st.integers(min_value=1, max_value=2**64 - 2))
@example(0x7F)
@example(0x80)
@example(0xFF)
@example(0x100)
@example(0xFFFF)
@example(0x10000)
@example(0xFFFFFFFF)
@example(0x100000000)
def test_a_get_is_the_frame_the_packer_makes(request_id: int) -> None:
    client = ClientConnection()
    client._next_id = request_id
    for _ in range(2):  # the pair's packed tail made, then reused
        sent_id, frame = client.send_get("costs", "x")
        assert frame == msgpack.packb([sent_id, "get", "costs", "x"])
    assert sent_id == request_id + 1


def test_a_get_of_an_invalid_name_is_refused_every_time() -> None:
    client = ClientConnection(Limits(max_name_length=8))
    for _ in range(2):  # nothing kept of a refused pair
        with pytest.raises(ValueError, match="longer than 8"):
            client.send_get("costs", "n" * 9)
        with pytest.raises(ValueError, match="empty"):
            client.send_get("", "x")
    assert client.send_get("costs", "n" * 8)[0] == 1  # no id was spent on the refusals


_SET_VALUES = st.one_of(
    st.builds(
        encode_value,
        st.one_of(
            st.none(),
            st.booleans(),
            st.integers(min_value=-(2**70), max_value=2**70),
            st.floats(allow_nan=False),
            st.text(max_size=40),
            st.lists(st.integers(), max_size=3),
            st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
        ),
    ),
    st.sampled_from([b"", b"\xc1", b"\xcc", b"\xcd\x01", b"\xd4\x00", b"\x91", b"\xc0\xc0"]),
    st.sampled_from([None, 1, "x", [b"\x01"]]),
)


@settings(max_examples=300, deadline=None)
@given(
    request_id=st.one_of(st.integers(min_value=1, max_value=2**64 - 1), st.sampled_from([0, -1])),
    key=st.sampled_from(["k", "unseen-key", "", "n" * 300, 7]),
    name=st.sampled_from(["x", "unseen", "", "n" * 300, None]),
    value=_SET_VALUES,
)
def test_a_set_checked_on_the_short_path_is_the_long_paths_request(
    request_id: Any, key: Any, name: Any, value: Any
) -> None:
    """``receive_data`` takes a get, or a set to a whole scalar, of names seen valid without
    the op's checks; whatever the frame, it gives what the long way (``_check_request``)
    gives (a get's frame made of the same id, key and name)."""
    for frame in ([request_id, "set", key, name, value], [request_id, "get", key, name]):
        rig = Rig()
        peer = rig.connect()
        rig.send(peer, [1, "set", "k", "x", ONE])  # "k" and "x" seen valid
        (event,) = peer.protocol.receive_data(msgpack.packb(frame))
        expected: Any
        try:
            expected = rig.connect().protocol._check_request(frame)
        except Exception as exc:  # refused: the frame ends the connection
            expected = exc
        if isinstance(expected, Exception):
            assert type(event).__name__ == "Refusal"
            assert type(event.error) is type(expected)
        else:
            assert event == expected


def test_the_packed_gets_a_connection_keeps_are_bounded() -> None:
    from aionamespace.protocol.connection import MAX_GET_TAILS

    client = ClientConnection()
    for i in range(3 * MAX_GET_TAILS):
        _, frame = client.send_get("costs", f"n{i}")
        assert msgpack.unpackb(frame)[3] == f"n{i}"
    assert len(client._get_tails) <= MAX_GET_TAILS


def test_a_batch_of_gets_is_answered_as_each_get_alone_would_be() -> None:
    """The dispatcher's shortcut for a batch's plain gets against ``answer``, the long way:
    small, large and missing values, an anonymous namespace, and gets after a ``track``
    request of the same batch (whose reads are then tracked: the long way's business)."""
    rig = Rig()
    peer = rig.connect()
    large = encode_value(b"v" * LARGE_VALUE_BYTES)
    rig.send(peer, [1, "update", "k", {"small": ONE, "large": large}])
    anonymous = "#" + "5e" * 16
    rig.send(peer, [2, "open", anonymous, {"a": ONE}])
    gets = [("k", "small"), ("k", "large"), ("k", "missing"), ("gone", "x"), (anonymous, "a")]
    requests = [[10 + i, "get", key, name] for i, (key, name) in enumerate(gets)]
    requests += [[20, "track", True]] + [[30 + i, "get", k, n] for i, (k, n) in enumerate(gets)]
    batch = rig.send(peer, *requests)

    alone = rig.connect()
    expected = []
    for request_id, op, *args in requests:
        answer = rig.dispatcher.answer(alone, request_id, op, tuple(args))
        expected.append(b"".join(answer) if type(answer) is tuple else answer)
    assert batch == unpack_all(b"".join(expected))
    assert [frame[1] for frame in batch] == [0, 0, 1, 1, 0, 0, 0, 0, 1, 1, 0]
    rig.send(rig.connect(), [3, "set", "k", "small", TWO])  # tracked after the track only:
    assert peer.writes == [msgpack.packb(invalidation("k", "small"))]  # invalidated once
