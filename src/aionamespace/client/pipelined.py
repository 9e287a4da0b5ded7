"""What every async transport shares: one connection for many tasks, on one event loop.

An async transport carries the requests of every task of one ``AsyncNamespace`` over one
connection, pipelined through the proxy's ``RequestTable`` (``requests.py``). Its subclasses
say how bytes move: asyncio's protocol callbacks (``asyncio_transport.py``), a reader task on
trio (``trio_transport.py``), an anyio stream (``stream_transport.py``: TLS), or a server in
this process (``loopback.py``). Each defines the
request path itself (``call``: the hot path, written for its loop) and the hooks below; what
does not depend on how bytes move is here: connecting once for everyone, retries, flushing
queued writes, watch events, closing, and the tasks of ``async with ns:`` (``Pump``).

A transport belongs to the event loop it was made in (``current``): a proxy used from another
loop gets another transport (``AsyncState.bound``), over the same table.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import anyio
import anyio.abc

from .._errors import AuthenticationError, ConnectionLost, ServerTimeout
from ..protocol.connection import ClientConnection, WatchPush
from .cache import ABSENT, NOTHING_CACHED
from .calls import PING
from .liveness import server_timeout
from .requests import RequestTable, Waiter
from .transport import TRANSPORT_ERRORS

if TYPE_CHECKING:
    from .calls import Operation

__all__ = ["AsyncState", "PipelinedTransport", "Pump", "handshake"]


async def handshake(
    protocol: ClientConnection,
    send: Callable[[bytes], Awaitable[object]],
    receive: Callable[[], Awaitable[bytes]],
) -> None:
    """``ClientConnection``'s handshake over an async ``send`` and ``receive`` (a stream's, or
    a bare socket's): raise why the server will not have us."""
    try:
        await send(protocol.start())
    except TRANSPORT_ERRORS as unsent:
        try:  # a server refusing us at once may have said why
            with anyio.fail_after(1.0):
                data = await receive()
        except (*TRANSPORT_ERRORS, TimeoutError):
            raise unsent from None
        protocol.receive_data(data)  # raises that reason (ConnectionLost is an OSError)
        raise
    while not protocol.greeted:
        protocol.receive_data(await receive())
    reply = protocol.handshake_reply()
    if reply:
        await send(reply)


class AsyncState:
    """What an ``AsyncNamespace`` holds: its table, and the transport of the loop it is in."""

    __slots__ = ("bind", "cached", "key", "table", "target", "transport")

    def __init__(self, table: RequestTable, bind: Any) -> None:
        self.table = table
        self.target = table.target
        self.key = table.target.key
        self.bind = bind  # () -> a new transport for the running loop
        self.transport: PipelinedTransport = _Unbound(self)
        # What cached reads are served from: the namespace's dict in the table's cache while
        # a task keeps it current (``PipelinedTransport.keep_cache``), else nothing.
        self.cached: dict[str, Any] = NOTHING_CACHED

    def bound(self) -> PipelinedTransport:
        """The transport of the running event loop (a new one if the loop changed: the old
        loop's connection is dropped, its waiters fail, its queued writes carry over)."""
        transport = self.transport
        if not transport.current():
            old, self.transport = transport, self.bind(self)
            old.abandon()
        return self.transport


class PipelinedTransport:
    """The shared part of an async transport (see the module's docstring)."""

    def __init__(self, state: AsyncState) -> None:
        self.state = state
        self.table = state.table
        self.target = state.target
        self.link: Any = None  # the open connection, in the subclass's terms
        self.sending = False  # a task is sending the outbox
        self.last_error: BaseException | None = None
        self.connect_lock = anyio.Lock()
        self.connected = anyio.Event()  # set while a connection is up; a new one after
        self.keeping_cache = False  # a task applies invalidations as they come (the pump's)
        self.pump: Pump | None = None
        # Liveness (liveness.py): reads counted by the subclass; silence checked every
        # quarter of call_timeout while something waits (none for a server in this process).
        timeout = self.target.limits.call_timeout
        self.period = None if timeout is None or self.target.in_process else timeout / 4
        self.reads = self.seen = self.silent = self.quiet = 0

    # ------------------------------------------------------------------ the subclass's part

    def current(self) -> bool:
        """Whether this transport belongs to the running event loop."""
        raise NotImplementedError

    def new_wakeup(self) -> Any:
        """An event of this loop, for a ``Waiter``."""
        raise NotImplementedError

    async def call(
        self,
        operation: Operation,
        args: tuple[Any, ...],
        failures: int = 0,
    ) -> Any:
        """Send one request and return its answer, read; retried as the target's policy says
        (``failures``: how many attempts failed already)."""
        raise NotImplementedError

    async def open_link(self) -> Any:
        """Connect and complete the handshake; the new link."""
        raise NotImplementedError

    async def drain(self) -> None:
        """Send the outbox (returns at once if another task is sending it)."""
        raise NotImplementedError

    async def wait(self, waiter: Waiter) -> None:
        """Wait until ``waiter`` is done (registered with the table by the caller)."""
        raise NotImplementedError

    def close_link(self, link: Any) -> None:
        """Drop ``link`` now, as far as can be done without awaiting: what it has not sent
        is lost (the table says so)."""
        raise NotImplementedError

    async def aclose_link(self, link: Any) -> None:
        """Finish closing a link ``close_link`` dropped."""

    async def freshen(self) -> None:
        """Before sending: drop the link if its server left it while it sat unread (a
        transport whose loop does not read for it, ``liveness.py``)."""

    # ------------------------------------------------------------------ shared

    def check_silence(self) -> str | None:
        """One look at the connection, every ``period`` (a quarter of ``call_timeout``):
        ``"timeout"`` once a request has waited through five checks without a byte from the
        server (so never before call_timeout, at most a quarter later), ``"ping"`` once only
        waits that may last have waited through four (the ping, an ordinary request, is then
        timed like any), ``"idle"`` if nothing waits (stop looking), else None."""
        due = self.table.overdue()
        if due is None:
            self.silent = self.quiet = 0
            self.seen = self.reads  # what was read answered what waited before: counted
            return "idle"
        if self.reads != self.seen:
            self.seen = self.reads
            self.silent = self.quiet = 0
            return None
        self.quiet += 1
        self.silent = self.silent + 1 if due == "timeout" else 0
        if self.silent >= 5:
            return "timeout"
        if due == "ping" and self.quiet >= 4:
            self.quiet = 0
            self.table.request(PING, (), Waiter(self.new_wakeup))  # its answer: alive
            return "ping"
        return None

    def timed_out(self) -> ServerTimeout:
        """The error for a server silent through ``check_silence``'s bound."""
        return server_timeout(self.target.address, self.target.limits.call_timeout, True)

    async def retry(
        self, operation: Operation, args: tuple[Any, ...], error: ConnectionLost, failures: int
    ) -> Any:
        """``call`` again after a lost connection, when the policy allows; else raise."""
        delay = self.target.retry.delay(operation.op, failures + 1, error)
        if delay is None:
            raise error
        await anyio.sleep(delay)  # back off before reconnecting
        return await self.state.bound().call(operation, args, failures + 1)

    def write(self, operation: Operation, args: tuple[Any, ...]) -> None:
        """Queue a write nobody awaits (``ns.x = v``); the pump, if any, sends it at once."""
        self.table.write(operation, args)
        if self.pump is not None:
            self.pump.kick.set()

    async def connect(self) -> None:
        if self.link is not None:
            return
        async with self.connect_lock:
            if self.link is None:
                try:
                    self.link = await self.open_link()
                except AuthenticationError:
                    self.table.drop_queued_writes()  # never deliverable with this key
                    raise
                self.last_error = None
                self.connected.set()

    def lost(self, error: BaseException, link: Any = None) -> None:
        """The connection (``link``, if it is still ours) is gone: fail every waiter."""
        if link is not None and link is not self.link:
            return
        if self.link is not None:
            self.close_link(self.link)
            self.link = None
        self.last_error = error
        if self.connected.is_set():
            self.connected = anyio.Event()
        self.silent = self.quiet = 0  # (a new connection's silence is counted afresh)
        self.seen = self.reads
        self.table.lost(error)

    def abandon(self) -> None:
        """This transport's loop is gone (the proxy moved to another): let its link go."""
        if self.link is not None:
            self.lost(ConnectionLost("the event loop that opened the connection has ended"))

    async def flush(self) -> None:
        """Send every queued write, wait for all acknowledgements, raise the first failure."""
        table = self.table
        try:
            if table.outbox:
                await self.freshen()
                await self.connect()
                await self.drain()
        except ConnectionLost:
            if not table.write_errors:
                raise
            # else: the loss is already recorded against the writes it hit; report it once
        until = table.unacknowledged()
        if until and self.link is not None:  # some may be on their way out, with another task's
            # batch (with no connection, nothing is: the unsent stay queued for the next flush)
            await self.wait_for(Waiter(self.new_wakeup, until=until))
        errors = table.take_write_errors()
        if errors:
            raise errors[0]

    async def wait_for(self, waiter: Waiter) -> None:
        """Register ``waiter`` with the table and wait until it is done (at once, with no
        connection: nothing will come)."""
        if self.link is None:
            waiter.finish(error=self.last_error or ConnectionLost("not connected"))
            return
        self.table.add(waiter)
        try:
            await self.wait(waiter)
        finally:
            self.table.remove(waiter)

    async def next_push(self) -> WatchPush:
        """The next watch event pushed on this connection."""
        pushes = self.table.watch_pushes
        while not pushes:
            if self.link is None:
                raise ConnectionLost(f"the watch's connection is closed ({self.last_error})")
            waiter = Waiter(self.new_wakeup, wants_push=True)
            await self.wait_for(waiter)
            if waiter.error is not None:
                raise waiter.error
        return pushes.popleft()

    async def close(self) -> None:
        """Flush queued writes, then close the connection (a later use reconnects)."""
        try:
            if self.table.outbox or self.table.inflight_writes:
                await self.flush()
        finally:
            link = self.link
            self.lost(ConnectionLost("the proxy was closed"))
            if link is not None:
                await self.aclose_link(link)

    def cached(self, key: str, name: str) -> Any:
        """The cache entry for a name, or ABSENT; only while the cache is being kept current
        (inside ``async with``, where a task reads the server's invalidations as they come).
        Points the proxy's reads at the namespace's dict again (``CacheTable``: the one it
        held may have been let go once emptied)."""
        cache = self.table.cache
        if cache is None or not self.keeping_cache or self.link is None:
            return ABSENT
        values = self.state.cached = cache.namespace(key)
        return values.get(name, ABSENT)

    def keep_cache(self, keeping: bool) -> None:
        """Whether a task applies the server's invalidations as they arrive (the pump's):
        only meanwhile do the proxy's reads look in its cache. A lost connection empties
        the cache at once (``RequestTable.lost``), before this is called again."""
        self.keeping_cache = keeping
        cache = self.table.cache
        if cache is not None:
            self.state.cached = cache.namespace(self.state.key) if keeping else NOTHING_CACHED

    async def start_pump(self) -> None:
        if self.pump is not None:
            raise RuntimeError("this AsyncNamespace is already in an 'async with' block")
        self.pump = Pump(self)
        try:
            await self.pump.start()
        except BaseException:
            self.pump = None
            raise

    async def stop_pump(self) -> None:
        pump, self.pump = self.pump, None
        if pump is not None:
            await pump.stop()


class _Unbound(PipelinedTransport):
    """A proxy's transport before its first use: binds to the loop of that use."""

    def __init__(self, state: AsyncState) -> None:  # (no loop yet: nothing to make)
        self.period = None
        self.state = state
        self.table = state.table
        self.link = None
        self.pump = None

    def current(self) -> bool:
        return False

    async def call(
        self,
        operation: Operation,
        args: tuple[Any, ...],
        failures: int = 0,
    ) -> Any:
        return await self.state.bound().call(operation, args, failures)

    def write(self, operation: Operation, args: tuple[Any, ...]) -> None:
        self.table.write(operation, args)  # sent by the first transport

    def abandon(self) -> None:
        pass

    def cached(self, key: str, name: str) -> Any:
        return ABSENT


class Pump:
    """``async with ns:``: tasks next to the block's that keep the connection moving.

    Outside ``async with``, queued writes go out with the proxy's next await, and a cached
    read is never served locally, since nobody would apply the server's invalidations in time.
    Inside it, one task sends writes as soon as they are queued and reads their
    acknowledgements; with a cache, another keeps it current whenever a connection is up
    (``PipelinedTransport.cached``).
    """

    def __init__(self, transport: PipelinedTransport) -> None:
        self.transport = transport
        self.kick = anyio.Event()  # set when a write is queued
        self.group: anyio.abc.TaskGroup | None = None

    async def start(self) -> None:
        group = anyio.create_task_group()
        await group.__aenter__()
        self.group = group
        group.start_soon(self._send_writes)
        if self.transport.table.cache is not None:
            group.start_soon(self._keep_cache)

    async def stop(self) -> None:
        """Flush and close the connection, then end the tasks."""
        group, self.group = self.group, None
        try:
            await self.transport.close()
        finally:
            if group is not None:
                group.cancel_scope.cancel()
                await group.__aexit__(None, None, None)

    async def _send_writes(self) -> None:
        transport, table = self.transport, self.transport.table
        while self.group is not None:
            kick = self.kick
            await kick.wait()
            if self.kick is kick:
                self.kick = anyio.Event()
            try:
                if table.outbox:
                    await transport.connect()
                    await transport.drain()
                if table.inflight_writes:
                    until = max(table.inflight_writes)
                    await transport.wait_for(Waiter(transport.new_wakeup, until=until))
            except ConnectionLost:
                pass  # unsent writes stay queued; flush() reconnects and reports

    async def _keep_cache(self) -> None:
        """Wait (and on a stream, read) whenever connected, so that the server's
        invalidations are applied as they arrive."""
        transport = self.transport
        try:
            while True:
                await transport.connected.wait()
                transport.keep_cache(True)
                await transport.wait_for(Waiter(transport.new_wakeup))  # ends with the link
                transport.keep_cache(False)
        finally:
            transport.keep_cache(False)
