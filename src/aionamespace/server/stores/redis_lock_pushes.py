"""The pushes that wake a server's lock waiters: one pub/sub channel per server.

When a release (or a lease that ended) hands a lock to a waiter, the lock script PUBLISHes to
the waiter's server's channel, ``PREFIX locks:SERVER`` (redis_lock_scripts.py). Each server
subscribes to its own channel alone, on one connection: a classic channel, not a sharded one,
because a server's waiters span every namespace (every slot), and a classic PUBLISH reaches a
subscriber on any node of a cluster (the cluster bus carries it), where a sharded one would
need a subscription per slot a server waits in. Handing over a lock is rare next to the
namespace's writes, so what the cluster bus pays for it is small.

The connection is our own (the store's client's settings, never retrying), read with a
blocking read: nothing polls. When it breaks, it is made again (to another node of a cluster
if need be) after a backoff from ``MIN_BACKOFF`` to ``MAX_BACKOFF`` seconds; each time the
subscription is confirmed, ``on_subscribed`` is called, so that the table asks Redis again
where its waiters stand (what was published meanwhile was lost). A connection cut without a
word (a partition that resets nothing) goes unnoticed here; the table's renewals of its waits,
every third of the lease, still tell it of a lock handed to one of them.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from typing import Any

import anyio

from .redis_client import redis_py

__all__ = ["MAX_BACKOFF", "MIN_BACKOFF", "Pushes"]

logger = logging.getLogger("aionamespace.server")

MIN_BACKOFF = 0.05
MAX_BACKOFF = 2.0


class Pushes:
    """The subscription to one channel of a (standalone or cluster) redis-py asyncio client."""

    def __init__(
        self,
        client: Any,
        cluster: bool,
        channel: str,
        on_message: Callable[[bytes], None],
        on_subscribed: Callable[[], None],
    ) -> None:
        self._client, self._cluster, self.channel = client, cluster, channel
        self._on_message, self._on_subscribed = on_message, on_subscribed
        self._errors = (redis_py().RedisError, OSError)
        self.subscribed = False

    async def run(self) -> None:
        """Stay subscribed until cancelled."""
        backoff = MIN_BACKOFF
        while True:
            connection = self._connection()
            try:
                pubsub = connection.pubsub()
                try:
                    await pubsub.subscribe(self.channel)
                    while True:
                        message = await pubsub.get_message(timeout=None)
                        if message is None:
                            continue
                        if message["type"] == "subscribe":
                            self.subscribed = True
                            backoff = MIN_BACKOFF
                            self._on_subscribed()
                        elif message["type"] == "message":
                            self._on_message(message["data"])
                finally:
                    self.subscribed = False
                    with anyio.CancelScope(shield=True):
                        await pubsub.aclose()
            except self._errors as exc:
                logger.warning("lock pushes: %s (subscribing again)", exc)
            finally:
                with anyio.CancelScope(shield=True):
                    await connection.aclose(close_connection_pool=True)
            await anyio.sleep(backoff)
            backoff = min(backoff * 2, MAX_BACKOFF)

    def _connection(self) -> Any:
        """A client of its own, of one connection that never retries (a cluster: to any
        node, each time another at random)."""
        redis = redis_py()
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff

        if not self._cluster:
            pool = self._client.connection_pool
            options = dict(pool.connection_kwargs, retry=Retry(NoBackoff(), 0))
            options.pop("socket_timeout", None)  # (reads block: a push may be far off)
            made = redis.asyncio.ConnectionPool(connection_class=pool.connection_class, **options)
            return redis.asyncio.Redis(connection_pool=made)
        node = random.choice(self._client.get_primaries())
        options = dict(node.connection_kwargs, retry=Retry(NoBackoff(), 0))
        options.pop("socket_timeout", None)
        made = redis.asyncio.ConnectionPool(connection_class=node.connection_class, **options)
        return redis.asyncio.Redis(connection_pool=made)
