"""Writes and reads of a followed namespace sent at once (stores/redis_at_once.py): the
follower is told from the callback that read Redis's reply what ``apply`` would tell it, in
revision order, each once, and a read returns only once what it saw was told; when another
server's revisions come first, the call is handed on to fetch them (an awaitable), never told
out of order. In a cluster, the epoch's read and each call go to their nodes, and the last
node's reply answers.
"""

from __future__ import annotations

from typing import Any

import anyio

from aionamespace.protocol.codec import decode_value, encode_value
from aionamespace.server.stores.redis import RedisStore
from deadlines import NO_HANG_SECONDS
from test_redis_follow import run, servers


async def at_once(store: RedisStore, calls: list[Any]) -> tuple[list[Any], bool]:
    """The calls' results through ``apply_now``, and whether they were handed on (a fetch)."""
    told: list[Any] = []
    answered = anyio.Event()

    def done(results: Any) -> None:
        told.append(results)
        answered.set()

    assert store.apply_now(calls, done), "not sent at once"
    with anyio.fail_after(NO_HANG_SECONDS):
        await answered.wait()
    (results,) = told
    assert results is not None, "served the usual way"
    if callable(results):
        return await results(), True
    return results, False


def test_followed_writes_and_reads_at_once_are_told_in_order_once() -> None:
    """B follows k, its subscriber not running: only its own calls tell it. B's writes and
    reads at once after A's writes fetch A's revisions first; after its own they are told
    from the callback; every revision reaches on_commit once, in order."""

    async def main() -> None:
        async with servers("standalone", running=False) as (a, b, heard):
            b.follow("k", 0)
            await a.apply([("set", ("k", "x", encode_value(0)))])
            await b.apply([("set", ("k", "x", encode_value(1)))])  # (registers k in B)
            assert heard.revisions("k") == [1, 2]
            for step in range(3):
                await a.apply([("update", ("k", {"a": encode_value(step)}))])
                update = ("update", ("k", {"b": encode_value(step)}))
                (revision,), fetched = await at_once(b, [update])
                assert fetched
                assert revision == 4 + 3 * step
                assert heard.revisions("k")[-2:] == [revision - 1, revision]
                _, fetched = await at_once(b, [("set", ("k", "x", encode_value(step)))])
                assert not fetched  # (its own revision was the next one)
                assert heard.revisions("k")[-1] == revision + 1
            await a.apply([("set", ("k", "a", encode_value(9)))])
            read = ("snapshot_in_order", ("k", ["a"]))
            ((revision, values),), fetched = await at_once(b, [read])
            assert fetched
            assert revision == 12
            assert [decode_value(v) for v in values] == [9]
            assert heard.revisions("k") == list(range(1, 13))
            _, fetched = await at_once(b, [("get", ("k", "a"))])
            assert not fetched
            assert heard.commits[-1] == ("k", 12, {"a": encode_value(9)})

    run(main)


def test_followed_writes_at_once_race_their_messages_without_duplicates() -> None:
    """B's subscriber runs: each of B's revisions reaches it twice (its message, its reply),
    A's by message; on_commit hears every revision once, in order."""
    writes = 60

    async def main() -> None:
        async with servers("standalone") as (a, b, heard):
            b.follow("k", 0)
            await b.apply([("set", ("k", "n", encode_value(0)))])
            for i in range(1, writes):
                if i % 3 == 0:
                    await a.apply([("set", ("k", "n", encode_value(i)))])
                else:
                    await at_once(b, [("update", ("k", {"n": encode_value(i)}))])
            await heard.until(lambda: len(heard.commits) >= writes, "B heard every revision")
            assert heard.revisions("k") == list(range(1, writes + 1))
            assert [decode_value(c[2]["n"]) for c in heard.commits] == list(range(writes))
            assert not heard.lost

    run(main)


def test_a_clusters_followed_writes_and_reads_go_at_once() -> None:
    """In a cluster, B's sets and updates go at once, the epoch read on the board's node and
    the script on the namespace's: each makes the next revision, told once, in order (A's
    fetched first). Reads go at once too, a batch's gets each to its namespace's node (here
    on several nodes, none the epoch's alone), and answer what the usual path answers."""

    async def main() -> None:
        async with servers("cluster", running=False) as (a, b, heard):
            b.follow("k", 0)
            await b.apply([("set", ("k", "x", encode_value(0)))])  # (registers k in B)
            for step in range(3):
                await a.apply([("set", ("k", "a", encode_value(step)))])
                update = ("update", ("k", {"b": encode_value(step), "c": encode_value(step)}))
                (revision,), fetched = await at_once(b, [update])
                assert fetched
                assert revision == 3 + 3 * step
                (after,), fetched = await at_once(b, [("set", ("k", "x", encode_value(step)))])
                assert not fetched
                assert after == revision + 1
            assert heard.revisions("k") == list(range(1, 11))
            assert heard.commits[-2][2] == {"b": encode_value(2), "c": encode_value(2)}
            (value,), fetched = await at_once(b, [("get", ("k", "x"))])
            assert (value, fetched) == (encode_value(2), False)
            await a.apply([("set", ("k", "x", encode_value(7)))])  # (A's: fetched, then told)
            (value,), fetched = await at_once(b, [("get", ("k", "x"))])
            assert (value, fetched) == (encode_value(7), True)
            assert heard.revisions("k") == list(range(1, 12))

            links = b._rounds.links
            assert links is not None
            keys = [f"spread{i}" for i in range(12)]
            for i, key in enumerate(keys):
                await a.apply([("set", (key, "v", encode_value(i)))])
            nodes = {links.link_for(b._rounds.base(key)) for key in keys}
            assert len(nodes) == 3, "the keys span the 3 masters"
            gets = [("get", (key, "v")) for key in keys] + [("get", ("k", "nothing"))]
            usual = await b.apply(gets)  # (B's first call to some nodes: it connects there)
            results, fetched = await at_once(b, gets)
            assert not fetched
            assert results[:-1] == [encode_value(i) for i in range(12)] == usual[:-1]
            assert type(results[-1]) is type(usual[-1]) is AttributeError

    run(main)
