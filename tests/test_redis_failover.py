"""A Redis Cluster failover to a replica at another address, for real: a replica that has
every write takes over and the board keeps its epoch; a replica that lags (writes it never
received, acknowledged by its master) takes over and the servers start a new epoch, so a
cached reader drops its cache and an old ``since`` gets HistoryExpired instead of wrong data
(stores/redis_replication.py).

One cluster of this module's own (three masters, the first with a replica), started once; the
tests fail the first shard over one way, then back: each finds which of its two nodes is the
master now. The replica is made to lag without a race: SIGSTOPped, its master drops its link
(``CLIENT KILL TYPE replica``), the writes go to the master alone, and the replica is told to
take over (``CLUSTER FAILOVER TAKEOVER``, sent while it is stopped) before it runs again: the
first thing it does on waking is take over, before it could make its link again.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import redis_rig
from aionamespace import ConnectionLost, HistoryExpired, Namespace, StoreUnavailable
from aionamespace.server.stores.redis_replication import (
    Replication,
    Seen,
    handed_over,
    verdict,
)
from deadlines import NO_HANG_SECONDS, wait_until
from server_processes import ServeProcess

OLD, NEW, OTHER = b"a" * 40, b"b" * 40, b"c" * 40
NONE = b"0" * 40
SEEN = Seen("10.0.0.1:7000", OLD, 100)

# One worker runs them all (README's test command uses --dist loadgroup): the cluster
# with a replica is the module's (started once), and the tests take turns failing it over.
pytestmark = pytest.mark.xdist_group("redis_failover")


def master(replid: bytes, offset: int, replid2: bytes = NONE, second: int = -1) -> Replication:
    return Replication(b"master", replid, replid2, offset, second, False, False)


def replica(
    replid: bytes, replid2: bytes, second: int, link_up: bool = True, syncing: bool = False
) -> Replication:
    return Replication(b"slave", replid, replid2, 500, second, link_up, syncing)


@pytest.mark.parametrize(
    ("node", "now", "expected"),
    [
        ("10.0.0.1:7000", master(OLD, 100), "continues"),
        ("10.0.0.1:7000", master(OLD, 250), "continues"),
        ("10.0.0.1:7000", master(OLD, 99), "lost"),  # an older RDB file, the same id
        ("10.0.0.2:7000", master(NEW, 300, OLD, 101), "ask"),  # took over past what was seen
        ("10.0.0.2:7000", master(NEW, 300, OLD, 100), "lost"),  # took over short of it
        ("10.0.0.1:7000", master(NEW, 300, OLD, 150), "lost"),  # the old one cannot be asked
        ("10.0.0.1:7000", master(NEW, 300), "lost"),  # another history (an AOF, a new id)
        ("10.0.0.2:7000", master(OTHER, 300), "other"),  # the slot moved to another shard
    ],
)
def test_a_node_continues_the_history_seen_as_psync_would(
    node: str, now: Replication, expected: str
) -> None:
    assert verdict(SEEN, node, now) == expected


@pytest.mark.parametrize(
    ("old", "expected"),
    [
        (replica(NEW, OLD, 151), True),  # continued from where the new master took over
        (replica(NEW, NONE, -1), False),  # resynced in full: what it had was dropped
        (replica(OLD, NONE, -1, link_up=False, syncing=True), False),
        (replica(OLD, NONE, -1, link_up=False), None),  # demoted, not linked yet
        (replica(OTHER, OLD, 151), False),  # a replica of another master
        (master(OLD, 150), None),  # not demoted yet, nothing more than the new one
        (master(OLD, 151), False),  # it acknowledged writes the new master lacks
        (master(OTHER, 10), False),
    ],
)
def test_the_old_master_says_whether_it_handed_everything_over(
    old: Replication, expected: bool | None
) -> None:
    new = master(NEW, 300, OLD, 151)
    assert handed_over(SEEN, new, old) is expected


def test_replication_is_read_from_info() -> None:
    text = (
        b"# Replication\r\nrole:master\r\nconnected_slaves:0\r\n"
        b"master_replid:" + NEW + b"\r\nmaster_replid2:" + OLD + b"\r\n"
        b"master_repl_offset:300\r\nsecond_repl_offset:151\r\n"
    )
    assert Replication.parse(text) == master(NEW, 300, OLD, 151)


@pytest.fixture(scope="module")
def shard() -> Iterator[redis_rig.RedisCluster]:
    """A cluster whose first shard has a replica (this module's alone: it fails it over)."""
    cluster = redis_rig.RedisCluster(redis_rig.find_binary(), replicas=1).start()
    try:
        yield cluster
    finally:
        cluster.remove()


def shard_nodes(cluster: redis_rig.RedisCluster) -> tuple[tuple[str, int], tuple[str, int]]:
    """(master, replica) of the shard that has a replica, as they are now."""
    import redis

    pair = [cluster.nodes[0], cluster.replica_nodes[0]]
    for node in pair:
        with redis.Redis(*node) as client:
            if client.info("replication")["role"] == "master":
                return node, pair[1 - pair.index(node)]
    raise AssertionError("the shard has no master")


def replication(node: tuple[str, int]) -> dict[str, Any]:
    import redis

    with redis.Redis(*node) as client:
        return dict(client.info("replication"))


def in_sync(master: tuple[str, int], replica: tuple[str, int]) -> bool:
    info = replication(replica)
    return bool(
        info.get("master_link_status") == "up"
        and info["master_repl_offset"] == replication(master)["master_repl_offset"]
    )


def key_on(cluster: redis_rig.RedisCluster, node: tuple[str, int], prefix: str) -> str:
    """A namespace key whose slot ``node`` serves (a store's keys: PREFIX{=KEY}...)."""
    import redis

    with redis.Redis(*node) as client:
        for index in range(10_000):
            key = f"k{index}"
            slot = client.execute_command("CLUSTER KEYSLOT", f"{prefix}{{={key}}}:m")
            if client.execute_command("CLUSTER COUNTKEYSINSLOT", slot) == 0 and _serves(
                client, slot
            ):
                return key
    raise AssertionError("no key on the shard")


def _serves(client: Any, slot: int) -> bool:
    port = client.connection_pool.connection_kwargs["port"]
    for first, last, (_, owner, *_), *_ in client.execute_command("CLUSTER SLOTS"):
        if first <= slot <= last:
            return bool(owner == port)
    return False


def servers_over(cluster: redis_rig.RedisCluster, prefix: str, short_tmp: str) -> list[Any]:
    return [
        ServeProcess(
            os.path.join(short_tmp, f"s{index}.sock"),
            "asyncio",
            "--store",
            cluster.url,
            "--store-prefix",
            prefix,
            "--store-timeout",
            "2",
        )
        for index in range(2)
    ]


def promoted(node: tuple[str, int]) -> bool:
    return replication(node)["role"] == "master"


def write(ns: Namespace, name: str, value: object) -> None:
    """Set through a server whose store may still find the slot moved (one failed call)."""
    deadline = time.monotonic() + NO_HANG_SECONDS
    while True:
        try:
            setattr(ns, name, value)
            return
        except StoreUnavailable:
            assert time.monotonic() < deadline, "the store never took the write"


def read(ns: Namespace, name: str) -> object:
    """A read that a connection ended by the server (a new epoch) or a moved slot may fail."""
    try:
        return getattr(ns, name)
    except (ConnectionLost, StoreUnavailable) as exc:
        return exc


def test_a_clean_failover_keeps_the_epoch(
    shard: redis_rig.RedisCluster, short_tmp: str, redis_prefix: str
) -> None:
    """``CLUSTER FAILOVER``: the replica catches up, then takes over; the old master continues
    as its replica from where it took over, so nothing was lost: the servers keep their epoch,
    the watcher goes on without a gap."""
    import redis

    master, replica = shard_nodes(shard)
    key = key_on(shard, master, redis_prefix)
    first, second = servers_over(shard, redis_prefix, short_tmp)
    try:
        with Namespace(first.address, key) as writer, Namespace(second.address, key) as watched:
            writer.x = 0
            epoch = watched._info()["epoch"]
            with watched._watch() as watch:
                writer.x = 1
                assert watch.next(timeout=NO_HANG_SECONDS).value == 1
                wait_until(lambda: in_sync(master, replica), "the replica has every write")
                with redis.Redis(*replica) as client:
                    assert client.execute_command("CLUSTER FAILOVER")
                wait_until(lambda: promoted(replica), "the replica took over")
                for value in range(2, 5):
                    write(writer, "x", value)
                events = [watch.next(timeout=NO_HANG_SECONDS)]
                while events[-1].value != 4:
                    events.append(watch.next(timeout=NO_HANG_SECONDS))
                # (a write that failed as the slot moved may have been applied: told twice)
                assert [event.revision for event in events] == list(range(3, 3 + len(events)))
                assert sorted(set(event.value for event in events)) == [2, 3, 4]
            assert watched._info()["epoch"] == epoch
            assert writer._info()["epoch"] == epoch
    finally:
        first.close()
        second.close()


@contextlib.contextmanager
def lagging(
    shard: redis_rig.RedisCluster, master: tuple[str, int], replica: tuple[str, int]
) -> Iterator[Callable[[], None]]:
    """Once the replica has every write, it is SIGSTOPped and its master drops its link: what
    is written in the block is the master's alone. The block may call what it is given to
    have the replica take over (CLUSTER FAILOVER TAKEOVER, sent now, run once the replica
    resumes); the replica resumes at the block's end, and a takeover asked for is checked
    done."""
    import redis

    wait_until(lambda: in_sync(master, replica), "the replica has every write")
    pid = shard.pid_of(replica)
    asked: list[socket.socket] = []

    def take_over() -> None:
        takeover = socket.create_connection(replica, timeout=NO_HANG_SECONDS)
        asked.append(takeover)
        takeover.sendall(b"CLUSTER FAILOVER TAKEOVER\r\n")

    os.kill(pid, signal.SIGSTOP)
    try:
        with redis.Redis(*master) as client:
            assert client.execute_command("CLIENT KILL TYPE replica") == 1
        yield take_over
        os.kill(pid, signal.SIGCONT)
        for takeover in asked:
            assert takeover.recv(64) == b"+OK\r\n"
    finally:
        os.kill(pid, signal.SIGCONT)
        for takeover in asked:
            takeover.close()


def test_a_lagging_replica_that_takes_over_starts_a_new_epoch(
    shard: redis_rig.RedisCluster, short_tmp: str, redis_prefix: str
) -> None:
    """The replica misses a write its master acknowledged, then takes over: the write is
    lost. The servers find the new master does not continue the old one's history and start
    a new epoch: the watching connection is ended, the cached reader drops its cache (it read
    the lost value), and a ``since`` of the old epoch gets HistoryExpired, even once the
    namespace's revisions have passed it again."""

    master, replica = shard_nodes(shard)
    key = key_on(shard, master, redis_prefix)
    first, second = servers_over(shard, redis_prefix, short_tmp)
    try:
        with (
            Namespace(first.address, key) as writer,
            Namespace(second.address, key, cache=True) as reader,
            Namespace(second.address, key) as watched,
        ):
            writer.x = "kept"
            assert reader.x == "kept"
            epoch = reader._info()["epoch"]
            with watched._watch() as watch:
                with lagging(shard, master, replica) as take_over:
                    writer.x = "lost"  # acknowledged by the master alone
                    since = writer._snapshot().revision
                    assert watch.next(timeout=NO_HANG_SECONDS).value == "lost"
                    deadline = time.monotonic() + NO_HANG_SECONDS
                    while reader.x != "lost":  # the cache was invalidated, then read again
                        assert time.monotonic() < deadline
                    take_over()
                with pytest.raises(ConnectionLost):  # as if the server had restarted
                    watch.next(timeout=NO_HANG_SECONDS)
            deadline = time.monotonic() + NO_HANG_SECONDS
            while read(reader, "x") != "kept":  # the new master's: the lost one's cache dropped
                assert time.monotonic() < deadline
            assert reader._info()["epoch"] != epoch
            write(writer, "x", "again")
            write(writer, "y", "past the lost revision")
            assert writer._snapshot().revision >= since
            with pytest.raises(HistoryExpired):
                watched._watch(since=since)
    finally:
        first.close()
        second.close()


def test_a_takeover_after_the_master_died_starts_a_new_epoch_and_delivery_goes_on(
    shard: redis_rig.RedisCluster, short_tmp: str, redis_prefix: str
) -> None:
    """The master acknowledges a write its replica never gets, and is SIGKILLed; the replica
    takes over. The servers' subscriptions move to it (the slot map read again once the dead
    node's connection is lost), the old master cannot say it handed everything over: a new
    epoch; and the writes that follow reach a watcher on the other server. (Last in the
    module: the shard's old master stays dead.)"""

    master, replica = shard_nodes(shard)
    key = key_on(shard, master, redis_prefix)
    first, second = servers_over(shard, redis_prefix, short_tmp)
    try:
        with (
            Namespace(first.address, key) as writer,
            Namespace(second.address, key, cache=True) as reader,
        ):
            writer.x = "kept"
            assert reader.x == "kept"
            epoch = reader._info()["epoch"]
            with lagging(shard, master, replica) as take_over:
                writer.x = "lost"  # acknowledged by the master alone
                deadline = time.monotonic() + NO_HANG_SECONDS
                while reader.x != "lost":
                    assert time.monotonic() < deadline
                os.kill(shard.pid_of(master), signal.SIGKILL)
                take_over()
            deadline = time.monotonic() + NO_HANG_SECONDS
            while read(reader, "x") != "kept":  # the new master's: the lost one's cache dropped
                assert time.monotonic() < deadline
            assert reader._info()["epoch"] != epoch
            with Namespace(second.address, key) as watched, watched._watch() as watch:
                write(writer, "x", "after")
                assert watch.next(timeout=NO_HANG_SECONDS).value == "after"
    finally:
        first.close()
        second.close()
