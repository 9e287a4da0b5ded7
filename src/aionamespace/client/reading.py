"""The reader role: how the tasks sharing an anyio stream (trio, TLS) read their replies.

On asyncio's plain sockets a ``PushConnection`` reads for everyone (``_push.py``). On an anyio
stream nobody does: one waiting task at a time is the *reader*. It reads chunks and hands each
reply to its owner's waiter; when its own reply arrives it passes the role to another waiter.
While a large outbox is being sent, a helper task keeps reading, so that a server blocked on
answering us can never deadlock against us blocked on sending to it.

``Reading`` is a part of ``Multiplexer`` (its base class), kept apart for size; it works on the
multiplexer's state, which is declared below for the type checker only.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import anyio
import anyio.abc
import anyio.lowlevel

from .._errors import ConnectionLost, ProtocolError, map_connection_errors
from .push import READ_CHUNK_BYTES, PushConnection
from .waiters import Waiter, new_event

if TYPE_CHECKING:
    import asyncio

    from ..protocol.connection import ClientConnection
    from .proxy import Target

__all__ = ["CONCURRENT_READ_ABOVE_BYTES", "Reading"]

#: Sends longer than this read replies meanwhile (by a helper task).
CONCURRENT_READ_ABOVE_BYTES = 64 * 1024


class Reading:
    """The reader role, and sending on an anyio stream (see the module's docstring)."""

    if TYPE_CHECKING:  # the Multiplexer's
        target: Target
        protocol: ClientConnection
        stream: anyio.abc.ByteStream | PushConnection | None
        last_error: BaseException | None
        outbox: list[tuple[int, bytes]]
        by_id: dict[int, Waiter | asyncio.Future[Any]]
        waiting: dict[Waiter, None]
        flushing: list[Waiter]
        reading: bool
        sending: bool
        sent_through: int

        def lost(self, error: BaseException) -> None: ...
        def handle_events(self, events: list[Any]) -> None: ...
        async def connect(self) -> None: ...
        async def drain(self) -> None: ...
        def _take_outbox(self) -> bytes: ...
        def _own_loss(self, error: ConnectionLost, request_id: int) -> ConnectionLost: ...

    async def _await_reply(self, request_id: int) -> Any:
        """``request`` on an anyio stream (trio, TLS): wait, taking the reader role in turn."""
        waiter = Waiter(request_id)
        self.by_id[request_id] = waiter
        try:
            if self.stream is None:
                await self.connect()
            if not self.sending and not waiter.done:
                await self.drain()
            if not waiter.done:
                await self.wait(waiter)
        except ConnectionLost:
            if not waiter.done:  # (else the loss that failed this request is what it reports)
                raise
        finally:
            self.by_id.pop(request_id, None)
            if not waiter.done:  # failed or cancelled: if the frame was never sent, drop it
                self.outbox = [(i, frame) for i, frame in self.outbox if i != request_id]
        if isinstance(waiter.error, ConnectionLost):
            raise self._own_loss(waiter.error, request_id)
        if waiter.error is not None:
            raise waiter.error
        return waiter.result

    async def _drain_stream(self) -> None:
        """``drain`` on an anyio stream, whose send may block (and be cancelled)."""
        self.sending = True
        try:
            with anyio.CancelScope(shield=True):
                if len(self.by_id) > 1:
                    await anyio.lowlevel.cancel_shielded_checkpoint()
                while self.outbox and self.stream is not None:
                    assert not isinstance(self.stream, PushConnection)  # (_drain_pushed's)
                    before = self.sent_through
                    try:
                        await self.send(self.stream, self._take_outbox())
                    except ConnectionLost:
                        self.sent_through = before  # a send that failed delivered nothing
                        raise
        finally:
            self.sending = False

    async def send(self, stream: anyio.abc.ByteStream, data: bytes) -> None:
        try:
            with map_connection_errors(self.target.address):
                if len(data) <= CONCURRENT_READ_ABOVE_BYTES:
                    await stream.send(data)
                    return
                helper = Waiter()
                async with anyio.create_task_group() as group:
                    group.start_soon(self.wait, helper)
                    await stream.send(data)
                    helper.finish()
                    group.cancel_scope.cancel()
        except ConnectionLost as exc:
            if self.stream is stream:
                self.lost(exc)
            await anyio.aclose_forcefully(stream)
            raise

    async def wait(self, waiter: Waiter) -> None:
        """Wait until ``waiter`` is done, taking the reader role whenever nobody holds it."""
        self.waiting[waiter] = None
        if waiter.until:
            self.flushing.append(waiter)
        try:
            while not waiter.done:
                if self.reading:
                    await waiter.woken()
                    if not waiter.done:
                        waiter.wakeup = new_event()
                    continue
                self.reading = True
                try:
                    while not waiter.done:
                        await self.read_once()
                finally:
                    self.reading = False
                    del self.waiting[waiter]
                    self.wake_next_reader()
        finally:
            self.waiting.pop(waiter, None)
            if waiter.until and waiter in self.flushing:
                self.flushing.remove(waiter)

    async def read_once(self) -> None:
        stream = self.stream
        if stream is None:
            self.lost(self.last_error or ConnectionLost("not connected"))
            return
        assert not isinstance(stream, PushConnection)  # that one reads by itself
        try:
            with map_connection_errors(self.target.address):
                data = await stream.receive(READ_CHUNK_BYTES)
            events = self.protocol.receive_frames(data)
        except (ConnectionLost, ProtocolError) as exc:
            if self.stream is stream:
                self.lost(exc)
                await anyio.aclose_forcefully(stream)
            return
        self.handle_events(events)
        if self.stream is not stream:  # the server said goodbye in one of those frames
            await anyio.aclose_forcefully(stream)

    def wake_next_reader(self) -> None:
        for waiter in self.waiting:
            if not waiter.done:
                waiter.wake()
                return
