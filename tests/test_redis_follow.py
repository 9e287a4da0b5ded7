"""Other servers' revisions pushed through Redis (stores/redis_follow.py): two RedisStores on
one Redis are two servers; B follows a namespace, A writes it, B's ``on_commit`` hears every
revision, in order, once, with appended lists whole. Subscriptions killed, histories outrun,
boards flushed and Redis restarted: B recovers, says what it lost, and goes on.

Every test that needs no Redis of its own runs on a standalone Redis and on the 3-node
cluster (``target``). Waits are on events set by the hooks, with a deadline; never a sleep.
What Redis alone knows (who is subscribed, who owns a slot) is polled, with a deadline.
"""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import anyio
import msgpack
import pytest

import redis_rig
from aionamespace import Limits, StoreUnavailable
from aionamespace.protocol.codec import decode_value, encode_value
from aionamespace.server.stores import redis_subscriber
from aionamespace.server.stores.base import materialised
from aionamespace.server.stores.redis import RedisStore
from aionamespace.server.stores.redis_history import pack_update, unpack_changes
from deadlines import NO_HANG_SECONDS, async_wait_until, wait_until
from store_rig import new_redis_client

ONE, TWO = encode_value(1), encode_value(2)


@pytest.fixture(params=["standalone", "cluster"])
def target(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def run(main: Callable[[], Any]) -> None:
    anyio.run(main, backend="asyncio")


class Heard:
    """What a store's hooks told: commits (values made bytes), lost keys, new epochs; and a
    way to wait until something was told."""

    def __init__(self, store: RedisStore) -> None:
        self.commits: list[tuple[str, int, dict[str, bytes | None]]] = []
        self.lost: list[str] = []
        self.epochs: list[str] = []
        self._changed = anyio.Event()
        store.on_commit = self._commit
        store.on_lost = self._told(self.lost)
        store.on_epoch = self._told(self.epochs)

    def _commit(self, key: str, revision: int, changes: Any) -> None:
        values = {name: materialised(value) for name, value in changes.items()}
        self.commits.append((key, revision, values))
        self._changed.set()

    def _told(self, into: list[str]) -> Callable[[str], None]:
        def told(item: str) -> None:
            into.append(item)
            self._changed.set()

        return told

    def revisions(self, key: str) -> list[int]:
        return [revision for k, revision, _ in self.commits if k == key]

    async def until(self, condition: Callable[[], bool], what: str) -> None:
        with anyio.fail_after(NO_HANG_SECONDS * 2):  # (a reconnect backs off up to 2 s)
            while not condition():
                self._changed = anyio.Event()
                if not condition():
                    await self._changed.wait()
        assert condition(), what


@asynccontextmanager
async def servers(
    target: str,
    server: Any = None,
    limits: Limits | None = None,
    running: bool = True,
    **options: Any,
) -> AsyncIterator[tuple[RedisStore, RedisStore, Heard]]:
    """Stores A and B on one board (one client each, as two servers have), B running (its
    subscriber: ``run``) unless not ``running``."""
    prefix = redis_rig.unique_prefix()
    clients = [await new_redis_client(target == "cluster", server) for _ in range(2)]
    try:
        a, b = (RedisStore(client, limits, prefix=prefix, **options) for client in clients)
        for store in (a, b):
            await store.start()
        heard = Heard(b)
        async with anyio.create_task_group() as group:
            if running:
                group.start_soon(b.run)
            yield a, b, heard
            group.cancel_scope.cancel()
        await b.aclose()
    finally:
        for client in clients:
            await client.aclose()


def node_clients(target: str, server: Any = None) -> list[Any]:
    import redis

    if target == "cluster":
        return [redis.Redis(host=host, port=port) for host, port in redis_rig.cluster().nodes]
    return [(server or redis_rig.standalone()).client()]


def subscribers(target: str, channel: str) -> int:
    """How many connections are subscribed to the shard channel, on every node."""
    total = 0
    for node in node_clients(target):
        try:
            total += dict(node.execute_command("PUBSUB SHARDNUMSUB", channel))[channel.encode()]
        finally:
            node.close()
    return total


@pytest.mark.parametrize(
    "flat",
    [
        [],
        [b"s", b"n2", b"\x02", b"s", b"n1", b"\x01", b"s", "é".encode(), b""],  # all sets
        [b"s", b"n2", b"\x02", b"d", b"n1", b"", b"s", b"n3", b"\x03"],  # a delete among them
        [b"d", b"n1", b""],
    ],
)
def test_a_messages_changes_are_its_triples_in_order(flat: list[bytes]) -> None:
    changes = unpack_changes(msgpack.packb(flat, use_bin_type=False))
    triples = [flat[i : i + 3] for i in range(0, len(flat), 3)]
    assert list(changes.items()) == [
        (name.decode(), value if op == b"s" else None) for op, name, value in triples
    ]


@pytest.mark.parametrize(
    "values",
    [{}, {"n2": b"\x02", "n1": b"\x01", "é": b""}, {"s": b"d", "d": b"s", "u": b"u" * 40}],
)
def test_an_updates_message_is_its_pairs_in_order(values: dict[str, bytes]) -> None:
    """An update's entry, ``["u", name, value, ...]``: every name set, in the update's order
    (names that are ops themselves read as names)."""
    assert list(unpack_changes(pack_update(values)).items()) == list(values.items())


def test_every_kind_of_write_reaches_the_follower_in_order(target: str) -> None:
    """set, update, del, pop, incr, append, cas, setdefault, open through A: B is told each
    revision once, in order, with A's changes (an appended list whole)."""

    async def main() -> None:
        async with servers(target) as (a, b, heard):
            told_a: list[tuple[str, int, dict[str, bytes | None]]] = []
            a.on_commit = lambda key, revision, changes: told_a.append(
                (key, revision, {name: materialised(v) for name, v in changes.items()})
            )
            a.follow("k", 0)  # (A tells its appended lists whole too; A runs no subscriber)
            b.follow("k")
            assert await b.apply([("snapshot", ("k", None))]) == [(0, {})]  # from revision 0
            batches: list[list[Any]] = [
                [("set", ("k", "x", ONE))],
                [("update", ("k", {"y": TWO, "z": ONE}))],
                [("del", ("k", "z"))],
                [("pop", ("k", "y"))],
                [("incr", ("k", "x", ONE))],
                [("append", ("k", "log", [ONE, TWO]))],
                [("append", ("k", "log", [ONE]))],
                [("cas", ("k", "x", TWO, encode_value("big" * 5000)))],  # beyond the inline
                [("setdefault", ("k", "d", ONE)), ("open", ("k", {"d": TWO, "e": TWO}))],
                [("set", ("k", "log", encode_value([]))), ("append", ("k", "log", [TWO]))],
            ]
            for batch in batches:
                await a.apply(batch)
            await heard.until(lambda: len(heard.commits) >= 12, "B heard 12 revisions")
            assert heard.commits == told_a
            assert heard.revisions("k") == list(range(1, 13))
            logs = [values["log"] for _, _, values in heard.commits if "log" in values]
            assert [decode_value(v) for v in logs] == [[1, 2], [1, 2, 1], [], [2]]

    run(main)


def test_an_updates_names_and_values_come_back_as_they_went(target: str) -> None:
    """An update's entry is packed here and read by the script's cmsgpack: values whose raw
    strings take each size of header, names that are the entries' ops, a space, a long one.
    A replay of the history (B follows from 0 after two updates, one too large for its
    message), a message (a third update) and a snapshot give them back, in order."""
    small = {
        "é": encode_value("é"),
        "s": encode_value(b""),
        "u": encode_value(b"x" * 29),
        "d": encode_value(b"x" * 30),
        "a b": encode_value(b"x" * 250),
        "n" * 40: encode_value(b"x" * 253),
    }
    large = {f"v{n}": encode_value(b"x" * n) for n in (65530, 65533, 65536)}
    again = {"u": ONE, "s": TWO}

    async def main() -> None:
        async with servers(target) as (a, b, heard):
            assert await a.apply([("update", ("k", small))]) == [1]
            assert await a.apply([("update", ("k", large))]) == [2]
            b.follow("k", 0)
            await heard.until(lambda: len(heard.commits) >= 2, "B replayed 1 and 2")
            assert await a.apply([("update", ("k", again))]) == [3]
            await heard.until(lambda: len(heard.commits) >= 3, "B heard 3")
            assert heard.commits == [("k", 1, small), ("k", 2, large), ("k", 3, again)]
            assert [list(values) for *_, values in heard.commits] == [
                list(small),
                list(large),
                list(again),
            ]
            ((revision, found),) = await a.apply([("snapshot", ("k", None))])
            assert revision == 3
            assert list(found.items()) == list({**small, **large, **again}.items())

    run(main)


def test_own_and_other_writes_interleave_in_order(target: str) -> None:
    """1,000 revisions: A's and B's increments interleaved, several tasks each; B is told
    every revision once, in order, the last holding the total."""
    writes = 1000

    async def main() -> None:
        async with servers(target) as (a, b, heard):
            b.follow("k", 0)

            async def bump(store: RedisStore, count: int) -> None:
                for _ in range(count):
                    (result,) = await store.apply([("incr", ("k", "n", ONE))])
                    assert isinstance(result, bytes), result

            async with anyio.create_task_group() as group:
                for _ in range(4):
                    group.start_soon(bump, a, writes // 5)
                group.start_soon(bump, b, writes // 5)
            await heard.until(lambda: len(heard.commits) >= writes, "B heard every revision")
            assert heard.revisions("k") == list(range(1, writes + 1))
            assert decode_value(heard.commits[-1][2]["n"]) == writes
            assert not heard.lost

    run(main)


def test_reads_racing_messages_and_writes_lose_nothing(target: str) -> None:
    """B's subscriber runs while A writes, B writes, and B's readers read the key again and
    again (each read waits until what it saw is told: ``after_read``, whose fetches messages
    overtake): B is told every revision once, in order, and loses none."""
    writes = 300

    async def main() -> None:
        async with servers(target) as (a, b, heard):
            b.follow("k", 0)
            written = anyio.Event()

            async def bump(store: RedisStore, count: int) -> None:
                for _ in range(count):
                    await store.apply([("incr", ("k", "n", ONE))])

            async def read() -> None:
                while not written.is_set():
                    ((revision, _),) = await b.apply([("snapshot", ("k", None))])
                    assert heard.revisions("k")[-1:] >= [revision] or revision == 0

            async with anyio.create_task_group() as readers:
                for _ in range(3):
                    readers.start_soon(read)
                async with anyio.create_task_group() as writers:
                    for _ in range(4):  # (several of A's revisions between two of B's reads)
                        writers.start_soon(bump, a, writes // 5)
                    writers.start_soon(bump, b, writes // 5)
                written.set()
            await heard.until(lambda: len(heard.commits) >= writes, "B heard every revision")
            assert heard.lost == []
            assert heard.revisions("k") == list(range(1, writes + 1))

    run(main)


def test_follow_since_replays_the_history_first(target: str) -> None:
    async def main() -> None:
        async with servers(target) as (a, b, heard):
            for i in range(5):
                await a.apply([("set", ("k", "x", encode_value(i)))])
            b.follow("k", 2)
            await heard.until(lambda: len(heard.commits) >= 3, "B replayed 3..5")
            await a.apply([("append", ("k", "log", [ONE]))])
            await heard.until(lambda: len(heard.commits) >= 4, "B heard 6")
            assert heard.revisions("k") == [3, 4, 5, 6]
            assert [values for *_, values in heard.commits] == [
                {"x": encode_value(2)},
                {"x": encode_value(3)},
                {"x": encode_value(4)},
                {"log": encode_value([1])},
            ]

    run(main)


def test_follow_from_now_starts_at_the_revision_a_read_sees(target: str) -> None:
    """``follow(key)`` without ``since``: what came before the first read of the key (a get
    here, as a tracked read) is not told, everything after it is."""

    async def main() -> None:
        async with servers(target) as (a, b, heard):
            b.follow("k")
            for i in range(3):
                await a.apply([("set", ("k", "x", encode_value(i)))])
            assert await b.apply([("get", ("k", "x"))]) == [encode_value(2)]
            await a.apply([("set", ("k", "y", ONE))])
            await heard.until(lambda: len(heard.commits) >= 1, "B heard 4")
            await a.apply([("del", ("k", "y"))])
            await heard.until(lambda: len(heard.commits) >= 2, "B heard 5")
            assert heard.commits == [("k", 4, {"y": ONE}), ("k", 5, {"y": None})]

    run(main)


def test_what_a_read_saw_was_told_before_it_returns(target: str) -> None:
    """A read (``apply`` or ``history``) that sees a followed key at revision R returns only
    once every revision up to R was told: the server starts a watch at R, and a revision up to
    it told later would reach that watch twice. (B's subscriber does not run here: only the
    reads tell.)"""

    async def main() -> None:
        async with servers(target, running=False) as (a, b, heard):
            b.follow("k", 0)
            for i in range(3):
                await a.apply([("set", ("k", "x", encode_value(i)))])
            ((revision, _),) = await b.apply([("snapshot", ("k", None))])
            assert revision == 3
            assert heard.revisions("k") == [1, 2, 3]
            await a.apply([("set", ("k", "x", ONE))])
            await a.apply([("append", ("k", "log", [ONE]))])
            changes = await b.history("k", 3)
            assert [change.revision for change in changes] == [4, 5]
            assert heard.revisions("k") == [1, 2, 3, 4, 5]

    run(main)


def test_a_message_told_while_a_read_fetches_does_not_lose_the_rest(target: str) -> None:
    """A read sees the key at 3 with 0 told, and fetches 1..3; meanwhile the message of 1
    arrives and is told. The fetch's reply still holds 2 and 3: they are told before the read
    returns, and nothing is lost. (Before, the fetch gave up when ``told`` moved under it, and
    the read declared the key lost: a watch started there ended with "missed changes".)"""

    async def main() -> None:
        async with servers(target, running=False) as (a, b, heard):
            b.follow("k", 0)
            for i in range(3):
                await a.apply([("set", ("k", "x", encode_value(i)))])
            follower = b._follower
            state = follower._keys["k"]
            fetch = b._script

            async def overtaken(key: str, op: str, args: Any) -> Any:
                reply = await fetch(key, op, args)
                if op == "history":  # (the subscriber's message, told as the fetch returns)
                    follower.tell(state, 1, {"x": encode_value(0)})
                return reply

            b._script = overtaken  # type: ignore[method-assign]
            ((revision, _),) = await b.apply([("snapshot", ("k", None))])
            assert revision == 3
            assert heard.lost == []
            assert heard.revisions("k") == [1, 2, 3]
            assert [decode_value(values["x"]) for *_, values in heard.commits] == [0, 1, 2]

    run(main)


@asynccontextmanager
async def written_twice(
    server: redis_rig.RedisServer,
) -> AsyncIterator[tuple[RedisStore, RedisStore, Heard, Any]]:
    """A and B on ``server``'s board (B's subscriber not running), B following k, which A set
    twice (x: 1, 2); and B's state of k."""
    async with servers("standalone", server, running=False) as (a, b, heard):
        b.follow("k", 0)
        await a.apply([("set", ("k", "x", ONE)), ("set", ("k", "x", TWO))])
        yield a, b, heard, b._follower._keys["k"]


async def a_new_board(server: redis_rig.RedisServer, a: RedisStore) -> None:
    """The board flushed, and A's first write on the new one: k's revision 1, y."""
    with server.client() as client:
        client.flushall()
    await a.apply([("set", ("k", "y", ONE))])


def test_the_old_boards_messages_that_come_after_a_flush_are_not_told_as_the_new_ones(
    redis_private: redis_rig.RedisServer,
) -> None:
    """B told 1 and 2 (x) from the history; then the board is flushed and A writes the new
    board's 1 (y). The old board's messages of 1 and 2, late (queued behind the fill that
    told them), reach B after that: the first makes B take the new epoch, and B tells the
    new board's 1 from its history, never the old messages' changes. (Before, B told
    ``("k", 1, {"x": 1})`` from the late message: the full suite's parallel run met it.)"""
    server = redis_private

    async def main() -> None:
        async with written_twice(server) as (a, b, heard, state):
            await b._follower.fill(state)
            assert heard.revisions("k") == [1, 2]
            old = b.epoch
            late = [
                f"{old} 1 n ".encode() + pack_update({"x": ONE}),
                f"{old} 2 - ".encode() + pack_update({"x": TWO}),
            ]
            await a_new_board(server, a)
            for data in late:
                await b._follower._message(state, data)
            assert b.epoch == a.epoch != old
            assert heard.epochs == [b.epoch]
            assert heard.commits[2:] == [("k", 1, {"y": ONE})]

    run(main)


def test_a_fetch_that_a_new_board_overtook_is_not_told(
    redis_private: redis_rig.RedisServer,
) -> None:
    """B fetches k's history (1, 2: x) while the board is flushed, A writes the new board's 1
    (y) and B takes the new epoch. The fetch's reply is the old board's: B fetches again, and
    tells the new board's 1, not the old one's."""
    server = redis_private

    async def main() -> None:
        async with written_twice(server) as (a, b, heard, state):
            fetch, old = b._script, b.epoch

            async def overtaken(key: str, op: str, args: Any) -> Any:
                reply = await fetch(key, op, args)
                if op == "history" and b.epoch == old:  # (the new board, as the reply comes)
                    await a_new_board(server, a)
                    assert await b.check_epoch()
                return reply

            b._script = overtaken  # type: ignore[method-assign]
            await b._follower.fill(state)
            assert b.epoch == a.epoch != old
            assert heard.commits == [("k", 1, {"y": ONE})]

    run(main)


def test_a_gap_beyond_the_history_is_lost_then_delivery_goes_on(target: str) -> None:
    async def main() -> None:
        async with servers(target, limits=Limits(max_history_revisions=3)) as (a, b, heard):
            for i in range(10):
                await a.apply([("set", ("k", "x", encode_value(i)))])
            b.follow("k", 1)  # revisions 2..7 are gone
            await heard.until(lambda: heard.lost == ["k"], "B lost k")
            await a.apply([("set", ("k", "x", ONE))])
            await heard.until(lambda: len(heard.commits) >= 1, "B heard 11")
            assert heard.commits == [("k", 11, {"x": ONE})]

    run(main)


def test_a_killed_subscription_recovers_and_fills_the_gap(target: str) -> None:
    async def main() -> None:
        async with servers(target) as (a, b, heard):
            b.follow("k", 0)
            await a.apply([("set", ("k", "x", ONE))])
            await heard.until(lambda: len(heard.commits) >= 1, "B heard 1")
            killed = 0
            for node in node_clients(target):
                killed += node.execute_command("CLIENT KILL TYPE pubsub")
                node.close()
            assert killed >= 1
            for i in range(5):  # while B reconnects, or before: messages it never gets
                await a.apply([("set", ("k", "x", encode_value(i)))])
            await heard.until(lambda: len(heard.commits) >= 6, "B heard 2..6")
            await a.apply([("del", ("k", "x"))])
            await heard.until(lambda: len(heard.commits) >= 7, "B heard 7")
            assert heard.revisions("k") == list(range(1, 8))
            assert heard.commits[-1] == ("k", 7, {"x": None})
            assert not heard.lost

    run(main)


def test_unfollow_stops_delivery_and_unsubscribes(target: str) -> None:
    async def main() -> None:
        async with servers(target) as (a, b, heard):
            channel = b.base("k") + ":c"
            b.follow("k", 0)
            await a.apply([("set", ("k", "x", ONE))])
            await heard.until(lambda: len(heard.commits) >= 1, "B heard k")
            assert subscribers(target, channel) == 1
            b.unfollow("k")
            other = "j"
            b.follow(other, 0)
            await a.apply([("set", (other, "x", ONE))])
            await heard.until(lambda: len(heard.commits) >= 2, "B heard j")
            await a.apply([("set", ("k", "x", TWO)), ("set", (other, "x", TWO))])
            await heard.until(lambda: len(heard.commits) >= 3, "B heard j again")
            assert [(key, revision) for key, revision, _ in heard.commits] == [
                ("k", 1),
                ("j", 1),
                ("j", 2),
            ]
            assert not heard.lost
            await anyio.to_thread.run_sync(_wait_until, lambda: subscribers(target, channel) == 0)
            b.unfollow(other)
            await anyio.to_thread.run_sync(
                _wait_until, lambda: subscribers(target, b.base(other) + ":c") == 0
            )
            b.follow("k", 1)  # again, from revision 1: 2 replayed, then 3
            await heard.until(lambda: len(heard.commits) >= 4, "B heard k's 2")
            await a.apply([("set", ("k", "x", ONE))])
            await heard.until(lambda: len(heard.commits) >= 5, "B heard k's 3")
            assert heard.revisions("k") == [1, 2, 3]


def test_following_again_at_once_still_fills(target: str) -> None:
    """unfollow then follow before the subscriber acted: subscribed again all the same, and
    its confirmation fills what the new ``since`` asks for."""

    async def main() -> None:
        async with servers(target) as (a, b, heard):
            b.follow("k", 0)
            await a.apply([("set", ("k", "x", ONE)), ("set", ("k", "x", TWO))])
            await heard.until(lambda: len(heard.commits) >= 2, "B heard 1, 2")
            b.unfollow("k")
            b.follow("k", 0)
            await heard.until(lambda: len(heard.commits) >= 4, "B heard 1, 2 again")
            await a.apply([("del", ("k", "x"))])
            await heard.until(lambda: len(heard.commits) >= 5, "B heard 3")
            assert heard.revisions("k") == [1, 2, 1, 2, 3]
            assert not heard.lost

    run(main)


def _wait_until(condition: Callable[[], bool]) -> None:
    """(Redis's own state, which no event announces: polled, with a deadline.)"""
    wait_until(condition, "Redis's subscriptions are as expected")


def test_a_flushed_board_under_a_follower_starts_a_new_epoch(
    redis_private: redis_rig.RedisServer,
) -> None:
    server = redis_private

    async def main() -> None:
        async with servers("standalone", server) as (a, b, heard):
            b.follow("k", 0)
            await a.apply([("set", ("k", "x", ONE)), ("set", ("k", "x", TWO))])
            await heard.until(lambda: len(heard.commits) >= 2, "B heard 1, 2")
            old = b.epoch
            with server.client() as client:
                client.flushall()
            await a.apply([("set", ("k", "y", ONE))])  # A finds the board gone, B hears of it
            await heard.until(lambda: len(heard.commits) >= 3, "B heard the new 1")
            assert heard.epochs == [b.epoch]
            assert b.epoch == a.epoch != old
            assert heard.revisions("k") == [1, 2, 1]
            assert heard.commits[-1] == ("k", 1, {"y": ONE})

    run(main)


def test_a_restarted_redis_is_a_new_epoch_and_delivery_resumes(
    redis_private: redis_rig.RedisServer,
) -> None:
    server = redis_private

    async def main() -> None:
        async with servers("standalone", server) as (a, b, heard):
            b.follow("k", 0)
            await a.apply([("set", ("k", "x", ONE))])
            await heard.until(lambda: len(heard.commits) >= 1, "B heard 1")
            server.stop()
            await anyio.to_thread.run_sync(server.start)  # empty: nothing is saved
            await heard.until(lambda: len(heard.epochs) >= 1, "B found the board new")
            results = await a.apply([("set", ("k", "x", TWO))])
            assert results == [1]
            await heard.until(lambda: len(heard.commits) >= 2, "B heard the new 1")
            assert heard.revisions("k") == [1, 1]
            assert heard.commits[-1] == ("k", 1, {"x": TWO})
            assert a.epoch == b.epoch == heard.epochs[0]

    run(main)


def test_a_new_replication_id_under_a_surviving_epoch_is_a_new_epoch() -> None:
    """Redis lost data but not the epoch key (here: its replication id changed as a restart
    from an AOF or a failover changes it, and the subscriber reconnects): B makes a new epoch;
    A takes it at its next batch; delivery goes on."""
    server = redis_rig.private_standalone("enable-debug-command local\n")

    async def main() -> None:
        async with servers("standalone", server) as (a, b, heard):
            b.follow("k", 0)
            await a.apply([("set", ("k", "x", ONE))])
            await heard.until(lambda: len(heard.commits) >= 1, "B heard 1")
            old = b.epoch
            with server.client() as client:
                client.execute_command("DEBUG CHANGE-REPL-ID")
                assert client.execute_command("CLIENT KILL TYPE pubsub") == 1
            await heard.until(lambda: len(heard.epochs) >= 1, "B made a new epoch")
            assert heard.epochs == [b.epoch]
            assert b.epoch != old
            assert await a.apply([("set", ("k", "x", TWO))]) == [2]  # the data survived
            assert a.epoch == b.epoch
            await heard.until(lambda: len(heard.commits) >= 3, "B heard 1 again, and 2")
            assert heard.revisions("k") == [1, 1, 2]  # a new epoch is told from revision 0
            assert not heard.lost

    try:
        run(main)
    finally:
        server.remove()


def test_a_slot_that_moves_takes_its_subscription_along() -> None:
    """The cluster gives a followed namespace's (empty) slot to another node: Redis ends the
    subscription there, and B subscribes where the slot went and hears what follows; the slot
    is given back at the end."""
    import redis

    nodes = [redis.Redis(host=host, port=port) for host, port in redis_rig.cluster().nodes]
    ids = [node.execute_command("CLUSTER MYID").decode() for node in nodes]

    def owner(slot: int) -> int:
        return ids.index(redis_rig.slot_owner(nodes[0], slot))

    async def main() -> None:
        async with servers("cluster") as (a, b, heard):
            key, slot = redis_rig.key_in_empty_slot(nodes[0], b.base, "moving")
            before = owner(slot)
            channel = b.base(key) + ":c"
            b.follow(key, 0)
            await anyio.to_thread.run_sync(
                _wait_until, lambda: subscribers("cluster", channel) == 1
            )
            try:
                redis_rig.move_slot(nodes, slot, ids[(before + 1) % len(nodes)])
                await anyio.to_thread.run_sync(
                    _wait_until,
                    lambda: _subscribed_on(nodes[(before + 1) % len(nodes)], channel),
                )
                await a.apply([("set", (key, "x", ONE))])
                await heard.until(lambda: len(heard.commits) >= 1, "B heard 1")
                assert heard.commits == [(key, 1, {"x": ONE})]
            finally:
                await a.drop(key)
                redis_rig.move_slot(nodes, slot, ids[before])

    try:
        run(main)
    finally:
        for node in nodes:
            node.close()


def _subscribed_on(node: Any, channel: str) -> bool:
    return bool(dict(node.execute_command("PUBSUB SHARDNUMSUB", channel))[channel.encode()])


def test_a_silent_connection_is_given_up_and_made_anew(
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    redis_private: redis_rig.RedisServer,
) -> None:
    """A node that stops answering (SIGSTOP: as a host that died without closing its sockets)
    is pinged after HEARTBEAT seconds of silence and its connection given up; meanwhile the
    store's calls fail promptly; once it answers again, delivery goes on."""
    monkeypatch.setattr(redis_subscriber, "HEARTBEAT", 0.2)
    server = redis_private

    def given_up() -> bool:
        return any("no answer to a ping" in record.getMessage() for record in caplog.records)

    async def main() -> None:
        async with servers("standalone", server, timeout=0.5) as (a, b, heard):
            b.follow("k", 0)
            await a.apply([("set", ("k", "x", ONE))])
            await heard.until(lambda: len(heard.commits) >= 1, "B heard 1")
            assert server.pid is not None
            os.kill(server.pid, signal.SIGSTOP)
            try:
                with anyio.fail_after(2):
                    (failed,) = await b.apply([("set", ("k", "x", TWO))])
                assert isinstance(failed, StoreUnavailable)
                await async_wait_until(given_up, "the subscriber gave its connection up")
            finally:
                os.kill(server.pid, signal.SIGCONT)
            (revision,) = await a.apply([("set", ("k", "x", TWO))])  # (B's set: done, or not)
            await heard.until(lambda: heard.revisions("k")[-1:] == [revision], "B heard it")
            assert heard.revisions("k") == list(range(1, revision + 1))

    caplog.set_level(logging.INFO, logger="aionamespace.server")
    run(main)


def test_a_reconnect_costs_a_few_round_trips_not_one_per_key(
    redis_private: redis_rig.RedisServer,
) -> None:
    """B follows 60 keys; its subscriber connection is killed. Subscribing them again is one
    SSUBSCRIBE, and reading their revisions one pipeline (or a few, as the confirmations
    arrive), not one round trip per key: Redis's own counts (``INFO commandstats``, and
    ``total_reads_processed``, its reads from clients: one per round trip of a client that
    waits for each answer) say so, less what this test's own client asked."""
    keys = 60
    server = redis_private

    def reconnect_costs() -> tuple[int, int, int]:
        """(SSUBSCRIBE calls, HGET calls, read events) of B's reconnect."""
        with server.client() as client:
            asked = 0

            def counts() -> tuple[int, int, int]:
                nonlocal asked
                asked += 2
                stats = client.info("commandstats")
                reads = client.info("stats")["total_reads_processed"]
                return (
                    stats.get("cmdstat_ssubscribe", {}).get("calls", 0),
                    stats.get("cmdstat_hget", {}).get("calls", 0),
                    int(reads),
                )

            before = counts()
            assert client.execute_command("CLIENT KILL TYPE pubsub") == 1
            asked += 1
            wait_until(lambda: counts()[1] >= before[1] + keys, "B read every key's revision")
            after = counts()
        ssubscribes, hgets, reads = (now - then for now, then in zip(after, before, strict=True))
        return ssubscribes, hgets, reads - asked

    async def main() -> None:
        async with servers("standalone", server) as (a, b, heard):
            names = [f"k{index}" for index in range(keys)]
            await a.apply([("set", (key, "x", ONE)) for key in names])
            for key in names:
                b.follow(key, 0)
            await heard.until(lambda: len(heard.commits) >= keys, "B heard every key's 1")
            ssubscribes, hgets, reads = await anyio.to_thread.run_sync(reconnect_costs)
            assert ssubscribes == 1
            assert hgets == keys
            assert reads < 15, reads  # (HELLO and INFO of the connection, the epoch, ...)
            await a.apply([("set", (key, "x", TWO)) for key in names])
            await heard.until(lambda: len(heard.commits) >= 2 * keys, "B heard every key's 2")
            assert not heard.lost

    run(main)
