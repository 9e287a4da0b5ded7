"""A graceful shutdown with 1,000 clients (``ServerThread.stop``, SIGTERM to ``serve``): every
raw connection past the hello, and every proxy call waiting for a lock or a watch, is told "the
server is shutting down", and the whole stop takes about a second.

Nothing here sleeps to synchronise: a proxy's call is known to be waiting when its task is
registered as a waiter (``request_waiting``).
"""

from __future__ import annotations

import contextlib
import os
import resource
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import anyio
import msgpack
import pytest

from aionamespace import AsyncNamespace, ConnectionLost, Retry, ServerThread
from aionamespace.protocol.connection import PROTOCOL_NAME
from deadlines import NO_HANG_SECONDS, async_wait_until
from raw_client import GOODBYE, hello_frame, read_frames
from server_processes import ServeProcess
from waiting_calls import request_waiting

SHUTDOWN_SECONDS = 1.5  # how long a graceful stop may take, with every client told
SHUTDOWN_CLIENTS = 1000


def shutdown_bound(greeting_seconds: float) -> float:
    """How long the stop of SHUTDOWN_CLIENTS clients may take: SHUTDOWN_SECONDS, plus as long
    as greeting them took. Telling 1,000 clients goodbye is work of the same kind and size as
    greeting them, so on a machine that other processes keep busy (a second pytest worker, a
    benchmark) the bound grows with what the machine did then, instead of failing a prompt stop
    that only shared its cores."""
    return SHUTDOWN_SECONDS + greeting_seconds


pytestmark = pytest.mark.usefixtures("collect_garbage")


@contextlib.contextmanager
def open_file_limit(needed: int) -> Iterator[None]:
    """Raise this process's soft RLIMIT_NOFILE to ``needed`` if it is lower (skip if the hard
    limit forbids it); restore it afterwards."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= needed:
        yield
        return
    if hard != resource.RLIM_INFINITY and hard < needed:
        pytest.skip(f"needs {needed} open files; the hard limit is {hard}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def process_open_file_limit(pid: int) -> int | None:
    """The soft open-file limit of process ``pid`` (Linux), or None if unknown."""
    try:
        with open(f"/proc/{pid}/limits") as limits:
            for line in limits:
                if line.startswith("Max open files"):
                    soft = line.split()[3]
                    return 1 << 62 if soft == "unlimited" else int(soft)
    except OSError:
        return None
    return None


class RawClients:
    """``count`` raw sockets that completed the hello; then what each reads until EOF."""

    def __init__(self, path: str, count: int) -> None:
        self.sockets: list[socket.socket] = []
        self.unpackers: list[msgpack.Unpacker] = []
        hello = hello_frame()
        try:
            for _ in range(count):
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                self.sockets.append(sock)
                sock.connect(path)  # blocking: waits while the accept queue is full
                sock.settimeout(NO_HANG_SECONDS)
                sock.sendall(hello)
                self.unpackers.append(msgpack.Unpacker(raw=False))
            for sock, unpacker in zip(self.sockets, self.unpackers, strict=True):
                frames = read_frames(sock, unpacker, until_eof=False)
                assert frames
                assert frames[0]["protocol"] == PROTOCOL_NAME
                assert "error" not in frames[0], frames[0]
        except BaseException:
            self.close()
            raise

    def read_to_eof(self) -> list[list[Any]]:
        return [
            read_frames(sock, unpacker, until_eof=True)
            for sock, unpacker in zip(self.sockets, self.unpackers, strict=True)
        ]

    def close(self) -> None:
        for sock in self.sockets:
            sock.close()


class WaitingProxies(threading.Thread):
    """Async proxies on their own event loop, each with a call waiting on the server when the
    shutdown comes: a lock holder waiting on a watch, two tasks waiting for its lock (sharing a
    proxy), one waiting in ``_wait_for``. ``outcomes`` gets what each call raised."""

    TASKS = 4

    def __init__(self, path: str, backend: str) -> None:
        super().__init__(name=f"proxies-{backend}")
        self.path, self.backend = path, backend
        self.ready = threading.Event()
        self.outcomes: list[BaseException | None] = []
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            anyio.run(self._main, backend=self.backend)
        except BaseException as exc:  # reported by finish()
            self.error = exc

    async def _record(self, call: Callable[[], Any]) -> None:
        try:
            await call()
        except Exception as exc:  # collected for the test's assertions
            self.outcomes.append(exc)
        else:
            self.outcomes.append(None)

    async def _main(self) -> None:
        once, name = Retry(attempts=1), f"shutdown-{self.backend}"
        holder = AsyncNamespace(self.path, name, retry=once)
        waiters = AsyncNamespace(self.path, name, retry=once)
        watcher = AsyncNamespace(self.path, name, retry=once)
        held, watching, watching_too = anyio.Event(), anyio.Event(), anyio.Event()

        def seen(event: anyio.Event) -> Callable[[Any], bool]:
            def predicate(value: Any) -> bool:
                event.set()
                return False

            return predicate

        async def hold() -> None:
            watcher.w = "probe"
            await watcher._flush()
            await holder._lock("L").__aenter__()  # never released: the server goes first
            held.set()
            await holder._wait_for("w", seen(watching))

        with anyio.fail_after(NO_HANG_SECONDS):
            async with anyio.create_task_group() as group:
                group.start_soon(self._record, hold)
                await held.wait()
                await watching.wait()
                for _ in range(2):
                    group.start_soon(self._record, lambda: waiters._lock("L").__aenter__())
                group.start_soon(self._record, lambda: watcher._wait_for("w", seen(watching_too)))
                await watching_too.wait()
                await async_wait_until(request_waiting(waiters, 2), "both waiters wait")
                self.ready.set()
        for ns in (holder, waiters, watcher):
            with contextlib.suppress(ConnectionLost):
                await ns._close()

    def finish(self) -> list[BaseException | None]:
        self.join(NO_HANG_SECONDS)
        assert not self.is_alive(), f"{self.name} hangs"
        if self.error is not None:
            raise self.error
        return self.outcomes


def check_goodbyes(clients: RawClients, proxies: list[WaitingProxies]) -> None:
    received = clients.read_to_eof()
    wrong = [frames for frames in received if frames != [GOODBYE]]
    assert not wrong, f"{len(wrong)} raw clients did not get the goodbye, e.g. {wrong[0]!r}"
    for group in proxies:
        outcomes = group.finish()
        assert len(outcomes) == WaitingProxies.TASKS
        for outcome in outcomes:
            assert isinstance(outcome, ConnectionLost), repr(outcome)
            assert "the server is shutting down" in str(outcome), str(outcome)


def start_proxies(path: str) -> list[WaitingProxies]:
    groups = [WaitingProxies(path, backend) for backend in ("asyncio", "trio")]
    for group in groups:
        group.start()
    for group in groups:
        if not group.ready.wait(NO_HANG_SECONDS):
            group.join(NO_HANG_SECONDS)
            raise AssertionError(f"{group.name} never got its calls waiting: {group.error!r}")
    return groups


@pytest.mark.slow
def test_server_thread_stop_says_goodbye_to_1000_clients(
    socket_path: str, server_backend: str
) -> None:
    # Both ends of every connection live in this process.
    with open_file_limit(2 * SHUTDOWN_CLIENTS + 256):
        server = ServerThread(socket_path, backend=server_backend)
        server.start()
        clients: RawClients | None = None
        try:
            greeting = time.monotonic()
            clients = RawClients(socket_path, SHUTDOWN_CLIENTS)
            greeting = time.monotonic() - greeting
            proxies = start_proxies(socket_path)
            start = time.monotonic()
            server.stop()
            elapsed = time.monotonic() - start
            check_goodbyes(clients, proxies)
        finally:
            server.stop()
            if clients is not None:
                clients.close()
    assert elapsed < shutdown_bound(greeting), (elapsed, greeting)
    assert not os.path.exists(socket_path)


@pytest.mark.slow
def test_sigterm_says_goodbye_to_1000_clients(
    socket_path: str, server_backend: str, cli_servers: list[ServeProcess]
) -> None:
    with open_file_limit(SHUTDOWN_CLIENTS + 256):
        cli_servers.append(server := ServeProcess(socket_path, server_backend))
        limit = process_open_file_limit(server.process.pid)
        if limit is not None and limit < SHUTDOWN_CLIENTS + 64:
            pytest.skip(f"the server process may open only {limit} files")
        greeting = time.monotonic()
        clients = RawClients(socket_path, SHUTDOWN_CLIENTS)
        greeting = time.monotonic() - greeting
        try:
            proxies = start_proxies(socket_path)
            start = time.monotonic()
            server.process.send_signal(signal.SIGTERM)
            code = server.process.wait(timeout=NO_HANG_SECONDS)
            elapsed = time.monotonic() - start
            check_goodbyes(clients, proxies)
        finally:
            clients.close()
    assert code == 0
    assert elapsed < shutdown_bound(greeting), (elapsed, greeting)
    assert not os.path.exists(socket_path)
