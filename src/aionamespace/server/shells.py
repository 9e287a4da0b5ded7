"""The server's connection shells: bytes between a socket and ``admission.Connections``.

Two shells, one per way of doing I/O:

* ``AsyncioConnection`` (asyncio): protocol callbacks. Bytes read into one buffer shared by all
  connections, the batch applied and answered in the same loop iteration (anyio's asyncio
  streams take several loop iterations per request; README's Performance section says what
  that cost).
* ``StreamConnection`` (trio, or any anyio backend): a task reads and applies, a helper task
  sends what was queued.

What both obey is ``admission.Connections``'s: they hand it what they read and write what it
says. What they write goes through an ``Outbox`` (outbox.py) whenever it cannot leave at once,
and leaves it only as fast as the peer reads. Whatever fails while a connection is served (a
MemoryError above all) ends that connection, never the server: while applying what it sent, it
gets the ConnectionLost refusal (``Connections.failed``); while sending to it, perhaps halfway
through a frame, it is just closed.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from typing import Any, cast

import anyio
import anyio.abc

from ..protocol.frames import LARGE_VALUE_BYTES
from ..protocol.pieces import Output
from .admission import FAREWELL_SECONDS, Connections
from .outbox import SEND_BYTES, Outbox

__all__ = ["READ_CHUNK_BYTES", "AsyncioConnection", "Connection", "StreamConnection"]

logger = logging.getLogger("aionamespace.server")

READ_CHUNK_BYTES = 64 * 1024

#: asyncio transports' own default high-water mark (pause_writing past it); lowered for a
#: connection whose reply budget is smaller, or it would wait for a resume_writing that never
#: comes.
TRANSPORT_HIGH_WATER_BYTES = 64 * 1024

#: The kernel send buffer of a connection that is sent a large value (Linux doubles it). Its
#: default (~208 KiB) makes 1 MiB leave in several rounds of fill, wake the reader, drain,
#: wake us; this sends it in one (benchmarks/compare.py's 1 MiB row). Only such connections
#: get it, so 10,000 idle ones do not; the kernel caps it at net.core.wmem_max.
LARGE_SEND_BUFFER_BYTES = 1024 * 1024


def log_broken(error: Exception) -> None:
    logger.error("closing a connection that could not be sent to", exc_info=error)


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
    the connection's decoder before the next read, so idle connections hold no buffer. Output
    goes straight to the transport while it keeps up; once the transport pauses us, it waits in
    the outbox, fed to the transport on ``resume_writing``.
    """

    def __init__(self, connections: Connections, buffer: memoryview) -> None:
        self.connections = connections
        self.buffer = buffer
        self.protocol = connections.new_protocol()
        self.pending: list[Any] = []  # parsed requests not applied yet (see Connections.apply)
        self.outbox = Outbox()
        self.durability = connections.durability
        self.transport: asyncio.Transport | None = None
        self.admitted = False
        self.closed = False
        self._reading_paused = False
        self._writing_paused = False
        self._widened = False  # see widen_send_buffer

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but behave as one
        self.transport = cast(asyncio.Transport, transport)
        budget = self.connections.limits.max_reply_backlog_bytes
        if budget < TRANSPORT_HIGH_WATER_BYTES:
            self.transport.set_write_buffer_limits(high=max(budget, 1))
        self.admitted = self.connections.admit(self)

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.buffer

    def buffer_updated(self, nbytes: int) -> None:
        if self.admitted:
            try:
                if not self.connections.received(self, self.buffer[:nbytes]):
                    self._pause_reading()
            except Exception as exc:  # a MemoryError, or a bug: this connection only
                self.connections.failed(self, exc)

    def write(self, data: Output) -> None:
        transport = self.transport
        if transport is None or self.closed:
            return
        if self.durability.holding:
            self.outbox.hold(self.durability.gate, self)
        if data.__class__ is bytes and not self.outbox.items and not self._writing_paused:
            size = len(data)
            if size <= SEND_BYTES:  # straight to the transport: nothing waits before it
                if size >= LARGE_VALUE_BYTES and not self._widened:
                    self._widened = widen_send_buffer(transport.get_extra_info("socket"))
                if size:
                    transport.write(data)
                return
        self.outbox.put(data)
        self._feed()

    def write_all(self, outputs: list[Output]) -> None:
        if self.transport is not None and not self.closed:
            if self.durability.holding:
                self.outbox.hold(self.durability.gate, self)
            self.outbox.put_all(outputs)
            self._feed()

    def gate_opened(self) -> None:
        if self.transport is not None and self.outbox.items:
            self._feed()

    def _feed(self) -> None:
        """Hand the transport what waits, until it pauses us or nothing waits (then, if the
        connection is closing, close the transport)."""
        transport = self.transport
        assert transport is not None
        try:
            while not self._writing_paused:
                data = self.outbox.take()
                if data is None:
                    if self.closed and not self.outbox.items:  # (not: output behind a gate)
                        transport.close()  # after what the transport holds has been written
                    return
                if len(data) >= LARGE_VALUE_BYTES and not self._widened:
                    self._widened = widen_send_buffer(transport.get_extra_info("socket"))
                transport.write(data)  # may pause us
        except Exception as exc:  # a MemoryError, or a bug, halfway through a frame maybe:
            self.closed = True  # no last word can follow; connection_lost reports it gone
            self.outbox.clear()
            log_broken(exc)
            transport.abort()

    def close(self) -> None:
        self.closed = True  # nothing more is written: a refusal or goodbye stays the last frame
        transport = self.transport
        if transport is None:
            return
        if not self.outbox.items:
            transport.close()  # after what is buffered has been written
        elif not self._reading_paused:  # _feed closes it once the outbox is sent; meanwhile
            self._reading_paused = True  # nothing more is read (as a closing transport does)
            transport.pause_reading()

    def backlog(self) -> int:
        transport = self.transport
        return self.outbox.size + (transport.get_write_buffer_size() if transport else 0)

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

    def abort(self) -> None:
        """Close the socket now, whatever waits to be sent (the server has stopped)."""
        self.closed = True
        if self.transport is not None:
            self.transport.abort()

    def _pause_reading(self) -> None:
        if not self._reading_paused and self.transport is not None and not self.closed:
            self._reading_paused = True
            self.transport.pause_reading()

    def eof_received(self) -> bool:
        # The client sends no more: what we owe it still goes out (from the outbox too: the
        # transport alone would close once its own buffer is sent), then close() closes. TLS
        # transports close themselves whatever we say (and warn if told otherwise).
        self.close()
        return self.transport is not None and self.transport.get_extra_info("sslcontext") is None

    def pause_writing(self) -> None:
        # The transport holds more than its high-water mark: what follows waits in the outbox.
        self._writing_paused = True

    def resume_writing(self) -> None:
        # The peer reads again: feed it, then apply what waited and read more once nothing
        # waits (Connections.apply decides, by the backlog).
        self._writing_paused = False
        try:
            self._feed()
        except Exception as exc:  # a MemoryError, or a bug: this connection only
            self.connections.failed(self, exc)
            return
        self.proceed()

    def proceed(self) -> None:
        """Apply what waited, and read more once nothing waits (also when a batch that was
        in a remote store is answered: remote_serving.py)."""
        try:
            if self._reading_paused and not self.closed and self.connections.apply(self):
                self._reading_paused = False
                assert self.transport is not None
                self.transport.resume_reading()
        except Exception as exc:  # a MemoryError, or a bug: this connection only
            self.connections.failed(self, exc)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.outbox.clear()
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
        self.outbox = Outbox()
        self.durability = connections.durability
        self.closed = False
        self._sending = 0  # bytes being sent
        self._broken = False  # the sender is gone: nothing can be sent any more
        self._wakeup = anyio.Event()
        self._sent: anyio.Event | None = None  # made by whoever waits for the next send
        self._reading = anyio.CancelScope()
        self._widened = False  # see widen_send_buffer

    def write(self, data: Output) -> None:
        if not self.closed and not self._broken:
            if self.durability.holding:
                self.outbox.hold(self.durability.gate, self)
            self.outbox.put(data)
            self._wakeup.set()

    def write_all(self, outputs: list[Output]) -> None:
        if not self.closed and not self._broken:
            if self.durability.holding:
                self.outbox.hold(self.durability.gate, self)
            self.outbox.put_all(outputs)
            self._wakeup.set()

    def gate_opened(self) -> None:
        self._wakeup.set()

    def close(self) -> None:
        self.closed = True  # nothing more is written: a refusal or goodbye stays the last frame
        self._reading.cancel()  # run() then flushes (bounded) and closes the stream

    def backlog(self) -> int:
        return self.outbox.size + self._sending

    def drop(self) -> None:
        self.close()  # run() gives the farewell a bounded time, then cancels the send

    def abort(self) -> None:
        self.close()  # (the same: run() never waits long for the send)

    async def run(self, stream: anyio.abc.ByteStream) -> None:
        try:
            await self._run(stream)
        except Exception as exc:  # even letting it go failed: the server serves on
            logger.error("a connection failed as it ended", exc_info=exc)

    async def _run(self, stream: anyio.abc.ByteStream) -> None:
        async with stream, anyio.create_task_group() as group:
            group.start_soon(self._send_forever, stream)
            if self.connections.admit(self):
                try:
                    with self._reading:  # cancelled by close(), and when the sender is gone
                        while True:
                            data = await stream.receive(READ_CHUNK_BYTES)
                            if not self.connections.received(self, data):
                                while not self.connections.apply(self):
                                    await self._next_send()  # the peer reads: apply what waits
                except (
                    anyio.EndOfStream,
                    anyio.BrokenResourceError,
                    anyio.ClosedResourceError,
                    OSError,
                ):
                    pass
                except Exception as exc:  # a MemoryError, or a bug: this connection only
                    self.connections.failed(self, exc)
                finally:
                    self.connections.gone(self)
            with anyio.move_on_after(FAREWELL_SECONDS, shield=True):
                while (self.outbox.items or self._sending) and not self._broken:
                    await self._next_send()  # answers, a refusal, the goodbye
            group.cancel_scope.cancel()

    async def _send_forever(self, stream: anyio.abc.ByteStream) -> None:
        try:
            while True:
                await self._wakeup.wait()
                self._wakeup = anyio.Event()
                while (data := self.outbox.take()) is not None:
                    if len(data) >= LARGE_VALUE_BYTES and not self._widened:
                        self._widened = widen_send_buffer(
                            stream.extra(anyio.abc.SocketAttribute.raw_socket, None)
                        )
                    self._sending = len(data)
                    await stream.send(data)  # type: ignore[arg-type]  # (views are bytes-like)
                    self._sending = 0
                    if (sent := self._sent) is not None:
                        self._sent = None
                        sent.set()
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
            pass  # the peer is gone
        except Exception as exc:  # a MemoryError, or a bug, halfway through a frame maybe: no
            log_broken(exc)  # last word can follow, the connection just ends
        finally:  # the peer is gone, or we are cancelled: nothing more will be sent
            self._broken = True
            self.outbox.clear()
            self._sending = 0
            if self._sent is not None:
                self._sent.set()
            self._reading.cancel()  # reading on would wait for sends that never come

    def proceed(self) -> None:
        """A batch that was in a remote store is answered: the reader, if it waits to apply
        what waited (``_next_send``), looks again (remote_serving.py)."""
        if (sent := self._sent) is not None:
            self._sent = None
            sent.set()

    async def _next_send(self) -> None:
        """Wait until the sender has sent one more piece, or is gone."""
        if self._sent is None:
            self._sent = anyio.Event()
        await self._sent.wait()


Connection = AsyncioConnection | StreamConnection
