"""Many tasks, one connection: the I/O machinery behind ``AsyncNamespace``.

No background task is required:

* every operation encodes its frame at once and appends it to the *outbox*; whoever holds the
  send lock sends the whole outbox in one write, so concurrent requests are pipelined and
  ``ns.x = v`` (which cannot await) is sent, in order, by the next await on the proxy;
* replies are matched by request id. On asyncio's plain sockets a ``PushConnection``
  (``_push.py``) resolves each request's Future from the protocol's callback, and
  ``await ns.x`` is one coroutine, ``get``. Elsewhere (trio, TLS) one waiting task at a time
  is the *reader* (``_reading.py``). Either way, a cancelled waiter's reply is read and
  dropped, never delivered to anyone else;
* inside ``async with ns:`` a pump task sends queued writes as soon as they are made and reads
  their acknowledgements (``_pump.py``).

While a large outbox is being sent, replies keep being read (by a helper task, or by the
PushConnection's callbacks), so a server blocked on answering us can never deadlock against us
blocked on sending to it. Connecting is ``_connect.py``'s business, waiting ``_waiters.py``'s.
"""

from __future__ import annotations

import asyncio
import collections
from typing import Any

import anyio
import anyio.abc
import anyio.lowlevel

from .._errors import (
    AuthenticationError,
    ConnectionLost,
    WriteQueueFull,
)
from ..protocol.codec import decode_value
from ..protocol.connection import ClientConnection, Invalidate, Push, Reply
from . import calls
from .cache import ABSENT, CacheTable, entry_value
from .connect import open_connection, open_push_connection
from .proxy import Target
from .pump import Pump
from .push import PushConnection
from .reading import Reading
from .waiters import Waiter, loop_identity, settle

__all__ = ["Multiplexer"]

#: On asyncio, an outbox this long is written at once rather than when every ready task has
#: queued its frame: the server answers these while our other tasks queue theirs, so both
#: ends work at the same time (64 tasks: 1.4x the gets/s of one write per round, measured).
WRITE_AT_FRAMES = 16


class Multiplexer(Reading):
    """One connection shared by every task of one AsyncNamespace, bound to the event loop
    that first used it."""

    def __init__(self, target: Target) -> None:
        self.target = target
        self.protocol = ClientConnection(target.limits, target.authkey)
        self.outbox: list[tuple[int, bytes]] = []  # (request id, frame), not sent yet
        self.queued_writes: set[int] = set()  # write ids in the outbox
        self.inflight_writes: set[int] = set()  # write ids sent, not yet acknowledged
        self.write_errors: list[BaseException] = []
        self.loop: object = None
        self.pushed = False  # replies come by protocol callbacks (asyncio's plain sockets)
        self.stream: anyio.abc.ByteStream | PushConnection | None = None
        self.last_error: BaseException | None = None
        self.waiting: dict[Waiter, None] = {}  # every task waiting on this connection
        self.flushing: list[Waiter] = []  # those of them waiting for all replies up to an id
        self.by_id: dict[int, Waiter | asyncio.Future[Any]] = {}  # requests awaiting replies
        self.reading = False
        self.sending = False  # a task is in drain(), sending the outbox
        self.connect_lock: anyio.Lock | None = None
        self.pump: Pump | None = None  # inside async with
        self.pushes: collections.deque[Push] = collections.deque()  # for a watch's connection
        self.cache = CacheTable() if target.cache else None
        self.connected: anyio.Event | None = None  # set while a connection is up
        self.keeping_cache = False  # a task reads invalidations as they come (the pump's)
        self.sent_through = 0  # the highest request id ever handed to a socket

    def bind(self) -> None:
        """Bind to the running event loop (a proxy unpickled or reused in a new loop rebinds)."""
        loop = loop_identity()
        if self.loop is loop or self.loop == loop:
            return
        if self.stream is not None:  # left over from a loop that has ended: drop it
            self.stream = None
            self.lost(ConnectionLost("the event loop that opened the connection has ended"))
        self.loop = loop
        self.pushed = (isinstance(loop, asyncio.AbstractEventLoop)
                       and self.target.ssl_context is None)
        self.sending = False
        self.connect_lock = anyio.Lock()
        self.reading = False
        self.connected = None

    def lost(self, error: BaseException) -> None:
        """The connection is gone: fail every waiter; keep unsent writes for the next one."""
        if isinstance(self.stream, PushConnection):
            self.stream.close()  # (no-op if it is what ended)
            self.reading = False  # waiters take the reader role again, and find no stream
        self.stream = None
        self.last_error = error
        if self.connected is not None and self.connected.is_set():
            self.connected = anyio.Event()  # the pump's cache keeper waits for the next one
        if self.cache is not None:
            self.cache.clear()
        if self.inflight_writes:
            count = len(self.inflight_writes)
            self.inflight_writes.clear()
            unknown = ConnectionLost(
                f"{count} write(s) were sent but not acknowledged before the connection was "
                f"lost ({error}); they may or may not have been applied")
            unknown.request_sent = True
            self.write_errors.append(unknown)
        self.outbox = [(i, frame) for i, frame in self.outbox if i in self.queued_writes]
        # Every request is failed, also those whose tasks are not waiting yet (queued behind
        # the connect lock, say): sent, they will never be answered; unsent, they were dropped.
        for waiter in [*self.by_id.values(), *self.waiting]:
            settle(waiter, error=error)

    def dispatch(self, reply: Reply, waiter: Waiter | asyncio.Future[Any] | None) -> None:
        """Act on ``reply``; ``waiter`` is its request's, taken out of ``by_id``."""
        if reply.id == 0:  # the server is dropping the connection and says why
            self.lost(reply.error or ConnectionLost("the server closed the connection"))
            return
        if reply.id in self.inflight_writes:
            self.inflight_writes.discard(reply.id)
            if reply.error is not None:
                self.write_errors.append(reply.error)
        if self.cache is not None:  # a cached read's answer fills the cache, in stream order
            self.cache.answered(reply.id, reply.result, reply.error)
        if waiter is not None:
            settle(waiter, reply.result, reply.error)
        if self.flushing:  # waiters for every reply up to an id (few: _flush, the pump)
            for waiter in list(self.flushing):
                if reply.id >= waiter.until:
                    waiter.finish()
                    self.flushing.remove(waiter)

    def queue_write(self, op: str, *args: Any) -> None:
        limit = self.target.limits.max_queued_writes
        if len(self.queued_writes) + len(self.inflight_writes) >= limit:
            raise WriteQueueFull(
                f"{limit} writes are waiting to be acknowledged (Limits.max_queued_writes): "
                "await ns._flush(), or use 'async with ns:' so that a task sends them")
        request_id, frame = self.protocol.send_request(op, *args)
        self.outbox.append((request_id, frame))
        self.queued_writes.add(request_id)
        if self.pump is not None:
            self.pump.kick.set()

    async def flush(self) -> None:
        """Send every queued write, wait for all acknowledgements, raise the first failure."""
        self.bind()
        try:
            if self.outbox:
                await self.connect()
                await self.drain()
        except ConnectionLost:
            if not self.write_errors:
                raise
            # else: the loss is already recorded against the writes it hit; report it once
        unacknowledged = self.queued_writes | self.inflight_writes
        if unacknowledged:  # some may still be on their way out, with another task's batch
            await self.wait(Waiter(until=max(unacknowledged)))
        errors, self.write_errors = self.write_errors, []
        if errors:
            raise errors[0]

    async def close(self) -> None:
        """Flush queued writes, then close the connection (a later use reconnects)."""
        try:
            if self.outbox or self.inflight_writes:
                await self.flush()
        finally:
            stream = self.stream
            self.lost(ConnectionLost("the proxy was closed"))
            if stream is not None:
                await anyio.aclose_forcefully(stream)

    def cached(self, key: str, name: str) -> Any:
        """The cache entry for a name, or ABSENT; only while the cache is being kept current
        (inside ``async with``, where a task reads the server's invalidations as they come)."""
        if self.cache is None or not self.keeping_cache or self.stream is None:
            return ABSENT
        return self.cache.values.get((key, name), ABSENT)

    async def start_pump(self) -> None:
        """``async with ns:`` -- see ``_pump.py``."""
        self.bind()
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

    async def get(self, key: str, name: str) -> Any:
        """What ``await ns.x`` awaits: the value of ``name``.

        On asyncio's plain sockets, the commonest call is this one coroutine: no Call object,
        no ``request`` under it (a tenth of an awaited get). Anything else takes ``read``.
        """
        loop = asyncio._get_running_loop()
        if self.loop is not loop or not self.pushed or self.cache is not None:
            return await self.read(key, name)
        # request's steps, inlined (a call each cost 2%)
        request_id, frame = self.protocol.send_get(key, name)
        self.outbox.append((request_id, frame))
        future: asyncio.Future[Any] = asyncio.Future(loop=loop)
        self.by_id[request_id] = future
        try:
            stream = self.stream
            if stream is None:
                await self._connect_and_drain()
            elif len(self.outbox) >= WRITE_AT_FRAMES and type(stream) is PushConnection:
                self._write_pushed(stream)  # the server starts on these meanwhile
            elif not self.sending:
                await self.drain()
            return decode_value(await future)
        except BaseException as exc:
            error = self._unanswered(request_id, future, exc)
        if isinstance(error, ConnectionLost):
            return await self.run(calls.get(key, name), error)  # retried as the policy says
        raise error

    async def read(self, key: str, name: str) -> Any:
        """``get`` in general: from the cache when it holds the name (``cached``), else by a
        request, retried as the target's policy says."""
        if self.cache is not None:
            entry = self.cached(key, name)
            if entry is not ABSENT:
                return entry_value(entry, name)
        try:  # without building a Call, which only a retry needs
            return decode_value(await self.request("get", key, name))
        except ConnectionLost as exc:
            return await self.run(calls.get(key, name), exc)

    async def run(self, call: calls.Call, failed: ConnectionLost | None = None) -> Any:
        """Run ``call``, retrying as the target's policy says (``failed``: a first attempt,
        made by the caller, lost the connection so)."""
        retry = self.target.retry
        failures = 0
        while True:
            if failed is not None:
                failures += 1
                delay = retry.delay(call.op, failures, failed)
                if delay is None:
                    raise failed
                await anyio.sleep(delay)  # back off before reconnecting
            try:
                return call.read(await self.request(call.op, *call.args))
            except ConnectionLost as exc:
                failed = exc

    async def request(self, op: str, *args: Any) -> Any:
        """Send one request; return its reply's result, or raise its error."""
        loop = asyncio._get_running_loop()
        if loop is None or self.loop is not loop:  # (None on trio: bind() decides)
            self.bind()
        if op == "get":
            request_id, frame = self.protocol.send_get(*args)
            if self.cache is not None:
                self.cache.expect(request_id, (args[0], args[1]))
        else:
            request_id, frame = self.protocol.send_request(op, *args)
        if not self.pushed:
            self.outbox.append((request_id, frame))
            return await self._await_reply(request_id)
        future = self._push_request(request_id, frame, loop)
        try:
            stream = self.stream
            if stream is None:
                await self._connect_and_drain()
            elif len(self.outbox) >= WRITE_AT_FRAMES and type(stream) is PushConnection:
                self._write_pushed(stream)  # the server starts on these meanwhile
            elif not self.sending:
                await self.drain()
            return await future
        except BaseException as exc:
            raise self._unanswered(request_id, future, exc)  # noqa: B904 (its own cause)

    def _push_request(self, request_id: int, frame: bytes, loop: Any) -> asyncio.Future[Any]:
        """Queue a request on asyncio's plain socket: its reply will come as the Future's
        result (or error), set by the protocol's callback; lost() finds it in by_id."""
        self.outbox.append((request_id, frame))
        future: asyncio.Future[Any] = asyncio.Future(loop=loop)
        self.by_id[request_id] = future
        return future

    async def _connect_and_drain(self) -> None:
        await self.connect()
        await self.drain()

    def _unanswered(self, request_id: int, future: asyncio.Future[Any],
                    exc: BaseException) -> BaseException:
        """A pushed request ends without a result: forget it, and say what to raise."""
        self.by_id.pop(request_id, None)
        if future.cancelled() or not future.done():  # no reply is coming for it any more
            future.cancel()
            self.outbox = [(i, frame) for i, frame in self.outbox if i != request_id]
            return exc
        error = future.exception()  # (which also marks it retrieved)
        if error is None or not isinstance(exc, ConnectionLost):
            return exc  # (cancelled, say, after its reply came)
        # What failed this request is what it reports (not a later failure to reconnect).
        return self._own_loss(error, request_id) if isinstance(error, ConnectionLost) else error

    def _own_loss(self, error: ConnectionLost, request_id: int) -> ConnectionLost:
        """One error object fails every waiter; each caller gets its own, saying whether its
        request had left (and so whether retrying it could apply a write twice)."""
        own = ConnectionLost(str(error))
        own.request_sent = request_id <= self.sent_through
        own.__cause__ = error
        return own

    async def next_push(self) -> Push:
        """The next watch event pushed on this connection."""
        self.bind()
        while not self.pushes:
            waiter = Waiter(wants_push=True)
            await self.wait(waiter)
            if waiter.error is not None:
                raise waiter.error
        return self.pushes.popleft()

    async def connect(self) -> None:
        if self.stream is not None:
            return
        assert self.connect_lock is not None
        async with self.connect_lock:
            if self.stream is None:
                try:
                    if self.pushed:
                        pushed = await open_push_connection(self.target, self.protocol)
                        pushed.on_events, pushed.on_lost = self.handle_events, self.lost
                        self.stream = pushed
                        self.reading = True  # the protocol reads: every waiter just waits
                    else:
                        self.stream = await open_connection(self.target, self.protocol)
                except AuthenticationError:
                    # Queued writes can never be delivered with this key: drop them, so that
                    # the error is reported once, not by every later _flush().
                    self.outbox.clear()
                    self.queued_writes.clear()
                    raise
                self.last_error = None
                if self.connected is None:
                    self.connected = anyio.Event()
                self.connected.set()

    async def drain(self) -> None:
        """Send the outbox, coalescing what concurrent tasks queue meanwhile (auto-pipelining).

        One task at a time is the sender; others return at once (their frames are in the outbox
        the sender empties). When other requests are in flight, the sender first yields once,
        so that every task ready to run queues its frame and one write carries them all (on a
        PushConnection, ``request`` writes early once WRITE_AT_FRAMES are queued). It
        cannot be cancelled from then until the outbox is empty: a frame half sent would
        desynchronise the stream, and a frame left behind would never be answered.
        """
        if self.sending:
            return
        if type(self.stream) is PushConnection:
            await self._drain_pushed(self.stream)
        else:
            await self._drain_stream()

    async def _drain_pushed(self, stream: PushConnection) -> None:
        """``drain`` on asyncio's PushConnection, whose write never blocks: no shield needed,
        since the outbox is handed to the transport whole even if we are cancelled."""
        self.sending = True
        try:
            if len(self.by_id) > 1:
                await asyncio.sleep(0)  # every task ready to run queues its frame first
        finally:
            self.sending = False
            self._write_pushed(stream)
        await stream.writable()  # (cancellable: what we wrote is the transport's already)

    def _write_pushed(self, stream: PushConnection) -> None:
        """Hand the outbox to a PushConnection (whose write never blocks) in one write."""
        if self.outbox and self.stream is stream:
            before = self.sent_through
            try:
                stream.write(self._take_outbox())
            except ConnectionLost as exc:  # it had already ended: nothing was written
                self.sent_through = before
                self.lost(exc)
                raise

    def _take_outbox(self) -> bytes:
        """Empty the outbox into the bytes of one write; its writes are now in flight."""
        batch, self.outbox = self.outbox, []
        self.sent_through = batch[-1][0]  # ids rise along the outbox
        if self.queued_writes:  # (reads alone, the common pipelined case, skip this loop)
            for request_id, _ in batch:
                if request_id in self.queued_writes:
                    self.queued_writes.discard(request_id)
                    self.inflight_writes.add(request_id)
        return b"".join([frame for _, frame in batch])

    def handle_events(self, events: list[Any]) -> None:
        """Hand what arrived (``receive_frames``'s events) to its waiters: called by the
        reader, or by a PushConnection."""
        stream, by_id, future_type = self.stream, self.by_id, asyncio.Future
        for event in events:
            if type(event) is list:  # an Answer, [id, REPLY_OK, result]: the commonest
                waiter = by_id.pop(event[0], None)
                if type(waiter) is future_type and self.cache is None and not self.flushing:
                    if not waiter.done():  # dispatch()'s common case, without two calls
                        waiter.set_result(event[2])
                    continue
                self.dispatch(Reply(event[0], event[2]), waiter)
            elif type(event) is Reply:
                self.dispatch(event, by_id.pop(event.id, None))
            elif type(event) is Invalidate:
                if self.cache is not None:
                    self.cache.invalidate(event.key, event.name)
            elif type(event) is Push:
                self.pushes.append(event)
                for waiter in list(self.waiting):
                    if waiter.wants_push:
                        waiter.finish()
            if self.stream is not stream:
                break  # the server said goodbye: nothing behind that counts
