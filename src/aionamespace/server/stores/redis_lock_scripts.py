"""The Lua of locks shared through Redis (redis_locks.py): one script, three operations.

**Keys.** A lock ``(key, name)`` is three keys in its namespace's hash tag (``base(key)``,
redis.py), so one cluster slot and one script call touch them all::

    base:lk:NAME  hash  h: the holder's id, x: when its lease ends (ms, Redis's clock),
                        n: the last place given in line
    base:lq:NAME  zset  the waiters' ids, scored by their place in line (first in, first out)
    base:lw:NAME  hash  waiter id -> "EXPIRY LEASE": when its entry ends unless its server
                        renews it, and the lease it gets if the lock is handed to it

An id is ``SERVER:N``, N counting the server's acquisitions: the server's id names the channel
the script PUBLISHes to when it hands the lock to that waiter, ``CHANNEL .. SERVER``. Each key
lives ``3 * lease`` after the last script that touched it (renewals touch them): a board
whose servers all died forgets its locks.

**Operations** (``ARGV[1]``; ``ARGV[2]`` the caller's id, ``ARGV[3]`` its lease in ms,
``ARGV[4]`` the channel prefix, ``ARGV[5..6]`` the namespace key and lock name for the push):

* ``acquire``: a holder whose lease ended (its server stopped renewing: dead) is replaced by
  the first live waiter first. Then: ``held`` if the caller holds it (taken now if free),
  else ``queued`` with the holder's remaining lease in ms (placed at the end of the line
  unless already in it, its entry renewed), or ``busy`` if ``ARGV[7]`` is "0" (a timeout of
  0 does not wait). Idempotent: a server sends it again to learn where it stands.
* ``release``: the holder lets go (the lock goes to the first live waiter: ``released``), or
  a waiter leaves the line (``withdrawn``), or ``none``.
* ``renew``: the holder's lease, or a waiter's entry, starts again: ``held``, ``queued`` (with
  the holder's remaining lease), or ``lost`` (neither: the lock went to another).

Handing over skips the waiters whose entries ended (their server died), and PUBLISHes
``[key, name, id, lease]`` (msgpack) to the new holder's server: its waiter is woken by that
push, never by polling.

``LockScript`` sends calls of it: a list of them as one pipeline (the calls of one lock keep
their order), loaded again on every node if a node forgot it (after a restart or a failover:
nothing ran), every failure turned into ``StoreUnavailable`` in place of the call's reply.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, Any

from ..._errors import StoreUnavailable

if TYPE_CHECKING:
    from .redis import RedisStore

__all__ = ["LOCK_SCRIPT", "Call", "LockScript"]

LOCK_SCRIPT = r"""
local K, Q, W = KEYS[1], KEYS[2], KEYS[3]
local OP, ME, LEASE, CHANNEL = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4]
local t = redis.call('TIME')
local NOW = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

local function keep()
  local span = 3 * LEASE
  for _, k in ipairs({K, Q, W}) do
    local ttl = redis.call('PTTL', k)
    if ttl ~= -2 and ttl < span then redis.call('PEXPIRE', k, span) end
  end
end

local function hand_over()
  while true do
    local first = redis.call('ZRANGE', Q, 0, 0)[1]
    if not first then
      redis.call('DEL', K, Q, W)
      return
    end
    redis.call('ZREM', Q, first)
    local entry = redis.call('HGET', W, first)
    redis.call('HDEL', W, first)
    if entry then
      local expiry, lease = string.match(entry, '^(%d+) (%d+)$')
      if tonumber(expiry) > NOW then
        redis.call('HSET', K, 'h', first, 'x', NOW + tonumber(lease))
        local server = string.match(first, '^[^:]+')
        redis.call('PUBLISH', CHANNEL .. server,
                   cmsgpack.pack({ARGV[5], ARGV[6], first, tonumber(lease)}))
        keep()
        return
      end
    end
  end
end

local function holder()
  local h = redis.call('HGET', K, 'h')
  if h and tonumber(redis.call('HGET', K, 'x')) <= NOW then
    hand_over()  -- its server stopped renewing it
    h = redis.call('HGET', K, 'h')
  elseif not h and redis.call('ZCARD', Q) > 0 then
    hand_over()  -- (never so between scripts: a free lock has nobody in line)
    h = redis.call('HGET', K, 'h')
  end
  return h
end

local function remaining()
  return tonumber(redis.call('HGET', K, 'x')) - NOW
end

local function enter()
  redis.call('HSET', W, ME, (NOW + LEASE) .. ' ' .. LEASE)
end

if OP == 'acquire' then
  local h = holder()
  if not h then
    redis.call('HSET', K, 'h', ME, 'x', NOW + LEASE)
    keep()
    return {'held', LEASE}
  end
  if h == ME then return {'held', remaining()} end
  if redis.call('HEXISTS', W, ME) == 1 then
    enter()
    keep()
    return {'queued', remaining()}
  end
  if ARGV[7] == '0' then return {'busy', remaining()} end
  redis.call('ZADD', Q, redis.call('HINCRBY', K, 'n', 1), ME)
  enter()
  keep()
  return {'queued', remaining()}
elseif OP == 'release' then
  local h = redis.call('HGET', K, 'h')
  if h == ME then
    hand_over()
    return {'released', 0}
  end
  if redis.call('HDEL', W, ME) == 1 then
    redis.call('ZREM', Q, ME)
    if not h and redis.call('ZCARD', Q) == 0 then redis.call('DEL', K, Q, W) end
    return {'withdrawn', 0}
  end
  return {'none', 0}
elseif OP == 'renew' then
  local h = holder()
  if h == ME then
    redis.call('HSET', K, 'x', NOW + LEASE)
    keep()
    return {'held', LEASE}
  end
  if h and redis.call('HEXISTS', W, ME) == 1 then
    enter()
    keep()
    return {'queued', remaining()}
  end
  return {'lost', 0}
end
return redis.error_reply('unknown lock operation ' .. tostring(OP))
"""

_SHA = hashlib.sha1(LOCK_SCRIPT.encode()).hexdigest()


class Call:
    """One lock script call queued for the sender: op, the lock, the owner's id; when sent
    (monotonic) and under which subscription (``Pushes``'s count)."""

    __slots__ = ("flag", "id", "lock", "op", "sent", "subscription")

    def __init__(self, op: str, lock: tuple[str, str], call_id: str, flag: str = "1") -> None:
        self.op, self.lock, self.id, self.flag = op, lock, call_id, flag
        self.sent = 0.0
        self.subscription = 0


class LockScript:
    """Calls of the lock script through a RedisStore's client (its prefix, guard, errors)."""

    def __init__(self, store: RedisStore, lease_ms: int, channels: str) -> None:
        self._store, self._lease_ms, self._channels = store, lease_ms, channels

    async def run(self, calls: list[Call]) -> list[Any]:
        """The calls' replies, in order (StoreUnavailable in place of those that failed)."""
        store = self._store
        try:
            async with store._guard():
                replies = await self._pipeline(calls)
                if any(isinstance(reply, store._noscript) for reply in replies):
                    await self._load()  # (a restart or a failover: nothing ran)
                    replies = await self._pipeline(calls)
        except StoreUnavailable as exc:
            return [exc] * len(calls)
        return [
            store._unavailable(reply) if isinstance(reply, Exception) else reply
            for reply in replies
        ]

    async def _pipeline(self, calls: list[Call]) -> list[Any]:
        store = self._store
        pipe = store._client.pipeline(transaction=False)
        for call in calls:
            key, name = call.lock
            base = store.base(key)
            pipe.execute_command(
                "EVALSHA", _SHA, 3, f"{base}:lk:{name}", f"{base}:lq:{name}",
                f"{base}:lw:{name}", call.op, call.id, self._lease_ms, self._channels,
                key, name, call.flag,
            )  # fmt: skip
        return list(await pipe.execute(raise_on_error=False))

    async def _load(self) -> None:
        await self._store._load_script(refresh=True, script=LOCK_SCRIPT)
