"""Large values: written by the server as stored, received by the client into their own buffer.

A reply ``[id, 0, bin 32]`` carrying LARGE_VALUE_BYTES or more is the same msgpack frame as any
other on the wire; only the way each end moves it changes. These tests hold both ends to that:
the header the server writes before the stored bytes is byte for byte msgpack's, the client's
fast path yields exactly the events the frame decoder would, however the bytes are cut, and a
real server hands such values to both proxies intact, on both backends and both transports.
"""

from __future__ import annotations

import itertools
import os
import socket
import time
from collections.abc import Iterator
from typing import Any

import anyio
import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from aionamespace import AsyncNamespace, Limits, Namespace, ServerThread
from aionamespace._errors import RemoteProtocolError
from aionamespace.client.tracking import CACHES
from aionamespace.protocol.codec import encode_value
from aionamespace.protocol.connection import (
    PROTOCOL_NAME,
    ClientConnection,
    Reply,
    ServerConnection,
    WatchPush,
)
from aionamespace.protocol.frames import LARGE_VALUE_BYTES, coalesce, large_reply
from awaited_store import new_store, over_every_store

SERVER_HELLO = msgpack.packb({"protocol": PROTOCOL_NAME, "version": 1})
IDS = [1, 127, 128, 255, 256, 65_535, 65_536, 2**32 - 1, 2**32, 2**63]


def greeted_client(limits: Limits | None = None) -> ClientConnection:
    client = ClientConnection(limits)
    client.send_hello()
    assert client.receive_data(SERVER_HELLO)[0].version == 1  # type: ignore[union-attr]
    return client


def wire(answer: bytes | tuple[bytes, bytes]) -> bytes:
    return answer if isinstance(answer, bytes) else b"".join(answer)


def plain(events: list[Any]) -> list[Any]:
    """Events with results as bytes (the fast path hands over a bytearray)."""
    return [
        Reply(e.id, bytes(e.result), e.error)
        if type(e) is Reply and isinstance(e.result, bytearray)
        else e
        for e in events
    ]


# ------------------------------------------------------------------------------ the server's end


@pytest.mark.parametrize("request_id", IDS)
@pytest.mark.parametrize("size", [0, 10, LARGE_VALUE_BYTES - 1, LARGE_VALUE_BYTES, 300_000])
def test_the_reply_to_a_get_is_msgpacks_frame_byte_for_byte(request_id: int, size: int) -> None:
    value = os.urandom(size)
    answer = ServerConnection.send_value(request_id, value)
    assert wire(answer) == msgpack.packb([request_id, 0, value])
    # a large value is handed on as the very object the store holds: never copied
    assert isinstance(answer, tuple) == (size >= LARGE_VALUE_BYTES)
    if isinstance(answer, tuple):
        assert answer[1] is value


def test_coalesce_joins_small_runs_and_keeps_large_values_apart() -> None:
    big, other = b"B" * LARGE_VALUE_BYTES, b"C" * (LARGE_VALUE_BYTES + 1)
    buffers = [b"a", b"b", big, b"c", other, b"d", b"e"]
    joined = coalesce(buffers)
    assert joined == [b"ab", big, b"c", other, b"de"]
    assert joined[1] is big
    assert joined[3] is other
    assert coalesce([b"x", b"y"]) == [b"xy"]
    assert coalesce([]) == []


# ------------------------------------------------------------------------------ the client's end


@pytest.mark.parametrize("request_id", IDS)
def test_a_large_reply_header_is_recognised_for_every_id_width(request_id: int) -> None:
    frame = msgpack.packb([request_id, 0, b"v" * LARGE_VALUE_BYTES])
    found = large_reply(memoryview(frame), 64 * 1024 * 1024)
    assert found is not None
    value, header = found
    assert value.request_id == request_id
    assert header + LARGE_VALUE_BYTES == len(frame)
    assert len(value.buffer) == LARGE_VALUE_BYTES


@pytest.mark.parametrize(
    "frame",
    [
        msgpack.packb([1, 0, b"v" * (LARGE_VALUE_BYTES - 1)]),  # bin 16: the decoder's
        msgpack.packb([1, 1, "KeyError", "x" * LARGE_VALUE_BYTES]),  # an error
        msgpack.packb([0, 2, 1, 1, "n", b"v" * LARGE_VALUE_BYTES]),  # a watch event
        msgpack.packb([1, 0, "s" * LARGE_VALUE_BYTES]),  # not a bin
        msgpack.packb([1, 0, [b"v" * LARGE_VALUE_BYTES]]),  # not a bin
        msgpack.packb([-1, 0, b"v" * LARGE_VALUE_BYTES]),  # not an id
        msgpack.packb([1, 0, b"v" * LARGE_VALUE_BYTES])[:7],  # header not whole yet
    ],
)
def test_anything_else_is_left_to_the_frame_decoder(frame: bytes) -> None:
    assert large_reply(memoryview(frame), 64 * 1024 * 1024) is None


def test_a_large_reply_over_the_frame_limit_is_refused_from_its_header() -> None:
    client = greeted_client(Limits(max_frame_bytes=LARGE_VALUE_BYTES))
    header = msgpack.packb([1, 0, b"v" * LARGE_VALUE_BYTES])[:8]
    with pytest.raises(RemoteProtocolError, match="max_frame_bytes"):
        client.receive_data(header)


def test_the_socket_can_fill_a_large_value_in_place() -> None:
    client = greeted_client()
    value = encode_value(os.urandom(200_000))
    frame = msgpack.packb([7, 0, value])
    assert client.receive_data(frame[:1000]) == []
    received = 1000 - (len(frame) - len(value))
    while (target := client.large_value()) is not None:
        piece = value[received : received + min(len(target), 65_536)]
        target[: len(piece)] = piece  # what recv_into does
        received += len(piece)
        events = client.large_received(len(piece))
        assert (events == []) == (received < len(value))
    assert plain(events) == [Reply(7, value)]
    assert client.large_value() is None
    assert client.receive_data(msgpack.packb([8, 0, None])) == [Reply(8, None)]


STREAM: list[list[Any]] = [
    [1, 0, b"small"],
    [2, 0, b"L" * LARGE_VALUE_BYTES],
    [0, 2, 5, 9, "name", b"w" * LARGE_VALUE_BYTES],
    [3, 0, b"M" * (LARGE_VALUE_BYTES + 12_345)],
    [4, 1, "AttributeError", "x"],
    [2**40, 0, b"N" * (3 * LARGE_VALUE_BYTES)],
    [5, 0, None],
]


@given(cuts=st.lists(st.integers(min_value=0, max_value=600_000), max_size=12))
def test_the_fast_path_yields_what_the_decoder_would_however_bytes_are_cut(cuts: list[int]) -> None:
    data = b"".join(msgpack.packb(frame) for frame in STREAM)
    reference: list[Any] = []
    for frame in STREAM:
        if frame[0] == 0:
            reference.append(WatchPush(*frame[2:]))
        elif frame[1] == 0:
            reference.append(Reply(frame[0], frame[2]))
        else:
            reference.append("error")
    client = greeted_client()
    events: list[Any] = []
    edges = sorted({0, len(data), *(c for c in cuts if c < len(data))})
    for start, end in itertools.pairwise(edges):
        events.extend(client.receive_data(data[start:end]))
    events = ["error" if type(e) is Reply and e.error is not None else e for e in plain(events)]
    assert events == reference


# Large replies back to back, each smaller than one before it: each fits in the buffer.
REUSED_STREAM: list[list[Any]] = [
    [1, 0, b"A" * (3 * LARGE_VALUE_BYTES)],
    [2, 0, b"B" * LARGE_VALUE_BYTES],
    [3, 0, b"C" * (2 * LARGE_VALUE_BYTES)],
    [4, 0, b"small"],
    [5, 0, b"D" * LARGE_VALUE_BYTES],
]


@given(cuts=st.lists(st.integers(min_value=0, max_value=1_200_000), max_size=12))
def test_a_reused_buffer_yields_what_the_decoder_would_if_each_result_is_read_at_once(
    cuts: list[int],
) -> None:
    """A sync transport's way (``reuse_large_buffer``): every result is read before the next
    bytes go in; two large values ending in one read must not share the buffer."""
    data = b"".join(msgpack.packb(frame) for frame in REUSED_STREAM + STREAM)
    reference = [
        (e.id, e.result) for e in plain(greeted_client().receive_data(data)) if type(e) is Reply
    ]
    client = greeted_client()
    client.reuse_large_buffer(4 * LARGE_VALUE_BYTES)
    replies: list[Any] = []
    edges = sorted({0, len(data), *(c for c in cuts if c < len(data))})
    for start, end in itertools.pairwise(edges):
        for e in client.receive_data(data[start:end]):
            if type(e) is Reply:  # read now, as the transport does
                result = bytes(e.result) if isinstance(e.result, memoryview) else e.result
                replies.append((e.id, result))
    assert replies == reference


def test_a_reused_buffer_serves_values_of_any_size_in_turn() -> None:
    client = greeted_client()
    client.reuse_large_buffer(2 * LARGE_VALUE_BYTES)
    sizes = [LARGE_VALUE_BYTES, 2 * LARGE_VALUE_BYTES, 3 * LARGE_VALUE_BYTES, LARGE_VALUE_BYTES + 1]
    for request_id, size in enumerate(sizes, 1):
        value = os.urandom(size)
        (reply,) = client.receive_data(msgpack.packb([request_id, 0, value]))
        assert type(reply) is Reply
        assert reply.id == request_id
        assert bytes(reply.result) == value
        # up to the bound: a view of the one buffer; past it: a buffer of its own
        assert isinstance(reply.result, memoryview if size <= 2 * LARGE_VALUE_BYTES else bytearray)


# ------------------------------------------------------------------------------ a real server


@pytest.fixture
def any_server(server_backend: str, short_tmp: str, store_kind: str) -> Iterator[ServerThread]:
    address, store = os.path.join(short_tmp, "s.sock"), new_store(store_kind)
    with ServerThread(address, backend=server_backend, store=store) as running:
        yield running


SIZES = [
    LARGE_VALUE_BYTES - 6,
    LARGE_VALUE_BYTES - 5,
    LARGE_VALUE_BYTES,
    1024 * 1024 + 3,
    5 * 1024 * 1024,
]


@over_every_store
def test_the_server_writes_a_large_reply_as_one_msgpack_frame(any_server: ServerThread) -> None:
    stored = encode_value(os.urandom(3 * LARGE_VALUE_BYTES))
    with Namespace(any_server.address, "raw") as ns:
        ns.blob = stored  # the value's encoding is what the server stores (as bytes inside)
    expected = msgpack.packb([2, 0, encode_value(stored)])
    sock = socket.socket(socket.AF_UNIX)
    sock.connect(any_server.address)
    sock.settimeout(10)
    with sock:
        sock.sendall(
            msgpack.packb({"protocol": PROTOCOL_NAME, "version": 1})
            + msgpack.packb([1, "ping"])
            + msgpack.packb([2, "get", "raw", "blob"])
            + msgpack.packb([3, "ping"])
        )
        unpacker = msgpack.Unpacker(raw=False)
        frames: list[Any] = []
        received = b""
        while len(frames) < 4:
            chunk = sock.recv(1 << 20)
            assert chunk, "the server closed the connection"
            received += chunk
            unpacker.feed(chunk)
            frames.extend(unpacker)
    hello = msgpack.packb(frames[0])
    assert received == (
        hello + msgpack.packb([1, 0, None]) + expected + msgpack.packb([3, 0, None])
    )


@over_every_store
@pytest.mark.parametrize("size", SIZES)
def test_sync_gets_of_large_values_round_trip(server: ServerThread, size: int) -> None:
    blob = os.urandom(size)
    with Namespace(server.address, "big") as ns:
        ns.blob, ns.array = blob, bytearray(blob)
        ns.text, ns.nested = "é" * (size // 2), [1, blob, (blob[:10],)]
        ns.small = 1
        for _ in range(2):  # again on the same connection: nothing is left behind in it
            assert ns.blob == blob
            assert type(ns.blob) is bytes
            assert ns.array == bytearray(blob)
            assert type(ns.array) is bytearray
            assert ns.text == "é" * (size // 2)
            assert ns.nested == [1, blob, (blob[:10],)]
            assert ns.small == 1


def test_sync_gets_of_large_values_of_changing_sizes_stay_intact(server: ServerThread) -> None:
    """One connection's reused receive buffer: earlier results are the caller's own."""
    blobs = [os.urandom(size) for size in (LARGE_VALUE_BYTES, 3 << 20, 1 << 20, 5 << 20, 70_000)]
    with Namespace(server.address, "turns") as ns:
        got = []
        for blob in blobs:
            ns.blob = blob
            got.append(ns.blob)
            ns.array = bytearray(blob)
            got.append(ns.array)
        for n, blob in enumerate(blobs):
            assert got[2 * n] == blob
            assert type(got[2 * n]) is bytes
            assert got[2 * n + 1] == bytearray(blob)
            assert type(got[2 * n + 1]) is bytearray


@over_every_store
@pytest.mark.anyio
async def test_async_gets_of_large_and_small_values_pipelined(any_server: ServerThread) -> None:
    blobs = {f"b{size}": os.urandom(size) for size in SIZES}
    async with AsyncNamespace(any_server.address, "big") as ns:
        for name, blob in blobs.items():
            setattr(ns, name, blob)
        ns.small = "s"
        results: dict[str, Any] = {}

        async def get(name: str) -> None:
            results[name] = await getattr(ns, name)

        with anyio.fail_after(30):
            async with anyio.create_task_group() as group:
                for _ in range(3):
                    for name in [*blobs, "small"]:
                        group.start_soon(get, name)
        assert results == {**blobs, "small": "s"}


@over_every_store
def test_a_cached_proxy_keeps_a_large_value_until_it_changes(server: ServerThread) -> None:
    first, second = os.urandom(3 * LARGE_VALUE_BYTES), os.urandom(2 * LARGE_VALUE_BYTES)
    writer = Namespace(server.address, "cached-big")
    reader = Namespace(server.address, "cached-big", cache=True)
    writer.blob = bytearray(first)
    assert reader.blob == bytearray(first)
    cache = CACHES.existing(reader._aionamespace.target)
    assert cache is not None
    assert "blob" in cache.table.namespace("cached-big")  # kept, though it came on the fast path
    copy = reader.blob
    copy[:3] = b"xyz"  # every read of a mutable value is a copy of its own
    assert reader.blob == bytearray(first)
    writer.blob = bytearray(second)
    deadline = time.monotonic() + 10
    while reader.blob != bytearray(second):  # each try is a read: the invalidation is coming
        assert time.monotonic() < deadline
