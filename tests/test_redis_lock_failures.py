"""Locks shared through Redis when things fail (stores/redis_locks.py): a lock that went to
another, Redis unreachable, Redis back. A lock is never lost silently: its holder's connection
is dropped, and its client raises LockLost.
"""

from __future__ import annotations

import time
from typing import Any

import pytest

import redis_rig
from aionamespace import LockLost, Namespace, StoreUnavailable
from aionamespace.server.stores.redis_lock_pushes import MAX_BACKOFF
from deadlines import NO_HANG_SECONDS
from redis_lock_rig import AT_ONCE, LockServers, Waiter, first_failure, in_line

pytestmark = pytest.mark.usefixtures("collect_garbage")

LONG_LEASE = 60.0
SHORT_LEASE = 1.5
MARGIN = 1.0  # past the lease, what a loaded machine may add


def test_a_holder_whose_lock_went_to_another_is_told(
    redis_of: Any, redis_prefix: str, short_tmp: str, redis_client: Any
) -> None:
    """A failover that lost the grant (here: the lock's key deleted): at its next renewal the
    server drops the holder's connection, and the holder learns it (LockLost)."""
    with LockServers(redis_of.url, redis_prefix, short_tmp, 1, SHORT_LEASE) as (a,):
        holder = Namespace(a.address, "jobs")
        lock = holder._lock("L")
        assert lock.acquire(timeout=NO_HANG_SECONDS)
        redis_client.delete(f"{redis_prefix}{{=jobs}}:lk:L")
        assert isinstance(first_failure(holder, SHORT_LEASE + MARGIN), LockLost)
        with pytest.raises(LockLost):
            lock.release()
        holder._close()


def test_redis_unreachable_fails_the_acquire_and_drops_the_holder(
    redis_private: redis_rig.RedisServer, redis_prefix: str, short_tmp: str
) -> None:
    with LockServers(redis_private.url, redis_prefix, short_tmp, 1, SHORT_LEASE) as (a,):
        holder = Namespace(a.address, "jobs")
        lock = holder._lock("L")
        assert lock.acquire(timeout=NO_HANG_SECONDS)
        redis_private.kill()
        other = Namespace(a.address, "jobs")
        started = time.monotonic()
        with pytest.raises(StoreUnavailable):
            other._lock("M").acquire(timeout=NO_HANG_SECONDS)
        assert time.monotonic() - started < NO_HANG_SECONDS
        # Its lease may have run out meanwhile: never lost silently.
        assert isinstance(first_failure(holder, SHORT_LEASE + MARGIN), LockLost)
        holder._close()
        other._close()


def test_locks_work_again_once_redis_is_back(
    redis_private: redis_rig.RedisServer, redis_prefix: str, short_tmp: str
) -> None:
    """Redis killed and started again (empty: its script cache too): acquires fail while it is
    down, and work again once it is back, across both servers."""
    with LockServers(redis_private.url, redis_prefix, short_tmp, 2, LONG_LEASE) as (a, b):
        first, second = Namespace(a.address, "jobs"), Namespace(b.address, "jobs")
        assert first._lock("L").acquire(timeout=NO_HANG_SECONDS)  # (the script loaded)
        redis_private.kill()
        with pytest.raises(StoreUnavailable):
            second._lock("M").acquire(timeout=NO_HANG_SECONDS)
        redis_private.start()
        lock = second._lock("M")
        assert lock.acquire(timeout=NO_HANG_SECONDS)
        waiter = Waiter(a.address, "M")
        waiter.start()
        with redis_private.client() as client:
            in_line(client, redis_prefix, 1, "M")
        released = time.monotonic()
        lock.release()
        assert waiter.waited_since(released) < AT_ONCE + 2 * MAX_BACKOFF
        waiter.let_it_go()
        first._close()
        second._close()
