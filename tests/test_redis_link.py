"""The Redis store's own connections (redis_link.py), against real redis-servers: a lost
connection fails exactly the batches in flight on it and the next call connects again; a
reply past the bound closes the link; a MOVED slot is followed to its new node."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import pytest

import redis_rig
from aionamespace import StoreUnavailable
from aionamespace.protocol.codec import encode_value
from aionamespace.server.stores.redis import RedisStore
from aionamespace.server.stores.redis_link import Endpoint, Link
from aionamespace.server.stores.redis_wire import ReplyError, pack
from deadlines import async_wait_until
from store_rig import new_redis_client

ONE, TWO = encode_value(1), encode_value(2)


def run(main: Callable[[], Awaitable[None]]) -> None:
    anyio.run(main, backend="asyncio")


def test_a_reply_past_the_bound_fails_the_batches_in_flight_and_no_other() -> None:
    """Redis sends a 2 MiB string to a link bounded at 1 MiB: the link closes mid-reply; the
    batch answered before it has its replies, it and the batch written after it fail, and the
    next call connects again."""
    server = redis_rig.standalone()
    big, small = redis_rig.unique_prefix("big"), redis_rig.unique_prefix("small")
    with server.client() as client:
        client.set(big, b"x" * (2 << 20))
        client.set(small, b"s")

    async def main() -> None:
        link = Link(Endpoint("test", path=server.socket_path), max_reply_bytes=1 << 20)
        try:
            assert await link.call(pack("GET", small), 1) == [b"s"]
            before = link.submit(pack("GET", small) + pack("GET", small), 2)
            huge = link.submit(pack("GET", big), 1)
            after = link.submit(pack("GET", small), 1)
            assert await before == [b"s", b"s"]
            with pytest.raises(ConnectionError, match="more than 1048576 bytes"):
                await huge
            with pytest.raises(ConnectionError, match="more than 1048576 bytes"):
                await after
            assert link.connection is None
            found, refused = await link.call(pack("GET", small) + pack("NOSUCHCOMMAND"), 2)
            assert found == b"s"
            assert isinstance(refused, ReplyError)
            assert str(refused).startswith("ERR unknown command 'NOSUCHCOMMAND'")
        finally:
            link.close(ConnectionError("done"))

    try:
        run(main)
    finally:
        with server.client() as client:
            client.delete(big, small)


def test_a_redis_killed_with_a_batch_in_flight_fails_it_at_once(
    redis_private: redis_rig.RedisServer,
) -> None:
    """The store's Redis is stopped with a batch sent, then killed: that batch's calls fail
    with StoreUnavailable when the connection drops (not at the store's deadline, minutes
    away), and once Redis is back the next batch connects again."""
    server = redis_private

    async def main() -> None:
        client = await new_redis_client(False, server)
        try:
            store = RedisStore(client, prefix="board", timeout=120)
            await store.start()
            assert await store.apply([("set", ("k", "x", ONE))]) == [1]
            assert server.pid is not None
            assert store._links is not None
            connection = store._links.link_for(b"").connection
            assert connection is not None
            os.kill(server.pid, signal.SIGSTOP)
            results: list[Any] = []

            async def batch() -> None:
                results.extend(await store.apply([("set", ("k", "x", TWO)), ("get", ("k", "y"))]))

            async with anyio.create_task_group() as group:
                group.start_soon(batch)
                await async_wait_until(lambda: len(connection.waiting) == 1, "the batch is sent")
                began = time.monotonic()
                server.kill()
            assert time.monotonic() - began < 10
            assert len(results) == 2
            for result in results:
                assert isinstance(result, StoreUnavailable)
                assert "was lost" in str(result)
            server.start()
            assert await store.apply([("set", ("k", "x", TWO)), ("get", ("k", "x"))]) == [1, TWO]
            await store.aclose()
        finally:
            await client.aclose()

    run(main)


def test_a_slot_moved_to_another_node_is_followed() -> None:
    """The cluster gives an (empty) namespace's slot to another node after the store read the
    slot map: its next batch gets MOVED (nothing ran), reads the map again and is sent
    where the slot went, once; the slot is given back at the end."""
    import redis

    nodes = [redis.Redis(host=host, port=port) for host, port in redis_rig.cluster().nodes]
    ids = [node.execute_command("CLUSTER MYID").decode() for node in nodes]

    async def main() -> None:
        client = await new_redis_client(True)
        store = RedisStore(client, prefix=redis_rig.unique_prefix())
        try:
            await store.start()
            key, slot = redis_rig.key_in_empty_slot(nodes[0], store.base, "moving")
            before = redis_rig.slot_owner(nodes[0], slot)
            after = ids[(ids.index(before) + 1) % len(ids)]
            (missing,) = await store.apply([("get", (key, "x"))])  # (the old node's link)
            assert isinstance(missing, AttributeError)
            redis_rig.move_slot(nodes, slot, after)
            try:
                assert await store.apply([("set", (key, "x", ONE)), ("get", (key, "x"))]) == [
                    1,
                    ONE,
                ]
                holder = nodes[ids.index(after)]
                assert holder.execute_command("CLUSTER COUNTKEYSINSLOT", slot) > 0
                assert await store.apply([("set", (key, "x", TWO))]) == [2]  # applied once each
            finally:
                await store.drop(key)
                redis_rig.move_slot(nodes, slot, before)
        finally:
            await store.aclose()
            await client.aclose()

    run(main)
