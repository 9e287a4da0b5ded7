"""Locks shared by servers over one Redis (stores/redis_locks.py), standalone and cluster.

Servers are real (ServerThreads of this process, or processes to SIGKILL), on real sockets,
over a real redis-server. A waiter on one server is woken by a push when the holder on another
lets go: with a lease far longer than the test, only a push explains a wake within
``AT_ONCE`` seconds. When a holder's *server* dies, its lock passes on once the lease runs out:
not before two thirds of it (it renews every third), not much after it.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

import redis_rig
from aionamespace import Namespace, ServerThread
from aionamespace.server.stores.redis import RedisStore
from aionamespace.server.stores.redis_lock_pushes import MAX_BACKOFF
from deadlines import NO_HANG_SECONDS, wait_until
from raw_client import connect_raw, pack
from redis_lock_rig import (
    AT_ONCE,
    HolderProcess,
    LockServers,
    ServerOverRedis,
    Waiter,
    in_line,
    line,
)

pytestmark = pytest.mark.usefixtures("collect_garbage")

LONG_LEASE = 60.0  # no lease runs out during a test that uses it: only a push wakes
SHORT_LEASE = 1.5
MARGIN = 1.0  # past the lease, what a loaded machine may add


@pytest.fixture
def two_servers(redis_of: Any, redis_prefix: str, short_tmp: str) -> Iterator[list[Any]]:
    with LockServers(redis_of.url, redis_prefix, short_tmp, 2, LONG_LEASE) as servers:
        yield servers


def test_a_waiter_on_another_server_is_pushed_the_lock_when_it_is_released(
    two_servers: list[Any], redis_client: Any, redis_prefix: str
) -> None:
    a, b = two_servers
    holder = Namespace(a.address, "jobs")
    lock = holder._lock("L")
    assert lock.acquire(timeout=NO_HANG_SECONDS)
    waiter = Waiter(b.address, "L")
    waiter.start()
    in_line(redis_client, redis_prefix, 1)
    assert not waiter.got.is_set()
    released = time.monotonic()
    lock.release()
    assert waiter.waited_since(released) < AT_ONCE
    waiter.let_it_go()
    assert lock.acquire(timeout=NO_HANG_SECONDS)  # free again, through A
    lock.release()
    holder._close()


def test_a_closed_holder_connection_passes_the_lock_on_at_once(
    two_servers: list[Any], redis_client: Any, redis_prefix: str
) -> None:
    a, b = two_servers
    holder = Namespace(a.address, "jobs")
    assert holder._lock("L").acquire(timeout=NO_HANG_SECONDS)
    waiter = Waiter(b.address, "L")
    waiter.start()
    in_line(redis_client, redis_prefix, 1)
    closed = time.monotonic()
    holder._close()
    assert waiter.waited_since(closed) < AT_ONCE
    waiter.let_it_go()


def test_a_sigkilled_holder_process_passes_the_lock_on_at_once(
    two_servers: list[Any], redis_client: Any, redis_prefix: str
) -> None:
    a, b = two_servers
    holder = HolderProcess(str(a.address), "jobs", "L")
    try:
        waiter = Waiter(b.address, "L")
        waiter.start()
        in_line(redis_client, redis_prefix, 1)
        killed = time.monotonic()
        holder.kill()
        assert waiter.waited_since(killed) < AT_ONCE
        waiter.let_it_go()
    finally:
        holder.kill()


def test_a_dead_servers_lock_passes_on_when_its_lease_runs_out(
    redis_of: Any, redis_client: Any, redis_prefix: str, short_tmp: str
) -> None:
    dying = ServerOverRedis(
        os.path.join(short_tmp, "dying.sock"), redis_of.url, redis_prefix, SHORT_LEASE
    )
    holder: HolderProcess | None = None
    try:
        holder = HolderProcess(dying.address, "jobs", "L")
        with LockServers(redis_of.url, redis_prefix, short_tmp, 1, SHORT_LEASE) as (b,):
            waiter = Waiter(b.address, "L")
            waiter.start()
            in_line(redis_client, redis_prefix, 1)
            killed = time.monotonic()
            dying.kill()  # (its holder's socket closes, but no server is there to hear it)
            waited = waiter.waited_since(killed)
            assert SHORT_LEASE * 2 / 3 - 0.1 <= waited <= SHORT_LEASE + MARGIN, waited
            waiter.let_it_go()
    finally:
        dying.kill()
        if holder is not None:
            holder.kill()


def test_waiters_of_every_server_are_served_first_in_first_out(
    two_servers: list[Any], redis_client: Any, redis_prefix: str
) -> None:
    a, b = two_servers
    holder = Namespace(a.address, "jobs")
    lock = holder._lock("L")
    assert lock.acquire(timeout=NO_HANG_SECONDS)
    order: list[str] = []
    waiters = []
    for index, server in enumerate([b, a, b, a]):
        waiter = Waiter(server.address, "L")
        waiter.order, waiter.label = order, f"w{index}"
        waiter.let_go.set()  # each lets go as soon as it holds it
        waiter.start()
        in_line(redis_client, redis_prefix, index + 1)
        waiters.append(waiter)
    lock.release()
    for waiter in waiters:
        waiter.join(NO_HANG_SECONDS)
        assert waiter.result is True
    assert order == ["w0", "w1", "w2", "w3"]
    holder._close()


def test_a_wait_times_out_and_leaves_the_line(
    two_servers: list[Any], redis_client: Any, redis_prefix: str
) -> None:
    a, b = two_servers
    holder = Namespace(a.address, "jobs")
    lock = holder._lock("L")
    assert lock.acquire(timeout=NO_HANG_SECONDS)
    other = Namespace(b.address, "jobs")
    started = time.monotonic()
    assert other._lock("L").acquire(timeout=0.3) is False
    assert 0.3 <= time.monotonic() - started < 0.3 + AT_ONCE
    assert other._lock("L").acquire(blocking=False) is False  # a timeout of 0: not in line
    wait_until(lambda: line(redis_client, redis_prefix, "jobs", "L") == [], "the line empty")
    lock.release()
    assert other._lock("L").acquire(blocking=False) is True  # free: taken at once
    holder._close()
    other._close()


def test_a_waiter_of_a_dead_server_is_skipped(
    redis_of: Any, redis_client: Any, redis_prefix: str, short_tmp: str
) -> None:
    dying = ServerOverRedis(
        os.path.join(short_tmp, "dying.sock"), redis_of.url, redis_prefix, SHORT_LEASE
    )
    try:
        with LockServers(redis_of.url, redis_prefix, short_tmp, 1, SHORT_LEASE) as (b,):
            holder = Namespace(b.address, "jobs")
            lock = holder._lock("L")
            assert lock.acquire(timeout=NO_HANG_SECONDS)
            doomed, _ = connect_raw(dying.address)  # waits through the server that dies
            doomed.sendall(pack([1, "acquire", "jobs", "L", b"doomed", None]))
            in_line(redis_client, redis_prefix, 1)
            waiter = Waiter(b.address, "L")
            waiter.start()
            in_line(redis_client, redis_prefix, 2)
            dying.kill()
            doomed.close()
            base = f"{redis_prefix}{{=jobs}}"
            (doomed_id, _) = line(redis_client, redis_prefix, "jobs", "L")

            def entry_ran_out() -> bool:
                seconds, micros = redis_client.time()
                expiry = int(redis_client.hget(f"{base}:lw:L", doomed_id).split()[0])
                return bool(seconds * 1000 + micros // 1000 > expiry)

            wait_until(entry_ran_out, "the dead server's waiter's entry ran out")
            released = time.monotonic()
            lock.release()
            assert waiter.waited_since(released) < AT_ONCE
            waiter.let_it_go()
            holder._close()
    finally:
        dying.kill()


def test_a_closed_waiters_connection_leaves_the_line_at_once(
    two_servers: list[Any], redis_client: Any, redis_prefix: str
) -> None:
    a, b = two_servers
    holder = Namespace(a.address, "jobs")
    lock = holder._lock("L")
    assert lock.acquire(timeout=NO_HANG_SECONDS)
    gone, _ = connect_raw(str(b.address))
    gone.sendall(pack([1, "acquire", "jobs", "L", b"gone", None]))
    in_line(redis_client, redis_prefix, 1)
    gone.close()
    in_line(redis_client, redis_prefix, 0)
    lock.release()
    assert lock.acquire(blocking=False)  # nobody took it meanwhile
    lock.release()
    holder._close()


def test_a_push_lost_with_the_subscription_is_made_up_for(
    two_servers: list[Any], redis_of: Any, redis_client: Any, redis_prefix: str
) -> None:
    """Redis drops every subscriber (here: CLIENT KILL TYPE pubsub) just before the release
    that pushes the lock: the server subscribes again and asks where its waits stand."""
    a, b = two_servers
    holder = Namespace(a.address, "jobs")
    lock = holder._lock("L")
    assert lock.acquire(timeout=NO_HANG_SECONDS)
    waiter = Waiter(b.address, "L")
    waiter.start()
    in_line(redis_client, redis_prefix, 1)
    if isinstance(redis_of, redis_rig.RedisCluster):
        redis_client.execute_command(
            "CLIENT", "KILL", "TYPE", "pubsub", target_nodes=redis_client.ALL_NODES
        )
    else:
        redis_client.execute_command("CLIENT", "KILL", "TYPE", "pubsub")
    released = time.monotonic()
    lock.release()
    assert waiter.waited_since(released) < AT_ONCE + MAX_BACKOFF  # not the lease's 60 s
    waiter.let_it_go()
    holder._close()


def test_the_lock_excludes_across_servers(two_servers: list[Any]) -> None:
    """Exclusion counted, not timed: read-modify-writes under the lock through both servers
    end exact."""
    rounds, errors = 40, []

    def work(address: Any) -> None:
        ns = Namespace(address, "counted")
        lock = ns._lock("c")
        try:
            for _ in range(rounds):
                with lock:
                    value = ns.counter
                    ns.counter = value + 1
        except BaseException as exc:  # reported below
            errors.append(exc)
        finally:
            ns._close()

    first = Namespace(two_servers[0].address, "counted")
    first.counter = 0
    threads = [threading.Thread(target=work, args=(s.address,)) for s in two_servers * 2]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(NO_HANG_SECONDS * 6)
    assert errors == []
    assert first.counter == rounds * len(threads)
    first._close()


def test_a_stopped_servers_locks_pass_on_at_once(
    redis_of: Any, redis_client: Any, redis_prefix: str, short_tmp: str
) -> None:
    """A server stopped gracefully releases what its connections held, not the lease later."""
    with LockServers(redis_of.url, redis_prefix, short_tmp, 1, LONG_LEASE) as (b,):
        store = RedisStore(redis_of.url, prefix=redis_prefix, lock_lease=LONG_LEASE)
        with ServerThread(os.path.join(short_tmp, "a.sock"), store=store) as a:
            holder = Namespace(a.address, "jobs")
            assert holder._lock("L").acquire(timeout=NO_HANG_SECONDS)
            waiter = Waiter(b.address, "L")
            waiter.start()
            in_line(redis_client, redis_prefix, 1)
            stopped = time.monotonic()
        assert waiter.waited_since(stopped) < AT_ONCE
        waiter.let_it_go()
        holder._close()


def test_a_release_is_answered_once_every_server_sees_the_lock_free(
    two_servers: list[Any],
) -> None:
    """Told "released" through one server, a process finds the lock free through the other at
    once (blocking=False: no wait to hide a release still on its way to Redis)."""
    nss = [Namespace(server.address, "jobs") for server in two_servers]
    for turn in range(20):
        mine, theirs = nss[turn % 2]._lock("L"), nss[1 - turn % 2]._lock("L")
        assert mine.acquire(blocking=False)
        mine.release()
        assert theirs.acquire(blocking=False)
        theirs.release()
    for ns in nss:
        ns._close()
