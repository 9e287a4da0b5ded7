"""RESP2 without I/O (redis_wire.py): commands packed as Redis reads them, replies parsed.

The reader's invariant, as h11's fuzz harness states its own: whatever bytes arrive, fed
whole or a byte at a time, it gives the replies they hold or raises RespError, never
anything else. Where hiredis is installed its reader is held to the same replies.
"""

from __future__ import annotations

from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import redis_rig
from aionamespace.server.stores.redis_calls import Update
from aionamespace.server.stores.redis_history import pack_update
from aionamespace.server.stores.redis_wire import (
    MAX_LINE_BYTES,
    ReplyError,
    RespError,
    RespReader,
    ScriptCall,
    hiredis_available,
    new_reader,
    pack,
)

#: (bytes, the replies they hold): one of every type, nested, empty and null.
REPLIES: list[tuple[bytes, list[Any]]] = [
    (b"+OK\r\n", [b"OK"]),
    (b"-ERR wrong\r\n", [ReplyError("ERR wrong")]),
    (b":0\r\n:-42\r\n:9223372036854775807\r\n", [0, -42, 2**63 - 1]),
    (b"$0\r\n\r\n$-1\r\n", [b"", None]),
    (b"$4\r\na\r\nb\r\n", [b"a\r\nb"]),
    (b"*0\r\n*-1\r\n", [[], None]),
    (
        b"*3\r\n:1\r\n*2\r\n$1\r\nx\r\n*1\r\n$-1\r\n-NOSCRIPT none\r\n",
        [[1, [b"x", [None]], ReplyError("NOSCRIPT none")]],
    ),
    (b"$3\r\n\x00\xff\r\r\n", [b"\x00\xff\r"]),
]

BAD = [
    b"?\r\n",  # no such type
    b":12a\r\n",  # not an integer
    b":\r\n",
    b"$-2\r\n",
    b"*-5\r\n",
    b"$3\r\nabcd\r\n",  # a bulk string not followed by CRLF
    b"$99999999999999999999\r\n",
    b"*1\r\n" * 9 + b":1\r\n",  # nested deeper than MAX_DEPTH
]


def replies(reader: Any, data: bytes, byte_at_a_time: bool) -> list[Any]:
    out = []
    chunks = [data[i : i + 1] for i in range(len(data))] if byte_at_a_time else [data]
    for chunk in chunks:
        reader.feed(chunk)
        while (reply := reader.gets()) is not False:
            out.append(reply)
    return out


def same(a: list[Any], b: list[Any]) -> bool:
    """Equal, an error reply equal to another of the same text."""
    if isinstance(a, ReplyError) or isinstance(b, ReplyError):
        return type(a) is type(b) and str(a) == str(b)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


READERS = ["ours", "hiredis"]


@pytest.fixture(params=READERS)
def reader(request: pytest.FixtureRequest) -> Any:
    if request.param == "hiredis":
        if not hiredis_available():
            pytest.skip("hiredis is not installed (the hiredis extra)")
        return new_reader()
    return RespReader()


@pytest.mark.parametrize("byte_at_a_time", [False, True], ids=["whole", "bytewise"])
@pytest.mark.parametrize(("data", "expected"), REPLIES)
def test_every_reply_type_is_read_whole_or_a_byte_at_a_time(
    reader: Any, data: bytes, expected: list[Any], byte_at_a_time: bool
) -> None:
    assert same(replies(reader, data, byte_at_a_time), expected)
    assert reader.gets() is False


@pytest.mark.parametrize("byte_at_a_time", [False, True], ids=["whole", "bytewise"])
@pytest.mark.parametrize("data", BAD)
def test_bytes_that_are_not_resp2_raise_resp_error(data: bytes, byte_at_a_time: bool) -> None:
    with pytest.raises(RespError):
        replies(RespReader(max_depth=8), data, byte_at_a_time)


def test_the_readers_bounds_are_kept() -> None:
    with pytest.raises(RespError, match="bulk string of 11 bytes"):
        replies(RespReader(max_bulk_bytes=10), b"$11\r\n", False)
    with pytest.raises(RespError, match="longer than"):
        replies(RespReader(), b"+" + b"x" * (MAX_LINE_BYTES + 2), False)
    reader = RespReader(max_bulk_bytes=10)
    assert replies(reader, b"$10\r\n0123456789\r\n", True) == [b"0123456789"]


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=64), st.integers(min_value=1, max_value=8))
def test_any_bytes_give_replies_or_resp_error(data: bytes, step: int) -> None:
    reader = RespReader()
    try:
        for at in range(0, len(data), step):
            reader.feed(data[at : at + step])
            while reader.gets() is not False:
                pass
    except RespError:
        pass


@settings(max_examples=100, deadline=None)
@given(st.lists(st.sampled_from(REPLIES), min_size=1, max_size=6), st.integers(1, 7))
def test_replies_in_a_row_split_anywhere_are_read_in_order(
    chosen: list[tuple[bytes, list[Any]]], step: int
) -> None:
    data = b"".join(d for d, _ in chosen)
    reader = RespReader()
    got = []
    for at in range(0, len(data), step):
        reader.feed(data[at : at + step])
        while (reply := reader.gets()) is not False:
            got.append(reply)
    assert same(got, [reply for _, expected in chosen for reply in expected])


def test_a_long_stream_of_replies_is_compacted() -> None:
    reader = RespReader()
    one = b"$1000\r\n" + b"x" * 1000 + b"\r\n"
    for _ in range(300):
        reader.feed(one)
        assert reader.gets() == b"x" * 1000
    assert reader.len() == 0
    assert len(reader._buffer) < 2 * 65536 + len(one)


def test_commands_are_packed_as_redis_reads_them() -> None:
    """A real Redis runs what pack and ScriptCall write (and answers in RESP2)."""
    import socket

    server = redis_rig.standalone()
    script = "return {KEYS[1], ARGV[1], ARGV[2], ARGV[3]}"
    with server.client() as client:
        sha = client.script_load(script)
    call = ScriptCall(sha)
    payload = (
        pack("SET", "wire:k", b"\x00\r\n")
        + pack("GET", b"wire:k")
        + call.pack(b"wire:{k}", ("op", 12, b"\xff"))
        + call.pack(b"wire:{k}", ("op", -1, ""))
        + pack("DEL", "wire:k")
    )
    reader = RespReader()
    got: list[Any] = []
    with socket.socket(socket.AF_UNIX) as sock:
        sock.connect(server.socket_path)
        sock.sendall(payload)
        while len(got) < 5:
            data = sock.recv(65536)
            assert data
            got += replies(reader, data, False)
    assert got == [
        b"OK",
        b"\x00\r\n",
        [b"wire:{k}", b"op", b"12", b"\xff"],
        [b"wire:{k}", b"op", b"-1", b""],
        1,
    ]
    with pytest.raises(TypeError):
        pack("SET", "k", 1.5)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.one_of(st.text(max_size=6), st.binary(max_size=6), st.integers(-(2**70), 2**70)),
        max_size=24,
    )
)
def test_many_arguments_pack_as_each_alone(values: list[Any]) -> None:
    """The fast paths for many names (or names and values) write what one at a time does."""
    names = [value for value in values if isinstance(value, str)]
    pairs = [item for name in names for item in (name, name.encode())]
    for arguments in (values, names, pairs):
        assert pack("X", *arguments) == b"*%d\r\n" % (len(arguments) + 1) + b"".join(
            pack_one(argument) for argument in ["X", *arguments]
        )


def pack_one(value: Any) -> bytes:
    data = value if isinstance(value, bytes) else str(value).encode()
    return b"$%d\r\n%b\r\n" % (len(data), data)


@settings(max_examples=200, deadline=None)
@given(
    st.dictionaries(
        st.text(max_size=40),
        st.one_of(st.binary(max_size=40), st.integers(65530, 65540).map(b"x".__mul__)),
        max_size=12,
    ),
    st.integers(0, 6000),
)
def test_an_updates_one_argument_is_its_history_entry(values: dict[str, bytes], more: int) -> None:
    """The update packs its history entry as msgpack would, ``["u", name, value, ...]`` with
    raw strings (the old-spec raw that the script's cmsgpack reads, and every reader decodes
    alike), and sends it alone: the script reads the names and values from it."""
    values = {**values, **{f"n{i}": b"v" for i in range(more if more > 5990 else 0)}}
    data, arguments = Update("k", values).request()[1]
    entry = msgpack.packb(
        ["u", *(item for pair in values.items() for item in pair)], use_bin_type=False
    )
    assert arguments == 1
    assert data == pack_one(entry)


@pytest.mark.parametrize("count", [0, 1, 15, 16, 65535, 65536])
def test_an_updates_entry_is_the_flat_array_whatever_its_headers(count: int) -> None:
    """pack_update packs the values as a map and puts an array's header before the pairs:
    at every size where either header grows, the bytes are the flat array's."""
    values = {f"n{i}": b"v" for i in range(count)}
    flat = ["u", *(item for pair in values.items() for item in pair)]
    assert pack_update(values) == msgpack.packb(flat, use_bin_type=False)
