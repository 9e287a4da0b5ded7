"""Anonymous namespaces shared by every server over one Redis: who uses each, and when it goes.

One server keeps an anonymous namespace while a connection that used it is open, then
``Limits.anonymous_grace`` seconds more (server/anonymous.py). Over a shared board the same
rule holds across the servers: a namespace lives while any server has a connection that used
it, then the grace of the last server whose use ended, and then any server frees it. This
module keeps that in Redis; ``SharedAnonymousNamespaces`` (server/anonymous.py) is the
server's side.

**Layout.** Beside the board's other keys, in its hash tag ``{board}`` (one cluster slot), under
``PREFIX:{board}:anon``::

    :servers    zset  server id -> when its lease ends (ms, Redis's clock)
    :dead       zset  server id -> when its lease ended: its uses are being ended
    :uses:ID    set   the anonymous keys server ID uses
    :u:KEY      hash  server id -> that server's grace (ms): the servers using KEY
    :grace      zset  KEY -> when it may be freed (ms): used by no server, in its grace
    :freeing    zset  KEY -> when its drop was claimed (ms): declared freed (a tombstone)

A key is *held* while ``:u:KEY`` exists or ``:grace`` has it. Every time is Redis's (``TIME``
inside the script): no two servers' clocks are ever compared.

**Layout version.** These keys are new, and nothing else changed: the board's
``LAYOUT_VERSION`` stays. A server of the version before them over the same board keeps its own
anonymous namespaces to itself, as it did (it frees them, and answers ``NamespaceGone`` for
the others'); it never touches these keys, and the registry never frees its namespaces.

**Leases, not per-key renewals.** A server's uses live as long as the server does: each of its
calls (a first use, a leave, and one call every third of a lease even when idle) moves its own
lease end in ``:servers``, one command whatever the number of keys it uses. A server that dies
stops renewing; the first sweep past its lease's end moves it to ``:dead``, and later sweeps
end its uses as if it had left each at its lease's end (its grace, as it recorded it, runs from
then), a bounded number per sweep.

**A use that may have ended is never trusted.** If a server's id is missing from ``:servers``
when it calls (it could not renew for a whole lease: Redis was unreachable from it while others
swept), the call answers ``lost`` and does nothing: the server takes a new id and uses again,
under it, every key its connections use. Those freed meanwhile are gone: it drops the
connections that used them (their clients see ``ConnectionLost``, then ``NamespaceGone``),
never serving a namespace declared freed. A new id, not the old one, because sweeps may still
be ending the old id's uses.

**Dropping: a tombstone, then the drop, then unregistering.** In a cluster the namespace's keys
live in its own slot, so no script can free it and its registration at once. A sweep that
finds a grace over moves the key from ``:grace`` to ``:freeing`` in the same script: from then
on it is not held, and a use of it is answered ``gone`` (an ``open`` too: it was declared
freed). The sweeping server then drops the namespace (its script, in its slot) and last
removes the tombstone and the board's registration (``keys``) together. A crash between the
steps leaves a tombstone: the namespace cannot be used again, and a sweep of any server claims
a tombstone older than three store timeouts (at least a second) again and finishes the drop
(a drop is idempotent). The other order, unregistering first, would lose the namespace's name
while its keys stay in Redis for ever if the server died before the drop.

**Bounds.** A sweep ends at most ``SWEEP_LIMIT`` uses of dead servers and frees at most as
many namespaces; a full sweep is followed by another at once. Every server sweeps, a twentieth to
a tenth of its grace apart at random (at least half ``MIN_PERIOD``), so that freeing never
waits for one server and the servers do not sweep in step. Every call of this module goes
through one lock, in order (a leave, then a later use of the same key), each bounded by the
store's timeout (``StoreUnavailable`` past it).

**Renewals and failures.** While a server uses some anonymous namespace it calls every third
of its lease at least (a little earlier at random): its uses survive two calls failing in a
row, that is Redis unreachable from it for up to two thirds of the lease (a call that waits out
the store's timeout counts as one). A leave that fails is sent again with the next call, and a
key whose first use failed is left then too (the call may have been applied). After a failed
call a server does not sweep for a lease: if Redis was unreachable for every server, each
renews before any may find the others dead.
"""

from __future__ import annotations

import hashlib
import logging
import random
import secrets
import time
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

import anyio

from ..._errors import StoreUnavailable

if TYPE_CHECKING:
    from .redis import RedisStore

__all__ = ["SWEEP_LIMIT", "AnonymousRegistry", "shared_anonymous"]

logger = logging.getLogger("aionamespace.server")

#: The most dead servers' uses ended, and namespaces freed, by one sweep.
SWEEP_LIMIT = 100
#: The shortest time between two sweeps of a server (seconds).
MIN_PERIOD = 0.1

REGISTRY = r"""
local B, NAMESPACES = KEYS[1], KEYS[2]
local SERVERS, DEAD, GRACE, FREEING = B .. ':servers', B .. ':dead', B .. ':grace', B .. ':freeing'
local ME, KNOWN, LEASE, MYGRACE = ARGV[1], ARGV[2] == '1', tonumber(ARGV[3]), tonumber(ARGV[4])
local SWEEP, STALE, LEAVES = tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])
local t = redis.call('TIME')
local NOW = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

local function users(key) return B .. ':u:' .. key end
local function uses(server) return B .. ':uses:' .. server end

if KNOWN and not redis.call('ZSCORE', SERVERS, ME) then return {'lost'} end
redis.call('ZADD', SERVERS, NOW + LEASE, ME)

-- no server uses KEY any more: its grace runs until DEADLINE
local function unused(key, deadline)
  if redis.call('EXISTS', users(key)) == 0 and not redis.call('ZSCORE', FREEING, key) then
    redis.call('ZADD', GRACE, deadline, key)
  end
end

local at = 8
for _ = 1, LEAVES do
  local key = ARGV[at]
  at = at + 1
  if redis.call('HDEL', users(key), ME) == 1 then
    redis.call('SREM', uses(ME), key)
    unused(key, NOW + MYGRACE)
  end
end

local answers = {}
while at < #ARGV do
  local key, creates = ARGV[at], ARGV[at + 1] == '1'
  at = at + 2
  local answer = 'gone'
  if redis.call('ZSCORE', FREEING, key) then answer = 'gone'
  elseif redis.call('EXISTS', users(key)) == 1 or redis.call('ZSCORE', GRACE, key) then
    answer = 'ok'
  elseif creates then answer = 'new' end
  if answer ~= 'gone' then
    redis.call('HSET', users(key), ME, MYGRACE)
    redis.call('ZREM', GRACE, key)
    redis.call('SADD', uses(ME), key)
  end
  answers[#answers + 1] = answer
end

local freed = {}
if SWEEP > 0 then
  local late = redis.call('ZRANGEBYSCORE', SERVERS, '-inf', '(' .. NOW, 'WITHSCORES',
                          'LIMIT', 0, SWEEP)
  for i = 1, #late, 2 do
    redis.call('ZREM', SERVERS, late[i])
    redis.call('ZADD', DEAD, late[i + 1], late[i])
  end
  local budget = SWEEP
  local dead = redis.call('ZRANGE', DEAD, 0, SWEEP - 1, 'WITHSCORES')
  for i = 1, #dead, 2 do
    if budget <= 0 then break end
    local server, ended = dead[i], tonumber(dead[i + 1])
    local keys = redis.call('SPOP', uses(server), budget)
    for _, key in ipairs(keys) do
      local grace = tonumber(redis.call('HGET', users(key), server) or 0)
      redis.call('HDEL', users(key), server)
      unused(key, ended + grace)
    end
    budget = budget - #keys
    if redis.call('EXISTS', uses(server)) == 0 then redis.call('ZREM', DEAD, server) end
  end
  for _, key in ipairs(redis.call('ZRANGEBYSCORE', GRACE, '-inf', NOW, 'LIMIT', 0, SWEEP)) do
    redis.call('ZREM', GRACE, key)
    redis.call('ZADD', FREEING, NOW, key)
    freed[#freed + 1] = key
  end
  local stale = redis.call('ZRANGEBYSCORE', FREEING, '-inf', '(' .. (NOW - STALE),
                           'LIMIT', 0, SWEEP)
  for _, key in ipairs(stale) do
    redis.call('ZADD', FREEING, NOW, key)
    freed[#freed + 1] = key
  end
end
return {'ok', answers, freed}
"""

#: Freed namespaces' keys are dropped: their tombstones and board registrations go together.
UNREGISTER = r"""
for i = 1, #ARGV do
  redis.call('ZREM', KEYS[1] .. ':freeing', ARGV[i])
  redis.call('SREM', KEYS[2], ARGV[i])
end
return #ARGV
"""


_SHA = hashlib.sha1(REGISTRY.encode()).hexdigest()


class AnonymousRegistry:
    """One server's calls on the board's registry of anonymous namespaces (module docstring):
    ``use`` for a first use, ``leave`` when its last connection using a key closes, and
    ``run`` renewing its lease and sweeping, while the server serves.

    ``held()`` tells the keys its connections use (to use them again under a new id);
    ``on_gone(keys)`` is told those that were freed meanwhile."""

    def __init__(
        self,
        store: RedisStore,
        grace: float,
        lease: float,
        held: Callable[[], Iterable[str]],
        on_gone: Callable[[list[str]], None],
    ) -> None:
        if not lease > 0:
            raise ValueError(f"a lease is a positive number of seconds, not {lease!r}")
        self._store = store
        self.grace, self.lease = grace, lease
        self._grace_ms, self._lease_ms = max(0, round(grace * 1000)), max(1, round(lease * 1000))
        self._stale_ms = max(1000, round(3000 * store._timeout))
        self._held, self._on_gone = held, on_gone
        base = store._prefix + "{board}:"
        self._keys = (base + "anon", base + "namespaces")
        self.server_id = secrets.token_hex(8)
        self._known = False  # Redis has this id (a call with it succeeded)
        self._leaves: set[str] = set()  # keys whose leave is queued: a first use takes it back
        self._resend: set[str] = set()  # leaves that failed (applied or not: sent again)
        self._lock = anyio.Lock()
        self._wake = anyio.Event()
        self._quiet_until = 0.0  # (monotonic) no sweep before: a call failed not long ago
        #: How often it renews its lease while it uses some (seconds; any call renews it).
        self.renewal_period = lease / 3
        #: How often it sweeps, at most: a namespace outlives its grace by a tenth of it at
        #: most (``MIN_PERIOD`` for a short one), a server idle over the board costs little.
        self.sweep_period = max(MIN_PERIOD, grace / 10)

    # ------------------------------------------------------------------ the server's calls

    async def use(self, keys: Sequence[tuple[str, bool]]) -> list[str]:
        """This server uses ``keys`` from now on (each with whether its request may create
        it: an ``open``): for each, "ok" (held), "new" (made now) or "gone" (not held, or
        being freed: not used). StoreUnavailable if Redis did not answer (then whether it
        uses them is unknown: those it does not use are left, with the next call)."""
        try:
            answers, _ = await self._call(keys, sweep=False)
        except StoreUnavailable:
            held = set(self._held())
            self._resend.update(key for key, _ in keys if key not in held)
            raise
        return answers

    def leave(self, key: str) -> None:
        """This server's last connection using ``key`` closed: its use ends (soon, in order)."""
        self._leaves.add(key)
        self._wake.set()

    def take_back(self, key: str) -> bool:
        """A connection uses ``key`` again before its queued leave was sent: whether the leave
        was still queued (then withdrawn: the use never ended in Redis)."""
        if key in self._leaves:
            self._leaves.discard(key)
            return True
        return False

    def leaving(self, key: str) -> bool:
        """Whether a leave of ``key`` is queued (this server's use has not ended in Redis)."""
        return key in self._leaves

    # ------------------------------------------------------------------ renewing, sweeping

    async def run(self) -> None:
        """Renew this server's lease while it uses some, sweep (``renewal_period``,
        ``sweep_period``; each a little less, at random), and send queued leaves at once:
        until cancelled (then the leaves of the connections closed as the server stopped get
        one more try)."""
        try:
            await self._renew_and_sweep()
        finally:
            if self._leaves or self._resend:
                with anyio.move_on_after(1.0, shield=True):
                    try:
                        await self._call((), sweep=False)
                    except StoreUnavailable:
                        pass  # (their uses end with this server's lease)

    async def _renew_and_sweep(self) -> None:
        now = time.monotonic()
        next_sweep = now + self.sweep_period * random.uniform(0.5, 1.0)
        next_renewal = now + self.renewal_period * random.uniform(0.8, 1.0)
        while True:
            # It wakes for each renewal even when it uses nothing: a first use meanwhile (one
            # call, which renews) must be renewed a third of a lease later at most.
            with anyio.move_on_after(max(0.0, min(next_sweep, next_renewal) - time.monotonic())):
                await self._wake.wait()
            self._wake = anyio.Event()
            now = time.monotonic()
            sweep_due, renewal_due = now >= next_sweep, now >= next_renewal
            if sweep_due:
                next_sweep = now + self.sweep_period * random.uniform(0.5, 1.0)
            if renewal_due:
                next_renewal = now + self.renewal_period * random.uniform(0.8, 1.0)
            using = renewal_due and any(True for _ in self._held())
            if not (sweep_due or using or self._leaves or self._resend):
                continue
            sweep = sweep_due and now >= self._quiet_until
            try:
                _, freed = await self._call((), sweep=sweep)
                while freed:
                    await self._drop(freed)
                    if len(freed) < SWEEP_LIMIT:
                        break
                    _, freed = await self._call((), sweep=True)  # more to free: at once
            except StoreUnavailable as exc:
                logger.warning("anonymous namespaces: a call to the store failed (%s)", exc)

    async def _drop(self, keys: list[str]) -> None:
        """Drop freed namespaces (tombstoned), then unregister them (module docstring)."""
        store = self._store
        keys = list(dict.fromkeys(keys))
        async with store._guard():
            for key in keys:
                store._registered.discard(key)
                await store._script(key, "drop", ())
            await store._client.eval(UNREGISTER, 2, *self._keys, *keys)

    async def _call(
        self, keys: Sequence[tuple[str, bool]], sweep: bool
    ) -> tuple[list[str], list[str]]:
        """One call of the registry script, with the queued leaves first: the uses' answers
        and the keys a sweep declared freed (to drop)."""
        store = self._store
        async with store._guard(), self._lock:
            leaves = self._leaves | self._resend
            self._leaves, self._resend = set(), set()
            try:
                reply = await self._eval(leaves, keys, sweep)
                if reply[0] == b"lost":
                    reply = await self._renewed(keys, sweep)
            except BaseException:
                self._resend |= leaves
                self._quiet_until = time.monotonic() + self.lease
                raise
        self._known = True
        return [answer.decode() for answer in reply[1]], [key.decode() for key in reply[2]]

    async def _renewed(self, keys: Sequence[tuple[str, bool]], sweep: bool) -> Any:
        """Redis no longer has this server's id: use, under a new one, what it uses."""
        self.server_id, self._known = secrets.token_hex(8), False
        asked = {key for key, _ in keys}
        again = [key for key in self._held() if key not in asked]
        if again:
            logger.warning(
                "anonymous namespaces: this server's uses ran out (no renewal for a lease): "
                "using them again"
            )
        reply = await self._eval((), [(key, False) for key in again] + list(keys), sweep)
        answers = reply[1]
        gone = [key for key, answer in zip(again, answers, strict=False) if answer == b"gone"]
        if gone:
            logger.warning("anonymous namespaces freed while this server used them: %s", gone)
            self._on_gone(gone)
        return [reply[0], answers[len(again) :], reply[2]]

    async def _eval(
        self, leaves: Iterable[str], keys: Sequence[tuple[str, bool]], sweep: bool
    ) -> Any:
        leaves = list(leaves)
        argv: list[Any] = [
            self.server_id,
            int(self._known),
            self._lease_ms,
            self._grace_ms,
            SWEEP_LIMIT if sweep else 0,
            self._stale_ms,
            len(leaves),
            *leaves,
        ]
        for key, creates in keys:
            argv += (key, int(creates))
        client = self._store._client
        try:
            return await client.evalsha(_SHA, 2, *self._keys, *argv)
        except self._store._noscript:  # (a restart or a failover: nothing ran)
            return await client.eval(REGISTRY, 2, *self._keys, *argv)


def shared_anonymous(
    store: RedisStore,
    grace: float,
    held: Callable[[], Iterable[str]],
    on_gone: Callable[[list[str]], None],
) -> AnonymousRegistry:
    """A RedisStore's ``anonymous_registry``: its server's registry, each server's uses held
    for the store's ``lock_lease`` seconds past its last call (``--store-lock-lease``)."""
    return AnonymousRegistry(store, grace, store.lock_lease, held, on_gone)
