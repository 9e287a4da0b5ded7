"""Replies of any size reach a client that reads; what waits for one that does not is bounded by
``Limits`` fields. Real servers (asyncio and trio) on real sockets:

* a ``dump``, a ``snapshot``, a ``watch``'s values and its replay, each larger than the reply
  budget (and so made as the client reads, PROTOCOL.md 8), arrive whole, to sync and async
  proxies, and byte for byte as msgpack frames them to a raw client;
* a 100 MiB value goes and comes back;
* a reply budget of one byte (``max_reply_backlog_bytes=1``) answers every pipelined request,
  one batch at a time, and never hangs;
* ``max_push_backlog_bytes`` is the bound a watcher that does not read is dropped at, named
  in its refusal.
"""

from __future__ import annotations

import os
import select
import socket
from collections.abc import Iterator
from typing import Any

import anyio
import msgpack
import pytest

from aionamespace import AsyncNamespace, Limits, Namespace, ServerThread
from aionamespace.protocol.codec import encode_value
from aionamespace.protocol.connection import Address
from awaited_store import AwaitedStore, new_store, over_every_store
from deadlines import NO_HANG_SECONDS, wait_until
from raw_client import connect_raw, exchange, read_frames
from server_processes import ServeProcess

MIB = 1024 * 1024

pytestmark = pytest.mark.usefixtures("collect_garbage")


@pytest.fixture
def board(server_backend: str, short_tmp: str, store_kind: str) -> Iterator[ServerThread]:
    """A server holding namespace ``big``: more than the reply budget, in large values and
    in thousands of small ones."""
    address, store = os.path.join(short_tmp, "s.sock"), new_store(store_kind)
    with ServerThread(address, backend=server_backend, store=store) as running:
        with Namespace(running.address, "big") as ns:
            for i in range(3):
                setattr(ns, f"large{i}", os.urandom(2 * MIB + i))
            for start in range(0, 6000, 1000):
                ns._update(**{f"small{i}": f"value {i}" * 20 for i in range(start, start + 1000)})
        yield running


def expected_board(server: ServerThread) -> dict[str, Any]:
    store = server.server.store
    memory = store.board.memory if isinstance(store, AwaitedStore) else store
    return memory.snapshot("big", None)[1]  # type: ignore[union-attr]


@over_every_store
def test_a_sync_proxy_gets_replies_larger_than_the_budget_whole(board: ServerThread) -> None:
    stored = expected_board(board)
    with Namespace(board.address, "big") as ns:
        snapshot = ns._snapshot()
        assert {name: encode_value(value) for name, value in snapshot.items()} == stored
        assert snapshot.revision == 9
        assert str(ns).count("small") == 6000  # str() is a dump
        assert ns._keys() == ["big"]
        with ns._watch() as watch:
            assert watch.values == snapshot
        with ns._watch(since=0) as watch:  # the replay: every change since the beginning
            replayed = {}
            for _ in range(len(stored)):
                event = watch.next(timeout=NO_HANG_SECONDS)
                replayed[event.name] = event.value
            assert replayed == snapshot
        assert ns.small5 == "value 5" * 20  # and the connection goes on


@over_every_store
@pytest.mark.anyio
async def test_an_async_proxy_gets_replies_larger_than_the_budget_whole(
    board: ServerThread,
) -> None:
    stored = expected_board(board)
    with anyio.fail_after(NO_HANG_SECONDS * 3):
        async with AsyncNamespace(board.address, "big") as ns:
            results: list[Any] = []

            async def snapshot() -> None:
                results.append(await ns._snapshot())

            async with anyio.create_task_group() as group:  # pipelined on one connection
                for _ in range(3):
                    group.start_soon(snapshot)
            for result in results:
                assert {name: encode_value(value) for name, value in result.items()} == stored
            assert await ns.small7 == "value 7" * 20


@over_every_store
def test_a_dump_larger_than_the_budget_is_msgpacks_frame(board: ServerThread) -> None:
    stored = expected_board(board)
    sock, _ = connect_raw(board.address)
    with sock:
        sock.sendall(
            msgpack.packb([1, "ping"])
            + msgpack.packb([2, "dump", "big"])
            + msgpack.packb([3, "ping"])
        )
        received = b""
        expected = (
            msgpack.packb([1, 0, None])
            + msgpack.packb([2, 0, stored])
            + msgpack.packb([3, 0, None])
        )
        while len(received) < len(expected):
            chunk = sock.recv(MIB)
            assert chunk, "the server closed the connection"
            received += chunk
        assert received == expected


@pytest.mark.slow
def test_a_100_mib_value_goes_and_comes_back(server_backend: str, short_tmp: str) -> None:
    value = os.urandom(100 * MIB)
    path = os.path.join(short_tmp, "s.sock")
    limits = Limits(max_frame_bytes=128 * MIB)
    with (
        ServerThread(path, backend=server_backend, limits=limits),
        Namespace(path, "huge", limits=limits) as ns,
    ):
        ns.value = value
        assert ns.value == value
        assert ns._snapshot()["value"] == value


@pytest.fixture(params=["unix", "tcp"])
def one_byte_budget(
    request: pytest.FixtureRequest, server_backend: str, short_tmp: str, store_kind: str
) -> Iterator[ServerThread]:
    """A server whose reply budget is one byte: every batch ends after its first reply."""
    address: Address = (
        os.path.join(short_tmp, "s.sock") if request.param == "unix" else ("127.0.0.1", 0)
    )
    limits, store = Limits(max_reply_backlog_bytes=1), new_store(store_kind)
    with ServerThread(address, backend=server_backend, limits=limits, store=store) as running:
        yield running


@over_every_store
@pytest.mark.anyio
async def test_a_reply_budget_of_one_byte_still_answers_everything(
    one_byte_budget: ServerThread,
) -> None:
    with anyio.fail_after(NO_HANG_SECONDS * 3):
        async with AsyncNamespace(one_byte_budget.address, "tiny") as ns:
            ns.big = os.urandom(3 * MIB)
            for i in range(200):
                setattr(ns, f"n{i}", i)
            await ns._flush()
            results: dict[int, Any] = {}

            async def get(i: int) -> None:
                results[i] = await getattr(ns, f"n{i}")

            async with anyio.create_task_group() as group:
                for i in range(200):
                    group.start_soon(get, i)
                group.start_soon(ns._snapshot)
            assert results == {i: i for i in range(200)}
            assert len((await ns._snapshot())["big"]) == 3 * MIB


@over_every_store
def test_max_push_backlog_bytes_is_where_a_watcher_that_does_not_read_is_dropped(
    server_backend: str, short_tmp: str, store_kind: str
) -> None:
    path = os.path.join(short_tmp, "s.sock")
    limits, store = Limits(max_push_backlog_bytes=2 * MIB), new_store(store_kind)
    with (
        ServerThread(path, backend=server_backend, limits=limits, store=store),
        Namespace(path, "k") as ns,
    ):
        watcher, unpacker = connect_raw(path)
        with watcher:
            assert exchange(watcher, unpacker, [1, "watch", "k", None, None])[0][:2] == [1, 0]
            value = os.urandom(MIB)
            for _ in range(12):  # pushes it does not read: more than the bound and the
                ns.x = value  # socket buffers hold, so it is dropped on the way
            # The refusal waits behind what it did not read, for about a second: read now.
            frames = read_frames(watcher, unpacker, until_eof=True)
        assert frames[-1] == [
            0,
            1,
            "ConnectionLost",
            f"more than {2 * MIB} bytes of events went unread; "
            "watch again from the last revision seen",
        ]
        assert 2 <= len(frames) - 1 < 12
        assert all(frame[:2] == [0, 2] for frame in frames[:-1])  # pushes, then the refusal
        ns.y = 1  # everyone else is served on
        assert ns.y == 1


@pytest.mark.parametrize("loop", ["asyncio", "trio", "uvloop"])
def test_a_client_that_stops_sending_still_gets_its_large_replies_whole(
    short_tmp: str, loop: str
) -> None:
    """Requests, then a half-close (shutdown SHUT_WR) before reading anything: every reply
    still comes, the dump made as it is read included, then the server closes. (On uvloop,
    the transport used to close once its own buffer was sent, cutting the dump short.)"""
    if loop == "uvloop":
        pytest.importorskip("uvloop", reason="the uvloop extra (a test dependency on Linux)")
    path = os.path.join(short_tmp, "s.sock")
    options = ("asyncio", "--loop", "uvloop") if loop == "uvloop" else (loop,)
    server = ServeProcess(path, *options)
    try:
        with Namespace(path, "big") as ns:
            for i in range(3):
                setattr(ns, f"large{i}", os.urandom(2 * MIB))
            stored = {name: encode_value(value) for name, value in ns._snapshot().items()}
        sock, unpacker = connect_raw(path)
        with sock:
            sock.sendall(msgpack.packb([1, "ping"]) + msgpack.packb([2, "dump", "big"]))
            sock.shutdown(socket.SHUT_WR)
            wait_until(lambda: _answering(sock), "the server answers")
            assert read_frames(sock, unpacker, until_eof=True) == [[1, 0, None], [2, 0, stored]]
    finally:
        server.kill()


def _answering(sock: socket.socket) -> bool:
    """Whether the server has started sending the dump (64 KiB wait to be read): by then it
    has read our end of stream too, with our requests or right after them."""
    ready = select.select([sock], [], [], 0)[0]
    return bool(ready) and len(sock.recv(1 << 22, socket.MSG_PEEK)) >= 64 * 1024
