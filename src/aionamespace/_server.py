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

import contextlib
import logging
import os
import stat
import threading
from collections.abc import Callable
from types import TracebackType
from typing import Any

import anyio
import anyio.abc
import anyio.from_thread
from anyio.abc import SocketAttribute

from ._errors import ProtocolError, RemoteProtocolError
from ._protocol import (
    Address,
    BadRequest,
    Hello,
    Limits,
    ServerConnection,
    parse_address,
)
from ._store import MemoryStore, Store

__all__ = ["Server", "ServerThread"]

logger = logging.getLogger("aionamespace.server")

READ_CHUNK_BYTES = 256 * 1024
DEFAULT_TCP_ADDRESS: tuple[str, int] = ("127.0.0.1", 0)

# Exceptions an op may raise on purpose; they go back to the caller as an error reply.
_CALLER_ERRORS = (AttributeError, KeyError, TypeError, ValueError, OverflowError, ProtocolError)


class Server:
    """An aionamespace server listening on a Unix socket path or a TCP ``(host, port)``."""

    def __init__(
        self,
        address: Address | None = None,
        *,
        store: Store | None = None,
        limits: Limits | None = None,
    ) -> None:
        self._requested = parse_address(address) if address is not None else DEFAULT_TCP_ADDRESS
        self.store: Store = store if store is not None else MemoryStore()
        self.limits = limits or Limits()
        self._address: Address | None = None
        self._cancel_scope: anyio.CancelScope | None = None
        self._task_group: anyio.abc.TaskGroup | None = None
        self._ops: dict[str, Callable[..., Any]] = {
            "ping": lambda: None,
            "open": self.store.open,
            "get": self.store.get,
            "set": self.store.set,
            "del": self.store.delete,
            "dump": self.store.dump,
        }

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
        listener, address = await self._listen()
        try:
            with anyio.CancelScope() as self._cancel_scope:
                async with listener, anyio.create_task_group() as connections:
                    self._address = address
                    task_status.started(address)
                    await listener.serve(self._handle, connections)
        finally:
            self._address = None
            if isinstance(address, str):
                with contextlib.suppress(OSError):
                    if stat.S_ISSOCK(os.stat(address).st_mode):
                        os.unlink(address)

    async def _listen(self) -> tuple[anyio.abc.Listener[Any], Address]:
        requested = self._requested
        if isinstance(requested, str):
            listener = await anyio.create_unix_listener(requested, mode=0o600)
            return listener, requested
        host, port = requested
        tcp = await anyio.create_tcp_listener(local_host=host, local_port=port)
        bound = tcp.listeners[0].extra(SocketAttribute.local_address)
        return tcp, (host, bound[1])

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

    async def _handle(self, stream: anyio.abc.ByteStream) -> None:
        protocol = ServerConnection(self.limits)
        async with stream:
            while True:
                try:
                    data = await stream.receive(READ_CHUNK_BYTES)
                except (anyio.EndOfStream, anyio.BrokenResourceError, OSError):
                    return
                try:
                    events = protocol.receive_data(data)
                except ProtocolError as exc:
                    await self._refuse(stream, protocol, exc)
                    return
                replies = [self._apply(protocol, event) for event in events]
                try:
                    await stream.send(b"".join(replies))
                except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
                    return

    def _apply(self, protocol: ServerConnection, event: Hello | BadRequest | Any) -> bytes:
        if type(event) is Hello:
            return protocol.send_hello()
        if type(event) is BadRequest:
            return protocol.send_error(event.id, RemoteProtocolError(event.message))
        try:
            result = self._ops[event.op](*event.args)
        except _CALLER_ERRORS as exc:
            return protocol.send_error(event.id, exc)
        except Exception as exc:  # a bug in a store must not take the server down
            logger.exception("internal error applying %s", event.op)
            return protocol.send_error(event.id, exc)
        return protocol.send_result(event.id, result)

    @staticmethod
    async def _refuse(stream: anyio.abc.ByteStream, protocol: ServerConnection,
                      error: ProtocolError) -> None:
        """Tell the peer why it is being disconnected, best effort, then let the caller close."""
        if protocol.greeted:
            frame = protocol.send_error(0, error)
        else:
            frame = protocol.send_hello_error(error)
        with contextlib.suppress(anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
            with anyio.move_on_after(1):
                await stream.send(frame)


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
