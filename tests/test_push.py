"""AsyncNamespace on asyncio: replies delivered by protocol callbacks (AsyncioTransport).

The rest of the suite runs every async test on both paths (asyncio: AsyncioTransport; trio: a
reader task, TrioTransport). These tests pin which path is taken, and what the push path has
to get right itself: a server that answers with garbage or goes away while tasks wait (on both
paths), and flow control while a large outbox is sent and replies keep coming.
"""

from __future__ import annotations

import asyncio
import gc
import math
import os
import socket
import threading

import anyio
import anyio.abc
import msgpack
import pytest

from aionamespace import AsyncNamespace, ConnectionLost, Retry, ServerThread
from aionamespace._errors import ProtocolError
from aionamespace.client import asyncio_transport
from aionamespace.client.asyncio_transport import WRITE_AT_FRAMES, AsyncioTransport, SocketLink
from aionamespace.client.trio_transport import TrioLink, TrioTransport
from aionamespace.protocol.connection import PROTOCOL_NAME
from deadlines import async_wait_until
from waiting_calls import request_waiting

pytestmark = pytest.mark.anyio


async def test_asyncio_uses_protocol_callbacks_and_trio_a_reader_task(
    server: ServerThread, anyio_backend: str
) -> None:
    ns = AsyncNamespace(server.address, "which")
    ns.x = 1
    assert await ns.x == 1
    transport = ns._aionamespace.transport
    if anyio_backend == "asyncio":
        assert type(transport) is AsyncioTransport
        assert type(transport.link) is SocketLink
    else:
        assert type(transport) is TrioTransport
        assert type(transport.link) is TrioLink
    await ns._close()
    assert transport.link is None


class Scripted:
    """A server that greets, reads ``wait_for`` requests, then does ``then`` to the socket."""

    def __init__(self, path: str, wait_for: int, then: bytes | None) -> None:
        self.listener = socket.socket(socket.AF_UNIX)
        self.listener.bind(path)
        self.listener.listen()
        self.wait_for, self.then = wait_for, then
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        conn, _ = self.listener.accept()
        self.listener.close()  # one connection: a reconnect is refused, not left unanswered
        with conn:
            unpacker = msgpack.Unpacker(raw=False)
            seen = 0
            while seen < 1 + self.wait_for:
                data = conn.recv(65536)
                if not data:
                    return
                unpacker.feed(data)
                for _frame in unpacker:
                    if seen == 0:
                        conn.sendall(msgpack.packb({"protocol": PROTOCOL_NAME, "version": 1}))
                    seen += 1
            if self.then is not None:
                conn.sendall(self.then)  # garbage; None: just close

    def close(self) -> None:
        self.listener.close()
        self.thread.join(10)


@pytest.fixture
def short_path(short_tmp: str) -> str:
    return os.path.join(short_tmp, "scripted.sock")


ASYNCIO_ONLY = pytest.mark.parametrize("anyio_backend", ["asyncio"])  # the push path is asyncio's


@pytest.mark.parametrize(
    ("then", "error"),
    [
        (None, ConnectionLost),  # the server goes away
        (b"\xc1", ProtocolError),  # 0xc1: never valid msgpack
        (msgpack.packb("not a reply"), ProtocolError),
    ],
)
@pytest.mark.parametrize("tasks", [8, 3 * WRITE_AT_FRAMES])  # (more: written in several goes)
async def test_every_waiting_task_hears_what_ended_the_connection(
    short_path: str, then: bytes | None, error: type[Exception], tasks: int
) -> None:
    """Also those still queued behind the connect lock when it ended (both paths)."""
    scripted = Scripted(short_path, wait_for=tasks, then=then)
    ns = AsyncNamespace(short_path, "n", retry=Retry(attempts=1))  # this server serves once
    failures: list[BaseException] = []

    async def get(name: str) -> None:
        try:
            await getattr(ns, name)
        except Exception as exc:
            failures.append(exc)

    try:
        with anyio.fail_after(10):
            async with anyio.create_task_group() as group:
                for i in range(tasks):
                    group.start_soon(get, f"n{i}")
    finally:
        await ns._close()
        scripted.close()
    assert len(failures) == tasks
    assert all(isinstance(failure, error) for failure in failures), failures


@ASYNCIO_ONLY
async def test_a_large_outbox_waits_for_the_socket_while_replies_arrive(
    server: ServerThread,
) -> None:
    blob = os.urandom(4 * 1024 * 1024)
    async with AsyncNamespace(server.address, "flow") as ns:
        for i in range(8):  # 32 MiB queued in one go: the transport pauses us, repeatedly
            setattr(ns, f"b{i}", blob)
        with anyio.fail_after(30):
            values = [await getattr(ns, f"b{i}") for i in range(8)]
        assert all(value == blob for value in values)


@ASYNCIO_ONLY
async def test_a_long_outbox_is_written_before_every_task_has_queued(
    server: ServerThread, monkeypatch: pytest.MonkeyPatch, frames_per_write: list[int]
) -> None:
    """WRITE_AT_FRAMES frames go out at once, so the server works while more are queued; the
    frames still leave in order: each task reads back the value it queued just before. (The
    pacing never looks here: on a crowded machine it would have the sender write whole,
    tests/test_pacing.py.)"""
    monkeypatch.setattr(asyncio_transport, "PACING_SECONDS", math.inf)
    tasks = 4 * WRITE_AT_FRAMES
    writes = frames_per_write
    ns = AsyncNamespace(server.address, "early")
    ns.warm = 1
    await ns._flush()
    writes.clear()
    got: dict[int, object] = {}

    async def set_then_get(i: int) -> None:
        setattr(ns, f"v{i}", i)  # queued in the outbox, ahead of the get below
        got[i] = await getattr(ns, f"v{i}")

    try:
        with anyio.fail_after(10):
            async with anyio.create_task_group() as group:
                for i in range(tasks):
                    group.start_soon(set_then_get, i)
    finally:
        await ns._close()
    assert got == {i: i for i in range(tasks)}
    assert sum(writes) == 2 * tasks  # every set and get, each written once
    assert len(writes) > 1, writes
    assert max(writes) <= 2 * WRITE_AT_FRAMES, writes


@ASYNCIO_ONLY
async def test_a_request_waits_on_a_bare_future_that_is_forgotten_when_it_ends(
    short_path: str,
) -> None:
    """On the push path each request's waiter is its reply's Future. Cancelled tasks take
    theirs out of the proxy at once; the others get the loss as their error, retrieved (else
    asyncio would report "Future exception was never retrieved"), and nothing is left."""
    loop = asyncio.get_running_loop()
    reports: list[dict[str, object]] = []
    loop.set_exception_handler(lambda _loop, context: reports.append(context))
    scripted = Scripted(short_path, wait_for=9, then=None)  # closes at the 9th request
    ns = AsyncNamespace(short_path, "n", retry=Retry(attempts=1))
    table = ns._aionamespace.table
    tasks = [asyncio.ensure_future(getattr(ns, f"n{i}")) for i in range(8)]
    try:
        await async_wait_until(request_waiting(ns, 8), "8 requests sent and waiting")
        assert all(type(waiter) is asyncio.Future for waiter in table.waiters.values())
        for task in tasks[:4]:
            task.cancel()
        await asyncio.wait(tasks[:4])
        assert len(table.waiters) == 4  # the cancelled ones are forgotten already
        last = asyncio.ensure_future(ns.last)  # the 9th: the server hangs up
        outcomes = await asyncio.gather(*tasks[4:], last, return_exceptions=True)
    finally:
        await ns._close()
        scripted.close()
    assert all(type(outcome) is ConnectionLost for outcome in outcomes), outcomes
    assert all(outcome.request_sent for outcome in outcomes)  # each its own, saying so
    assert len({id(outcome) for outcome in outcomes}) == len(outcomes)
    assert table.waiters == {}
    del tasks, last, outcomes
    gc.collect()
    assert reports == []
