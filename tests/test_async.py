"""AsyncNamespace: awaits, queued writes, _flush, pipelining, cancellation; asyncio and trio."""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Iterator

import anyio
import pytest

from aionamespace import AsyncNamespace, ConnectionLost, Namespace, Retry, ServerThread
from aionamespace.protocol.codec import encode_value
from aionamespace.protocol.connection import Hello, Request, ServerConnection
from awaited_store import over_every_store
from deadlines import NO_HANG_SECONDS
from fake_server import FakeServer

pytestmark = pytest.mark.anyio


@over_every_store
async def test_await_reads_and_missing_raises_attribute_error(server: ServerThread) -> None:
    async with AsyncNamespace(server.address) as ns:
        ns.item = "empty"
        assert await ns.item == "empty"
        with pytest.raises(AttributeError, match="'item2'"):
            await ns.item2


async def test_a_read_never_awaited_sends_nothing_and_says_so(server: ServerThread) -> None:
    """``ns.x`` is a coroutine: nothing happens until it is awaited, and Python warns about
    one that never is (the usual sign of a forgotten ``await``)."""
    ns = AsyncNamespace(server.address, "lazy")
    with pytest.warns(RuntimeWarning, match="never awaited"):
        ns.x  # noqa: B018  (CPython warns as the coroutine is dropped, at once)
    assert ns._aionamespace.transport.link is None  # not even connected
    ns.x = 1
    assert await ns.x == 1
    await ns._close()


@over_every_store
async def test_writes_are_queued_in_order_and_seen_by_a_later_await(server: ServerThread) -> None:
    ns = AsyncNamespace(server.address)
    for i in range(100):
        ns.counter = i  # no await: queued on the proxy
    ns.gone = 1
    del ns.gone
    assert await ns.counter == 99
    with pytest.raises(AttributeError):
        await ns.gone
    await ns._close()


@over_every_store
async def test_flush_raises_the_first_failed_write_then_is_clean(server: ServerThread) -> None:
    async with AsyncNamespace(server.address) as ns:
        ns.kept = 1
        del ns.never_set  # fails on the server; the call site cannot know yet
        with pytest.raises(AttributeError, match="never_set"):
            await ns._flush()
        await ns._flush()  # the failure was reported once
        assert await ns.kept == 1


async def test_unserialisable_value_raises_type_error_at_assignment(server: ServerThread) -> None:
    async with AsyncNamespace(server.address) as ns:
        ns.value = 1
        with pytest.raises(TypeError, match="object"):
            ns.value = object()
        await ns._flush()
        assert await ns.value == 1  # nothing was sent


async def test_underscore_names_are_local_and_synchronous(server: ServerThread) -> None:
    async with AsyncNamespace(server.address, "board") as ns:
        ns._local = [1]
        assert ns._local == [1]
        del ns._local
        with pytest.raises(AttributeError):
            _ = ns._local
    sync_view = Namespace(server.address, "board")
    assert sync_view._snapshot() == {}
    sync_view._close()


@over_every_store
async def test_many_tasks_share_one_connection(server: ServerThread) -> None:
    ns = AsyncNamespace(server.address)
    for i in range(50):
        setattr(ns, f"name{i}", i)
    results: dict[int, int] = {}

    async def read(i: int) -> None:
        results[i] = await getattr(ns, f"name{i % 50}")

    async with anyio.create_task_group() as group:
        for i in range(500):
            group.start_soon(read, i)
    assert results == {i: i % 50 for i in range(500)}
    await ns._close()


@over_every_store
async def test_sync_and_async_proxies_see_each_other(server: ServerThread) -> None:
    sync_ns = Namespace(server.address, "shared")
    sync_ns.x = {"from": "sync"}
    async with AsyncNamespace(server.address, "shared") as ns:
        assert await ns.x == {"from": "sync"}
        ns.y = ("from", "async")
        await ns._flush()
    assert sync_ns.y == ("from", "async")
    assert str(sync_ns) == "Namespace(x={'from': 'sync'}, y=('from', 'async'))"
    sync_ns._close()


async def test_pump_sends_writes_without_an_await_on_the_writer(server: ServerThread) -> None:
    writer = AsyncNamespace(server.address, "pumped")
    reader = AsyncNamespace(server.address, "pumped")
    seen = anyio.Event()

    async def write_then_wait() -> None:
        writer.flag = "up"  # only the pump task of `async with` can send this
        await seen.wait()

    async with writer, reader, anyio.create_task_group() as group:
        group.start_soon(write_then_wait)
        with anyio.fail_after(5):
            while await reader._snapshot() != {"flag": "up"}:
                pass
        seen.set()


@over_every_store
async def test_large_values_and_a_large_outbox_do_not_deadlock(server: ServerThread) -> None:
    blob = os.urandom(8 * 1024 * 1024)
    async with AsyncNamespace(server.address) as ns:
        ns.blob = blob
        for i in range(30_000):  # ~1 MB of frames sent in one write, acks read meanwhile
            ns.count = i
        ns.ba = bytearray(b"x" * 100_000)

        async def small_reads() -> None:
            for _ in range(20):
                assert await ns.count == 29_999

        with anyio.fail_after(30):
            async with anyio.create_task_group() as group:
                group.start_soon(small_reads)
                group.start_soon(small_reads)
            assert await ns.blob == blob
            assert await ns.ba == bytearray(b"x" * 100_000)


async def test_close_then_reuse_reconnects(server: ServerThread) -> None:
    ns = AsyncNamespace(server.address)
    ns.a = 1
    await ns._close()  # flushes first
    assert await ns.a == 1
    await ns._close()


async def test_connection_refused_is_connection_lost(short_tmp: str) -> None:
    # (named: an anonymous proxy's queued creation would fail _close too)
    ns = AsyncNamespace(os.path.join(short_tmp, "nobody.sock"), "board")
    with pytest.raises(ConnectionLost, match=r"nobody\.sock"):
        await ns.anything
    await ns._close()


# -------------------------------------------------------------------- cancellation


class HeldReplies:
    """A real server on a real socket that answers only when told to, in request order."""

    def __init__(self, path: str) -> None:
        self.listener = socket.socket(socket.AF_UNIX)
        self.listener.bind(path)
        self.listener.listen()
        self.requests: list[Request] = []
        self.received = threading.Condition()
        self.release = threading.Semaphore(0)
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        conn, _ = self.listener.accept()
        protocol = ServerConnection()
        with conn:
            while True:
                data = conn.recv(65536)
                if not data:
                    return
                for event in protocol.receive_data(data):
                    if isinstance(event, Hello):
                        conn.sendall(protocol.send_hello())
                        continue
                    assert isinstance(event, Request)
                    with self.received:
                        self.requests.append(event)
                        self.received.notify_all()
                    self.release.acquire()
                    # Answer every get with the value "reply to <id>".
                    conn.sendall(
                        protocol.send_result(event.id, encode_value(f"reply to {event.id}"))
                    )

    def wait_for_requests(self, count: int) -> list[Request]:
        with self.received:
            assert self.received.wait_for(lambda: len(self.requests) >= count, timeout=10)
            return list(self.requests)

    def close(self) -> None:
        self.listener.close()


@pytest.fixture
def held_replies(short_tmp: str) -> Iterator[HeldReplies]:
    server = HeldReplies(os.path.join(short_tmp, "held.sock"))
    yield server
    server.release.release(100)
    server.close()


async def test_cancelled_waiter_never_receives_nor_steals_a_reply(
    held_replies: HeldReplies,
) -> None:
    ns = AsyncNamespace(  # (named: an anonymous proxy would send its creation first)
        os.path.join(os.path.dirname(held_replies.listener.getsockname()), "held.sock"), "n"
    )
    results: list[object] = []

    async def first() -> None:
        results.append(await ns.a)  # cancelled before its reply exists

    async with anyio.create_task_group() as group:
        group.start_soon(first)
        await anyio.to_thread.run_sync(held_replies.wait_for_requests, 1)
        group.cancel_scope.cancel()
    assert results == []
    # The cancelled request's reply is still coming; the next caller must get its own.
    held_replies.release.release(2)
    assert await ns.b == f"reply to {held_replies.wait_for_requests(2)[1].id}"
    await ns._close()


async def test_cancel_scope_before_sending_leaves_the_proxy_usable(server: ServerThread) -> None:
    async with AsyncNamespace(server.address) as ns:
        ns.v = 1
        with anyio.CancelScope() as scope:
            scope.cancel()
            await ns.v
        assert scope.cancelled_caught
        assert await ns.v == 1


async def test_close_after_a_lost_write_does_not_wait_for_writes_never_sent(
    short_tmp: str,
) -> None:
    """A write lost in flight, then one queued while no server listens: closing reports the
    loss at once. (It waited for the queued write's acknowledgement for ever: nothing had
    sent it, and on asyncio nobody reads a connection that is not there.)"""
    path = os.path.join(short_tmp, "dies.sock")
    server = FakeServer(path)  # reads the first request, then closes without answering
    server.start()
    ns = AsyncNamespace(path, "n", retry=Retry(attempts=1))
    try:
        ns.a = 1
        with pytest.raises(ConnectionLost):
            await ns.x  # sends the write and the read together; the server dies on them
    finally:
        server.stop()  # nobody listens any more
    ns.b = 2
    with anyio.fail_after(NO_HANG_SECONDS), pytest.raises(ConnectionLost) as lost:
        await ns._close()
    assert lost.value.request_sent  # the write that was in flight: it may have been applied


def test_a_proxy_follows_its_loop_from_thread_to_thread_and_to_another_loop(
    server: ServerThread,
) -> None:
    """A transport belongs to its loop: the same loop run again by another thread keeps it
    (reads go on over the same connection), a loop that is not running never gets to use
    it, and each loop's reads are answered."""
    import asyncio

    Namespace(server.address, "loops").x = 1
    ns = AsyncNamespace(server.address, "loops")
    loop = asyncio.new_event_loop()
    try:
        assert loop.run_until_complete(ns.x) == 1
        first = ns._aionamespace.transport
        answers: list[object] = []
        runner = threading.Thread(target=lambda: answers.append(loop.run_until_complete(ns.x)))
        runner.start()
        runner.join(NO_HANG_SECONDS)
        assert answers == [1]
        assert ns._aionamespace.transport is first  # its loop's, run by another thread

        async def read_and_close() -> object:
            try:
                return await ns.x
            finally:
                assert ns._aionamespace.transport is not first
                await ns._close()

        assert asyncio.run(read_and_close()) == 1  # another loop: a transport of its own
        assert loop.run_until_complete(ns.x) == 1  # and back: a new one again
        assert ns._aionamespace.transport is not first
        loop.run_until_complete(ns._close())
    finally:
        loop.close()


def test_a_proxy_used_under_one_asyncio_run_then_another_closes_the_first_connection(
    server: ServerThread,
) -> None:
    """``asyncio.run`` closes its loop with the proxy's connection still open; the next
    ``asyncio.run`` gets a connection of its own, and the one whose loop is gone is closed
    (it used to raise "Event loop is closed" from the second run's first read)."""
    import asyncio

    ns = AsyncNamespace(server.address, "two-runs")

    async def write_and_read(value: int) -> object:
        await ns._update(x=value)
        return await ns.x

    assert asyncio.run(write_and_read(1)) == 1
    first = ns._aionamespace.transport.link
    assert first is not None
    assert first.transport is not None
    old_socket = first.transport.get_extra_info("socket")

    async def read_and_close() -> object:
        try:
            return await write_and_read(2)
        finally:
            await ns._close()

    assert asyncio.run(read_and_close()) == 2
    assert old_socket.fileno() == -1  # closed, not left to the garbage collector
