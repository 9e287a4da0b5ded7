"""The async proxy's connection on asyncio: replies handed over from protocol callbacks.

On anyio streams (trio, and TLS) one of the waiting tasks reads for all of them (the *reader
role*, ``Multiplexer.wait``): each chunk costs that task a trip through the stream's own
machinery, and every other waiter is woken through it. On plain asyncio sockets this protocol
does the reading instead: bytes are parsed in ``buffer_updated`` and each reply goes straight
to its waiter's future, in the same loop iteration, the way the server's own connections work
(``_connections.AsyncioConnection``).

Writing never blocks (``write``); a sender then waits for the transport's flow control
(``writable``) while replies keep arriving, so nothing can deadlock against a server that is
itself waiting for us to read.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Callable
from typing import Any

import anyio.abc

from .._errors import ConnectionLost, ProtocolError
from ..protocol.connection import ClientConnection
from .proxy import Target

__all__ = ["READ_CHUNK_BYTES", "PushConnection"]

READ_CHUNK_BYTES = 256 * 1024

Events = list[Any]


class PushConnection(asyncio.BufferedProtocol, anyio.abc.AsyncResource):
    """A connection whose replies are delivered by callbacks (``on_events``, ``on_lost``)."""

    def __init__(self, target: Target, protocol: ClientConnection) -> None:
        self.address = target.address
        self.protocol = protocol
        self.transport: asyncio.Transport | None = None
        self.buffer = memoryview(bytearray(READ_CHUNK_BYTES))
        self._into_large = False  # the last get_buffer was a large value's own buffer
        self.on_events: Callable[[Events], None] | None = None  # set by the multiplexer
        self.on_lost: Callable[[BaseException], None] | None = None
        self._writable: asyncio.Future[None] | None = None  # while the transport is paused
        self.error: BaseException | None = None  # why the connection ended, once it has

    # ------------------------------------------------------------------ asyncio callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def get_buffer(self, sizehint: int) -> memoryview:
        large = self.protocol.large_value()
        self._into_large = large is not None
        return large if large is not None else self.buffer

    def buffer_updated(self, nbytes: int) -> None:
        events: Events
        try:
            if self._into_large:
                events = self.protocol.large_received(nbytes)
            else:
                events = self.protocol.receive_frames(self.buffer[:nbytes])
        except Exception as exc:  # garbage from the server
            self._end(exc if isinstance(exc, ProtocolError) else ConnectionLost(str(exc)))
            return
        if events and self.on_events is not None:
            self.on_events(events)

    def eof_received(self) -> bool:
        return False  # close: a server half-closing is done with us

    def connection_lost(self, exc: Exception | None) -> None:
        detail = f": {exc}" if exc is not None else ": the server closed the connection"
        self._end(ConnectionLost(
            f"lost the connection to the aionamespace server at {self.address!r}{detail}"))

    def pause_writing(self) -> None:
        if self._writable is None:
            self._writable = asyncio.get_running_loop().create_future()

    def resume_writing(self) -> None:
        self._wake(self._writable)
        self._writable = None

    # ------------------------------------------------------------------ for the multiplexer

    def write(self, data: bytes) -> None:
        """Hand ``data`` to the transport (which never blocks); ConnectionLost once ended."""
        if self.error is not None:
            raise self.error
        assert self.transport is not None
        self.transport.write(data)

    async def writable(self) -> None:
        """Wait while the transport's buffer is over its high-water mark."""
        while self._writable is not None and self.error is None:
            await self._writable
        if self.error is not None:
            raise self.error

    def close(self) -> None:
        """Drop the connection now (what is unsent is lost: the caller reports it)."""
        self._end(ConnectionLost("the connection was closed"), notify=False)

    async def aclose(self) -> None:
        self.close()

    def _end(self, error: BaseException, notify: bool = True) -> None:
        if self.error is not None:
            return
        self.error = error
        if self.transport is not None:
            # abort() closes the socket a loop iteration later (call_soon), which a caller
            # closing us as its loop ends may never see: shutting it down now tells the server.
            sock = self.transport.get_extra_info("socket")
            if sock is not None:
                with contextlib.suppress(OSError, TypeError):  # (uvloop's refuses: TypeError)
                    sock.shutdown(socket.SHUT_RDWR)
            self.transport.abort()
        self._wake(self._writable)
        if notify and self.on_lost is not None:
            self.on_lost(error)

    @staticmethod
    def _wake(future: asyncio.Future[None] | None) -> None:
        if future is not None and not future.done():
            future.set_result(None)
