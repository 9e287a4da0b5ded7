"""A frozen server (SIGSTOP: the kernel still accepts and acknowledges, nobody answers) never
hangs a call: a call raises ``ServerTimeout`` once the server has sent nothing for
``Limits.call_timeout``, while a wait that is meant to last (a lock wait, a watch) goes on as
long as the server answers a ping, and raises once it does not.

Real server processes, really stopped (and continued in a ``finally``), on a Unix socket and on
TCP, with the sync proxy and the async one on asyncio and trio.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import threading
import time
from collections.abc import Iterator

import anyio
import msgpack
import pytest

from aionamespace import AsyncNamespace, Limits, Namespace, Retry, ServerTimeout
from aionamespace.protocol.codec import encode_value
from aionamespace.protocol.connection import PROTOCOL_NAME, PROTOCOL_VERSION
from deadlines import NO_HANG_SECONDS
from server_processes import ServeProcess

pytestmark = pytest.mark.usefixtures("collect_garbage")

CALL_TIMEOUT = 0.5
LIMITS = Limits(call_timeout=CALL_TIMEOUT)
#: How late past the timeout a frozen server may be reported (a loaded machine's scheduling);
#: the async proxies check silence every quarter of the timeout, so up to 1.25x it.
MARGIN = 2.0


@pytest.fixture(params=["unix", "tcp"])
def serve(request: pytest.FixtureRequest, socket_path: str) -> Iterator[ServeProcess]:
    server = ServeProcess(socket_path if request.param == "unix" else ("127.0.0.1", 0))
    try:
        yield server
    finally:
        server.close()


@contextlib.contextmanager
def frozen(server: ServeProcess) -> Iterator[None]:
    """The server process stopped (SIGSTOP) for the length of the block, continued after."""
    os.kill(server.process.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(server.process.pid, signal.SIGCONT)


def elapsed_since(start: float) -> float:
    return time.monotonic() - start


# ---------------------------------------------------------------------------- sync proxy


def test_sync_get_on_a_frozen_server_raises_server_timeout(serve: ServeProcess) -> None:
    ns = Namespace(serve.address, "board", limits=LIMITS)
    ns.x = 1
    with frozen(serve):
        start = time.monotonic()
        with pytest.raises(ServerTimeout) as caught:
            ns.x  # noqa: B018 - the read is the point
        took = elapsed_since(start)
        assert isinstance(caught.value, TimeoutError)
        assert caught.value.request_sent is True
        assert "sent nothing for 0.5 seconds" in str(caught.value)
        # never retried (Retry would reconnect to the frozen server and wait again)
        assert CALL_TIMEOUT <= took < CALL_TIMEOUT + MARGIN, took
    assert ns.x == 1  # continued: a new connection works
    ns._close()


def test_sync_write_on_a_frozen_server_says_it_was_sent(serve: ServeProcess) -> None:
    ns = Namespace(serve.address, "board", limits=LIMITS)
    ns.x = 1
    with frozen(serve), pytest.raises(ServerTimeout) as caught:
        ns._incr("count")
    assert caught.value.request_sent is True  # it may be applied once the server continues
    ns._close()


def test_sync_lock_wait_longer_than_the_timeout_goes_on(serve: ServeProcess) -> None:
    """A live server that takes 4 call timeouts to grant a lock: the wait pings and goes on."""
    holder = Namespace(serve.address, "board", limits=LIMITS)
    waiter = Namespace(serve.address, "board", limits=LIMITS)
    got = threading.Event()
    errors: list[BaseException] = []

    def wait_for_the_lock() -> None:
        try:
            with waiter._lock("ledger"):
                got.set()
        except BaseException as exc:  # reported below
            errors.append(exc)
        finally:
            waiter._close()

    with holder._lock("ledger"):
        thread = threading.Thread(target=wait_for_the_lock)
        thread.start()
        assert not got.wait(4 * CALL_TIMEOUT)  # still waiting, past several timeouts
    thread.join(NO_HANG_SECONDS)
    assert not thread.is_alive()
    assert not errors, errors
    assert got.is_set()
    holder._close()


def test_sync_lock_wait_on_a_frozen_server_raises(serve: ServeProcess) -> None:
    holder = Namespace(serve.address, "board", limits=LIMITS)
    waiter = Namespace(serve.address, "board", limits=LIMITS)
    held, done = threading.Event(), threading.Event()

    def hold() -> None:  # in a thread of its own: a thread cannot wait for a lock it holds
        with holder._lock("ledger"):
            held.set()
            done.wait(NO_HANG_SECONDS)
        holder._close()

    thread = threading.Thread(target=hold, name="holder")
    thread.start()
    try:
        assert held.wait(NO_HANG_SECONDS)
        waiter._ping()  # this thread's connection is open before the server freezes
        with frozen(serve):
            start = time.monotonic()
            with pytest.raises(ServerTimeout):
                with waiter._lock("ledger"):
                    pass
            took = elapsed_since(start)
        # silence for a timeout, then a ping unanswered for another
        assert 2 * CALL_TIMEOUT <= took < 2 * CALL_TIMEOUT + MARGIN, took
    finally:
        done.set()
        thread.join(NO_HANG_SECONDS)
    waiter._close()


def test_sync_watch_on_a_frozen_server_raises(serve: ServeProcess) -> None:
    ns = Namespace(serve.address, "board", limits=LIMITS, retry=Retry(attempts=1))
    with ns._watch("x") as watch:
        ns.x = 1
        assert watch.next(timeout=NO_HANG_SECONDS).value == 1
        assert_quiet_watch_waits_on(watch)
        with frozen(serve):
            start = time.monotonic()
            with pytest.raises(ServerTimeout):
                watch.next()
            took = elapsed_since(start)
        assert 2 * CALL_TIMEOUT <= took < 2 * CALL_TIMEOUT + MARGIN, took
    ns._close()


def assert_quiet_watch_waits_on(watch: object) -> None:
    """A watch on a live server with nothing to report waits past the call timeout (its pings
    are answered), then ends at the caller's own timeout."""
    start = time.monotonic()
    with pytest.raises(TimeoutError) as caught:
        watch.next(timeout=4 * CALL_TIMEOUT)  # type: ignore[attr-defined]
    assert not isinstance(caught.value, ServerTimeout)
    assert elapsed_since(start) >= 4 * CALL_TIMEOUT


def test_sync_wait_for_on_a_frozen_server_raises(serve: ServeProcess) -> None:
    ns = Namespace(serve.address, "board", limits=LIMITS)
    with frozen(serve), pytest.raises(ServerTimeout):
        ns._wait_for("never", timeout=NO_HANG_SECONDS)
    ns._close()


# ---------------------------------------------------------------------------- async proxy


@pytest.mark.anyio
async def test_async_get_on_a_frozen_server_raises_server_timeout(serve: ServeProcess) -> None:
    ns = AsyncNamespace(serve.address, "board", limits=LIMITS)
    ns.x = 1
    assert await ns.x == 1
    with frozen(serve):
        start = time.monotonic()
        with anyio.fail_after(NO_HANG_SECONDS), pytest.raises(ServerTimeout) as caught:
            await ns.x
        took = elapsed_since(start)
        assert caught.value.request_sent is True
        assert CALL_TIMEOUT <= took < CALL_TIMEOUT * 1.25 + MARGIN, took
    assert await ns.x == 1
    await ns._close()


@pytest.mark.anyio
async def test_async_lock_wait_longer_than_the_timeout_goes_on(serve: ServeProcess) -> None:
    holder = AsyncNamespace(serve.address, "board", limits=LIMITS)
    waiter = AsyncNamespace(serve.address, "board", limits=LIMITS)
    got = anyio.Event()

    async def wait_for_the_lock() -> None:
        async with waiter._lock("ledger"):
            got.set()

    lock = holder._lock("ledger")
    await lock.acquire()
    async with anyio.create_task_group() as group:
        group.start_soon(wait_for_the_lock)
        with anyio.move_on_after(4 * CALL_TIMEOUT):
            await got.wait()
        assert not got.is_set()  # still waiting, past several timeouts (pings answered)
        await lock.release()  # the waiter gets it
        with anyio.fail_after(NO_HANG_SECONDS):
            await got.wait()
    await waiter._close()
    await holder._close()


@pytest.mark.anyio
async def test_async_lock_wait_on_a_frozen_server_raises(serve: ServeProcess) -> None:
    holder = AsyncNamespace(serve.address, "board", limits=LIMITS)
    waiter = AsyncNamespace(serve.address, "board", limits=LIMITS)
    await waiter._ping()  # connected before the freeze: its wait is one the server took
    async with holder._lock("ledger"):
        with frozen(serve):
            start = time.monotonic()
            with anyio.fail_after(NO_HANG_SECONDS), pytest.raises(ServerTimeout):
                async with waiter._lock("ledger"):
                    pass
            took = elapsed_since(start)
        assert 2 * CALL_TIMEOUT <= took < 2.5 * CALL_TIMEOUT + MARGIN, took
    await holder._close()
    await waiter._close()


@pytest.mark.anyio
async def test_async_watch_on_a_frozen_server_raises(serve: ServeProcess) -> None:
    ns = AsyncNamespace(serve.address, "board", limits=LIMITS)
    async with ns._watch("x") as watch:
        changes = watch.__aiter__()
        with anyio.move_on_after(4 * CALL_TIMEOUT) as quiet:
            await changes.__anext__()  # nothing to report: it waits on, pings answered
        assert quiet.cancelled_caught
        with frozen(serve):
            start = time.monotonic()
            with anyio.fail_after(NO_HANG_SECONDS), pytest.raises(ServerTimeout):
                await changes.__anext__()
            took = elapsed_since(start)
        assert CALL_TIMEOUT <= took < 2.5 * CALL_TIMEOUT + MARGIN, took
    await ns._close()


@pytest.mark.anyio
async def test_async_flush_on_a_frozen_server_raises(serve: ServeProcess) -> None:
    ns = AsyncNamespace(serve.address, "board", limits=LIMITS)
    await ns._open()
    with frozen(serve):
        ns.x = 1
        with anyio.fail_after(NO_HANG_SECONDS), pytest.raises(ServerTimeout) as caught:
            await ns._flush()
        assert caught.value.request_sent is True
    await ns._close()


class SilentThenSlow(threading.Thread):
    """A raw server whose first connection never answers (the client gives up on it), and
    whose later ones answer each request ``delay`` seconds late: slow, but within the timeout."""

    def __init__(self, path: str, delay: float) -> None:
        super().__init__(name="silent-then-slow", daemon=True)
        self.listener = socket.socket(socket.AF_UNIX)
        self.listener.bind(path)
        self.listener.listen()
        self.delay = delay

    def run(self) -> None:
        with contextlib.suppress(OSError):  # (the listener closed: done)
            for connection in range(2):
                conn, _ = self.listener.accept()
                with conn:
                    conn.settimeout(NO_HANG_SECONDS)
                    self._serve(conn, answer=connection > 0)

    def _serve(self, conn: socket.socket, answer: bool) -> None:
        unpacker = msgpack.Unpacker(raw=False)
        greeted = False
        while data := conn.recv(65536):
            unpacker.feed(data)
            for frame in unpacker:
                if not greeted:
                    hello = {"protocol": PROTOCOL_NAME, "version": PROTOCOL_VERSION}
                    conn.sendall(msgpack.packb(hello))
                    greeted = True
                elif answer:
                    time.sleep(self.delay)  # the slowness under test
                    conn.sendall(msgpack.packb([frame[0], 0, encode_value(1)]))

    def close(self) -> None:
        self.listener.close()
        self.join(NO_HANG_SECONDS)


@pytest.mark.anyio
async def test_after_a_server_timeout_the_next_connection_gets_the_whole_timeout(
    short_tmp: str,
) -> None:
    """The silence counted against a connection that timed out is not counted again against
    the next one: its first request may take most of call_timeout."""
    path = os.path.join(short_tmp, "slow.sock")
    server = SilentThenSlow(path, delay=CALL_TIMEOUT / 2)
    server.start()
    ns = AsyncNamespace(path, "board", limits=LIMITS, retry=Retry(attempts=1))
    try:
        with anyio.fail_after(NO_HANG_SECONDS):
            with pytest.raises(ServerTimeout):
                await ns.x  # the first connection: silent
            assert await ns.x == 1  # the second: slow, within the timeout
    finally:
        await ns._close()
        server.close()


def test_manager_proxies_carry_the_call_timeout() -> None:
    """``Manager(limits=...)`` gives its proxies the call timeout (a frozen Manager server)."""
    from aionamespace import Manager

    with Manager(limits=LIMITS) as manager:
        ns = manager.Namespace("board")
        ns.x = 1
        assert manager._process is not None
        pid = manager._process.pid
        os.kill(pid, signal.SIGSTOP)
        try:
            with pytest.raises(ServerTimeout):
                ns.x  # noqa: B018 - the read is the point
        finally:
            os.kill(pid, signal.SIGCONT)
        ns._close()
