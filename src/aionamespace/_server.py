"""The server: anyio listeners and one task per connection, around the sans-IO protocol.

Each connection task loops: read a chunk, decode every complete frame in it, apply them all to
the store without awaiting, and answer with one write. A server that awaited per frame and sent
per reply would be about 20x slower under pipelining, so the batching is the design, not an
optimisation.

Three ways to run it:

* inside an event loop: ``async with Server(address) as server`` or
  ``await task_group.start(server.serve)``, on asyncio or trio;
* in a background thread of this process: ``with ServerThread(address) as server``;
* in a spawned process: ``aionamespace.Manager().start()`` or ``python -m aionamespace serve``.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import socket
import stat
import threading
from collections.abc import Callable
from types import TracebackType
from typing import Any

import anyio
import anyio.abc
import anyio.from_thread

from ._dispatch import Dispatcher
from ._protocol import Address, Limits, ServerConnection, parse_address
from ._store import MemoryStore, Store

__all__ = ["Server", "ServerThread"]

READ_CHUNK_BYTES = 64 * 1024
REFUSAL_TIMEOUT_SECONDS = 1.0  # a peer being dropped gets this long to take our last words
DEFAULT_TCP_ADDRESS: tuple[str, int] = ("127.0.0.1", 0)


class Server:
    """An aionamespace server listening on a Unix socket path or a TCP ``(host, port)``."""

    def __init__(
        self,
        address: Address | None = None,
        *,
        authkey: bytes | None = None,
        store: Store | None = None,
        limits: Limits | None = None,
    ) -> None:
        if authkey is not None and not isinstance(authkey, bytes):
            raise TypeError(f"authkey must be bytes, not {type(authkey).__name__}")
        self._requested = parse_address(address) if address is not None else DEFAULT_TCP_ADDRESS
        self._authkey = authkey
        self.store: Store = store if store is not None else MemoryStore()
        self.limits = limits or Limits()
        self._address: Address | None = None
        self._cancel_scope: anyio.CancelScope | None = None
        self._task_group: anyio.abc.TaskGroup | None = None  # for `async with Server()`
        self._timers: anyio.abc.TaskGroup | None = None
        self.dispatcher = Dispatcher(self.store, self._call_later)

    @property
    def address(self) -> Address:
        """The address clients connect to (with the real port when port 0 was asked for)."""
        if self._address is None:
            raise RuntimeError("the server is not listening yet")
        return self._address

    def __repr__(self) -> str:
        where = self._address if self._address is not None else self._requested
        return f"<aionamespace.Server {'listening' if self._address else 'idle'} at {where!r}>"

    async def serve(self, *, task_status: anyio.abc.TaskStatus[Address] = anyio.TASK_STATUS_IGNORED,
                    ) -> None:
        """Listen and serve until cancelled; reports the bound address through ``task_status``."""
        sock, address = make_listening_socket(self._requested)
        try:
            with anyio.CancelScope() as self._cancel_scope:
                async with anyio.create_task_group() as self._timers:
                    if _running_on_asyncio():
                        await self._serve_asyncio(sock, address, task_status)
                    else:
                        await self._serve_streams(sock, address, task_status)
        finally:
            self._timers = None
            self._address = None
            sock.close()
            if isinstance(address, str):
                with contextlib.suppress(OSError):
                    if stat.S_ISSOCK(os.stat(address).st_mode):
                        os.unlink(address)

    async def _serve_streams(self, sock: socket.socket, address: Address,
                             task_status: anyio.abc.TaskStatus[Address]) -> None:
        """Any anyio backend: one task per connection (used on trio)."""
        listener = await anyio.abc.SocketListener.from_socket(sock)
        async with listener, anyio.create_task_group() as connections:
            self._address = address
            task_status.started(address)
            await listener.serve(self._handle, connections)

    async def _serve_asyncio(self, sock: socket.socket, address: Address,
                             task_status: anyio.abc.TaskStatus[Address]) -> None:
        """asyncio: protocol callbacks, no task per connection.

        anyio's asyncio streams cost four event-loop iterations per request on a Unix socket
        (checkpoint, EAGAIN, add_reader, wake-up); ``data_received`` answers in the same
        iteration that read the bytes. Measured: 0.73x the stdlib's round trips before, see
        benchmarks/roundtrip.py for after.
        """
        loop = asyncio.get_running_loop()
        connections: set[_AsyncioConnection] = set()
        buffer = memoryview(bytearray(READ_CHUNK_BYTES))

        def factory() -> _AsyncioConnection:
            return _AsyncioConnection(self, connections, buffer)

        if sock.family == socket.AF_UNIX:
            server = await loop.create_unix_server(factory, sock=sock)
        else:
            server = await loop.create_server(factory, sock=sock)
        try:
            self._address = address
            task_status.started(address)
            await anyio.sleep_forever()
        finally:
            server.close()
            for connection in list(connections):
                connection.transport.close()
            with anyio.move_on_after(1, shield=True):
                await server.wait_closed()

    def stop(self) -> None:
        """Stop listening and close every connection (idempotent; call from the loop's thread)."""
        if self._cancel_scope is not None:
            self._cancel_scope.cancel()

    async def __aenter__(self) -> Server:
        self._task_group = anyio.create_task_group()
        await self._task_group.__aenter__()
        try:
            await self._task_group.start(self.serve)
        except BaseException as exc:
            await self._task_group.__aexit__(type(exc), exc, exc.__traceback__)
            raise
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> bool | None:
        assert self._task_group is not None
        self.stop()
        try:
            return await self._task_group.__aexit__(exc_type, exc, tb)
        finally:
            self._task_group = None

    # -------------------------------------------------------------------- one connection

    def new_connection(self) -> ServerConnection:
        """The sans-IO state of one new connection."""
        return ServerConnection(self.limits, self._authkey)

    async def _handle(self, stream: anyio.abc.ByteStream) -> None:
        """One connection on anyio streams: this task reads and applies, a helper sends."""
        peer = _StreamPeer(self.new_connection())
        async with stream, anyio.create_task_group() as group:
            group.start_soon(peer.send_forever, stream)
            try:
                while not peer.protocol.refused:
                    data = await stream.receive(READ_CHUNK_BYTES)
                    events = peer.protocol.receive_data(data)
                    if events:
                        peer.write(self.dispatcher.respond(peer, events))
                    await peer.below_high_water()
            except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError,
                    OSError):
                pass
            finally:
                self.dispatcher.connection_lost(peer)
            with anyio.move_on_after(REFUSAL_TIMEOUT_SECONDS):
                await peer.drained()  # a refused peer still gets the reason
            group.cancel_scope.cancel()

    def _call_later(self, delay: float, callback: Callable[[], None]) -> Callable[[], None]:
        """Run ``callback`` after ``delay`` seconds unless cancelled: the lock timeouts."""
        scope = anyio.CancelScope()

        async def timer() -> None:
            with scope:
                await anyio.sleep(delay)
                callback()

        assert self._timers is not None
        self._timers.start_soon(timer)
        return scope.cancel


class _StreamPeer:
    """A connection on anyio streams: a writer task sends whatever was queued, coalesced."""

    HIGH_WATER_BYTES = 1024 * 1024

    def __init__(self, protocol: ServerConnection) -> None:
        self.protocol = protocol
        self._outbox: list[bytes] = []
        self._queued_bytes = 0
        self._wakeup = anyio.Event()
        self._sent = anyio.Event()

    def write(self, data: bytes) -> None:
        if data:
            self._outbox.append(data)
            self._queued_bytes += len(data)
            self._wakeup.set()

    async def send_forever(self, stream: anyio.abc.ByteStream) -> None:
        try:
            while True:
                await self._wakeup.wait()
                self._wakeup = anyio.Event()
                data = b"".join(self._outbox)
                self._outbox.clear()
                self._queued_bytes = 0
                await stream.send(data)
                self._sent.set()
                self._sent = anyio.Event()
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
            self._outbox.clear()  # the reader sees the broken stream and ends the connection
            self._sent.set()

    async def below_high_water(self) -> None:
        """Backpressure: stop reading a peer that does not read our answers."""
        while self._queued_bytes > self.HIGH_WATER_BYTES:
            await self._sent.wait()

    async def drained(self) -> None:
        while self._outbox:
            await self._sent.wait()


class _AsyncioConnection(asyncio.BufferedProtocol):
    """One connection on asyncio: bytes in, the batch applied, one write out, same iteration.

    Every connection reads into the server's one buffer (``recv_into``): the bytes are handed
    to the connection's decoder before the next read, and idle connections hold no buffer.
    """

    def __init__(self, server: Server, connections: set[_AsyncioConnection],
                 buffer: memoryview) -> None:
        self.server = server
        self.connections = connections
        self.buffer = buffer
        self.protocol = server.new_connection()
        self.transport: asyncio.Transport = None  # type: ignore[assignment]

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.connections.add(self)

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.buffer

    def write(self, data: bytes) -> None:
        if data:
            self.transport.write(data)

    def buffer_updated(self, nbytes: int) -> None:
        events = self.protocol.receive_data(self.buffer[:nbytes])
        if events:
            self.write(self.server.dispatcher.respond(self, events))
        if self.protocol.refused:
            self.transport.close()  # after the buffered answers and the refusal are written

    def pause_writing(self) -> None:
        # The peer is not reading its replies: stop reading its requests, so the memory we
        # hold for it stays bounded by the transport's high-water mark.
        self.transport.pause_reading()

    def resume_writing(self) -> None:
        self.transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self.connections.discard(self)
        self.server.dispatcher.connection_lost(self)


def make_listening_socket(address: Address, backlog: int = 4096,
                          ) -> tuple[socket.socket, Address]:
    """A bound, listening socket; Unix sockets get mode 0600 and replace a stale socket file."""
    if isinstance(address, tuple):
        host, port = address
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.create_server((host, port), family=family, backlog=backlog)
        return sock, (host, sock.getsockname()[1])
    _remove_stale_socket(address)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(address)
        os.chmod(address, 0o600)
        sock.listen(backlog)
    except BaseException:
        sock.close()
        raise
    return sock, address


def _remove_stale_socket(path: str) -> None:
    """Unlink a socket file left by a server that died; refuse one a live server listens on."""
    try:
        if not stat.S_ISSOCK(os.stat(path).st_mode):
            return  # not a socket: let bind() fail with EADDRINUSE rather than delete a file
    except FileNotFoundError:
        return
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(path)
        except (ConnectionRefusedError, FileNotFoundError):
            os.unlink(path)  # nobody listens: stale
            return
    raise OSError(errno.EADDRINUSE, f"a server is already listening on {path}")


def _running_on_asyncio() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


class ServerThread:
    """A ``Server`` running on its own event loop in a background thread of this process.

    ``with ServerThread(address) as server: ...`` starts it and stops it; ``server.address`` is
    where clients connect. ``backend`` is "asyncio" or "trio".
    """

    def __init__(self, address: Address | None = None, *, backend: str = "asyncio",
                 **server_options: Any) -> None:
        self.server = Server(address, **server_options)
        self._backend = backend
        self._portal_cm: contextlib.AbstractContextManager[anyio.from_thread.BlockingPortal] | None
        self._portal_cm = None
        self._portal: anyio.from_thread.BlockingPortal | None = None
        self._future: Any = None
        self._lock = threading.Lock()

    @property
    def address(self) -> Address:
        return self.server.address

    def start(self) -> Address:
        with self._lock:
            if self._portal is not None:
                raise RuntimeError("the server thread is already running")
            self._portal_cm = anyio.from_thread.start_blocking_portal(self._backend)
            self._portal = self._portal_cm.__enter__()
            try:
                self._future, address = self._portal.start_task(self.server.serve)
            except BaseException:
                self._portal_cm.__exit__(None, None, None)
                self._portal = self._portal_cm = None
                raise
            return address  # type: ignore[no-any-return]

    def stop(self) -> None:
        with self._lock:
            if self._portal is None or self._portal_cm is None:
                return
            portal, portal_cm = self._portal, self._portal_cm
            self._portal = self._portal_cm = None
            portal.call(self.server.stop)
            with contextlib.suppress(Exception):
                self._future.result(timeout=5)
            portal_cm.__exit__(None, None, None)

    def __enter__(self) -> ServerThread:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
