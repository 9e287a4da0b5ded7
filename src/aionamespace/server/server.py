"""The server: anyio listeners and one task per connection, around the sans-IO protocol.

Each connection reads a chunk, decodes every complete frame in it, applies them all to the
store without awaiting, and answers with one write. A server that awaited per frame and sent
per reply would pay a loop iteration and a system call per request under pipelining, so the
batching is the design, not an optimisation.

Three ways to run it:

* inside an event loop: ``async with Server(address) as server`` or
  ``await task_group.start(server.serve)``, on asyncio or trio;
* in a background thread of this process: ``with ServerThread(address) as server``;
* in a spawned process: ``aionamespace.Manager().start()`` or ``python -m aionamespace serve``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import socket
import ssl
import stat
import threading
import time
from collections.abc import Callable
from types import TracebackType
from typing import Any, cast

import anyio
import anyio.abc
import anyio.from_thread
import anyio.lowlevel

from ..protocol.addresses import Address, parse_address
from ..protocol.connection import ServerConnection
from ..protocol.limits import Limits
from .admission import FAREWELL_SECONDS, Connections
from .dispatch import Dispatcher
from .durability import Durability
from .info import RequestRate, server_figures
from .listeners import LISTEN_BACKLOG, TLSListener, make_listening_socket
from .remote_dispatch import RemoteDispatcher
from .remote_serving import BatchTasks, RemoteConnections
from .shells import READ_CHUNK_BYTES, AsyncioConnection, StreamConnection
from .stores import MemoryStore, Store
from .stores.remote import RemoteStore
from .timers import Timers

__all__ = ["Server", "ServerThread"]

logger = logging.getLogger("aionamespace.server")

DEFAULT_TCP_ADDRESS: tuple[str, int] = ("127.0.0.1", 0)


class Server:
    """An aionamespace server listening on a Unix socket path or a TCP ``(host, port)``."""

    def __init__(
        self,
        address: Address | None = None,
        *,
        authkey: bytes | None = None,
        store: Store | RemoteStore | None = None,
        limits: Limits | None = None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        if authkey is not None and not isinstance(authkey, bytes):
            raise TypeError(f"authkey must be bytes, not {type(authkey).__name__}")
        self._requested = parse_address(address) if address is not None else DEFAULT_TCP_ADDRESS
        self._authkey = authkey
        self.limits = limits or Limits()
        # A store passed in keeps the history bounds it was made with.
        self.store: Store | RemoteStore = store if store is not None else MemoryStore(self.limits)
        self._address: Address | None = None
        self._stop: anyio.Event | None = None
        self._ssl_context = ssl_context
        self._task_group: anyio.abc.TaskGroup | None = None  # for `async with Server()`
        self._timers = Timers()  # lock timeouts, handshake deadlines, ... (run while serving)
        self.dispatcher: Dispatcher
        #: A store the server awaits (stores/remote.py): batches go to it through a task.
        self.remote: RemoteStore | None = None
        if getattr(self.store, "remote", False):
            self.remote = cast(RemoteStore, self.store)
            # A store that shares locks between its servers gives the table (redis_locks.py).
            lock_table = getattr(self.remote, "lock_table", None)
            locks = lock_table(self._call_later) if lock_table is not None else None
            # And one that shares anonymous namespaces, their registry (redis_anonymous.py).
            registry = getattr(self.remote, "anonymous_registry", None)
            self.dispatcher = RemoteDispatcher(
                self.remote, self._call_later, self.limits, locks=locks, registry=registry
            )
        else:
            self.dispatcher = Dispatcher(cast(Store, self.store), self._call_later, self.limits)
        self.durability = Durability(cast(Store, self.store))  # (never holding for a remote one)

    @property
    def epoch(self) -> str:
        """The epoch of the server's store: told in every hello and by ``info``."""
        return self.store.epoch

    @property
    def address(self) -> Address:
        """The address clients connect to (with the real port when port 0 was asked for)."""
        if self._address is None:
            raise RuntimeError("the server is not listening yet")
        return self._address

    def __repr__(self) -> str:
        where = self._address if self._address is not None else self._requested
        return f"<aionamespace.Server {'listening' if self._address else 'idle'} at {where!r}>"

    async def serve(
        self,
        *,
        task_status: anyio.abc.TaskStatus[Address] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        """Listen and serve until ``stop()``; reports the bound address through ``task_status``.

        ``stop()`` (or cancelling this task) ends it gracefully: every client is told the server
        is shutting down, and the whole shutdown is bounded by about a second.
        """
        if self.remote is not None:
            self._check_backend(self.remote)  # (before the store opens anything)
        try:
            if self.remote is not None:
                await self.remote.start()  # (closed below even if it fails half-way)
            await self._serve(task_status)
        finally:
            if self.remote is not None:
                with anyio.CancelScope(shield=True):
                    await self.remote.aclose()

    def _check_backend(self, store: RemoteStore) -> None:
        """Refuse a store that cannot run on this event loop (``backends``)."""
        backends = getattr(store, "backends", None)
        backend = "asyncio" if _running_on_asyncio() else "trio"
        if backends is not None and backend not in backends:
            raise RuntimeError(
                f"{type(store).__name__} works on {' and '.join(backends)} only, and this "
                f"server runs on {backend}: serve it on {backends[0]}"
            )

    async def _serve(self, task_status: anyio.abc.TaskStatus[Address]) -> None:
        sock, address = make_listening_socket(self._requested)
        self._stop = stop = anyio.Event()
        try:
            async with anyio.create_task_group() as helpers:
                helpers.start_soon(self._timers.run)
                helpers.start_soon(self.durability.run)
                if self.remote is not None:  # other servers' revisions, as long as it serves
                    helpers.start_soon(self.remote.run)
                connections = self._connections(helpers)
                self._describe_while_serving(connections)
                try:
                    if _running_on_asyncio():
                        await self._serve_asyncio(sock, address, connections, stop, task_status)
                    else:
                        await self._serve_streams(sock, address, connections, stop, task_status)
                finally:
                    with anyio.CancelScope(shield=True):
                        await connections.goodbye()
                        if isinstance(connections, RemoteConnections):
                            await connections.tasks.stop()
                    helpers.cancel_scope.cancel()
                    if isinstance(self.dispatcher, RemoteDispatcher):
                        self.dispatcher.spawn = None
            with anyio.CancelScope(shield=True):
                await self.durability.flush()  # what changed after the last commit
        finally:
            self._address = None
            sock.close()
            if isinstance(address, str):
                with contextlib.suppress(OSError):
                    if stat.S_ISSOCK(os.stat(address).st_mode):
                        os.unlink(address)

    def _connections(self, helpers: anyio.abc.TaskGroup) -> Connections:
        dispatcher = self.dispatcher
        if isinstance(dispatcher, RemoteDispatcher):
            dispatcher.spawn = helpers.start_soon
            run_locks = getattr(dispatcher.locks, "run", None)  # (a table shared through it)
            if run_locks is not None:
                helpers.start_soon(run_locks)
            if dispatcher.shared is not None:  # renewing and sweeping the shared registry
                helpers.start_soon(dispatcher.shared.registry.run)
            return RemoteConnections(
                self.limits,
                dispatcher,
                self._call_later,
                self.new_connection,
                self.durability,
                BatchTasks(helpers),
            )
        return Connections(
            self.limits, dispatcher, self._call_later, self.new_connection, self.durability
        )

    async def _serve_streams(
        self,
        sock: socket.socket,
        address: Address,
        connections: Connections,
        stop: anyio.Event,
        task_status: anyio.abc.TaskStatus[Address],
    ) -> None:
        """Any anyio backend: one task per connection (used on trio)."""
        listener: anyio.abc.Listener[Any] = await anyio.abc.SocketListener.from_socket(sock)
        if self._ssl_context is not None:
            listener = TLSListener(
                listener,
                self._ssl_context,
                standard_compatible=False,
                handshake_timeout=self.limits.handshake_timeout,
            )

        async def handle(stream: anyio.abc.ByteStream) -> None:
            await StreamConnection(connections).run(stream)

        async with anyio.create_task_group() as connection_tasks:
            async with listener, anyio.create_task_group() as accepting:
                accepting.start_soon(listener.serve, handle, connection_tasks)
                self._address = address
                task_status.started(address)
                await stop.wait()
                accepting.cancel_scope.cancel()  # no new connections; the open ones go on
            await connections.goodbye()  # each connection's tasks send it, then finish
            connection_tasks.cancel_scope.deadline = anyio.current_time() + FAREWELL_SECONDS

    async def _serve_asyncio(
        self,
        sock: socket.socket,
        address: Address,
        connections: Connections,
        stop: anyio.Event,
        task_status: anyio.abc.TaskStatus[Address],
    ) -> None:
        """asyncio: protocol callbacks, no task per connection (see shells.py)."""
        loop = asyncio.get_running_loop()
        buffer = memoryview(bytearray(READ_CHUNK_BYTES))

        def factory() -> AsyncioConnection:
            return AsyncioConnection(connections, buffer)

        tls: dict[str, Any] = {}
        if self._ssl_context is not None:
            tls = {"ssl": self._ssl_context, "ssl_handshake_timeout": self.limits.handshake_timeout}
        # (asyncio listens on the socket again, with a backlog of 100 unless told otherwise)
        if sock.family == socket.AF_UNIX:
            server = await loop.create_unix_server(
                factory, sock=sock, backlog=LISTEN_BACKLOG, **tls
            )
        else:
            server = await loop.create_server(factory, sock=sock, backlog=LISTEN_BACKLOG, **tls)
        try:
            self._address = address
            task_status.started(address)
            await stop.wait()
        finally:
            server.close()  # stop accepting; connections are told goodbye by serve()

    def stop(self) -> None:
        """Stop gracefully: clients are told, the listener closes (idempotent; call it from the
        event loop's thread, e.g. through a portal)."""
        if self._stop is not None:
            self._stop.set()

    async def __aenter__(self) -> Server:
        self._task_group = anyio.create_task_group()
        await self._task_group.__aenter__()
        try:
            await self._task_group.start(self.serve)
        except BaseException as exc:
            await self._task_group.__aexit__(type(exc), exc, exc.__traceback__)
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        assert self._task_group is not None
        self.stop()
        try:
            return await self._task_group.__aexit__(exc_type, exc, tb)
        finally:
            self._task_group = None

    def new_connection(self) -> ServerConnection:
        """The sans-IO state of one new connection."""
        return ServerConnection(self.limits, self._authkey, self.store.epoch)

    def _describe_while_serving(self, connections: Connections) -> None:
        """``info`` tells the server's own figures too, and its request rate is sampled once a
        second (one timer: nothing on the requests' path)."""
        started, rate, dispatcher = time.monotonic(), RequestRate(), self.dispatcher
        describe = functools.partial(server_figures, dispatcher, connections, started, rate)

        def sample() -> None:
            if dispatcher.describe is describe:  # (not once serving again: a new chain runs)
                rate.sample(dispatcher.requests)
                self._call_later(1.0, sample)

        dispatcher.describe = describe
        sample()

    def _call_later(self, delay: float, callback: Callable[[], None]) -> Callable[[], None]:
        """Run ``callback`` after ``delay`` seconds unless cancelled (lock timeouts, handshake
        deadlines...): an entry of the server's one timer heap, fired while it serves."""
        return self._timers.call_later(delay, callback)


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

    def __init__(
        self, address: Address | None = None, *, backend: str = "asyncio", **server_options: Any
    ) -> None:
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
        try:
            anyio.lowlevel.current_token()
        except RuntimeError:
            pass  # no event loop here: good, the thread runs its own
        else:
            raise RuntimeError(
                "ServerThread runs its own event loop in a thread: start it from "
                "synchronous code, or use 'async with Server(...)' in async code"
            )
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
