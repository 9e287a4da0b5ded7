"""A server in this very process, reached with no socket: the transports' in-memory twin.

``LoopbackServer`` is a ``Dispatcher`` over a store, and each connection to it is a pair of
in-memory ends: bytes a proxy sends are parsed by a ``ServerConnection`` and applied at once
(under one lock: proxies of several threads share it), and what the dispatcher writes back
lands in the proxy's end. Pass it where an address goes::

    board = LoopbackServer()
    ns = Namespace(board, "config")          # or AsyncNamespace(board, ...)

The proxies then run their real transports (``SocketTransport``, ``AsyncioTransport``,
``StreamTransport``) over those ends instead of sockets: every byte still crosses the protocol
in both directions, so a test of a proxy here tests the proxy, not a mock. What it leaves out
is the server's I/O shells and their bounds (``Connections``): there is no listener, nothing
to refuse, and a loopback proxy cannot be pickled into another process.
"""

from __future__ import annotations

import asyncio
import collections
import math
import socket
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import anyio
import anyio.abc

from .._errors import ConnectionLost
from ..protocol.connection import ServerConnection
from ..protocol.limits import Limits
from ..protocol.pieces import Output, unfold
from ..server.dispatch import Dispatcher
from ..server.stores import MemoryStore, Store
from ..server.timers import Timers
from .asyncio_transport import AsyncioTransport
from .stream_transport import StreamTransport

if TYPE_CHECKING:
    from .pipelined import AsyncState, PipelinedTransport

__all__ = ["LoopbackServer"]


class LoopbackServer:
    """A server in this process (see the module's docstring); ``authkey`` and ``limits`` as
    ``Server``'s."""

    def __init__(
        self,
        *,
        store: Store | None = None,
        limits: Limits | None = None,
        authkey: bytes | None = None,
    ) -> None:
        self.limits = limits or Limits()
        self.store = store if store is not None else MemoryStore(self.limits)
        self.authkey = authkey
        self.lock = threading.RLock()  # the dispatcher is not thread-safe; the proxies may be
        self._timers = Timers()  # fired, under the lock, by one thread started with the first
        self._timers_changed = threading.Condition(self.lock)
        self._timer_thread: threading.Thread | None = None
        self.dispatcher = Dispatcher(self.store, self._call_later, self.limits)

    def __repr__(self) -> str:
        return f"<aionamespace LoopbackServer at {id(self):#x}>"

    def connect(self, deliver: Callable[[bytes], None]) -> _ServerEnd:
        """A new connection whose server writes go to ``deliver`` (from any thread)."""
        return _ServerEnd(self, deliver)

    def _call_later(self, delay: float, callback: Callable[[], None]) -> Callable[[], None]:
        with self.lock:
            cancel = self._timers.call_later(delay, callback)
            if self._timer_thread is None:
                self._timer_thread = threading.Thread(
                    target=self._fire_timers, name="aionamespace loopback timers", daemon=True
                )
                self._timer_thread.start()
            self._timers_changed.notify()
        return cancel

    def _fire_timers(self) -> None:
        """The timer thread: fire what is due (under the lock), sleep until the next is; it
        ends when no timer is left (the next ``_call_later`` starts another)."""
        with self.lock:
            while True:
                due = self._timers.fire_due()
                if due == math.inf:
                    self._timer_thread = None
                    return
                self._timers_changed.wait(max(0.0, due - time.monotonic()))  # (unlocked)

    # ------------------------------------------------------------------ what proxies open

    def socket(self, timeout: float | None = None) -> _Socket:
        """A blocking socket-like end, for ``SocketTransport``."""
        return _Socket(self, timeout)

    def async_transport(self, state: AsyncState) -> PipelinedTransport:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return _StreamLoopback(state, self)
        return _AsyncioLoopback(state, loop, self)


class _ServerEnd:
    """The server's side of one loopback connection: a ``peer.Peer``."""

    def __init__(self, server: LoopbackServer, deliver: Callable[[bytes], None]) -> None:
        self.server = server
        self.protocol = ServerConnection(server.limits, server.authkey, server.store.epoch)
        self.deliver = deliver
        self.closed = False

    def received(self, data: bytes) -> None:
        """Apply what the client sent, as a server's shell would, and answer it."""
        with self.server.lock:
            if self.closed:
                raise ConnectionLost("the loopback connection is closed")
            events = self.protocol.receive_data(data)
            for answer in self.server.dispatcher.respond(self, events):
                self.write(answer)
            if self.protocol.refused:
                self.close()

    def write(self, data: Output) -> None:
        for piece in unfold(data):
            if piece and not self.closed:
                self.deliver(piece)

    def write_all(self, data: list[Output]) -> None:
        for output in data:
            self.write(output)

    def backlog(self) -> int:
        return 0  # delivered at once

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.deliver(b"")  # end of stream
            with self.server.lock:
                self.server.dispatcher.connection_lost(self)

    drop = close


class _Socket:
    """What ``SocketTransport`` uses of a socket, over a loopback connection."""

    family = socket.AF_UNIX

    def __init__(self, server: LoopbackServer, timeout: float | None) -> None:
        self._end = server.connect(self._deliver)
        self._inbox: collections.deque[bytes] = collections.deque()
        self._ready = threading.Condition()
        self._eof = False
        self._timeout = timeout

    def _deliver(self, data: bytes) -> None:
        with self._ready:
            if data:
                self._inbox.append(data)
            else:
                self._eof = True
            self._ready.notify_all()

    def settimeout(self, timeout: float | None) -> None:
        self._timeout = timeout

    def sendall(self, data: bytes) -> None:
        if self._end.closed:
            raise BrokenPipeError("the loopback connection is closed")
        self._end.received(bytes(data))

    def recv_into(self, buffer: memoryview | bytearray) -> int:
        with self._ready:
            if not self._ready.wait_for(lambda: self._inbox or self._eof, self._timeout):
                raise TimeoutError("timed out")
            if not self._inbox:
                return 0
            data = self._inbox.popleft()
            count = min(len(data), len(buffer))
            buffer[:count] = data[:count]
            if count < len(data):
                self._inbox.appendleft(data[count:])
            return count

    def shutdown(self, how: int) -> None:
        self.close()

    def close(self) -> None:
        self._end.close()


class _AsyncioLink:
    """What ``AsyncioTransport`` uses of its ``SocketLink``, over a loopback connection."""

    def __init__(self, owner: _AsyncioLoopback, server: LoopbackServer) -> None:
        self.owner = owner
        self.loop = owner.loop
        self.thread = threading.get_ident()
        self.end = server.connect(self._deliver)
        self.error: BaseException | None = None

    def _deliver(self, data: bytes) -> None:
        if threading.get_ident() != self.thread:
            self.loop.call_soon_threadsafe(self._deliver, data)
            return
        if self.error is not None:
            return
        try:
            if not data:
                raise ConnectionLost("the loopback server closed the connection")
            events = self.owner.table.protocol.receive_frames(data)
        except Exception as exc:  # what a socket's protocol would end the connection with
            self.error = exc
            self.owner.lost(exc, self)
            return
        if events:
            self.owner.received(self, events)  # type: ignore[arg-type]

    def write(self, data: bytes) -> None:
        if self.error is not None:
            raise self.error
        self.end.received(data)

    async def writable(self) -> None:
        if self.error is not None:
            raise self.error

    def close(self) -> None:
        if self.error is None:
            self.error = ConnectionLost("the connection was closed")
            self.end.close()


class _AsyncioLoopback(AsyncioTransport):
    """``AsyncioTransport`` (its whole request path) over a loopback connection."""

    def __init__(
        self, state: AsyncState, loop: asyncio.AbstractEventLoop, server: LoopbackServer
    ) -> None:
        super().__init__(state, loop)
        self.server = server

    async def open_link(self) -> Any:
        link = _AsyncioLink(self, self.server)
        protocol = self.table.protocol
        link.write(protocol.start())  # the server's hello is delivered before this returns
        if link.error is not None:  # refused (a wrong authkey, say): why
            raise link.error
        if not protocol.greeted:
            raise ConnectionLost("the loopback server did not greet us")
        reply = protocol.handshake_reply()
        if reply:
            link.write(reply)
        return link


class _Stream(anyio.abc.ByteStream):
    """An anyio byte stream over a loopback connection, for ``StreamTransport`` on trio."""

    def __init__(self, server: LoopbackServer) -> None:
        import trio  # (asyncio loops take _AsyncioLoopback)

        self._arrived = anyio.Event()
        self._inbox: collections.deque[bytes] = collections.deque()
        self._eof = False
        self._token = trio.lowlevel.current_trio_token()
        self._thread = threading.get_ident()
        self._end = server.connect(self._deliver)

    def _deliver(self, data: bytes) -> None:
        if threading.get_ident() != self._thread:  # (never blocks: the sender holds a lock)
            self._token.run_sync_soon(self._deliver, data)
            return
        if data:
            self._inbox.append(data)
        else:
            self._eof = True
        self._arrived.set()

    async def send(self, item: bytes) -> None:
        if self._end.closed:
            raise anyio.BrokenResourceError("the loopback connection is closed")
        self._end.received(bytes(item))
        await anyio.lowlevel.checkpoint()

    async def receive(self, max_bytes: int = 65536) -> bytes:
        while not self._inbox:
            if self._eof:
                raise anyio.EndOfStream
            self._arrived = anyio.Event()
            await self._arrived.wait()
        return self._inbox.popleft()

    async def send_eof(self) -> None:
        self._end.close()

    async def aclose(self) -> None:
        self._end.close()


class _StreamLoopback(StreamTransport):
    """``StreamTransport`` (the reader role and all) over a loopback connection."""

    def __init__(self, state: AsyncState, server: LoopbackServer) -> None:
        super().__init__(state)
        self.server = server

    async def open_link(self) -> Any:
        from .pipelined import handshake

        stream = _Stream(self.server)
        await handshake(self.table.protocol, stream.send, stream.receive)
        return stream
