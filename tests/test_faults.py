"""A server that dies, stops or never was: proxies fail fast with ConnectionLost, never hang.

Each test kills (SIGKILL) or stops (SIGSTOP) a real server process: a fresh ``Manager`` per test
(never the session's), or ``python -m aionamespace serve`` run as a subprocess.
"""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import anyio
import pytest

from aionamespace import (
    AsyncNamespace,
    ConnectionLost,
    Limits,
    Manager,
    Namespace,
    NamespaceError,
    Retry,
)
from deadlines import NO_HANG_SECONDS
from server_processes import ServeProcess, kill_server

FAIL_FAST_SECONDS = 1.0  # how soon a call must raise once the server is gone


pytestmark = pytest.mark.usefixtures("collect_garbage")


@pytest.fixture(params=["unix", "tcp"])
def fresh_manager(request: pytest.FixtureRequest) -> Iterator[Manager]:
    """A server process of this test's own, which the test may kill."""
    address = ("127.0.0.1", 0) if request.param == "tcp" else None
    with Manager(address) as running:
        yield running


@pytest.fixture
def unix_manager() -> Iterator[Manager]:
    with Manager() as running:
        yield running


def time_to_fail(operation: Any) -> float:
    """Run ``operation``, require ConnectionLost, and return how long it took to raise."""
    start = time.monotonic()
    with pytest.raises(ConnectionLost):
        operation()
    return time.monotonic() - start


# ---------------------------------------------------------------------- sync proxy


def test_call_after_kill_raises_connection_lost_fast(fresh_manager: Manager) -> None:
    ns = fresh_manager.Namespace(x=1)
    assert ns.x == 1  # connected
    kill_server(fresh_manager)
    assert time_to_fail(lambda: ns.x) < FAIL_FAST_SECONDS
    # Every later operation fails the same way (now while connecting), just as fast.
    assert time_to_fail(lambda: setattr(ns, "x", 2)) < FAIL_FAST_SECONDS
    assert time_to_fail(lambda: delattr(ns, "x")) < FAIL_FAST_SECONDS
    assert time_to_fail(lambda: str(ns)) < FAIL_FAST_SECONDS
    assert time_to_fail(lambda: hasattr(ns, "x")) < FAIL_FAST_SECONDS  # not just False
    assert time_to_fail(fresh_manager.Namespace) < FAIL_FAST_SECONDS


def test_threads_calling_in_a_loop_all_get_connection_lost(fresh_manager: Manager) -> None:
    threads = 4
    ns = fresh_manager.Namespace()
    all_running = threading.Barrier(threads + 1)
    outcomes: dict[int, tuple[BaseException, float]] = {}

    def hammer(index: int) -> None:
        name = f"t{index}"
        setattr(ns, name, 0)
        all_running.wait(timeout=NO_HANG_SECONDS)
        try:
            for i in range(10**9):
                setattr(ns, name, i)
                assert getattr(ns, name) == i
        except BaseException as exc:  # reported to the main thread
            outcomes[index] = (exc, time.monotonic())

    workers = [threading.Thread(target=hammer, args=(i,)) for i in range(threads)]
    for worker in workers:
        worker.start()
    try:
        all_running.wait(timeout=NO_HANG_SECONDS)
        killed_at = kill_server(fresh_manager)
    finally:
        for worker in workers:
            worker.join(NO_HANG_SECONDS)
    assert not any(worker.is_alive() for worker in workers), "a thread hangs"
    assert sorted(outcomes) == list(range(threads))
    for error, failed_at in outcomes.values():
        assert isinstance(error, ConnectionLost), repr(error)
        assert failed_at - killed_at < FAIL_FAST_SECONDS


def test_calls_blocked_on_a_stopped_server_fail_when_it_is_killed(unix_manager: Manager) -> None:
    """Requests sent to a frozen server wait for it; its death releases every one of them."""
    threads = 3
    ns = unix_manager.Namespace(x=1)
    process = unix_manager._process
    assert process is not None
    os.kill(process.pid, signal.SIGSTOP)
    calling = [threading.Event() for _ in range(threads)]
    outcomes: dict[int, tuple[BaseException | None, float]] = {}

    def blocked_call(index: int) -> None:
        calling[index].set()
        try:
            ns.x  # noqa: B018 (the read is the point)
        except BaseException as exc:  # reported to the main thread
            outcomes[index] = (exc, time.monotonic())
        else:
            outcomes[index] = (None, time.monotonic())

    workers = [threading.Thread(target=blocked_call, args=(i,)) for i in range(threads)]
    try:
        for worker in workers:
            worker.start()
        for event in calling:
            assert event.wait(NO_HANG_SECONDS)
        assert not outcomes  # the server is frozen: nobody got an answer
        killed_at = kill_server(unix_manager)  # SIGKILL works on a stopped process
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        for worker in workers:
            worker.join(NO_HANG_SECONDS)
    assert not any(worker.is_alive() for worker in workers), "a thread hangs"
    for error, failed_at in outcomes.values():
        assert isinstance(error, ConnectionLost), repr(error)
        assert failed_at - killed_at < FAIL_FAST_SECONDS
    assert len(outcomes) == threads


# ---------------------------------------------------------------------- async proxy


@pytest.mark.anyio
async def test_async_call_after_kill_raises_connection_lost_fast(fresh_manager: Manager) -> None:
    ns = fresh_manager.AsyncNamespace()
    ns.x = 1
    assert await ns.x == 1
    kill_server(fresh_manager)
    for _ in range(2):  # first on the broken connection, then while reconnecting
        start = time.monotonic()
        with anyio.fail_after(NO_HANG_SECONDS), pytest.raises(ConnectionLost):
            await ns.x
        assert time.monotonic() - start < FAIL_FAST_SECONDS
    await ns._close()


@pytest.mark.anyio
async def test_async_tasks_waiting_at_the_kill_all_get_connection_lost(
    fresh_manager: Manager,
) -> None:
    tasks = 5
    ns = fresh_manager.AsyncNamespace()
    ns.x = 1
    await ns._flush()
    errors: list[tuple[BaseException, float]] = []
    running = anyio.Event()

    async def reader() -> None:
        try:
            while True:
                assert await ns.x == 1
                running.set()
        except Exception as exc:  # collected for the assertions below
            errors.append((exc, time.monotonic()))

    with anyio.fail_after(NO_HANG_SECONDS):
        async with ns, anyio.create_task_group() as group:
            for _ in range(tasks):
                group.start_soon(reader)
            await running.wait()
            killed_at = kill_server(fresh_manager)
    assert len(errors) == tasks
    for error, failed_at in errors:
        assert isinstance(error, ConnectionLost), repr(error)
        assert failed_at - killed_at < FAIL_FAST_SECONDS


@pytest.mark.anyio
async def test_async_flush_after_kill_raises_connection_lost(
    fresh_manager: Manager, anyio_backend: str
) -> None:
    """The queued write never left (the idle connection's end is found before sending): it is
    reported as not sent, stays queued for a server that comes back, and never hangs."""
    ns = fresh_manager.AsyncNamespace()
    await ns._ping()
    kill_server(fresh_manager)
    ns.x = 1  # queued: cannot fail here
    start = time.monotonic()
    with anyio.fail_after(NO_HANG_SECONDS), pytest.raises(ConnectionLost) as caught:
        await ns._flush()
    assert time.monotonic() - start < FAIL_FAST_SECONDS
    sent = caught.value.request_sent
    if anyio_backend == "trio":  # found unsent before sending (asyncio's loop may not have
        assert sent is False  # read the end yet: its write then fails later, as maybe sent)
    del caught
    ns._aionamespace.table.drop_queued_writes()  # (no server will ever take it)
    await ns._close()


# ---------------------------------------------------------------------- nothing there


def test_connection_lost_is_a_connection_error_and_a_namespace_error() -> None:
    assert issubclass(ConnectionLost, ConnectionError)
    assert issubclass(ConnectionLost, NamespaceError)
    assert issubclass(ConnectionLost, OSError)


@pytest.fixture(params=["missing-file", "not-listening", "tcp-not-listening"])
def dead_address(request: pytest.FixtureRequest, short_tmp: str) -> Iterator[Any]:
    """An address where no server listens: no socket file, a socket file nobody accepts on,
    or a TCP port bound but not listening (connections to it are refused)."""
    if request.param == "missing-file":
        yield os.path.join(short_tmp, "missing.sock")
        return
    family = socket.AF_INET if request.param.startswith("tcp") else socket.AF_UNIX
    with socket.socket(family, socket.SOCK_STREAM) as bound:
        if family == socket.AF_INET:
            bound.bind(("127.0.0.1", 0))
            yield bound.getsockname()
        else:
            bound.bind(os.path.join(short_tmp, "stale.sock"))
            yield bound.getsockname()


def test_sync_connect_to_nothing_raises_connection_lost(dead_address: Any) -> None:
    with pytest.raises(ConnectionLost) as caught:
        Namespace(dead_address)  # a new anonymous namespace: created by a round trip
    assert not isinstance(caught.value, (FileNotFoundError, ConnectionRefusedError))
    assert isinstance(caught.value.__cause__, OSError)
    ns = Namespace(dead_address, "board")
    with pytest.raises(ConnectionLost) as caught:
        ns.x = 1
    assert not isinstance(caught.value, (FileNotFoundError, ConnectionRefusedError))
    assert isinstance(caught.value.__cause__, OSError)
    with pytest.raises(ConnectionLost):
        Manager(dead_address).connect()


@pytest.mark.anyio
async def test_async_connect_to_nothing_raises_connection_lost(dead_address: Any) -> None:
    ns = AsyncNamespace(dead_address, "board")  # (anonymous: its queued creation fails too)
    with anyio.fail_after(NO_HANG_SECONDS), pytest.raises(ConnectionLost):
        await ns.x
    await ns._close()


# ---------------------------------------------------------------------- shutdown and restart


@pytest.mark.slow
def test_shutdown_of_a_stopped_server_is_bounded() -> None:
    """A SIGSTOPped server cannot read the EOF nor handle SIGTERM: shutdown must kill it."""
    manager = Manager()
    manager.start()
    process = manager._process
    assert process is not None
    private_dir = os.path.dirname(str(manager.address))
    os.kill(process.pid, signal.SIGSTOP)
    try:
        start = time.monotonic()
        manager.shutdown()
        elapsed = time.monotonic() - start
    finally:
        if process.poll() is None:  # clean up whatever happened
            os.kill(process.pid, signal.SIGCONT)
            process.kill()
            process.wait()
    assert elapsed < NO_HANG_SECONDS
    assert process.returncode is not None
    assert not os.path.exists(private_dir)


def test_sync_proxy_works_again_after_a_restart(short_tmp: str) -> None:
    path = os.path.join(short_tmp, "ns.sock")
    server = ServeProcess(path)
    try:
        ns = Namespace(path, "board")
        ns.x = 1
        assert ns.x == 1
    finally:
        server.kill()
    with pytest.raises(ConnectionLost):
        ns.x = 2
    with pytest.raises(ConnectionLost):  # still down: the proxy reports it, again
        ns.x = 2
    server = ServeProcess(path)  # same path; the old socket file is stale
    try:
        ns.x = 3  # the same proxy reconnects by itself
        assert ns.x == 3
    finally:
        ns._close()
        server.kill()


@pytest.mark.anyio
async def test_async_proxy_works_again_after_a_restart(short_tmp: str) -> None:
    path = os.path.join(short_tmp, "ns.sock")
    server = await anyio.to_thread.run_sync(ServeProcess, path)
    ns = AsyncNamespace(path, "board")
    try:
        ns.x = 1
        assert await ns.x == 1
    finally:
        await anyio.to_thread.run_sync(server.kill)
    with anyio.fail_after(NO_HANG_SECONDS), pytest.raises(ConnectionLost):
        await ns.x
    ns.x = 2
    with anyio.fail_after(NO_HANG_SECONDS), pytest.raises(ConnectionLost):
        await ns._flush()
    server = await anyio.to_thread.run_sync(ServeProcess, path)
    try:
        with anyio.fail_after(NO_HANG_SECONDS):
            ns.x = 3
            await ns._flush()  # the earlier failure was reported once, not again now
            assert await ns.x == 3
            await ns._close()
    finally:
        await anyio.to_thread.run_sync(server.kill)


@pytest.fixture(params=["unix", "tcp"])
def mute_server(request: pytest.FixtureRequest, short_tmp: str) -> Iterator[Any]:
    """A socket that listens but never accepts: connecting works, nobody ever greets us."""
    if request.param == "unix":
        listener = socket.socket(socket.AF_UNIX)
        address: Any = os.path.join(short_tmp, "mute.sock")
        listener.bind(address)
    else:
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        address = listener.getsockname()
    listener.listen(16)
    with listener:
        yield address


MUTE = Limits(handshake_timeout=0.3)


def test_a_sync_proxy_gives_up_on_a_server_that_never_greets(mute_server: Any) -> None:
    started = time.monotonic()
    with pytest.raises(ConnectionLost, match=r"no handshake within 0\.3 seconds"):
        Namespace(mute_server, "n", limits=MUTE, retry=Retry(attempts=1))._ping()
    assert time.monotonic() - started < 0.3 + FAIL_FAST_SECONDS


@pytest.mark.anyio
async def test_an_async_proxy_gives_up_on_a_server_that_never_greets(mute_server: Any) -> None:
    ns = AsyncNamespace(mute_server, "n", limits=MUTE, retry=Retry(attempts=1))
    started = time.monotonic()
    with pytest.raises(ConnectionLost, match=r"no handshake within 0\.3 seconds"):
        await ns._ping()
    assert time.monotonic() - started < 0.3 + FAIL_FAST_SECONDS
    await ns._close()
