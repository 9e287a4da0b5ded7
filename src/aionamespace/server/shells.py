"""The server's connections: the two I/O shells and what every connection is held to.

Two shells move bytes between sockets and ``Dispatcher.respond``:

* ``AsyncioConnection`` (asyncio): protocol callbacks. Bytes read into one buffer shared by all
  connections, the batch applied and answered in the same loop iteration. anyio's asyncio
  streams cost four loop iterations per request on a Unix socket (measured: 0.73x the stdlib's
  round trips); this costs one.
* ``StreamConnection`` (trio, or any anyio backend): a task reads and applies, a helper task
  sends whatever was queued, coalesced.

``Connections`` holds what both obey: at most ``Limits.max_connections`` at once (more are
refused at the hello), ``Limits.handshake_timeout`` seconds to say hello and authenticate, and
on shutdown a goodbye frame telling each client why the connection ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Callable
from typing import Any, cast

import anyio
import anyio.abc

from .._errors import ConnectionLost, RemoteProtocolError
from ..protocol.connection import Request, ServerConnection
from ..protocol.frames import LARGE_VALUE_BYTES, coalesce
from ..protocol.limits import Limits
from ..protocol.ops import READ_OPS
from .dispatch import Dispatcher

__all__ = ["AsyncioConnection", "Connections", "StreamConnection"]

READ_CHUNK_BYTES = 64 * 1024
FAREWELL_SECONDS = 1.0  # a connection being dropped gets this long to take our last words
HIGH_WATER_BYTES = 1024 * 1024  # stop reading a peer whose unsent answers exceed this

#: The kernel send buffer of a connection that is sent a large value (Linux doubles it). Its
#: default (~208 KiB) makes 1 MiB leave in five rounds of fill, wake the reader, drain, wake
#: us; this sends it in one (measured: 1 MiB gets 1.15x -> 1.7x the stdlib's MiB/s). Only such
#: connections get it, so 10,000 idle ones do not; the kernel caps it at net.core.wmem_max.
LARGE_SEND_BUFFER_BYTES = 1024 * 1024

CallLater = Callable[[float, Callable[[], None]], Callable[[], None]]


def widen_send_buffer(sock: socket.socket | None) -> bool:
    """Give ``sock`` LARGE_SEND_BUFFER_BYTES of send buffer; False if it could not be done."""
    if sock is None:
        return False
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, LARGE_SEND_BUFFER_BYTES)
    except OSError:
        return False
    return True


class Connections:
    """Every open connection of one server."""

    def __init__(self, limits: Limits, dispatcher: Dispatcher, call_later: CallLater,
                 new_protocol: Callable[[], ServerConnection]) -> None:
        self.limits = limits
        self.dispatcher = dispatcher
        self.new_protocol = new_protocol
        self.call_later = call_later
        self.open: dict[Connection, Callable[[], None] | None] = {}  # -> cancels its deadline
        self.closing = False
        self._all_closed: anyio.Event | None = None

    def admit(self, connection: Connection) -> bool:
        """Take a new connection in, or refuse it (too many, or shutting down)."""
        if self.closing or len(self.open) >= self.limits.max_connections:
            reason = ("the server is shutting down" if self.closing else
                      f"the server is at its limit of {self.limits.max_connections} connections")
            connection.write(connection.protocol.send_refusal(ConnectionLost(reason)))
            connection.close()
            return False
        self.open[connection] = self.call_later(
            self.limits.handshake_timeout, lambda: self._deadline(connection))
        return True

    def received(self, connection: Connection, data: bytes | memoryview) -> bool:
        """Parse what a connection sent and apply it: see ``apply``."""
        events = connection.protocol.receive_data(data)
        if len(events) == 1 and not connection.pending:
            request = events[0]
            if (type(request) is Request and request.op in READ_OPS
                    and connection.backlog() <= HIGH_WATER_BYTES):
                # A read alone in its read (a sync client's): answered without building a
                # batch (a get went from 28 Python calls in the server to 25). A read commits
                # nothing, so it pushes nothing that a batch would have to gather.
                answer = self.dispatcher.answer(connection, request.id, request.op, request.args)
                for piece in answer if isinstance(answer, tuple) else (answer,):
                    connection.write(piece)
                return True
        connection.pending.extend(events)
        return self.apply(connection)

    def apply(self, connection: Connection) -> bool:
        """Apply a connection's parsed requests while its unsent answers stay under the high
        water mark, answering in one write per batch. False: some wait for the peer to read
        (the shell stops reading it until then), so what it costs us stays bounded."""
        pending = connection.pending
        while pending and not connection.closed:
            if connection.backlog() > HIGH_WATER_BYTES:
                return False
            answers, applied = self.dispatcher.respond_some(connection, pending,
                                                            HIGH_WATER_BYTES)
            del pending[:applied]
            for data in answers:
                connection.write(data)
        protocol = connection.protocol
        if protocol.refused:
            pending.clear()
            connection.close()
        elif protocol.ready and self.open.get(connection) is not None:
            cancel_deadline = self.open[connection]
            self.open[connection] = None
            assert cancel_deadline is not None
            cancel_deadline()
        return True

    def gone(self, connection: Connection) -> None:
        cancel_deadline = self.open.pop(connection, None)
        if cancel_deadline is not None:
            cancel_deadline()
        self.dispatcher.connection_lost(connection)
        if self._all_closed is not None and not self.open:
            self._all_closed.set()

    async def goodbye(self) -> None:
        """Shutting down: tell every client why and close; wait (bounded) until all are gone."""
        self.closing = True
        self._all_closed = anyio.Event()
        for connection in list(self.open):
            connection.write(connection.protocol.send_refusal(
                ConnectionLost("the server is shutting down")))
            connection.close()
        if self.open:
            with anyio.move_on_after(FAREWELL_SECONDS):
                await self._all_closed.wait()

    def _deadline(self, connection: Connection) -> None:
        if connection in self.open and not connection.protocol.ready:
            connection.write(connection.protocol.send_refusal(RemoteProtocolError(
                f"no hello and authentication within {self.limits.handshake_timeout} seconds")))
            connection.close()


class AsyncioConnection(asyncio.BufferedProtocol):
    """One connection on asyncio: bytes in, the batch applied, one write out, same iteration.

    Every connection reads into its server's one buffer (``recv_into``): the bytes are handed to
    the connection's decoder before the next read, so idle connections hold no buffer.
    """

    def __init__(self, connections: Connections, buffer: memoryview) -> None:
        self.connections = connections
        self.buffer = buffer
        self.protocol = connections.new_protocol()
        self.pending: list[Any] = []  # parsed requests not applied yet (see Connections.apply)
        self.transport: asyncio.Transport | None = None
        self.admitted = False
        self.closed = False
        self._paused = False
        self._widened = False  # see widen_send_buffer

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but behave as one
        self.transport = cast(asyncio.Transport, transport)
        self.admitted = self.connections.admit(self)

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.buffer

    def buffer_updated(self, nbytes: int) -> None:
        if self.admitted and not self.connections.received(self, self.buffer[:nbytes]):
            self._pause()

    def write(self, data: bytes) -> None:
        if data and self.transport is not None and not self.closed:
            if len(data) >= LARGE_VALUE_BYTES and not self._widened:
                self._widened = widen_send_buffer(self.transport.get_extra_info("socket"))
            self.transport.write(data)

    def close(self) -> None:
        self.closed = True  # nothing more is written: a refusal or goodbye stays the last frame
        if self.transport is not None:
            self.transport.close()  # after what is buffered has been written

    def backlog(self) -> int:
        return self.transport.get_write_buffer_size() if self.transport is not None else 0

    def drop(self) -> None:
        """Let go of a peer that does not read: its locks and watches at once, and its socket
        once the refusal and what it has not read went out, or after FAREWELL_SECONDS."""
        if self.admitted:
            self.admitted = False
            self.connections.gone(self)
        self.close()
        transport = self.transport
        if transport is not None:
            self.connections.call_later(FAREWELL_SECONDS, transport.abort)

    def _pause(self) -> None:
        if not self._paused and self.transport is not None and not self.closed:
            self._paused = True
            self.transport.pause_reading()

    def pause_writing(self) -> None:
        # The peer does not read its answers: stop reading its requests too.
        self._pause()

    def resume_writing(self) -> None:
        # It reads again: apply what waited, then read more once nothing waits.
        if self.connections.apply(self) and self._paused and not self.closed:
            self._paused = False
            assert self.transport is not None
            self.transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.admitted:
            self.connections.gone(self)
        if self.transport is not None:
            # (a no-op, except for Python 3.10's TLS transports: asyncio leaves them open when
            # the connection is lost and warns as they are collected, CPython issue 90476)
            self.transport.close()


class StreamConnection:
    """One connection on anyio streams: ``run`` reads and applies; a helper task sends."""

    def __init__(self, connections: Connections) -> None:
        self.connections = connections
        self.protocol = connections.new_protocol()
        self.pending: list[Any] = []  # parsed requests not applied yet (see Connections.apply)
        self.closed = False
        self._outbox: list[bytes] = []
        self._queued_bytes = 0  # queued or being sent
        self._sending = False
        self._wakeup = anyio.Event()
        self._sent = anyio.Event()
        self._reading = anyio.CancelScope()
        self._stream: anyio.abc.ByteStream | None = None
        self._widened = False  # see widen_send_buffer

    def write(self, data: bytes) -> None:
        if data and not self.closed:
            if len(data) >= LARGE_VALUE_BYTES and not self._widened and self._stream is not None:
                self._widened = widen_send_buffer(
                    self._stream.extra(anyio.abc.SocketAttribute.raw_socket, None))
            self._outbox.append(data)
            self._queued_bytes += len(data)
            self._wakeup.set()

    def close(self) -> None:
        self.closed = True  # nothing more is written: a refusal or goodbye stays the last frame
        self._reading.cancel()  # run() then flushes (bounded) and closes the stream

    def backlog(self) -> int:
        return self._queued_bytes

    def drop(self) -> None:
        self.close()  # run() gives the farewell a bounded time, then cancels the send

    async def run(self, stream: anyio.abc.ByteStream) -> None:
        self._stream = stream
        async with stream, anyio.create_task_group() as group:
            group.start_soon(self._send_forever, stream)
            if self.connections.admit(self):
                try:
                    with self._reading:
                        while True:
                            data = await stream.receive(READ_CHUNK_BYTES)
                            while not self.connections.received(self, data):
                                await self._sent.wait()  # the peer reads: apply what waits
                                data = b""
                except (anyio.EndOfStream, anyio.BrokenResourceError,
                        anyio.ClosedResourceError, OSError):
                    pass
                finally:
                    self.connections.gone(self)
            with anyio.move_on_after(FAREWELL_SECONDS, shield=True):
                while self._outbox or self._sending:  # answers, a refusal, the goodbye
                    await self._sent.wait()
            group.cancel_scope.cancel()

    async def _send_forever(self, stream: anyio.abc.ByteStream) -> None:
        try:
            with contextlib.suppress(anyio.BrokenResourceError, anyio.ClosedResourceError,
                                     OSError):
                while True:
                    await self._wakeup.wait()
                    self._wakeup = anyio.Event()
                    outbox, self._outbox = coalesce(self._outbox), []
                    self._sending = True
                    for data in outbox:
                        await stream.send(data)
                        self._queued_bytes -= len(data)
                    self._sending = False
                    self._sent.set()
                    self._sent = anyio.Event()
        finally:  # the peer is gone, or we are cancelled: nothing more will be sent
            self._outbox.clear()
            self._sending = False
            self._queued_bytes = 0
            self._sent.set()


Connection = AsyncioConnection | StreamConnection
