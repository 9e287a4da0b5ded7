"""The Redis store's subscriber connection (stores/redis_push.py), on a real Redis: messages
handed to ``fast`` in the callback's next turn, in the order Redis sent them, never while the
subscriber's task deals with one; what ``fast`` declines waits for the task with everything
after it; a push past the bound closes the connection; the handshake authenticates and a
refused one says so. And a store over a password-protected Redis (another database than 0)
hears another server's writes through such a connection.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import anyio
import pytest

import redis_rig
from aionamespace.protocol.codec import encode_value
from aionamespace.server.stores.redis import RedisStore
from aionamespace.server.stores.redis_endpoints import Endpoint
from aionamespace.server.stores.redis_push import PushConnection
from deadlines import NO_HANG_SECONDS
from store_rig import new_redis_client

SECRET = "push-s3cret"


def run(main: Callable[[], Any]) -> None:
    anyio.run(main, backend="asyncio")


def endpoint(server: redis_rig.RedisServer, **options: Any) -> Endpoint:
    return Endpoint(name=server.url, path=server.socket_path, **options)


def publish(server: redis_rig.RedisServer, channel: str, *messages: bytes) -> None:
    with server.client() as client:
        for message in messages:
            client.execute_command("SPUBLISH", channel, message)


class Fast:
    """A ``fast`` that records what it was given and declines the messages in ``declined``."""

    def __init__(self, declined: set[bytes] = frozenset()) -> None:  # type: ignore[assignment]
        self.given: list[bytes] = []
        self.declined = declined

    def __call__(self, channel: bytes, data: bytes) -> bool:
        self.given.append(data)
        return data not in self.declined


@asynccontextmanager
async def subscribed(
    channel: str, fast: Fast, max_reply_bytes: int = 1 << 20
) -> AsyncIterator[PushConnection]:
    """A connection to this process's Redis, subscribed to ``channel`` (confirmed), closed
    after."""
    connection = PushConnection(endpoint(redis_rig.standalone()), max_reply_bytes, fast)
    await connection.connect(NO_HANG_SECONDS)
    try:
        connection.send("SSUBSCRIBE", channel)
        assert await connection.next(NO_HANG_SECONDS) == [b"ssubscribe", channel.encode(), 1]
        yield connection
    finally:
        connection.close()


async def next_while(
    connection: PushConnection, action: Callable[[], None], in_thread: bool = False
) -> Any:
    """What ``next`` returns to a task that waits in it while ``action`` runs (in a thread of
    its own if ``in_thread``: one that blocks)."""
    got: list[Any] = []
    async with anyio.create_task_group() as group:

        async def take() -> None:
            got.append(await connection.next(NO_HANG_SECONDS))

        group.start_soon(take)
        await anyio.wait_all_tasks_blocked()
        if in_thread:
            await anyio.to_thread.run_sync(action)
        else:
            action()
    return got[0]


def test_a_push_is_handled_after_the_other_callbacks_of_its_loop_turn() -> None:
    """The message read with the reply of a server's own write goes after that reply's
    callback (which tells the revision with its changes at hand): handled in the next turn."""
    fast = Fast()

    async def main() -> None:
        connection = PushConnection(Endpoint(name="nowhere"), 1 << 20, fast)
        connection.busy = False  # (as while the task waits in next())
        connection.data_received(b"*3\r\n$8\r\nsmessage\r\n$2\r\nch\r\n$1\r\nx\r\n")
        assert fast.given == []
        await asyncio.sleep(0)
        assert fast.given == [b"x"]

    run(main)


def message(data: bytes, channel: bytes = b"ch") -> bytes:
    return b"*3\r\n$8\r\nsmessage\r\n$%d\r\n%b\r\n$%d\r\n%b\r\n" % (
        len(channel),
        channel,
        len(data),
        data,
    )


def test_messages_go_to_fast_in_order_never_while_the_task_is_busy() -> None:
    fast = Fast({b"m3"})

    async def main() -> None:
        connection = PushConnection(Endpoint(name="nowhere"), 1 << 20, fast)
        # the task is not waiting in next(): busy, so m1 waits for it
        connection.data_received(message(b"m1"))
        await asyncio.sleep(0)
        assert fast.given == []
        assert await connection.next(0) == [b"smessage", b"ch", b"m1"]

        # the task waits: m2 goes to fast, m3 is declined, m4 waits behind m3
        def more() -> None:
            assert not connection.busy
            connection.data_received(message(b"m2") + message(b"m3") + message(b"m4"))

        assert await next_while(connection, more) == [b"smessage", b"ch", b"m3"]
        assert fast.given == [b"m2", b"m3"]
        assert await connection.next(0) == [b"smessage", b"ch", b"m4"]
        assert fast.given == [b"m2", b"m3"]

    run(main)


def test_a_subscribed_channels_messages_reach_fast_while_the_task_waits() -> None:
    server = redis_rig.standalone()
    channel = redis_rig.unique_prefix("push") + ":c"
    fast = Fast({b"last"})

    async def main() -> None:
        async with subscribed(channel, fast) as connection:

            def more() -> None:
                publish(server, channel, b"a", b"b", b"last")

            got = await next_while(connection, more, in_thread=True)
            assert got == [b"smessage", channel.encode(), b"last"]
            assert fast.given == [b"a", b"b", b"last"]

    run(main)


def test_silence_is_none_and_a_ping_is_answered() -> None:
    channel = redis_rig.unique_prefix("push") + ":c"

    async def main() -> None:
        async with subscribed(channel, Fast()) as connection:
            assert await connection.next(0.05) is None
            connection.send("PING")
            assert await connection.next(NO_HANG_SECONDS) == [b"pong", b""]

    run(main)


def test_a_push_past_the_bound_closes_the_connection() -> None:
    server = redis_rig.standalone()
    channel = redis_rig.unique_prefix("push") + ":c"

    async def main() -> None:
        async with subscribed(channel, Fast(), max_reply_bytes=1000) as connection:
            await anyio.to_thread.run_sync(publish, server, channel, b"x" * 5000)
            with pytest.raises(ConnectionError, match="a push of more than 1000 bytes"):
                with anyio.fail_after(NO_HANG_SECONDS):
                    await connection.next(NO_HANG_SECONDS)
            with pytest.raises(ConnectionError):
                connection.send("PING")

    run(main)


@pytest.fixture
def protected() -> Any:
    """A redis-server of the test's own that asks for a password."""
    server = redis_rig.private_standalone()
    with server.client() as client:
        client.config_set("requirepass", SECRET)
    try:
        yield server
    finally:
        server.remove()


def test_a_refused_handshake_says_so(protected: redis_rig.RedisServer) -> None:
    async def main() -> None:
        connection = PushConnection(endpoint(protected, password="wrong"), 1 << 20, None)
        with pytest.raises(ConnectionError, match="refused the handshake"):
            await connection.connect(NO_HANG_SECONDS)

    run(main)


def test_a_store_over_a_protected_redis_hears_the_other_servers_writes(
    protected: redis_rig.RedisServer,
) -> None:
    """B's subscriber authenticates (AUTH, SELECT of database 3) and hears A's revisions."""
    prefix = redis_rig.unique_prefix()
    heard: list[int] = []
    changed = anyio.Event()

    def commit(key: str, revision: int, changes: Any) -> None:
        heard.append(revision)
        changed.set()

    async def main() -> None:
        nonlocal changed
        clients = [
            await new_redis_client(False, protected, password=SECRET, db=3) for _ in range(2)
        ]
        try:
            a, b = (RedisStore(client, prefix=prefix) for client in clients)
            for store in (a, b):
                await store.start()
            b.on_commit = commit
            async with anyio.create_task_group() as group:
                group.start_soon(b.run)
                b.follow("k", 0)
                for value in (1, 2, 3):
                    await a.apply([("set", ("k", "x", encode_value(value)))])
                with anyio.fail_after(NO_HANG_SECONDS):
                    while heard[-1:] != [3]:
                        changed = anyio.Event()
                        await changed.wait()
                group.cancel_scope.cancel()
            await b.aclose()
            assert heard == [1, 2, 3]
            for db, holds in ((3, True), (0, False)):  # (the board's keys: in database 3)
                with protected.client(password=SECRET, db=db) as client:
                    assert any(key.startswith(prefix.encode()) for key in client.keys()) is holds
        finally:
            for client in clients:
                await client.aclose()

    run(main)
