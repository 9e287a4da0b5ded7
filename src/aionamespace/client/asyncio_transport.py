"""The async transport on asyncio's plain sockets: replies handed over from protocol callbacks.

Bytes are parsed in ``buffer_updated`` and each reply goes straight to its request's Future in
the same loop iteration, the way the server's own asyncio connections work: no task reads for
the others, and ``await ns.x`` is one coroutine, ``AsyncioTransport.call``, which encodes the
request, hands the outbox to the transport and awaits a bare Future (a Task awaits it on its C
fast path; the reply's result is the Future's). trio takes ``trio_transport.py``, TLS
``stream_transport.py``.

Writing never blocks (``asyncio.Transport.write``); a sender then waits for the transport's
flow control (``writable``) while replies keep arriving, so nothing can deadlock against a
server that is itself waiting for us to read.

The handshake runs on the bare non-blocking socket (``loop.sock_*``), so that a server refusing
us is heard out exactly as on a stream; a transport then takes the socket over.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import sys
from threading import get_ident
from time import perf_counter
from typing import Any

import anyio

from .._errors import ConnectionLost, ProtocolError
from ..protocol.addresses import Address
from .calls import Operation
from .connecting import connect_unix_async
from .liveness import enable_keepalive, handshake_timeout
from .pipelined import AsyncState, PipelinedTransport, handshake
from .transport import map_connection_errors

__all__ = ["WRITE_AT_FRAMES", "AsyncioTransport", "Pacing"]

READ_CHUNK_BYTES = 256 * 1024

#: An outbox this long is written at once rather than when every ready task has queued its
#: frame: the server answers these while our other tasks queue theirs, so both ends work at
#: the same time (benchmarks/compare.py's async row measures it). Only while the client has
#: a CPU to itself, though (``Pacing``).
WRITE_AT_FRAMES = 16

#: How often the sender looks at whether its thread was preempted (``Pacing``).
PACING_SECONDS = 0.002

try:
    from resource import RUSAGE_THREAD, getrusage
except ImportError:  # not Linux: no count per thread, so the sender always writes early
    getrusage = None  # type: ignore[assignment]


def _preemptions() -> int:
    """How often this thread was preempted so far (its involuntary context switches)."""
    return getrusage(RUSAGE_THREAD).ru_nivcsw if getrusage is not None else 0


class Pacing:
    """When the sender writes: early (``WRITE_AT_FRAMES``), or once per loop iteration.

    Writing early pays while the client and the server each run on a CPU of their own. On a
    crowded machine it costs: every early write wakes a server that had gone to sleep, and
    the scheduler, told by the socket that we are about to wait (a "sync" wake-up), may run
    it on our CPU, preempting us, so that the two take turns instead of overlapping, one
    turn per write (benchmarks/costs.py counts the sleeps and preemptions). So every
    ``PACING_SECONDS`` the sender looks at whether its thread was preempted meanwhile: if it
    was, the outbox goes out once per loop iteration, whole, for ``backoff`` such spells, a
    number that doubles each time early writes are tried again and preempted again (up to
    ``MAX_BACKOFF``), and is one again once a spell of early writes passes without.
    """

    __slots__ = ("backoff", "preempted", "since", "spells", "write_at")

    #: The most spells the sender writes whole before it tries early writes again.
    MAX_BACKOFF = 64

    def __init__(self) -> None:
        self.write_at = WRITE_AT_FRAMES
        self.since, self.preempted = perf_counter(), _preemptions()
        self.spells = 0  # spells left of writing whole
        self.backoff = 1  # how many the next stretch lasts

    def look(self) -> None:
        now = perf_counter()
        if now - self.since < PACING_SECONDS:
            return
        preempted = _preemptions()
        if self.spells:
            self.spells -= 1
            if not self.spells:
                self.write_at = WRITE_AT_FRAMES  # try early writes again
        elif preempted != self.preempted:
            self.write_at = sys.maxsize
            self.spells = self.backoff
            self.backoff = min(2 * self.backoff, self.MAX_BACKOFF)
        else:
            self.backoff = 1
        self.since, self.preempted = now, preempted


class AsyncioTransport(PipelinedTransport):
    """Many tasks, one connection on one asyncio loop: the fast path of ``AsyncNamespace``."""

    def __init__(self, state: AsyncState, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(state)
        self.loop = loop
        self.link: SocketLink | None = None
        self.watchdog: asyncio.TimerHandle | None = None  # checks silence while one waits
        self.pacing = Pacing()
        self.thread = get_ident()  # made in the loop's thread, as it runs (see ``call``)

    def current(self) -> bool:
        try:
            return asyncio.get_running_loop() is self.loop
        except RuntimeError:
            return False

    def new_wakeup(self) -> asyncio.Future[Any]:
        return self.loop.create_future()

    async def call(
        self,
        operation: Operation,
        args: tuple[Any, ...],
        failures: int = 0,
    ) -> Any:
        # Whether this runs in our loop, without asking asyncio.get_running_loop(), which
        # makes a system call (getpid) on every call in CPython 3.11: a thread runs one
        # loop at a time, so if ours runs in the thread that made us, this is ours (unless
        # it was since run by another thread, and this one runs another loop meanwhile
        # with the same proxy: a proxy is used by one thread at a time).
        loop = self.loop
        if get_ident() != self.thread or not loop.is_running():
            transport = self.state.bound()
            if transport is not self:
                return await transport.call(operation, args, failures)
            self.thread = get_ident()  # our loop after all, run by another thread now
        table = self.table
        future: asyncio.Future[Any] = asyncio.Future(loop=loop)
        request_id = table.request(operation, args, future)
        try:
            link = self.link
            if link is None:
                await self.connect()
                await self.drain()
            elif len(table.outbox) >= self.pacing.write_at:
                self._write(link)  # the server starts on these meanwhile
            elif not self.sending:
                await self.drain()
            result = await future
        except BaseException as exc:
            error = table.unanswered(request_id, future, exc)
            if isinstance(error, ConnectionLost):
                return await self.retry(operation, args, error, failures)
            raise error  # noqa: B904 (its own cause, if any)
        read = operation.read
        return result if read is None else read(result)

    async def drain(self) -> None:
        """Send the outbox, coalescing what concurrent tasks queue meanwhile (auto-pipelining).

        One task at a time is the sender. When other requests are in flight, it first yields
        once, so that every task ready to run queues its frame and one write carries them all
        (``call`` writes early once WRITE_AT_FRAMES are queued, as ``Pacing`` says). The
        transport's write never blocks, so the outbox is handed over whole even if the sender
        is cancelled then.
        """
        link = self.link
        if self.sending or link is None:
            return
        self.sending = True
        try:
            if len(self.table.waiters) > 1:
                self.pacing.look()
                await asyncio.sleep(0)  # every task ready to run queues its frame first
        finally:
            self.sending = False
            self._write(link)
        await link.writable()  # (cancellable: what we wrote is the transport's already)

    def _write(self, link: SocketLink) -> None:
        """Hand the outbox to the link (whose write never blocks) in one write."""
        table = self.table
        if table.outbox and self.link is link:
            before = table.sent_through
            try:
                link.write(table.take_outbox())
            except ConnectionLost as exc:  # it had already ended: nothing was written
                table.unsent(before)
                self.lost(exc, link)
                raise
            if self.watchdog is None:
                self._arm()

    def _arm(self) -> None:
        """Check the connection's silence in a quarter of call_timeout (liveness.py): one
        timer per connection while something waits, none per request."""
        if self.period is not None and self.link is not None:
            self.watchdog = self.loop.call_later(self.period, self._watch, self.link)

    def _watch(self, link: SocketLink) -> None:
        self.watchdog = None
        if link is not self.link:
            return
        verdict = self.check_silence()
        if verdict == "timeout":
            self.lost(self.timed_out(), link)
        elif verdict != "idle":
            self._arm()
            if verdict == "ping":
                with contextlib.suppress(ConnectionLost):  # (lost already: said so)
                    self._write(link)

    async def wait(self, waiter: Any) -> None:
        # The link's callbacks deliver every reply: a waiter only waits.
        if self.watchdog is None:
            self._arm()
        while not waiter.done:
            await waiter.woken()
            if not waiter.done:
                waiter.rearm()

    async def open_link(self) -> SocketLink:
        loop = self.loop
        target = self.target
        timeout = handshake_timeout(target.limits)
        with (
            map_connection_errors(target.address, connecting=True, handshake_timeout=timeout),
            anyio.fail_after(timeout),
        ):
            sock = await _connect(loop, target.address)
            try:
                await handshake(
                    self.table.protocol,
                    lambda data: loop.sock_sendall(sock, data),
                    lambda: _receive(loop, sock),
                )
                if sock.family == socket.AF_UNIX:
                    _, link = await loop.create_unix_connection(lambda: SocketLink(self), sock=sock)
                else:
                    _, link = await loop.create_connection(lambda: SocketLink(self), sock=sock)
            except BaseException:
                sock.close()
                raise
        return link

    def close_link(self, link: SocketLink) -> None:
        link.close()

    def received(self, link: SocketLink, events: list[Any]) -> None:
        """The link parsed ``events``: hand them over; a goodbye among them ends the link."""
        goodbye = self.table.receive(events)
        if goodbye is not None:
            self.lost(goodbye, link)


class SocketLink(asyncio.BufferedProtocol):
    """One connection's protocol callbacks: parsed replies go to the transport's table."""

    def __init__(self, owner: AsyncioTransport) -> None:
        self.owner = owner
        self.address = owner.target.address
        self.protocol = owner.table.protocol
        self.transport: asyncio.Transport | None = None
        self.buffer = memoryview(bytearray(READ_CHUNK_BYTES))
        self._into_large = False  # the last get_buffer was a large value's own buffer
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
        self.owner.reads += 1  # the server is alive (liveness.py)
        try:
            if self._into_large:
                events: list[Any] = self.protocol.large_received(nbytes)
            else:
                events = self.protocol.receive_frames(self.buffer[:nbytes])
        except Exception as exc:  # garbage from the server
            self._end(exc if isinstance(exc, ProtocolError) else ConnectionLost(str(exc)))
            return
        if events:
            self.owner.received(self, events)

    def eof_received(self) -> bool:
        return False  # close: a server half-closing is done with us

    def connection_lost(self, exc: Exception | None) -> None:
        detail = f": {exc}" if exc is not None else ": the server closed the connection"
        self._end(
            ConnectionLost(
                f"lost the connection to the aionamespace server at {self.address!r}{detail}"
            )
        )

    def pause_writing(self) -> None:
        if self._writable is None:
            self._writable = self.owner.loop.create_future()

    def resume_writing(self) -> None:
        _wake(self._writable)
        self._writable = None

    # ------------------------------------------------------------------ for the transport

    def write(self, data: bytes) -> None:
        """Hand ``data`` to asyncio (which never blocks); ConnectionLost once ended."""
        if self.error is not None:
            raise self.error
        assert self.transport is not None
        self.transport.write(data)

    async def writable(self) -> None:
        """Wait while asyncio's buffer is over its high-water mark."""
        while self._writable is not None and self.error is None:
            await self._writable
        if self.error is not None:
            raise self.error

    def close(self) -> None:
        """Drop the connection now (what is unsent is lost: the caller reports it)."""
        self._end(ConnectionLost("the connection was closed"), notify=False)

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
            if self.owner.loop.is_closed():
                _close_orphan(self.transport)
            else:
                self.transport.abort()
        _wake(self._writable)
        if notify:
            self.owner.lost(error, self)


def _close_orphan(transport: asyncio.Transport) -> None:
    """Close a transport whose loop was closed while it was open (the proxy was used under
    one ``asyncio.run`` and is now used under another): ``abort()`` would schedule the
    closing on that loop, which raises. asyncio's own transports are closed by the callback
    it would have scheduled, run here; another loop's are left to it (uvloop closes its
    handles itself when its loop closes)."""
    lost = getattr(transport, "_call_connection_lost", None)
    if lost is not None and getattr(transport, "_sock", None) is not None:
        lost(None)


def _wake(future: asyncio.Future[None] | None) -> None:
    if future is not None and not future.done():
        future.set_result(None)


async def _connect(loop: asyncio.AbstractEventLoop, address: Address) -> socket.socket:
    candidates: list[tuple[int, Any]]
    if not isinstance(address, tuple):
        candidates = [(socket.AF_UNIX, address)]
    else:
        found = await loop.getaddrinfo(*address, type=socket.SOCK_STREAM)
        candidates = [(family, sockaddr) for family, _, _, _, sockaddr in found]
    error: OSError = OSError(f"no address for {address!r}")
    for family, sockaddr in candidates:
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setblocking(False)
            if family != socket.AF_UNIX:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                enable_keepalive(sock)
            if family == socket.AF_UNIX:
                await connect_unix_async(sock, sockaddr)
            else:
                await loop.sock_connect(sock, sockaddr)
        except OSError as exc:
            sock.close()
            error = exc
            continue
        except BaseException:
            sock.close()
            raise
        return sock
    raise error


async def _receive(loop: asyncio.AbstractEventLoop, sock: socket.socket) -> bytes:
    data = await loop.sock_recv(sock, READ_CHUNK_BYTES)
    if not data:
        raise EOFError("the server closed the connection")
    return data
