"""The server's connection shells: bytes between a socket and ``admission.Connections``.

Two shells, one per way of doing I/O:

* ``AsyncioConnection`` (asyncio): protocol callbacks. Bytes read into one buffer shared by all
  connections, the batch applied and answered in the same loop iteration (anyio's asyncio
  streams take several loop iterations per request; README's Performance section says what
  that cost).
* ``StreamConnection`` (trio, or any anyio backend): a task reads and applies, a helper task
  sends whatever was queued, coalesced.

What both obey is ``admission.Connections``'s: they hand it what they read and write what it
says.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from typing import Any, cast

import anyio
import anyio.abc

from ..protocol.frames import LARGE_VALUE_BYTES, coalesce
from .admission import FAREWELL_SECONDS, Connections

__all__ = ["READ_CHUNK_BYTES", "AsyncioConnection", "Connection", "StreamConnection"]

READ_CHUNK_BYTES = 64 * 1024

#: The kernel send buffer of a connection that is sent a large value (Linux doubles it). Its
#: default (~208 KiB) makes 1 MiB leave in several rounds of fill, wake the reader, drain,
#: wake us; this sends it in one (benchmarks/compare.py's 1 MiB row). Only such connections
#: get it, so 10,000 idle ones do not; the kernel caps it at net.core.wmem_max.
LARGE_SEND_BUFFER_BYTES = 1024 * 1024


def widen_send_buffer(sock: socket.socket | None) -> bool:
    """Give ``sock`` LARGE_SEND_BUFFER_BYTES of send buffer; False if it could not be done."""
    if sock is None:
        return False
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, LARGE_SEND_BUFFER_BYTES)
    except OSError:
        return False
    return True


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
        self._broken = False  # the sender is gone: nothing can be sent any more
        self._wakeup = anyio.Event()
        self._sent = anyio.Event()
        self._reading = anyio.CancelScope()
        self._stream: anyio.abc.ByteStream | None = None
        self._widened = False  # see widen_send_buffer

    def write(self, data: bytes) -> None:
        if data and not self.closed and not self._broken:
            if len(data) >= LARGE_VALUE_BYTES and not self._widened and self._stream is not None:
                self._widened = widen_send_buffer(
                    self._stream.extra(anyio.abc.SocketAttribute.raw_socket, None)
                )
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
                    with self._reading:  # cancelled by close(), and when the sender is gone
                        while True:
                            data = await stream.receive(READ_CHUNK_BYTES)
                            while not self.connections.received(self, data):
                                await self._sent.wait()  # the peer reads: apply what waits
                                data = b""
                except (
                    anyio.EndOfStream,
                    anyio.BrokenResourceError,
                    anyio.ClosedResourceError,
                    OSError,
                ):
                    pass
                finally:
                    self.connections.gone(self)
            with anyio.move_on_after(FAREWELL_SECONDS, shield=True):
                while (self._outbox or self._sending) and not self._broken:
                    await self._sent.wait()  # answers, a refusal, the goodbye
            group.cancel_scope.cancel()

    async def _send_forever(self, stream: anyio.abc.ByteStream) -> None:
        try:
            with contextlib.suppress(anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
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
            self._broken = True
            self._outbox.clear()
            self._sending = False
            self._queued_bytes = 0
            self._sent.set()
            # The reader must stop too: waiting for sends that never come, it would find the
            # backlog never drains and wait again on this set event, spinning for ever.
            self._reading.cancel()


Connection = AsyncioConnection | StreamConnection
