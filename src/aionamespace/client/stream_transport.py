"""The async transport on an anyio stream: TLS on any loop (and a loopback on trio).

Nobody reads an anyio stream for us, and anyio has no task to spare outside a task group, so
one waiting task at a time is the *reader*: it reads chunks and hands each reply to its
request's waiter; when its own reply arrives it passes the role to another waiting task
(``wait``). While a large outbox is being sent, a helper task keeps reading, so that a server
blocked on answering us can never deadlock against us blocked on sending to it.

Waiters wake through an event of the running loop (trio's Event, or a bare asyncio Future
under TLS), chosen once, when the transport is made: anyio's Event asks which library runs on
every construction.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from collections.abc import Callable
from typing import Any

import anyio
import anyio.abc
import anyio.lowlevel
from anyio.streams.tls import TLSStream

from .._errors import ConnectionLost, ProtocolError
from ..protocol.addresses import Address
from .calls import Operation
from .liveness import IDLE_CHECK_SECONDS, enable_keepalive, handshake_timeout, left_while_idle
from .pipelined import AsyncState, PipelinedTransport, handshake
from .requests import Waiter
from .transport import map_connection_errors

__all__ = ["StreamTransport", "open_stream"]

READ_CHUNK_BYTES = 256 * 1024

#: Sends longer than this read replies meanwhile (by a helper task).
CONCURRENT_READ_ABOVE_BYTES = 64 * 1024


async def open_stream(
    address: Address,
    ssl_context: ssl.SSLContext | None = None,
) -> anyio.abc.ByteStream:
    if isinstance(address, tuple):
        if ssl_context is None:
            tcp: anyio.abc.ByteStream = await anyio.connect_tcp(*address)
        else:
            tcp = await anyio.connect_tcp(
                *address, ssl_context=ssl_context, tls_standard_compatible=False
            )
        with contextlib.suppress(Exception):  # (keepalive where there is a socket to set)
            enable_keepalive(tcp.extra(anyio.abc.SocketAttribute.raw_socket))
        return tcp
    stream: anyio.abc.ByteStream = await anyio.connect_unix(address)
    if ssl_context is not None:
        stream = await TLSStream.wrap(stream, ssl_context=ssl_context, standard_compatible=False)
    return stream


def _loop_identity() -> tuple[Callable[[], object], Callable[[], Any]]:
    """How to recognise the running loop cheaply, and how to make its events (asyncio's, or
    else trio's: anyio runs on nothing else)."""
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        import trio

        return trio.lowlevel.current_trio_token, trio.Event
    return asyncio.get_running_loop, loop.create_future


class StreamTransport(PipelinedTransport):
    """Many tasks, one anyio stream: one of them reads for all (see the module's docstring)."""

    def __init__(self, state: AsyncState) -> None:
        super().__init__(state)
        self._identity, self._new_event = _loop_identity()
        self._loop = self._identity()
        self.link: anyio.abc.ByteStream | None = None
        self.waiting: dict[Waiter, None] = {}  # every task in wait(): who may read next
        self.reading = False
        self.fresh_until = 0.0  # until then the link was in use: no idle check (liveness)

    def current(self) -> bool:
        try:
            return self._identity() is self._loop
        except RuntimeError:
            return False

    def new_wakeup(self) -> Any:
        return self._new_event()

    async def call(
        self,
        operation: Operation,
        args: tuple[Any, ...],
        failures: int = 0,
    ) -> Any:
        if not self.current():
            return await self.state.bound().call(operation, args, failures)
        table = self.table
        await self.freshen()
        waiter = Waiter(self._new_event)
        request_id = table.request(operation, args, waiter)
        try:
            if self.link is None:
                await self.connect()
            if not self.sending and not waiter.done:
                await self.drain()
            if not waiter.done:
                await self.wait(waiter)
            if waiter.error is not None:
                raise waiter.error
        except BaseException as exc:
            error = table.unanswered(request_id, waiter, exc)
            if isinstance(error, ConnectionLost):
                return await self.retry(operation, args, error, failures)
            raise error  # noqa: B904 (its own cause, if any)
        read = operation.read
        return waiter.result if read is None else read(waiter.result)

    async def drain(self) -> None:
        """Send the outbox; it cannot be cancelled from then until the outbox is empty: a
        frame half sent would desynchronise the stream, and one left behind would never be
        answered. When other requests are in flight, the sender first lets every task ready to
        run queue its frame, so that one write carries them all."""
        if self.sending:
            return
        table = self.table
        self.sending = True
        timeout = self.target.limits.call_timeout
        deadline = anyio.current_time() + timeout if timeout is not None else float("inf")
        try:
            with anyio.CancelScope(shield=True, deadline=deadline) as scope:
                if len(table.waiters) > 1:
                    await anyio.lowlevel.cancel_shielded_checkpoint()
                while table.outbox and (link := self.link) is not None:
                    before = table.sent_through
                    try:
                        await self._send(link, table.take_outbox())
                    except ConnectionLost as exc:
                        table.unsent(before)  # a send that failed delivered nothing
                        self.lost(exc, link)
                        await anyio.aclose_forcefully(link)
                        raise
            link = self.link
            if scope.cancelled_caught and link is not None:  # a server that does not read
                self.lost(self.timed_out(), link)
                await anyio.aclose_forcefully(link)
        finally:
            self.sending = False

    async def _send(self, stream: anyio.abc.ByteStream, data: bytes) -> None:
        with map_connection_errors(self.target.address):
            if len(data) <= CONCURRENT_READ_ABOVE_BYTES:
                await stream.send(data)
                return
            helper = Waiter(self._new_event)
            async with anyio.create_task_group() as group:
                group.start_soon(self.wait, helper)
                await stream.send(data)
                helper.finish()
                group.cancel_scope.cancel()

    async def wait(self, waiter: Waiter) -> None:
        """Wait until ``waiter`` is done, taking the reader role whenever nobody holds it."""
        self.waiting[waiter] = None
        try:
            while not waiter.done:
                if self.reading:
                    await waiter.woken()
                    if not waiter.done:
                        waiter.rearm()
                    continue
                self.reading = True
                try:
                    while not waiter.done:
                        with anyio.move_on_after(self.period):
                            while not waiter.done:
                                await self._read_once()
                        if not waiter.done:  # a quarter of call_timeout: any byte since?
                            await self._silence()
                finally:
                    self.reading = False
                    del self.waiting[waiter]
                    self._wake_next_reader()
        finally:
            self.waiting.pop(waiter, None)
            if not self.reading:  # it may have been woken to read, and leave without reading
                self._wake_next_reader()  # (cancelled, or finished by the send it helped)

    async def _silence(self) -> None:
        """The reader's periodic look at the connection (``check_silence``)."""
        link = self.link
        if link is None:
            return
        verdict = self.check_silence()
        if verdict == "timeout":
            self.lost(self.timed_out(), link)
            await anyio.aclose_forcefully(link)
        elif verdict == "ping":
            with contextlib.suppress(ConnectionLost):  # (lost already: said so)
                await self.drain()

    async def freshen(self) -> None:
        if self.link is not None and not self.reading:
            now = anyio.current_time()
            if now > self.fresh_until:
                await self._check_idle()
            self.fresh_until = now + IDLE_CHECK_SECONDS

    async def _check_idle(self) -> None:
        """Before sending on a link nobody has read for a while: read what waits there (an
        end of stream, a reset, a goodbye), so that a server that left it is found before a
        request is lost in it; the request then goes out on a new connection."""
        link = self.link
        raw = None
        with contextlib.suppress(Exception):
            raw = link.extra(anyio.abc.SocketAttribute.raw_socket)  # type: ignore[union-attr]
        if type(raw) is not socket.socket:
            return  # (asyncio's TLS: its loop reads for us, and sees the end)
        try:
            waiting = raw.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        except BlockingIOError:
            return  # nothing there
        except OSError:
            waiting = b""
        self.reading = True  # a read that cannot block: the data (or the end) is there
        try:
            if waiting:
                with anyio.move_on_after(self.period):  # (a TLS record may be unfinished)
                    await self._read_once()
            elif self.link is link:
                self.lost(left_while_idle(self.target.address, "it closed the connection"), link)
                await anyio.aclose_forcefully(link)  # type: ignore[arg-type]
        finally:
            self.reading = False

    async def _read_once(self) -> None:
        stream = self.link
        if stream is None:  # lost meanwhile: lost() failed every waiter already
            self.table.lost(self.last_error or ConnectionLost("not connected"))
            return
        try:
            with map_connection_errors(self.target.address):
                data = await stream.receive(READ_CHUNK_BYTES)
            self.reads += 1  # the server is alive (liveness.py)
            events = self.table.protocol.receive_frames(data)
        except (ConnectionLost, ProtocolError) as exc:
            if self.link is stream:
                self.lost(exc, stream)
                await anyio.aclose_forcefully(stream)
            return
        goodbye = self.table.receive(events)
        if goodbye is not None:  # the server said goodbye in one of those frames
            self.lost(goodbye, stream)
            await anyio.aclose_forcefully(stream)

    def _wake_next_reader(self) -> None:
        for waiter in self.waiting:
            if not waiter.done:
                waiter.wake()
                return

    async def open_link(self) -> anyio.abc.ByteStream:
        target = self.target
        timeout = handshake_timeout(target.limits)
        with (
            map_connection_errors(target.address, connecting=True, handshake_timeout=timeout),
            anyio.fail_after(timeout),
        ):
            stream = await open_stream(target.address, target.ssl_context)
            try:
                await handshake(self.table.protocol, stream.send, stream.receive)
            except BaseException:
                await anyio.aclose_forcefully(stream)
                raise
        return stream

    def close_link(self, link: anyio.abc.ByteStream) -> None:
        pass  # closing a stream awaits: whoever dropped it closes it (aclose_link)

    async def aclose_link(self, link: anyio.abc.ByteStream) -> None:
        await anyio.aclose_forcefully(link)
