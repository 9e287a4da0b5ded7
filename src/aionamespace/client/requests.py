"""The async proxy's request table, with no I/O: ids, waiters, the outbox, write accounting.

Every task sharing an ``AsyncNamespace`` goes through one table. A request is encoded at once
and put in the *outbox* with its id; whoever sends empties the outbox in one write, so the
requests of concurrent tasks are pipelined. Each request has a *waiter*, found by its id when
the reply arrives: a cancelled waiter's reply is read and dropped, never handed to anyone
else. A write (``ns.x = v``, which cannot await) is a request nobody waits for: the table
follows it from queued to in flight to acknowledged, and keeps its failure for the next
``_flush()``. Other waiters wait for every reply up to an id (a flush), for a watch event, or
for the connection to end.

A transport (``asyncio_transport``, ``trio_transport``, ``stream_transport``, ``loopback``)
moves the bytes: it hands the table what arrived (``receive``) and says when the connection
ended (``lost``). The table outlives its transports: a proxy used from a new event loop gets a
new transport, and its queued writes go out on it.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from .._errors import ConnectionLost, ServerTimeout, WriteQueueFull
from ..protocol.connection import ClientConnection, Invalidation, Reply, WatchPush
from .cache import CacheTable
from .calls import Operation
from .leases import Lease, current_task, lock_lost
from .liveness import WAITS
from .proxy import Target

__all__ = ["FutureLike", "RequestTable", "Waiter", "settle"]


class Waiter:
    """A task waiting on the table: for reply ``id``; with ``until``, for every reply up to
    that id; with ``wants_push``, for a watch event; with none, for the connection's end.

    ``wakeup`` is an event native to the transport's loop: a bare asyncio Future (awaited on a
    Task's C fast path) or an anyio Event. ``done`` says whether it was finished, and how:
    ``result`` or ``error``; ``wake`` without finishing hands a waiting task a turn (the reader
    role of ``stream_transport``).
    """

    __slots__ = ("done", "error", "id", "new_wakeup", "result", "until", "wakeup", "wants_push")

    def __init__(
        self,
        new_wakeup: Callable[[], Any],
        request_id: int = 0,
        until: int = 0,
        wants_push: bool = False,
    ) -> None:
        self.id = request_id
        self.until = until
        self.wants_push = wants_push
        self.done = False
        self.result: Any = None
        self.error: BaseException | None = None
        self.new_wakeup = new_wakeup
        self.wakeup: Any = new_wakeup()

    def finish(self, result: Any = None, error: BaseException | None = None) -> None:
        if self.done:  # the first outcome stands (a reply behind a goodbye changes nothing)
            return
        self.result, self.error, self.done = result, error, True
        self.wake()

    def wake(self) -> None:
        wakeup = self.wakeup
        if isinstance(wakeup, asyncio.Future):
            if not wakeup.done():  # (cancelled with the task that awaited it)
                wakeup.set_result(None)
        else:
            wakeup.set()

    def woken(self) -> Awaitable[Any]:
        """What to await until ``wake()``; then ``rearm()`` before awaiting again."""
        wakeup = self.wakeup
        return wakeup if isinstance(wakeup, asyncio.Future) else wakeup.wait()

    def rearm(self) -> None:
        self.wakeup = self.new_wakeup()


class FutureLike(Protocol):
    """What the table asks of a request's waiter when it is not a ``Waiter``: the part of
    ``asyncio.Future`` it uses. A bare asyncio Future is one; so is ``trio_transport.Parked``,
    a trio task parked until its reply resumes it. ``cancel()`` withdraws the request: its
    reply, if one comes, is dropped."""

    def done(self) -> bool: ...

    def cancelled(self) -> bool: ...

    def cancel(self) -> bool: ...

    def exception(self) -> BaseException | None: ...

    def set_result(self, result: Any, /) -> None: ...

    def set_exception(self, exception: BaseException, /) -> None: ...


def settle(
    waiter: Waiter | FutureLike, result: Any = None, error: BaseException | None = None
) -> None:
    """Give ``waiter`` its outcome (a Future whose task was cancelled is left as it is)."""
    if isinstance(waiter, Waiter):
        waiter.finish(result, error)
    elif not waiter.done():
        if error is None:
            waiter.set_result(result)
        else:
            waiter.set_exception(error)


class RequestTable:
    """Every request of one async proxy, from its encoding to its reply (see the module)."""

    def __init__(self, target: Target) -> None:
        self.target = target
        self.protocol = ClientConnection(target.limits, target.authkey, track=target.cache)
        self.outbox: list[tuple[int, bytes]] = []  # (request id, frame), not sent yet
        self.sent_through = 0  # the highest request id ever handed to a connection
        self.waiters: dict[int, Waiter | FutureLike] = {}  # requests, by id
        self.flushing: list[Waiter] = []  # waiting for every reply up to an id
        self.others: list[Waiter] = []  # waiting for a watch event, or the connection's end
        self.queued_writes: set[int] = set()  # write ids in the outbox
        self.inflight_writes: set[int] = set()  # write ids sent, not yet acknowledged
        self.write_errors: list[BaseException] = []
        self.watch_pushes: collections.deque[WatchPush] = collections.deque()
        self.cache = CacheTable() if target.cache else None
        # Locks (leases.py): held on the current connection, by token; lost with an earlier
        # one, by holding task, until each is released; writes queued under one, by id.
        self.leases: dict[bytes, Lease] = {}
        self.lost_leases: dict[object, list[Lease]] = {}
        self.lease_writes: dict[int, object] = {}
        self.connections = 0  # connections lost so far
        self.waits: set[int] = set()  # ids of requests whose reply may take any time (locks)

    # ------------------------------------------------------------------ requests

    def request(
        self, operation: Operation, args: tuple[Any, ...], waiter: Waiter | FutureLike
    ) -> int:
        """Encode a request into the outbox, to be answered to ``waiter``; its id."""
        if self.lost_leases:
            self.refuse_lost_lease()
        protocol = self.protocol
        if operation.op == "get":
            request_id, frame = protocol.send_get(*args)
            if self.cache is not None:
                self.cache.expect(request_id, args)
        else:
            request_id, frame = protocol.send_request(operation.op, *args)
            if operation.op in WAITS:
                self.waits.add(request_id)
        self.outbox.append((request_id, frame))
        self.waiters[request_id] = waiter
        return request_id

    def write(self, operation: Operation, args: tuple[Any, ...]) -> None:
        """Queue a write nobody waits for: its failure is kept for the next flush."""
        limit = self.target.limits.max_queued_writes
        if len(self.queued_writes) + len(self.inflight_writes) >= limit:
            raise WriteQueueFull(
                f"{limit} writes are waiting to be acknowledged (Limits.max_queued_writes): "
                "await ns._flush(), or use 'async with ns:' so that a task sends them"
            )
        if self.lost_leases:
            self.refuse_lost_lease()
        request_id, frame = self.protocol.send_request(operation.op, *args)
        self.outbox.append((request_id, frame))
        self.queued_writes.add(request_id)
        if self.leases:  # made under a lock? Then it must not leave on a later connection
            task = current_task()
            if any(lease.holder is task for lease in self.leases.values()):
                self.lease_writes[request_id] = task

    # ------------------------------------------------------------------ locks

    def holds(self, task: object, key: str, name: str) -> bool:
        """Whether ``task`` holds the lock ``(key, name)`` on this connection."""
        return any(
            lease.holder is task and lease.key == key and lease.name == name
            for lease in self.leases.values()
        )

    def refuse_lost_lease(self) -> None:
        """Raise ``LockLost`` if the running task held a lock on a connection since lost."""
        leases = self.lost_leases.get(current_task())
        if leases:
            raise lock_lost(
                leases[0].name,
                self.target.address,
                "; this task's requests raise LockLost until it releases the lock",
            )

    def forget_lost(self, lease: Lease) -> None:
        """``lease``, lost with its connection, was released by its holder."""
        leases = self.lost_leases.get(lease.holder, [])
        if lease in leases:
            leases.remove(lease)
        if not leases:
            self.lost_leases.pop(lease.holder, None)

    def _lose_leases(self) -> None:
        """The connection is gone, and the locks held on it: tell their holders (see
        ``leases.py``); the writes they queued under them and that never left are dropped."""
        for lease in self.leases.values():
            self.lost_leases.setdefault(lease.holder, []).append(lease)
        names = sorted({lease.name for lease in self.leases.values()})
        self.leases.clear()
        unsent = [i for i in self.queued_writes if i in self.lease_writes]
        self.lease_writes.clear()
        if unsent:
            self.queued_writes.difference_update(unsent)
            dropped = lock_lost(
                ", ".join(names),
                self.target.address,
                f"; {len(unsent)} write(s) queued under it were never sent, and are dropped",
            )
            self.write_errors.append(dropped)

    def take_outbox(self) -> bytes:
        """Empty the outbox into the bytes of one write; its writes are now in flight."""
        batch, self.outbox = self.outbox, []
        self.sent_through = batch[-1][0]  # ids rise along the outbox
        if self.queued_writes:  # (reads alone, the common pipelined case, skip this loop)
            for request_id, _ in batch:
                if request_id in self.queued_writes:
                    self.queued_writes.discard(request_id)
                    self.inflight_writes.add(request_id)
        return b"".join([frame for _, frame in batch])

    def unsent(self, sent_through: int) -> None:
        """A write of the outbox failed: nothing past ``sent_through`` left after all."""
        self.sent_through = sent_through

    def unanswered(
        self, request_id: int, waiter: Waiter | FutureLike, exc: BaseException
    ) -> BaseException:
        """A request ends without its result (``exc`` was raised while it waited): forget it,
        and say what its caller should raise."""
        self.waiters.pop(request_id, None)
        if isinstance(waiter, Waiter):
            done, error = waiter.done, waiter.error
        elif waiter.cancelled() or not waiter.done():
            waiter.cancel()
            done, error = False, None
        else:
            done, error = True, waiter.exception()
        if not done:  # no reply is coming for it any more: if its frame never left, drop it
            self.outbox = [(i, frame) for i, frame in self.outbox if i != request_id]
            return exc
        if error is None or (not isinstance(exc, ConnectionLost) and exc is not error):
            return exc  # (cancelled, say, after its reply came)
        # What failed this request is what it reports (not a later failure to reconnect).
        return self.own_loss(error, request_id) if isinstance(error, ConnectionLost) else error

    def own_loss(self, error: ConnectionLost, request_id: int) -> ConnectionLost:
        """One error object fails every waiter; each caller gets its own, saying whether its
        request had left (and so whether retrying it could apply a write twice)."""
        own = (ServerTimeout if isinstance(error, ServerTimeout) else ConnectionLost)(str(error))
        own.request_sent = request_id <= self.sent_through
        own.__cause__ = error
        return own

    def overdue(self) -> str | None:
        """What a silent connection calls for (``liveness.py``): ``"timeout"`` if a request
        or write waits for an answer that should come at once, ``"ping"`` if only waits that
        may last (a lock wait, a watch, a task keeping the cache) do, None if nothing waits."""
        self.waits &= self.waiters.keys()
        if self.inflight_writes or len(self.waiters) > len(self.waits):
            return "timeout"
        if self.waits or self.others:
            return "ping"
        return None

    def unacknowledged(self) -> int:
        """The last write not acknowledged yet (0: none)."""
        pending = self.queued_writes | self.inflight_writes
        return max(pending) if pending else 0

    def take_write_errors(self) -> list[BaseException]:
        errors, self.write_errors = self.write_errors, []
        return errors

    def drop_queued_writes(self) -> None:
        """Writes that can never be delivered (the authkey was refused): forget them, so the
        error is reported once, not by every later flush."""
        self.outbox.clear()
        self.queued_writes.clear()

    # ------------------------------------------------------------------ what arrives

    def receive(self, events: list[Any]) -> BaseException | None:
        """Hand what arrived (``ClientConnection.receive_frames``' events) to its waiters.

        Returns why the connection ends if the server said goodbye among them (nothing after
        the goodbye counts): the transport then calls ``lost`` with it.
        """
        waiters = self.waiters
        plain = self.cache is None and not self.flushing
        for event in events:
            if type(event) is list:  # a ResultFrame, [id, REPLY_OK, result]: the commonest
                waiter = waiters.pop(event[0], None)
                if plain and waiter is not None and not isinstance(waiter, Waiter):  # a future
                    if not waiter.done():  # _reply's common case, without its calls
                        waiter.set_result(event[2])
                    continue
                goodbye = self._reply(Reply(event[0], event[2]), waiter)
            elif type(event) is Reply:
                goodbye = self._reply(event, waiters.pop(event.id, None))
            elif type(event) is Invalidation:
                if self.cache is not None:
                    self.cache.invalidate(event.key, event.name)
                continue
            elif type(event) is WatchPush:
                self.watch_pushes.append(event)
                for other in self.others:
                    if other.wants_push:
                        other.finish()
                continue
            else:
                continue  # (a Hello is the handshake's)
            if goodbye is not None:
                return goodbye
        return None

    def _reply(
        self,
        reply: Reply,
        waiter: Waiter | FutureLike | None,
    ) -> BaseException | None:
        if reply.id == 0:  # the server is dropping the connection and says why
            return reply.error or ConnectionLost("the server closed the connection")
        if reply.id in self.inflight_writes:
            self.inflight_writes.discard(reply.id)
            if reply.error is not None:
                self.write_errors.append(reply.error)
            if self.lease_writes:
                self.lease_writes.pop(reply.id, None)
        if self.cache is not None:  # a cached read's answer fills the cache, in stream order
            self.cache.answered(reply.id, reply.result, reply.error)
        if waiter is not None:
            settle(waiter, reply.result, reply.error)
        if self.flushing:  # waiters for every reply up to an id (few: _flush, the pump)
            for flusher in list(self.flushing):
                if reply.id >= flusher.until:
                    flusher.finish()
                    self.flushing.remove(flusher)
        return None

    def lost(self, error: BaseException) -> None:
        """The connection is gone: fail every waiter; keep unsent writes for the next one
        (but those queued under a lock it held)."""
        self.connections += 1
        if self.cache is not None:
            self.cache.clear()
        if self.leases or self.lease_writes:
            self._lose_leases()
        if self.inflight_writes:
            count = len(self.inflight_writes)
            self.inflight_writes.clear()
            kind = ServerTimeout if isinstance(error, ServerTimeout) else ConnectionLost
            unknown = kind(
                f"{count} write(s) were sent but not acknowledged before the connection was "
                f"lost ({error}); they may or may not have been applied"
            )
            unknown.request_sent = True
            self.write_errors.append(unknown)
        self.outbox = [(i, frame) for i, frame in self.outbox if i in self.queued_writes]
        # Every request is failed, also those whose tasks are not waiting yet (behind the
        # connect lock, say): sent, they will never be answered; unsent, they were dropped.
        waiters, self.waiters = self.waiters, {}
        others = [*self.flushing, *self.others]
        self.flushing, self.others = [], []
        for waiter in [*waiters.values(), *others]:
            settle(waiter, error=error)

    def add(self, waiter: Waiter) -> None:
        """Register a waiter for replies up to an id, a watch event, or the end."""
        (self.flushing if waiter.until else self.others).append(waiter)

    def remove(self, waiter: Waiter) -> None:
        for waiters in (self.flushing, self.others):
            if waiter in waiters:
                waiters.remove(waiter)
