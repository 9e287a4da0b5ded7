"""The Redis store beyond the store suite (which runs on it too: store_rig's "redis" and "redis
cluster"): batches in one round trip, exact read-modify-writes across several stores (several
servers) on one Redis, the board's layout and epoch, failures and recovery, hash tags.

Every test runs on a standalone Redis and on the 3-node cluster (``target``), each store under
a prefix of its own. redis-py's asyncio client runs on asyncio only: each test runs its own
loop (``run``).
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import pytest

import redis_rig
from aionamespace import DataFileError, LimitExceeded, Limits, StoreUnavailable
from aionamespace.protocol.codec import decode_value, encode_value
from aionamespace.server.stores import MemoryStore
from aionamespace.server.stores.redis import RedisStore
from aionamespace.server.stores.redis_wire import PackedReads
from store_rig import new_redis_client

ONE, TWO = encode_value(1), encode_value(2)
TARGETS = ["standalone", "cluster"]


@pytest.fixture(params=TARGETS)
def target(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def run(main: Callable[[], Awaitable[None]]) -> None:
    anyio.run(main, backend="asyncio")


async def started(client: Any, prefix: str, **options: Any) -> RedisStore:
    store = RedisStore(client, prefix=prefix, **options)
    await store.start()
    return store


def node_clients(target: str, server: Any = None) -> list[Any]:
    """Sync clients of each node (one for a standalone server)."""
    import redis

    if target == "cluster":
        return [redis.Redis(host=host, port=port) for host, port in redis_rig.cluster().nodes]
    return [(server or redis_rig.standalone()).client()]


def reads(clients: list[Any]) -> list[int]:
    """How many reads each node has processed (a pipeline sent at once is one)."""
    return [client.info("stats")["total_reads_processed"] for client in clients]


def test_a_batch_is_one_pipeline(target: str) -> None:
    """A batch of many calls on many namespaces costs each node one round trip (once the
    namespaces are registered: their first batch registers them first)."""
    server = redis_rig.private_standalone() if target == "standalone" else None
    nodes = node_clients(target, server)

    async def main() -> None:
        client = await new_redis_client(target == "cluster", server)
        try:
            store = await started(client, redis_rig.unique_prefix())
            keys = [f"k{i}" for i in range(10)]
            await store.apply([("set", (key, "x", ONE)) for key in keys])
            batch = []
            for key in keys:
                batch += [
                    ("get", (key, "x")),
                    ("update", (key, {"y": TWO, "z": ONE})),
                    ("append", (key, "log", [ONE, TWO])),
                    ("cas", (key, "x", ONE, TWO)),  # the same bytes: written at once
                    ("del", (key, "z")),
                    ("snapshot", (key, None)),
                ]
            before = reads(nodes)
            results = await store.apply(batch)
            after = reads(nodes)
            assert results[:6] == [
                ONE,
                2,
                2,
                True,
                5,
                (5, {"x": TWO, "y": TWO, "log": encode_value([1, 2])}),
            ]
            round_trips = [
                b - a - 1 for a, b in zip(before, after, strict=True)
            ]  # (- the INFO itself)
            assert set(round_trips) <= {0, 1}
            assert sum(round_trips) >= 1
        finally:
            await client.aclose()

    try:
        run(main)
    finally:
        for node in nodes:
            node.close()
        if server is not None:
            server.remove()


def test_read_modify_writes_from_several_stores_are_exact(target: str) -> None:
    """Three stores (three servers, each its own connections) over one Redis, four tasks on
    each: every incr (small ints, huge ints, floats), append and cas counts, once."""
    prefix = redis_rig.unique_prefix()
    rounds = 25

    async def main() -> None:
        clients = [await new_redis_client(target == "cluster") for _ in range(3)]
        try:
            stores = [await started(client, prefix) for client in clients]

            async def work(store: RedisStore, task: int) -> None:
                for i in range(rounds):
                    results = await store.apply(
                        [
                            ("incr", ("c", "n", ONE)),
                            ("incr", ("c", "big", encode_value(10**30))),
                            ("incr", ("c", "half", encode_value(0.5))),
                            ("append", ("c", "log", [encode_value([task, i])])),
                        ]
                    )
                    assert not any(isinstance(r, BaseException) for r in results), results
                    while True:  # an increment made of a read and a cas
                        (current,) = await store.apply([("get", ("c", "cas"))])
                        if isinstance(current, AttributeError):
                            await store.apply([("setdefault", ("c", "cas", encode_value(0)))])
                            continue
                        new = encode_value(decode_value(current) + 1)
                        (ok,) = await store.apply([("cas", ("c", "cas", current, new))])
                        if ok is True:
                            break

            async with anyio.create_task_group() as group:
                for store in stores:
                    for task in range(4):
                        group.start_soon(work, store, task + 4 * stores.index(store))
            total = 12 * rounds
            ((revision, values),) = await stores[0].apply([("snapshot", ("c", None))])
            assert decode_value(values["n"]) == total
            assert decode_value(values["big"]) == total * 10**30
            assert decode_value(values["half"]) == total / 2
            assert decode_value(values["cas"]) == total
            log = decode_value(values["log"])
            assert sorted(map(tuple, log)) == [(t, i) for t in range(12) for i in range(rounds)]
            for task in range(12):  # each task's appends in its order
                assert [i for t, i in log if t == task] == list(range(rounds))
            assert revision == 5 * total + 1  # dense: every change one revision
            changes = await stores[1].history("c", revision - 50)
            assert sorted({change.revision for change in changes}) == list(
                range(revision - 49, revision + 1)
            )
        finally:
            for client in clients:
                await client.aclose()

    run(main)


def test_a_board_of_another_layout_is_refused(target: str) -> None:
    prefix = redis_rig.unique_prefix()

    async def main() -> None:
        client = await new_redis_client(target == "cluster")
        try:
            await client.set(prefix + "{board}:layout", "999")
            with pytest.raises(DataFileError, match=r"of layout '999'; this version reads layout"):
                await started(client, prefix)
        finally:
            await client.aclose()

    run(main)


def test_the_epoch_is_the_boards(target: str) -> None:
    """Kept by every store of the board; a new one once the board is gone (flushed)."""
    prefix = redis_rig.unique_prefix()

    async def main() -> None:
        client = await new_redis_client(target == "cluster")
        try:
            first = await started(client, prefix)
            await first.apply([("set", ("k", "x", ONE))])
            second = await started(client, prefix)
            assert second.epoch == first.epoch
            assert len(first.epoch) == 16
            assert (await started(client, redis_rig.unique_prefix())).epoch != first.epoch
            for node in node_clients(target):  # the board flushed: a new board, a new epoch
                for name in node.scan_iter(match=prefix + "*"):
                    node.delete(name)
                node.close()
            third = await started(client, prefix)
            assert third.epoch != first.epoch
            assert await third.apply([("get", ("k", "x"))]) != [ONE]
        finally:
            await client.aclose()

    run(main)


def test_a_flushed_redis_makes_a_new_epoch(redis_private: redis_rig.RedisServer) -> None:
    server = redis_private

    async def main() -> None:
        client = await new_redis_client(False, server)
        try:
            first = await started(client, "board")
            await client.flushall()
            assert (await started(client, "board")).epoch != first.epoch
        finally:
            await client.aclose()

    run(main)


def test_reads_of_lists_and_reads_before_writes_keep_their_order(target: str) -> None:
    """A get or a snapshot goes to Redis as plain reads (MULTI/EXEC) unless the script must
    answer: one that finds a list that appends grew is read again through the script, and a
    read with a write after it on its namespace, in the same batch, goes through the script
    at once (had it read the list plainly, the write would have run before it read again)."""

    async def main() -> None:
        client = await new_redis_client(target == "cluster")
        try:
            store = await started(client, redis_rig.unique_prefix())
            listed = encode_value([1, 2])
            await store.apply([("update", ("k", {"x": ONE})), ("append", ("k", "log", [ONE, TWO]))])
            assert await store.apply(
                [("get", ("k", "log")), ("snapshot", ("k", ["x", "log", "nope"]))]
            ) == [listed, (2, {"x": ONE, "log": listed})]
            assert await store.apply(
                [
                    ("get", ("k", "log")),
                    ("snapshot", ("k", ["log"])),
                    ("set", ("k", "log", TWO)),
                    ("get", ("k", "log")),
                ]
            ) == [listed, (2, {"log": listed}), 3, TWO]
            assert await store.apply([("get", ("k", "x")), ("snapshot", ("none", ["x"]))]) == [
                ONE,
                (0, {}),
            ]
            (missing,) = await store.apply([("get", ("k", "nope"))])
            assert isinstance(missing, AttributeError)
        finally:
            await client.aclose()

    run(main)


def test_a_frozen_redis_fails_calls_promptly_then_recovers(
    redis_private: redis_rig.RedisServer,
) -> None:
    """SIGSTOP: every call fails within the store's timeout, as StoreUnavailable naming the
    store; SIGCONT: the same store works again. Stopped and restarted (empty, without the
    script): the same."""
    server = redis_private

    async def main() -> None:
        client = await new_redis_client(False, server, socket_timeout=None)
        try:
            store = await started(client, "board", timeout=0.5)
            assert await store.apply([("set", ("k", "x", ONE))]) == [1]
            assert server.pid is not None
            os.kill(server.pid, signal.SIGSTOP)
            try:
                began = time.monotonic()
                results = await store.apply([("set", ("k", "x", TWO)), ("get", ("j", "x"))])
                assert time.monotonic() - began < 2
                for result in results:
                    assert isinstance(result, StoreUnavailable)
                    assert server.socket_path in str(result)
                    assert result.__cause__ is not None
                with pytest.raises(StoreUnavailable, match=r"no answer within 0\.5 seconds"):
                    await store.history("k", 0)
                with pytest.raises(StoreUnavailable):
                    await store.keys()
            finally:
                os.kill(server.pid, signal.SIGCONT)
            (revision,) = await store.apply([("set", ("k", "x", ONE))])
            assert revision in (2, 3)  # (the set that timed out reached Redis, or not)
            assert await store.apply([("snapshot", ("k", None))]) == [(revision, {"x": ONE})]
            server.stop()
            (failed,) = await store.apply([("get", ("k", "x"))])
            assert isinstance(failed, StoreUnavailable)
            assert "ConnectionError" in str(failed)
            server.start()  # empty, and without the script: loaded again at once
            assert await store.apply([("set", ("k", "x", TWO)), ("get", ("k", "x"))]) == [1, TWO]
        finally:
            await client.aclose()

    run(main)


def test_a_call_answered_within_its_own_timeout_is_not_cut_off_by_an_earlier_one(
    redis_private: redis_rig.RedisServer,
) -> None:
    """Each batch has its own deadline (one timer per connection wakes at the earliest of
    those in flight): a call sent after an earlier one was answered, and answered late but
    within its own timeout, is answered, though the earlier call's deadline passed while it
    waited. (Redis frozen across that deadline, less long than the timeout.)"""
    server = redis_private
    timeout, freeze = 2.0, 1.2

    async def main() -> None:
        client = await new_redis_client(False, server, socket_timeout=None)
        try:
            store = await started(client, "board", timeout=timeout)
            first = time.monotonic()
            assert await store.apply([("set", ("k", "x", ONE))]) == [1]
            await anyio.sleep(timeout - freeze / 2 - (time.monotonic() - first))
            pid = server.pid
            assert pid is not None

            async def thaw() -> None:
                await anyio.sleep(freeze)
                os.kill(pid, signal.SIGCONT)

            os.kill(pid, signal.SIGSTOP)
            try:
                async with anyio.create_task_group() as group:
                    group.start_soon(thaw)
                    began = time.monotonic()
                    assert await store.apply([("get", ("k", "x"))]) == [ONE]
                    assert time.monotonic() - first > timeout  # past the first deadline
                    assert time.monotonic() - began < timeout
            finally:
                os.kill(pid, signal.SIGCONT)
        finally:
            await client.aclose()

    run(main)


def test_a_frozen_cluster_node_fails_calls_promptly_then_recovers() -> None:
    nodes = redis_rig.cluster()

    async def main() -> None:
        client = await new_redis_client(True, socket_timeout=None)
        try:
            store = await started(client, redis_rig.unique_prefix(), timeout=0.5)
            assert await store.apply([("set", ("k", "x", ONE))]) == [1]
            node = client.get_node_from_key(store.base("k"))
            pid = nodes.pids[nodes.nodes.index((node.host, node.port))]
            os.kill(pid, signal.SIGSTOP)
            try:
                began = time.monotonic()
                (failed,) = await store.apply([("get", ("k", "x"))])
                assert time.monotonic() - began < 2
                assert isinstance(failed, StoreUnavailable)
                assert "redis+cluster://" in str(failed)
            finally:
                os.kill(pid, signal.SIGCONT)
            assert await store.apply([("get", ("k", "x"))]) == [ONE]
        finally:
            await client.aclose()

    run(main)


def test_keys_with_braces_get_hash_tags_of_their_own(target: str) -> None:
    """Any string is a key: braces and percent signs are escaped in the hash tag, so no two
    keys share one, and every Redis key of a namespace is in its slot."""
    keys = ["a{b}c", "{", "}", "", "%7B", "{x}", "%", "}{"]
    prefix = redis_rig.unique_prefix()

    async def main() -> None:
        client = await new_redis_client(target == "cluster")
        try:
            store = await started(client, prefix, limits=Limits(max_history_revisions=3))
            for i, key in enumerate(keys):
                await store.apply(
                    [
                        ("set", (key, "x", encode_value(i))),
                        ("append", (key, "log", [ONE])),
                        ("set", (key, "log", ONE)),  # its list retired into the history
                    ]
                )
            assert await store.keys() == sorted(keys)
            for i, key in enumerate(keys):
                assert await store.apply([("get", (key, "x"))]) == [encode_value(i)]
            bases = {store.base(key) for key in keys}
            assert len(bases) == len(keys)
            slots: dict[str, set[int]] = {}
            for node in node_clients(target):
                for name in node.scan_iter(match=prefix + "*"):
                    base = name[: name.index(b"}") + 1].decode()
                    if base in bases:
                        slot = (
                            node.execute_command("CLUSTER KEYSLOT", name)
                            if target == "cluster"
                            else 0
                        )
                        slots.setdefault(base, set()).add(slot)
                node.close()
            assert set(slots) == bases
            assert all(len(found) == 1 for found in slots.values())
        finally:
            await client.aclose()

    run(main)


def test_scripts_lost_by_redis_are_loaded_again(target: str) -> None:
    async def main() -> None:
        client = await new_redis_client(target == "cluster")
        try:
            store = await started(client, redis_rig.unique_prefix())
            assert await store.apply([("set", ("k", "x", ONE))]) == [1]
            for node in node_clients(target):
                node.script_flush()
                node.close()
            calls = [("incr", ("k", "x", ONE)), ("get", ("k", "x")), ("set", ("j", "y", ONE))]
            assert await store.apply(calls) == [TWO, TWO, 1]
        finally:
            await client.aclose()

    run(main)


def test_calls_outside_batches_load_lost_scripts_again(target: str) -> None:
    """The calls that do not go in a batch's rounds (``usage``, ``history``, ``drop``) find
    the script cache emptied too (a restart, a failover to a replica that never loaded it):
    each loads the script again and is answered. (``usage`` failed with NoScriptError, as
    ``_info()`` did after a failover to a lagging replica.)"""

    async def main() -> None:
        client = await new_redis_client(target == "cluster")
        try:
            store = await started(client, redis_rig.unique_prefix())
            assert await store.apply([("set", ("k", "x", ONE)), ("set", ("j", "y", ONE))]) == [1, 1]

            def flush() -> None:
                for node in node_clients(target):
                    node.script_flush()
                    node.close()

            flush()
            usage = await store.usage()
            assert (usage.namespaces, usage.names) == (2, 2)
            flush()
            assert [change.revision for change in await store.history("k", 0)] == [1]
            flush()
            await store.drop("j")
            assert await store.keys() == ["k"]
        finally:
            await client.aclose()

    run(main)


def test_a_client_that_retries_is_refused() -> None:
    async def main() -> None:
        from redis.asyncio import Redis

        client = Redis(unix_socket_path=redis_rig.standalone().socket_path)
        try:
            with pytest.raises(ValueError, match="a client that does not retry"):
                RedisStore(client)
        finally:
            await client.aclose()

    run(main)


def test_calls_after_a_conditional_write_wait_for_it(target: str) -> None:
    """A cas whose bytes differ from the expected ones (equal values) and an incr with nothing
    to guess from take a second round trip; the calls after them on their namespace see their
    writes, the other namespaces are answered in the first."""
    server = redis_rig.private_standalone() if target == "standalone" else None
    nodes = node_clients(target, server)

    async def main() -> None:
        client = await new_redis_client(target == "cluster", server)
        try:
            store = await started(client, redis_rig.unique_prefix())
            await store.apply([("set", ("k", "x", b"\xd0\x01")), ("set", ("j", "y", ONE))])
            before = reads(nodes)
            results = await store.apply(
                [
                    ("cas", ("k", "x", ONE, TWO)),  # 1 encoded longer: equal, but not its bytes
                    ("get", ("k", "x")),
                    ("incr", ("k", "n", ONE)),  # never seen by this store: read first
                    ("get", ("k", "n")),
                    ("get", ("j", "y")),
                ]
            )
            after = reads(nodes)
            assert results == [True, TWO, ONE, ONE, ONE]
            # the cas reads, then writes; the incr reads with its write, then writes
            assert sum(b - a - 1 for a, b in zip(before, after, strict=True)) == 3
            before = reads(nodes)
            results = await store.apply([("incr", ("k", "n", ONE))] * 5)  # guessed, chained
            after = reads(nodes)
            assert results == [encode_value(n) for n in range(2, 7)]
            assert sum(b - a - 1 for a, b in zip(before, after, strict=True)) == 1
            ((revision, values),) = await store.apply([("snapshot", ("k", None))])
            assert (revision, values) == (8, {"x": TWO, "n": encode_value(6)})
        finally:
            await client.aclose()

    try:
        run(main)
    finally:
        for node in nodes:
            node.close()
        if server is not None:
            server.remove()


def test_writes_after_a_conditional_write_run_after_it(target: str) -> None:
    """A set and an update after a cas that takes a second round trip (equal values, not its
    bytes) are held back with it (the script checks the round's token before it runs them):
    they run after its write, in their order, and their revisions follow its."""
    server = redis_rig.private_standalone() if target == "standalone" else None

    async def main() -> None:
        client = await new_redis_client(target == "cluster", server)
        try:
            store = await started(client, redis_rig.unique_prefix())
            await store.apply([("set", ("k", "x", b"\xd0\x01"))])  # revision 1
            three = encode_value(3)
            results = await store.apply(
                [
                    ("cas", ("k", "x", ONE, TWO)),
                    ("set", ("k", "x", three)),
                    ("update", ("k", {"y": ONE, "z": TWO})),
                    ("get", ("k", "x")),
                ]
            )
            assert results == [True, 3, 4, three]
            ((revision, values),) = await store.apply([("snapshot", ("k", None))])
            assert (revision, values) == (4, {"x": three, "y": ONE, "z": TWO})
        finally:
            await client.aclose()

    try:
        run(main)
    finally:
        if server is not None:
            server.remove()


def test_max_namespaces_holds_across_stores(target: str) -> None:
    """The registry admits a namespace atomically: two stores on one board create no more than
    the bound between them; a refused call changes nothing and creates nothing."""
    prefix = redis_rig.unique_prefix()

    async def main() -> None:
        client = await new_redis_client(target == "cluster")
        try:
            first, second = await started(client, prefix), await started(client, prefix)
            first.max_namespaces = second.max_namespaces = 3
            assert await first.apply([("set", ("a", "x", ONE)), ("open", ("b", {}))]) == [1, None]
            results = await second.apply(
                [
                    ("set", ("c", "x", ONE)),
                    ("set", ("d", "x", ONE)),
                    ("get", ("d", "x")),
                    ("set", ("a", "x", TWO)),  # exists: no namespace made
                ]
            )
            assert results[0] == 1
            assert isinstance(results[1], LimitExceeded)
            assert str(results[1]) == (
                "the server holds 3 namespaces, its limit (Limits.max_namespaces): 'd' cannot "
                "be created"
            )
            assert isinstance(results[2], AttributeError)
            assert results[3] == 2
            assert await first.keys() == ["a", "b", "c"]
            assert await second.count() == 3
            await first.drop("b")  # room again, for whichever store asks first
            assert await second.apply([("incr", ("d", "n", ONE))]) == [ONE]
            (refused,) = await first.apply([("append", ("e", "log", [ONE]))])
            assert isinstance(refused, LimitExceeded)
            assert await first.keys() == ["a", "c", "d"]
        finally:
            await client.aclose()

    run(main)


def test_drop_leaves_no_key_behind(target: str) -> None:
    prefix = redis_rig.unique_prefix()

    async def main() -> None:
        client = await new_redis_client(target == "cluster")
        try:
            store = await started(client, prefix)
            await store.apply(
                [
                    ("update", ("k", {"x": ONE, "y": TWO})),
                    ("append", ("k", "log", [ONE])),
                    ("set", ("k", "log", TWO)),  # a retired list, kept for the history
                    ("append", ("k", "log2", [ONE])),
                    ("set", ("other", "x", ONE)),
                ]
            )
            await store.drop("k")
            left = set()
            for node in node_clients(target):
                left.update(name.decode() for name in node.scan_iter(match=prefix + "*"))
                node.close()
            assert left == {
                f"{prefix}{{board}}:{name}" for name in ("layout", "epoch", "namespaces")
            } | {store.base("other") + suffix for suffix in (":m", ":v", ":o", ":h", ":s")}
            assert await store.keys() == ["other"]
            assert await store.apply([("snapshot", ("k", None))]) == [(0, {})]
            assert await store.apply([("set", ("k", "x", ONE))]) == [1]  # revisions anew
        finally:
            await client.aclose()

    run(main)


def test_usage_counts_as_the_memory_store_does(target: str) -> None:
    calls = [
        ("update", ("k", {"x": ONE, "y": encode_value("text" * 20)})),
        ("append", ("k", "log", [encode_value(i) for i in range(20)])),
        ("append", ("k", "log", [ONE])),
        ("set", ("k", "log", TWO)),
        ("append", ("j", "log", [ONE])),
        ("del", ("k", "y")),
        ("open", ("empty", {})),
    ]
    limits = Limits(max_history_revisions=4)
    memory = MemoryStore(limits)
    for op, args in calls:
        getattr(memory, "delete" if op == "del" else op)(*args)

    async def main() -> None:
        client = await new_redis_client(target == "cluster")
        try:
            store = await started(client, redis_rig.unique_prefix(), limits=limits)
            await store.apply(calls)
            assert await store.usage() == memory.usage()
        finally:
            await client.aclose()

    run(main)


def test_a_store_finds_its_board_flushed_and_starts_a_new_epoch(
    redis_private: redis_rig.RedisServer,
) -> None:
    """Redis lost the board under a running store (here FLUSHALL; a restart without
    persistence is the same): the next batch finds the epoch gone, makes a new board and
    tells ``on_epoch`` before its commits; what it wrote is registered on the new board."""
    server = redis_private
    told: list[tuple[str, Any]] = []

    async def main() -> None:
        client = await new_redis_client(False, server)
        try:
            store = await started(client, "board")
            store.on_epoch = lambda epoch: told.append(("epoch", epoch))
            store.on_commit = lambda key, revision, changes: told.append((key, revision))
            old = store.epoch
            assert await store.apply([("set", ("k", "x", ONE)), ("set", ("k", "x", TWO))]) == [1, 2]
            await client.flushall()
            assert await store.apply([("set", ("k", "x", ONE))]) == [1]
            assert store.epoch != old
            assert told == [("k", 1), ("k", 2), ("epoch", store.epoch), ("k", 1)]
            assert await store.keys() == ["k"]
            assert (await started(client, "board")).epoch == store.epoch
        finally:
            await client.aclose()

    run(main)


def test_a_namespace_dropped_by_another_store_is_registered_again(target: str) -> None:
    prefix = redis_rig.unique_prefix()

    async def main() -> None:
        client = await new_redis_client(target == "cluster")
        try:
            first, second = await started(client, prefix), await started(client, prefix)
            assert await first.apply([("set", ("k", "x", ONE))]) == [1]
            await second.drop("k")
            assert await first.keys() == []
            assert await first.apply([("set", ("k", "x", TWO))]) == [1]  # made again
            assert await second.keys() == ["k"]
        finally:
            await client.aclose()

    run(main)


def test_a_store_made_from_a_url(target: str) -> None:
    """A store URL (redis_urls.py) makes the store's own client (no retries, the store's
    timeout), closed by ``aclose``; messages name the store with its password hidden."""
    url = redis_rig.cluster().url if target == "cluster" else redis_rig.standalone().url

    async def main() -> None:
        store = RedisStore(url, prefix=redis_rig.unique_prefix())
        try:
            await store.start()
            assert store.name == url
            assert await store.apply([("set", ("k", "x", ONE)), ("get", ("k", "x"))]) == [1, ONE]
        finally:
            await store.aclose()
        nowhere = RedisStore("unix://user:s3cret@/nonexistent/redis.sock", timeout=1)
        try:
            with pytest.raises(StoreUnavailable, match=r"unix://user:\*\*\*@/nonexistent") as lost:
                await nowhere.start()
            assert "s3cret" not in str(lost.value)
        finally:
            await nowhere.aclose()

    run(main)


def test_a_snapshot_of_thousands_of_names_reads_them_all(target: str) -> None:
    """The script reads named values a thousand at a time: 2,500 names, half of them missing
    and a list among them, come back in the order asked, the missing ones left out."""
    prefix = redis_rig.unique_prefix()

    async def main() -> None:
        client = await new_redis_client(target == "cluster")
        try:
            store = await started(client, prefix)
            values = {f"n{i}": encode_value(i) for i in range(0, 2500, 2)}
            assert await store.apply([("update", ("big", values))]) == [1]
            assert await store.apply([("append", ("big", "n1501", [ONE, TWO]))]) == [2]
            names = [f"n{i}" for i in range(2500)]
            ((revision, found),) = await store.apply([("snapshot", ("big", names))])
            assert revision == 2
            expected = {**values, "n1501": encode_value([1, 2])}
            expected = {name: expected[name] for name in names if name in expected}
            assert list(found) == list(expected)
            assert found == expected
            await store.aclose()
        finally:
            await client.aclose()

    run(main)


def test_an_update_of_thousands_of_names_places_the_new_ones_in_its_order(target: str) -> None:
    """The script writes an update's values in one HSET (two thousand values at a time) and
    places the names it makes new after the others, in the update's order: a snapshot of all
    lists them as a dict updated so would, a later new name last, and no value is lost."""
    prefix = redis_rig.unique_prefix()

    async def main() -> None:
        client = await new_redis_client(target == "cluster")
        try:
            store = await started(client, prefix)
            first = {f"n{i}": encode_value(i) for i in range(0, 3000, 3)}
            assert await store.apply([("update", ("order", first))]) == [1]
            second = {f"n{i}": encode_value(-i) for i in range(2999, -1, -1)}  # new and old
            assert await store.apply([("update", ("order", second))]) == [2]
            assert await store.apply([("set", ("order", "last", ONE))]) == [3]
            expected = {**first, **second, "last": ONE}
            ((revision, found),) = await store.apply([("snapshot", ("order", None))])
            assert revision == 3
            assert list(found) == list(expected)
            assert found == expected
            await store.aclose()
        finally:
            await client.aclose()

    run(main)


@pytest.mark.parametrize("one_by_one", [True, False], ids=["sets", "update"])
def test_a_namespace_of_many_names_is_kept_in_a_hash_table_unseen(
    target: str, one_by_one: bool
) -> None:
    """Past 32 names placed, by sets or by one update, a namespace's values hash is a hash
    table in Redis (its padding field makes it one), and the padding is no name: not in a
    snapshot of all, nor in the names or bytes the store's usage counts."""
    prefix = redis_rig.unique_prefix()

    async def main() -> None:
        client = await new_redis_client(target == "cluster")
        try:
            store = await started(client, prefix)
            values = {f"n{i}": encode_value(i) for i in range(40)}
            if one_by_one:
                for name, value in values.items():
                    await store.apply([("set", ("wide", name, value))])
            else:
                await store.apply([("update", ("wide", values))])
            encoding = await client.object("encoding", store.base("wide") + ":v")
            assert encoding == b"hashtable"
            ((_, found),) = await store.apply([("snapshot", ("wide", None))])
            assert found == values
            ((_, some),) = await store.apply([("snapshot", ("wide", ["n39", "", "n0"]))])
            assert some == {"n39": values["n39"], "n0": values["n0"]}
            usage = await store.usage()
            assert (usage.namespaces, usage.names) == (1, 40)
            assert usage.value_bytes == sum(map(len, values.values()))
            await store.aclose()
        finally:
            await client.aclose()

    run(main)


def test_reads_packed_once_are_read_anew(target: str) -> None:
    """A store keeps the commands of the plain reads it packed (a polled name, a snapshot of
    the same names): sent again, they read what the namespace holds now, and its revision,
    whatever was written in between, and a value that became a list goes to the script."""
    prefix = redis_rig.unique_prefix()

    async def main() -> None:
        client = await new_redis_client(target == "cluster")
        try:
            store = await started(client, prefix)
            names = ["a", "b", "c"]
            assert await store.apply([("update", ("ns", {"a": ONE, "b": ONE}))]) == [1]
            reads = [("snapshot", ("ns", names)), ("get", ("ns", "a"))]
            assert await store.apply(reads) == [(1, {"a": ONE, "b": ONE}), ONE]
            kept = len(store._rounds._reads)
            assert kept == 2
            assert await store.apply([("update", ("ns", {"a": TWO, "c": TWO}))]) == [2]
            assert await store.apply(reads) == [(2, {"a": TWO, "b": ONE, "c": TWO}), TWO]
            assert await store.apply([("set", ("ns", "b", encode_value([1])))]) == [3]
            assert await store.apply([("append", ("ns", "b", [TWO]))]) == [2]
            found = await store.apply([*reads, ("get", ("ns", "b"))])
            both = encode_value([1, 2])
            assert found == [(4, {"a": TWO, "b": both, "c": TWO}), TWO, both]
            assert len(store._rounds._reads) == kept + 1  # (only the get of b is new)
            await store.aclose()
        finally:
            await client.aclose()

    run(main)


def test_the_reads_kept_packed_are_bounded() -> None:
    """``PackedReads`` holds at most its entries and its bytes (then starts again), and never
    a command longer than its bound."""
    kept = PackedReads(max_entries=3, max_bytes=100, max_command_bytes=40)
    for name in "abc":
        kept.keep((b"base", name), b"x" * 30)
    assert len(kept) == 3
    assert kept.get((b"base", "a")) == b"x" * 30
    kept.keep((b"base", "d"), b"y" * 30)  # a fourth: it starts again
    assert len(kept) == 1
    assert kept.get((b"base", "a")) is None
    assert kept.get((b"base", "d")) == b"y" * 30
    kept.keep((b"base", ("e", "f")), b"z" * 41)  # too long to keep
    assert kept.get((b"base", ("e", "f"))) is None
    for name in "ghi":  # 30 + 3 x 30 bytes pass 100: it starts again at the third
        kept.keep((b"base", name), b"w" * 30)
    assert len(kept) == 1
    assert kept.get((b"base", "i")) == b"w" * 30
