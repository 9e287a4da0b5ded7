"""A server over the Redis store: the awaited path with a real Redis under it.

test_remote_serve.py proves the path with a test double; this runs the proxies through a
server over ``RedisStore`` on the session's redis-server (redis_rig.py), so that the seam is
held by both sides of it; and two servers over one Redis (and over the cluster), where what
one server's clients write reaches the other's watchers and caches, pushed.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator

import anyio
import pytest

import redis_rig
from aionamespace import AsyncNamespace, Namespace, ServerThread
from aionamespace.client.calls import WatchEvent
from aionamespace.server.stores.redis import RedisStore
from deadlines import NO_HANG_SECONDS

pytestmark = pytest.mark.usefixtures("collect_garbage")


@pytest.fixture
def over_redis(redis_standalone: redis_rig.RedisServer, short_tmp: str) -> Iterator[ServerThread]:
    store = RedisStore(redis_standalone.url, prefix=redis_rig.unique_prefix("serve"))
    with ServerThread(os.path.join(short_tmp, "r.sock"), store=store) as server:
        yield server


def test_the_proxies_are_served_from_redis(over_redis: ServerThread) -> None:
    with Namespace(over_redis.address, "board") as ns:
        ns.x = 1
        assert ns.x == 1
        assert ns._incr("n", 2) == 2
        assert ns._append("log", "a") == 1
        assert ns._cas("x", 1, "one")
        assert dict(ns._snapshot()) == {"x": "one", "n": 2, "log": ["a"]}
        assert ns._keys() == ["board"]
        with pytest.raises(AttributeError):
            _ = ns.ghost

    async def pipelined() -> list[int]:
        async with AsyncNamespace(over_redis.address, "board") as ans:
            async with anyio.create_task_group() as group:
                for _ in range(64):
                    group.start_soon(ans._incr, "n")
            return [await ans.n]

    assert anyio.run(pipelined) == [66]


def test_watches_and_the_cache_over_redis(over_redis: ServerThread) -> None:
    writer = Namespace(over_redis.address, "watched")
    reader = Namespace(over_redis.address, "watched", cache=True)
    writer.x = 0
    assert reader.x == 0
    with writer._watch() as watch:
        for value in range(1, 4):
            writer.x = value
        assert [watch.next(timeout=NO_HANG_SECONDS) for _ in range(3)] == [
            WatchEvent("x", value, value + 1) for value in range(1, 4)
        ]
    deadline = time.monotonic() + NO_HANG_SECONDS
    while reader.x != 3:  # invalidated (on its way: each try is a read), then read again
        assert time.monotonic() < deadline
    with writer._watch(since=1) as watch:  # replayed from the history kept in Redis
        assert [watch.next(timeout=NO_HANG_SECONDS) for _ in range(3)] == [
            WatchEvent("x", value, value + 1) for value in range(1, 4)
        ]
    writer._close()
    reader._close()


def test_a_trio_server_refuses_the_redis_store(
    redis_standalone: redis_rig.RedisServer, short_tmp: str
) -> None:
    store = RedisStore(redis_standalone.url, prefix=redis_rig.unique_prefix("trio"))
    with pytest.raises(RuntimeError, match="asyncio"):
        ServerThread(os.path.join(short_tmp, "t.sock"), backend="trio", store=store).start()


@pytest.mark.parametrize("target", ["standalone", "cluster"])
def test_two_servers_over_one_board(target: str, short_tmp: str) -> None:
    """A watch and a cached reader on server B; every write through server A reaches them,
    pushed: the watch sees each revision in order, the cache is invalidated, and a watch that
    resumes from a revision replays the history, then goes on."""
    url = redis_rig.cluster().url if target == "cluster" else redis_rig.standalone().url
    prefix = redis_rig.unique_prefix("two")
    stores = [RedisStore(url, prefix=prefix) for _ in range(2)]
    with (
        ServerThread(os.path.join(short_tmp, "a.sock"), store=stores[0]) as a,
        ServerThread(os.path.join(short_tmp, "b.sock"), store=stores[1]) as b,
    ):
        writer = Namespace(a.address, "shared")
        reader = Namespace(b.address, "shared", cache=True)
        watcher = Namespace(b.address, "shared")
        writer.x = 0
        assert reader.x == 0
        with watcher._watch() as watch:
            for value in range(1, 50):
                writer.x = value
            events = [watch.next(timeout=NO_HANG_SECONDS) for _ in range(49)]
            assert events == [WatchEvent("x", value, value + 1) for value in range(1, 50)]
        deadline = time.monotonic() + NO_HANG_SECONDS
        while reader.x != 49:  # invalidated by A's writes (each try is a read)
            assert time.monotonic() < deadline
        writer._append("log", "a")
        with watcher._watch(since=50) as watch:
            writer._append("log", "b")
            assert [watch.next(timeout=NO_HANG_SECONDS) for _ in range(2)] == [
                WatchEvent("log", ["a"], 51),
                WatchEvent("log", ["a", "b"], 52),
            ]
        for ns in (writer, reader, watcher):
            ns._close()
