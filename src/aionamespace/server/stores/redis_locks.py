"""Locks shared by every server over one Redis: ``RedisLockTable``, ``LockTable``'s methods.

A server over a ``RedisStore`` keeps its locks in Redis (redis_lock_scripts.py), so a lock
taken through one server holds against every other, and waiters of every server wait in one
line, first in first out.

**Answers.** ``LockTable``'s interface is synchronous; Redis is a round trip away. So
``acquire`` always answers later (through ``grant``), even for a free lock: the reply is
deferred (docs/PROTOCOL.md, 12.3). ``release`` answers from what this server knows (it holds
the lock for that owner, or has it waiting) and releases in Redis after; the server sends
that answer once Redis has it (``settled``), so a process told "released" finds the lock free
through any server. Every Redis call goes through one queue, sent by one task as a pipeline
per round trip, so the calls of a lock leave in the order they were made.

**Leases.** A lock in Redis is held for ``lease`` seconds (``DEFAULT_LEASE``, 10 s) from the
last renewal: the holder's server renews all its locks, and the line entries of all its
waiters, in one pipeline every ``lease / 3``. If that server dies, its locks pass on within the
lease, and its waiters are skipped. A connection that closes is released at once, as in
``LockTable``.

**Waking waiters.** A release hands the lock to the first live waiter inside its script and
PUBLISHes to that waiter's server (redis_lock_pushes.py), which answers it: a push, not a poll.
A server told that a lock it waits for is held sets one timer (the server's timer heap) for
when the holder's lease ends, and asks Redis again then: if the holder's server died (no
renewal), the lock goes to the first live waiter; if not, the timer is set for the new end.
A push lost (the subscription broke) is made up for: the subscription made again asks where
every wait stands, and so does each renewal of a wait's line entry.

**A lock never lost silently.** If a renewal finds that a lock went to another (its lease ran
out, or a failover lost it), or the lease could run out before the next renewal is confirmed
(two renewals in a row went unanswered: Redis unreachable for a third of the lease or more),
the server drops the holder's connection: its client raises ``LockLost`` (client/leases.py),
as when the connection breaks. Redis unreachable: a pending ``acquire`` gets
``StoreUnavailable``; a ``release`` that fails is logged, and the lock passes on when its lease
runs out.

**Failover.** Redis replicates asynchronously: a replica promoted after a grant may not know
of it, and give the lock to another while the first holder still works. Two holders are then
possible until the first holder's server renews and learns the lock went to another (then it
drops that holder's connection: ``LockLost``). What a lock protects must check a fencing token
to be safe across a failover: README ("Locks over Redis") says how a holder takes one from the
board (an ``_incr`` under the lock, with the epoch): no protocol change was needed for it.

``counts`` tells this server's part: the locks its connections hold, the waits they made.
"""

from __future__ import annotations

import itertools
import logging
import secrets
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import anyio
import msgpack

from ..timers import CallLater
from .redis_lock_pushes import Pushes
from .redis_lock_scripts import Call as _Call
from .redis_lock_scripts import LockScript

if TYPE_CHECKING:
    from .redis import RedisStore

__all__ = ["DEFAULT_LEASE", "RedisLockTable"]

logger = logging.getLogger("aionamespace.server")

#: How long a lock outlives its server's last renewal (seconds).
DEFAULT_LEASE = 10.0
#: Past the holder's lease's end, how long a waiter's server waits before asking (clocks).
EXPIRY_MARGIN = 0.05

Owner = tuple[object, bytes]
LockName = tuple[str, str]
Grant = Callable[[BaseException | None], None]


class _Wait:
    __slots__ = ("cancel_timer", "grant", "id", "lock", "owner", "queued", "timeout")

    def __init__(
        self, lock: LockName, owner: Owner, wait_id: str, grant: Grant, timeout: float | None
    ) -> None:
        self.lock, self.owner, self.id, self.grant, self.timeout = (
            lock, owner, wait_id, grant, timeout
        )  # fmt: skip
        self.cancel_timer: Callable[[], None] | None = None
        self.queued = False  # Redis said it waits in line


class _Held:
    __slots__ = ("id", "lock", "owner", "renewed")

    def __init__(self, lock: LockName, owner: Owner, held_id: str, renewed: float) -> None:
        self.lock, self.owner, self.id, self.renewed = lock, owner, held_id, renewed


class _Holdings:
    """What one connection holds and awaits, by (lock, token)."""

    __slots__ = ("held", "waits")

    def __init__(self) -> None:
        self.held: dict[tuple[LockName, bytes], _Held] = {}
        self.waits: dict[tuple[LockName, bytes], _Wait] = {}


class RedisLockTable:
    """Every lock of every server over one Redis board (see the module's docstring)."""

    def __init__(self, store: RedisStore, call_later: CallLater, lease: float = DEFAULT_LEASE):
        if not lease > 0:
            raise ValueError(f"a lock lease is a positive number of seconds, not {lease!r}")
        self._store = store
        self._call_later = call_later
        self.lease = lease
        self._lease_ms = max(1, round(lease * 1000))
        self.server_id = secrets.token_hex(8)
        self._channels = store._prefix + "locks:"
        self._numbers = itertools.count(1)
        self._connections: dict[object, _Holdings] = {}
        self._holding: dict[str, _Held] = {}  # id -> what this server holds
        self._waits: dict[str, _Wait] = {}  # id -> what this server awaits
        self._lock_waits: dict[LockName, dict[str, _Wait]] = {}
        self._lock_timers: dict[LockName, Callable[[], None]] = {}
        self._calls: list[_Call] = []
        self._wake = anyio.Event()
        self._queued = self._done = 0  # calls queued and answered so far (``settled``)
        self._settling: list[tuple[int, anyio.Event]] = []
        self._subscriptions = 0  # confirmed so far
        self._script = LockScript(store, self._lease_ms, self._channels)
        self._pushes = Pushes(
            store._client,
            store._cluster,
            self._channels + self.server_id,
            self._pushed,
            self._subscribed,
        )

    # ------------------------------------------------------------------ LockTable's methods

    def acquire(
        self, key: str, name: str, owner: Owner, timeout: float | None, grant: Grant
    ) -> bool:
        """Queue the acquire; ``grant`` answers it (always later: False)."""
        which = (key, name)
        holdings = self._holdings(owner[0])
        if (which, owner[1]) in holdings.held or (which, owner[1]) in holdings.waits:
            raise ValueError(f"lock {name!r} is already held or awaited with this token")
        # An id per acquisition, never reused: a push for an earlier one (withdrawn, its
        # release on its way) must not grant a later wait of the same owner.
        wait_id = f"{self.server_id}:{next(self._numbers)}"
        wait = _Wait(which, owner, wait_id, grant, timeout)
        holdings.waits[which, owner[1]] = wait
        self._waits[wait_id] = wait
        self._lock_waits.setdefault(which, {})[wait_id] = wait
        if timeout:
            wait.cancel_timer = self._call_later(timeout, lambda: self._expire(wait))
        self._send(_Call("acquire", which, wait_id, "0" if timeout == 0 else "1"))
        return False

    def release(self, key: str, name: str, owner: Owner) -> bool:
        """Release a held lock, or withdraw a wait (answering it). False: neither was ours."""
        which = (key, name)
        holdings = self._connections.get(owner[0])
        if holdings is None:
            return False
        held = holdings.held.get((which, owner[1]))
        if held is not None:
            self._let_go(held)
            return True
        wait = holdings.waits.get((which, owner[1]))
        if wait is None:
            return False
        self._forget(wait)
        self._send(_Call("release", which, wait.id))
        wait.grant(TimeoutError(f"the wait for lock {name!r} was withdrawn"))
        return True

    def drop_connection(self, connection: object) -> None:
        """The connection is gone: release what it held, withdraw what it awaited."""
        holdings = self._connections.get(connection)
        if holdings is None:
            return
        for wait in list(holdings.waits.values()):
            self._forget(wait)
            self._send(_Call("release", wait.lock, wait.id))
        for held in list(holdings.held.values()):
            self._let_go(held)
        self._connections.pop(connection, None)

    def counts(self) -> tuple[int, int]:
        """(locks held, waits in line) of this server's connections."""
        return len(self._holding), len(self._waits)

    # ------------------------------------------------------------------ local state

    def _holdings(self, connection: object) -> _Holdings:
        holdings = self._connections.get(connection)
        if holdings is None:
            holdings = self._connections[connection] = _Holdings()
        return holdings

    def _tidy(self, connection: object) -> None:
        holdings = self._connections.get(connection)
        if holdings is not None and not holdings.held and not holdings.waits:
            del self._connections[connection]

    def _forget(self, wait: _Wait) -> None:
        """Take a wait out of every index (not answered), its timer cancelled."""
        self._waits.pop(wait.id, None)
        holdings = self._connections.get(wait.owner[0])
        if holdings is not None:
            holdings.waits.pop((wait.lock, wait.owner[1]), None)
            self._tidy(wait.owner[0])
        waits = self._lock_waits.get(wait.lock)
        if waits is not None:
            waits.pop(wait.id, None)
            if not waits:
                del self._lock_waits[wait.lock]
                cancel = self._lock_timers.pop(wait.lock, None)
                if cancel is not None:
                    cancel()
        if wait.cancel_timer is not None:
            wait.cancel_timer()
            wait.cancel_timer = None

    def _hold(self, wait: _Wait, sent: float) -> None:
        """A wait got the lock: held from now on, answered."""
        self._forget(wait)
        held = _Held(wait.lock, wait.owner, wait.id, sent)
        self._holding[wait.id] = held
        self._holdings(wait.owner[0]).held[wait.lock, wait.owner[1]] = held
        wait.grant(None)

    def _let_go(self, held: _Held) -> None:
        del self._holding[held.id]
        holdings = self._connections.get(held.owner[0])
        if holdings is not None:
            holdings.held.pop((held.lock, held.owner[1]), None)
            self._tidy(held.owner[0])
        self._send(_Call("release", held.lock, held.id))

    def _expire(self, wait: _Wait) -> None:
        if self._waits.get(wait.id) is not wait:
            return  # answered meanwhile
        wait.cancel_timer = None  # it fired
        self._forget(wait)
        self._send(_Call("release", wait.lock, wait.id))  # (out of line, or let go if granted)
        wait.grant(
            TimeoutError(f"lock {wait.lock[1]!r} not acquired within {wait.timeout} seconds")
        )

    def _lost(self, held: _Held, why: str) -> None:
        """A lock this server granted may be another's now: its holder's connection is
        dropped, so that its client knows (LockLost)."""
        if self._holding.get(held.id) is not held:
            return
        logger.warning("lock %r of namespace %r lost (%s)", held.lock[1], held.lock[0], why)
        self._let_go(held)
        drop = getattr(held.owner[0], "drop", None)
        if drop is not None:
            drop()

    # ------------------------------------------------------------------ answers from Redis

    def _pushed(self, data: bytes) -> None:
        """A lock was handed to a waiter of this server."""
        try:
            key, name, wait_id, _lease = msgpack.unpackb(data)
        except Exception:
            logger.warning("lock pushes: a message that is not ours: %r", data[:100])
            return
        wait = self._waits.get(wait_id)
        if wait is not None:
            self._hold(wait, time.monotonic())
        elif wait_id not in self._holding:  # (withdrawn: its release follows the grant)
            self._send(_Call("release", (key, name), wait_id))

    def _subscribed(self) -> None:
        """A new subscription: pushes sent before it may be lost, so ask where waits stand."""
        self._subscriptions += 1
        for wait in self._waits.values():
            if wait.queued:
                self._send(_Call("acquire", wait.lock, wait.id))

    def _answered(self, call: _Call, reply: Any) -> None:
        if call.op == "release":
            if isinstance(reply, BaseException):
                logger.warning(
                    "lock %r of namespace %r: its release failed (%s); it passes on when "
                    "its lease runs out", call.lock[1], call.lock[0], reply,
                )  # fmt: skip
            return
        held = self._holding.get(call.id)
        if held is not None:  # a renewal (or an acquire answered by a push first)
            if isinstance(reply, BaseException):
                return  # (``_renew_all`` drops it once its lease may have run out)
            if reply[0] == b"held":
                held.renewed = max(held.renewed, call.sent)
            elif call.op == "renew":
                self._lost(held, "its lease ran out, or Redis failed over")
            return
        wait = self._waits.get(call.id)
        if wait is None:
            return  # answered meanwhile (its release follows)
        if isinstance(reply, BaseException):
            self._forget(wait)
            self._send(_Call("release", wait.lock, wait.id))
            wait.grant(reply)
            return
        status, remaining = reply[0], int(reply[1])
        if status == b"held":
            self._hold(wait, call.sent)
        elif status == b"busy":
            self._forget(wait)
            wait.grant(TimeoutError(f"lock {wait.lock[1]!r} not acquired within 0 seconds"))
        elif status == b"queued":
            wait.queued = True
            self._wake_at(wait.lock, remaining / 1000)
            if call.subscription != self._subscriptions:  # a push may have been lost since
                self._send(_Call("acquire", wait.lock, wait.id))
        else:  # lost: out of line (its entry ran out), so in line again
            self._send(_Call("acquire", wait.lock, wait.id))

    def _wake_at(self, lock: LockName, remaining: float) -> None:
        """One timer per lock awaited: ask again when its holder's lease ends."""
        cancel = self._lock_timers.pop(lock, None)
        if cancel is not None:
            cancel()
        self._lock_timers[lock] = self._call_later(
            max(0.0, remaining) + EXPIRY_MARGIN, lambda: self._holder_due(lock)
        )

    def _holder_due(self, lock: LockName) -> None:
        self._lock_timers.pop(lock, None)
        waits = self._lock_waits.get(lock)
        if waits:  # one call is enough: the script hands over to whoever is first
            self._send(_Call("acquire", lock, next(iter(waits))))

    # ------------------------------------------------------------------ the tasks

    def _send(self, call: _Call) -> None:
        self._calls.append(call)
        self._queued += 1
        self._wake.set()

    async def settled(self) -> None:
        """Return once every call queued so far was answered by Redis (or failed), or after
        the store's timeout: a release is answered once other servers can see it."""
        if self._done >= self._queued:
            return
        event = anyio.Event()
        self._settling.append((self._queued, event))
        with anyio.move_on_after(self._store._timeout + 1.0):
            await event.wait()

    def _answered_up_to(self, count: int) -> None:
        self._done += count
        if self._settling:
            waiting = []
            for target, event in self._settling:
                if target <= self._done:
                    event.set()
                else:
                    waiting.append((target, event))
            self._settling = waiting

    async def run(self) -> None:
        """Send the calls, keep the subscription, renew the leases: until cancelled."""
        try:
            async with anyio.create_task_group() as group:
                group.start_soon(self._pushes.run)
                group.start_soon(self._renew_every_third_of_a_lease)
                while True:
                    await self._wake.wait()
                    self._wake = anyio.Event()
                    await self._send_calls()
        finally:  # releases of connections closed as the server stopped: one more try
            self._calls = [call for call in self._calls if call.op == "release"]
            with anyio.move_on_after(1.0, shield=True):
                await self._send_calls()

    async def _send_calls(self) -> None:
        calls, self._calls = self._calls, []
        if not calls:
            return
        try:
            await self._round_trip(calls)
        except BaseException:  # cancelled in flight: its releases are tried again (harmless)
            self._calls[:0] = calls
            raise

    async def _round_trip(self, calls: list[_Call]) -> None:
        now, subscription = time.monotonic(), self._subscriptions
        for call in calls:
            call.sent, call.subscription = now, subscription
        replies = await self._script.run(calls)
        for call, reply in zip(calls, replies, strict=True):
            self._answered(call, reply)
        self._answered_up_to(len(calls))

    async def _renew_every_third_of_a_lease(self) -> None:
        while True:
            await anyio.sleep(self.lease / 3)
            self._renew_all()

    def _renew_all(self) -> None:
        """Renew every lease and line entry of this server; drop what may have run out."""
        now, tick = time.monotonic(), self.lease / 3
        for held in list(self._holding.values()):
            # Its lease may run out before the next tick could tell: its holder is told now.
            if now + tick >= held.renewed + self.lease:
                self._lost(held, "Redis did not answer its renewals")
            else:
                self._send(_Call("renew", held.lock, held.id))
        for wait in self._waits.values():
            if wait.queued:
                self._send(_Call("renew", wait.lock, wait.id))
