"""Recovery: a server restarted under its clients, a graceful shutdown with 1,000 of them, and
a SIGKILL while every kind of call is waiting.

* Restart: a proxy's read spans a kill -9 and a restart at the same Unix path without the
  caller seeing an error; a write the server never received is retried and applied once; a
  write that reached a server which died before answering raises ``ConnectionLost`` with
  ``request_sent`` and is never sent again (a fake server records what arrives).
* Graceful shutdown: every connected client -- raw sockets past the hello, and proxies waiting
  for a lock or a watch -- is told "the server is shutting down", within about a second; the
  goodbye is the last frame (no lock granted behind it), a client slow to read still gets it,
  and a proxy ignores whatever a server might send after it.
* SIGKILL: every waiting call in every thread and task (locks, watches, plain reads and writes)
  raises ``ConnectionLost`` within a second.

Nothing here sleeps to synchronise: servers are ready when they say so, retries are observed
through a ``Retry`` that reports its failures, and a call is known to be waiting when its thread
is blocked reading its socket (``sys._current_frames``) or its task is registered as a waiter.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import os
import resource
import signal
import socket
import struct
import termios
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import anyio
import msgpack
import pytest

from aionamespace import (
    AsyncNamespace,
    ConnectionLost,
    Manager,
    Namespace,
    Retry,
    Server,
    ServerThread,
)
from aionamespace.protocol.connection import PROTOCOL_NAME, PROTOCOL_VERSION
from deadlines import NO_HANG_SECONDS, async_wait_until, wait_until
from raw_client import read_frames
from server_processes import ServeProcess, kill_server
from waiting_calls import blocked_reading, request_waiting

FAIL_FAST_SECONDS = 1.0  # how soon a waiting call must raise once the server is killed
SHUTDOWN_SECONDS = 1.5  # how long a graceful stop may take, with every client told
SHUTDOWN_CLIENTS = 1000
GOODBYE = [0, 1, "ConnectionLost", "the server is shutting down"]


pytestmark = pytest.mark.usefixtures("collect_garbage")


# ---------------------------------------------------------------------- helpers


@dataclasses.dataclass(frozen=True)
class ReportingRetry(Retry):
    """A ``Retry`` that records every ConnectionLost it is asked about: how a test knows a
    call has already failed (the server is really down) without watching the clock."""

    failed: threading.Event = dataclasses.field(default_factory=threading.Event, compare=False)
    errors: list[tuple[str, bool]] = dataclasses.field(default_factory=list, compare=False)

    def delay(self, op: str, failures: int, error: ConnectionLost) -> float | None:
        self.errors.append((op, error.request_sent))  # not the error: it holds a traceback
        self.failed.set()
        return super().delay(op, failures, error)


def restart_retry() -> ReportingRetry:
    """The retry policy of these tests: 50 attempts, 0.02 s doubling up to 0.1 s (~4.8 s)."""
    return ReportingRetry(attempts=50, backoff=0.02, max_backoff=0.1)


class Restart(threading.Thread):
    """Start a CLI server at ``path`` once a proxy's call has failed against the dead one."""

    def __init__(self, path: str, after: threading.Event) -> None:
        super().__init__(name="restart")
        self.path, self.after = path, after
        self.server: ServeProcess | None = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            if not self.after.wait(NO_HANG_SECONDS):
                raise RuntimeError("the proxy never reported a failed attempt")
            self.server = ServeProcess(self.path)
        except BaseException as exc:  # reported by finish()
            self.error = exc

    def finish(self) -> ServeProcess:
        self.join(NO_HANG_SECONDS * 2)
        assert not self.is_alive(), "the restart hangs"
        if self.error is not None:
            raise self.error
        assert self.server is not None
        return self.server


@pytest.fixture
def socket_path(short_tmp: str) -> str:
    return os.path.join(short_tmp, "ns.sock")


@pytest.fixture
def cli_servers() -> Iterator[list[ServeProcess]]:
    """Every CLI server a test registers here is killed and reaped, pass or fail."""
    started: list[ServeProcess] = []
    yield started
    for server in started:
        server.close()


def pack(frame: Any) -> bytes:
    packed: bytes = msgpack.packb(frame)
    return packed


def hello_frame() -> bytes:
    return pack({"protocol": PROTOCOL_NAME, "version": PROTOCOL_VERSION})


class FakeServer(threading.Thread):
    """A raw socket server that greets, reads one request, and closes without answering: what
    a client sees of a server that dies right after receiving its request. ``last_words``
    makes the bytes it sends (given the request) before closing."""

    def __init__(self, path: str,
                 last_words: Callable[[list[Any]], bytes] = lambda request: b"") -> None:
        super().__init__(name="fake-server")
        self.last_words = last_words
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(path)
        self.listener.listen(16)
        self.listener.settimeout(0.02)  # accept() polls the stop flag (bounded loop)
        self.path = path
        self.requests: list[list[Any]] = []
        self.connections = 0
        self.stopping = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            while not self.stopping.is_set():
                try:
                    conn, _ = self.listener.accept()
                except TimeoutError:
                    continue
                with conn:
                    self.connections += 1
                    self._serve_one(conn)
        except BaseException as exc:  # reported by stop()
            self.error = exc

    def _serve_one(self, conn: socket.socket) -> None:
        conn.settimeout(NO_HANG_SECONDS)
        unpacker = msgpack.Unpacker(raw=False)
        frames = self._read(conn, unpacker)  # the client's hello
        if not frames:
            return
        conn.sendall(msgpack.packb({"protocol": PROTOCOL_NAME, "version": PROTOCOL_VERSION,
                                    "max_frame_bytes": 64 * 1024 * 1024}))
        requests = frames[1:] or self._read(conn, unpacker)
        if requests:
            self.requests.append(requests[0])
            conn.sendall(self.last_words(requests[0]))
        # Then close: the request arrived, its reply never will.

    @staticmethod
    def _read(conn: socket.socket, unpacker: msgpack.Unpacker) -> list[Any]:
        """Read until at least one whole frame has arrived ([] at EOF)."""
        while True:
            data = conn.recv(65536)
            if not data:
                return []
            unpacker.feed(data)
            frames = list(unpacker)
            if frames:
                return frames

    def stop(self) -> None:
        self.stopping.set()
        self.join(NO_HANG_SECONDS)
        self.listener.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
        if self.error is not None:
            raise self.error


@contextlib.contextmanager
def fake_server(path: str, last_words: Callable[[list[Any]], bytes] = lambda request: b"",
                ) -> Iterator[FakeServer]:
    fake = FakeServer(path, last_words)
    fake.start()
    try:
        yield fake
    finally:
        fake.stop()


# ---------------------------------------------------------------------- restart: sync


def test_sync_read_spans_a_restart(socket_path: str, cli_servers: list[ServeProcess]) -> None:
    """kill -9, then a read: it fails against the dead server, is retried, and answers from
    the new one; the caller sees no error."""
    cli_servers.append(old := ServeProcess(socket_path))
    retry = restart_retry()
    ns = Namespace(socket_path, "board", retry=retry)
    ns.x = 1
    assert ns.x == 1
    old.kill()
    restart = Restart(socket_path, after=retry.failed)
    restart.start()
    try:
        snapshot = ns._snapshot()  # during the restart
    finally:
        cli_servers.append(restart.finish())
    assert snapshot == {}  # answered by the new server (the old one held x)
    assert retry.errors, "the read never failed: the restart was not exercised"
    ns.x = 2
    assert ns.x == 2
    ns._close()


def test_sync_write_never_sent_is_retried_once(socket_path: str,
                                               cli_servers: list[ServeProcess]) -> None:
    """Writes made while the server is down never leave (the pooled socket is dead, then
    connecting is refused): they are retried until the new server applies each one once."""
    cli_servers.append(old := ServeProcess(socket_path))
    retry = restart_retry()
    ns = Namespace(socket_path, "board", retry=retry)
    ns.x = 1
    old.kill()
    restart = Restart(socket_path, after=retry.failed)
    restart.start()
    try:
        assert ns._incr("count", 5) == 5
    finally:
        cli_servers.append(restart.finish())
    assert ns._append("log", "once") == 1
    assert ns._snapshot() == {"count": 5, "log": ["once"]}
    assert retry.errors
    assert not any(sent for _, sent in retry.errors), retry.errors
    # Down again, and this time the proxy's connection is gone first: refused, then retried.
    cli_servers[-1].kill()
    ns._close()
    retry.failed.clear()
    restart = Restart(socket_path, after=retry.failed)
    restart.start()
    try:
        assert ns._incr("count", 7) == 7  # a fresh server: counted from 0, exactly once
    finally:
        cli_servers.append(restart.finish())
    assert ns._snapshot() == {"count": 7}
    ns._close()


def test_sync_write_that_reached_a_dying_server_is_not_resent(socket_path: str) -> None:
    retry = restart_retry()
    ns = Namespace(socket_path, "board", retry=retry)
    with fake_server(socket_path) as fake:
        with pytest.raises(ConnectionLost) as caught:
            ns.x = "written once at most"
        assert caught.value.request_sent is True
        assert [request[1:4] for request in fake.requests] == [["set", "board", "x"]]
        assert fake.connections == 1  # never reconnected to send it again
    with ServerThread(socket_path):
        with pytest.raises(AttributeError):
            ns.x  # noqa: B018 - the read is the point: the write was not applied
        assert ns._snapshot() == {}
        ns._close()


# ---------------------------------------------------------------------- restart: async


@pytest.mark.anyio
async def test_async_read_spans_a_restart(socket_path: str,
                                          cli_servers: list[ServeProcess]) -> None:
    cli_servers.append(old := await anyio.to_thread.run_sync(ServeProcess, socket_path))
    retry = restart_retry()
    ns = AsyncNamespace(socket_path, "board", retry=retry)
    ns.x = 1
    assert await ns.x == 1
    await anyio.to_thread.run_sync(old.kill)
    restart = Restart(socket_path, after=retry.failed)
    restart.start()
    try:
        with anyio.fail_after(NO_HANG_SECONDS):
            snapshot = await ns._snapshot()
    finally:
        cli_servers.append(await anyio.to_thread.run_sync(restart.finish))
    assert snapshot == {}
    assert retry.errors
    ns.x = 2
    assert await ns.x == 2
    await ns._close()


@pytest.mark.anyio
async def test_async_write_never_sent_is_retried_once(socket_path: str,
                                                      cli_servers: list[ServeProcess]) -> None:
    cli_servers.append(old := await anyio.to_thread.run_sync(ServeProcess, socket_path))
    retry = restart_retry()
    ns = AsyncNamespace(socket_path, "board", retry=retry)
    ns.x = 1
    await ns._flush()
    await anyio.to_thread.run_sync(old.kill)
    restart = Restart(socket_path, after=retry.failed)
    restart.start()
    try:
        with anyio.fail_after(NO_HANG_SECONDS):
            assert await ns._incr("count", 5) == 5
    finally:
        cli_servers.append(await anyio.to_thread.run_sync(restart.finish))
    assert await ns._append("log", "once") == 1
    assert await ns._snapshot() == {"count": 5, "log": ["once"]}
    assert retry.errors
    assert not any(sent for _, sent in retry.errors), retry.errors
    await anyio.to_thread.run_sync(cli_servers[-1].kill)
    await ns._close()
    retry.failed.clear()
    restart = Restart(socket_path, after=retry.failed)
    restart.start()
    try:
        with anyio.fail_after(NO_HANG_SECONDS):
            assert await ns._incr("count", 7) == 7
    finally:
        cli_servers.append(await anyio.to_thread.run_sync(restart.finish))
    assert await ns._snapshot() == {"count": 7}
    await ns._close()


@pytest.mark.anyio
async def test_async_awaited_write_that_reached_a_dying_server_is_not_resent(
        socket_path: str) -> None:
    retry = restart_retry()
    ns = AsyncNamespace(socket_path, "board", retry=retry)
    with fake_server(socket_path) as fake:
        with anyio.fail_after(NO_HANG_SECONDS), pytest.raises(ConnectionLost) as caught:
            await ns._incr("count")
        assert caught.value.request_sent is True
        assert [request[1:4] for request in fake.requests] == [["incr", "board", "count"]]
        assert fake.connections == 1
    async with Server(socket_path):
        with anyio.fail_after(NO_HANG_SECONDS):
            assert await ns._snapshot() == {}
        await ns._close()


@pytest.mark.anyio
async def test_async_queued_write_that_reached_a_dying_server_is_not_resent(
        socket_path: str) -> None:
    """``ns.x = v`` then ``_flush()``: the loss is reported once, as a write that was sent
    (``request_sent``), and later flushes do not send it again."""
    ns = AsyncNamespace(socket_path, "board", retry=restart_retry())
    with fake_server(socket_path) as fake:
        ns.x = "written once at most"
        with anyio.fail_after(NO_HANG_SECONDS), pytest.raises(ConnectionLost) as caught:
            await ns._flush()
        sent = caught.value.request_sent
        del caught  # no traceback (holding a closed stream) kept alive past the test
        with anyio.fail_after(NO_HANG_SECONDS):
            await ns._flush()  # reported already; nothing left to send
        assert [request[1:4] for request in fake.requests] == [["set", "board", "x"]]
        assert fake.connections == 1
    async with Server(socket_path):
        with anyio.fail_after(NO_HANG_SECONDS), pytest.raises(AttributeError):
            await ns.x
        await ns._close()
    assert sent is True, "ConnectionLost from _flush() for a write that was sent " \
                         "says request_sent=False"


# ---------------------------------------------------------------------- graceful shutdown


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
        return [read_frames(sock, unpacker, until_eof=True)
                for sock, unpacker in zip(self.sockets, self.unpackers, strict=True)]

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
                group.start_soon(self._record,
                                 lambda: watcher._wait_for("w", seen(watching_too)))
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
def test_server_thread_stop_says_goodbye_to_1000_clients(socket_path: str,
                                                         server_backend: str) -> None:
    # Both ends of every connection live in this process.
    with open_file_limit(2 * SHUTDOWN_CLIENTS + 256):
        server = ServerThread(socket_path, backend=server_backend)
        server.start()
        clients: RawClients | None = None
        try:
            clients = RawClients(socket_path, SHUTDOWN_CLIENTS)
            proxies = start_proxies(socket_path)
            start = time.monotonic()
            server.stop()
            elapsed = time.monotonic() - start
            check_goodbyes(clients, proxies)
        finally:
            server.stop()
            if clients is not None:
                clients.close()
    assert elapsed < SHUTDOWN_SECONDS
    assert not os.path.exists(socket_path)


@pytest.mark.slow
def test_sigterm_says_goodbye_to_1000_clients(socket_path: str, server_backend: str,
                                              cli_servers: list[ServeProcess]) -> None:
    with open_file_limit(SHUTDOWN_CLIENTS + 256):
        cli_servers.append(server := ServeProcess(socket_path, server_backend))
        limit = process_open_file_limit(server.process.pid)
        if limit is not None and limit < SHUTDOWN_CLIENTS + 64:
            pytest.skip(f"the server process may open only {limit} files")
        clients = RawClients(socket_path, SHUTDOWN_CLIENTS)
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
    assert elapsed < SHUTDOWN_SECONDS
    assert not os.path.exists(socket_path)


def connect_raw(path: str) -> tuple[socket.socket, msgpack.Unpacker]:
    """A raw client past the hello."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(path)
    sock.settimeout(NO_HANG_SECONDS)
    sock.sendall(hello_frame())
    unpacker = msgpack.Unpacker(raw=False)
    assert read_frames(sock, unpacker, until_eof=False)[0]["version"] == 1
    return sock, unpacker


def exchange(sock: socket.socket, unpacker: msgpack.Unpacker, *requests: list[Any],
             ) -> list[Any]:
    """Send requests in one write; return the frames of the next read(s) until one arrives."""
    sock.sendall(b"".join(msgpack.packb(request) for request in requests))
    return read_frames(sock, unpacker, until_eof=False)


def test_nothing_follows_the_goodbye(socket_path: str, server_backend: str) -> None:
    """The goodbye is a connection's last frame (docs/PROTOCOL.md 7.3), even for a client
    waiting for a lock whose holder's connection closes during the same shutdown: the lock is
    not granted behind the goodbye. (Which connection the server drops first varies from run
    to run -- trio shuffles its scheduling on purpose -- so each round has ten waiters and the
    test runs five rounds.)"""
    waiters_per_round, rounds = 10, 5
    late: list[list[Any]] = []
    for _ in range(rounds):
        with ServerThread(socket_path, backend=server_backend) as server:
            holder = connect_raw(socket_path)
            clients = [connect_raw(socket_path) for _ in range(waiters_per_round)]
            try:
                assert exchange(*holder, [1, "acquire", "k", "L", b"holder", None]) == [
                    [1, 0, None]]
                for index, client in enumerate(clients):  # in line, each one confirmed
                    token = f"waiter{index}".encode()
                    assert exchange(*client, [1, "acquire", "k", "L", token, None],
                                    [2, "ping"]) == [[2, 0, None]]
                server.stop()
                for sock, unpacker in [holder, *clients]:
                    frames = read_frames(sock, unpacker, until_eof=True)
                    if frames != [GOODBYE]:
                        late.append(frames)
            finally:
                for sock, _ in [holder, *clients]:
                    sock.close()
    assert not late, f"{len(late)} connections got frames around the goodbye: {late[:3]}"


def readable_bytes(sock: socket.socket) -> int:
    count: int = struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.FIONREAD, b"\0" * 4))[0]
    return count


def test_a_client_slow_to_read_still_gets_the_goodbye(socket_path: str,
                                                      server_backend: str) -> None:
    """The stop gives every connection FAREWELL_SECONDS (1 s) to take its last words. A client
    that reads, but slowly (64 KiB every 10 ms: a 2 MB answer in about 0.3 s), gets the answer
    the server was sending when it stopped, then the goodbye."""
    value = "x" * 2_000_000  # more than the socket buffers hold: the server's send blocks
    with ServerThread(socket_path, backend=server_backend) as server:
        with Namespace(socket_path, "k") as ns:
            ns.big = value
        sock, unpacker = connect_raw(socket_path)
        with sock:
            sock.sendall(msgpack.packb([1, "get", "k", "big"]))
            wait_until(lambda: readable_bytes(sock) > 0, "the answer is being sent")
            stopping = threading.Thread(target=server.stop)
            stopping.start()
            frames: list[Any] = []
            deadline = time.monotonic() + NO_HANG_SECONDS
            while time.monotonic() < deadline:  # a slow reader, bounded
                data = sock.recv(65536)
                if not data:
                    break
                unpacker.feed(data)
                frames.extend(unpacker)
                time.sleep(0.01)
            stopping.join(NO_HANG_SECONDS)
    assert [frame[:2] for frame in frames] == [[1, 0], [0, 1]], \
        f"got {[frame[:2] for frame in frames]}: the answer or the goodbye was cut off"
    assert frames[1] == GOODBYE


def goodbye_then_grant(request: list[Any]) -> bytes:
    """A server that breaks the protocol: the goodbye, then an answer to the request."""
    return pack(GOODBYE) + pack([request[0], 0, None])


def test_sync_proxy_ignores_a_reply_behind_the_goodbye(socket_path: str) -> None:
    ns = Namespace(socket_path, "board", retry=Retry(attempts=1))
    with fake_server(socket_path, goodbye_then_grant):
        with pytest.raises(ConnectionLost, match="shutting down"):
            ns._ping()
    ns._close()


@pytest.mark.anyio
async def test_async_proxy_ignores_a_reply_behind_the_goodbye(socket_path: str) -> None:
    ns = AsyncNamespace(socket_path, "board", retry=Retry(attempts=1))
    with fake_server(socket_path, goodbye_then_grant):
        with anyio.fail_after(NO_HANG_SECONDS), pytest.raises(ConnectionLost,
                                                             match="shutting down"):
            await ns._ping()
        await ns._close()


# ---------------------------------------------------------------------- SIGKILL: every waiter


@pytest.fixture
def killable_manager() -> Iterator[Manager]:
    with Manager() as running:
        yield running


def test_sigkill_fails_every_waiting_sync_call(killable_manager: Manager) -> None:
    ns = killable_manager.Namespace("board", w="probe", x=0)
    outcomes: dict[str, tuple[BaseException | None, float]] = {}
    watching = threading.Event()
    busy = threading.Barrier(3)

    def record(name: str, call: Callable[[], Any]) -> Callable[[], None]:
        def run() -> None:
            try:
                call()
            except BaseException as exc:  # reported to the main thread
                outcomes[name] = (exc, time.monotonic())
            else:
                outcomes[name] = (None, time.monotonic())
        return run

    def lock_waiter(timeout: float | None) -> Callable[[], None]:
        def call() -> None:
            with ns._lock("L", timeout=timeout):
                pass
        return call

    def seen(value: Any) -> bool:
        watching.set()
        return False

    def wait_for() -> None:
        ns._wait_for("w", seen)

    def iterate_watch() -> None:
        with ns._watch("x") as watch:
            for _ in watch:
                pass

    def hammer() -> None:
        busy.wait(NO_HANG_SECONDS)
        for i in range(10**9):
            ns.x = i
            assert ns.x == i

    held = ns._lock("L")
    held.__enter__()  # held by the main thread's connection
    threads = {name: threading.Thread(target=record(name, call), name=name) for name, call in [
        ("lock", lock_waiter(None)), ("lock-timeout", lock_waiter(30.0)),
        ("wait_for", wait_for), ("watch", iterate_watch),
        ("hammer-1", hammer), ("hammer-2", hammer)]}
    for thread in threads.values():
        thread.start()
    try:
        wait_until(lambda: blocked_reading(threads["lock"], "__enter__"), "a lock waiter waits")
        wait_until(lambda: blocked_reading(threads["lock-timeout"], "__enter__"),
                   "the other lock waiter waits")
        assert watching.wait(NO_HANG_SECONDS)
        wait_until(lambda: blocked_reading(threads["wait_for"], "next_push"), "_wait_for waits")
        wait_until(lambda: blocked_reading(threads["watch"], "next_push"), "a watch waits")
        busy.wait(NO_HANG_SECONDS)
        assert not outcomes, outcomes
        killed_at = kill_server(killable_manager)
    finally:
        for thread in threads.values():
            thread.join(NO_HANG_SECONDS)
    assert not [name for name, thread in threads.items() if thread.is_alive()], "threads hang"
    assert sorted(outcomes) == sorted(threads)
    for name, (error, failed_at) in outcomes.items():
        assert isinstance(error, ConnectionLost), f"{name}: {error!r}"
        assert failed_at - killed_at < FAIL_FAST_SECONDS, f"{name}: {failed_at - killed_at:.3f}s"
    with pytest.raises(ConnectionLost):
        held.__exit__(None, None, None)


@pytest.mark.anyio
async def test_sigkill_fails_every_waiting_async_task(killable_manager: Manager) -> None:
    manager = killable_manager
    outcomes: dict[str, tuple[BaseException | None, float]] = {}
    holder = manager.AsyncNamespace("board", w="probe", x=0)
    waiters = AsyncNamespace(manager.address, "board", authkey=manager.authkey)
    watcher = AsyncNamespace(manager.address, "board", authkey=manager.authkey)
    hammered = AsyncNamespace(manager.address, "board", authkey=manager.authkey)
    held, watching, iterating, hammering = (anyio.Event() for _ in range(4))

    async def record(name: str, call: Callable[[], Any]) -> None:
        try:
            await call()
        except Exception as exc:  # collected for the assertions below
            outcomes[name] = (exc, time.monotonic())
        else:
            outcomes[name] = (None, time.monotonic())

    async def hold() -> None:
        with contextlib.suppress(ConnectionLost):  # releasing fails: the server is gone
            async with holder._lock("L"):
                held.set()
                await anyio.sleep_forever()  # until the test is over

    async def lock_waiter(limit: float | None) -> None:
        async with waiters._lock("L", timeout=limit):
            pass

    def seen(value: Any) -> bool:
        watching.set()
        return False

    async def iterate_watch() -> None:
        async with watcher._watch("x") as watch:
            iterating.set()
            async for _ in watch:
                pass

    async def hammer_with_pump() -> None:
        async with hammered:  # a task sends the writes as they are made
            for i in range(10**9):
                hammered.x = i
                assert await hammered.x == i
                hammering.set()

    async def hammer_same_connection() -> None:
        for i in range(10**9):
            hammered.y = i
            assert await hammered.y == i

    tasks: list[tuple[str, Callable[[], Any]]] = [
        ("lock", lambda: lock_waiter(None)), ("lock-timeout", lambda: lock_waiter(30.0)),
        ("wait_for", lambda: watcher._wait_for("w", seen)), ("watch", iterate_watch),
        ("hammer-1", hammer_with_pump), ("hammer-2", hammer_same_connection)]
    with anyio.fail_after(NO_HANG_SECONDS):
        async with anyio.create_task_group() as group:
            group.start_soon(hold)
            await held.wait()
            for name, call in tasks:
                group.start_soon(record, name, call)
            await async_wait_until(request_waiting(waiters, 2), "both lock waiters wait")
            await watching.wait()
            await iterating.wait()
            await hammering.wait()
            assert not outcomes, outcomes
            killed_at = await anyio.to_thread.run_sync(kill_server, manager)
            await async_wait_until(lambda: len(outcomes) == len(tasks), "every task failed")
            group.cancel_scope.cancel()  # the holder
    for ns in (holder, waiters, watcher, hammered):
        with contextlib.suppress(ConnectionLost):
            await ns._close()
    for name, (error, failed_at) in outcomes.items():
        assert isinstance(error, ConnectionLost), f"{name}: {error!r}"
        assert failed_at - killed_at < FAIL_FAST_SECONDS, f"{name}: {failed_at - killed_at:.3f}s"
