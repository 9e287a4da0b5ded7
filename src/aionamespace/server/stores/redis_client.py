"""The Redis store's side of redis-py: imported when needed, named in messages, its failures
turned into ``StoreUnavailable`` at one place (``Guard``), as httpx's ``map_exceptions`` does.

redis-py is an optional dependency (``aionamespace[redis]``): nothing imports it until a
RedisStore is made. Its asyncio client needs an asyncio loop, so the store checks for one.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import anyio

from ..._errors import StoreUnavailable
from .redis_urls import StoreUrl

__all__ = [
    "Guard",
    "client_for",
    "describe",
    "on_asyncio",
    "redis_py",
    "unavailable",
]


def redis_py() -> Any:
    """The ``redis`` package (its asyncio clients imported), or ImportError saying how."""
    try:
        import redis.asyncio
        import redis.asyncio.cluster
    except ImportError:
        raise ImportError(
            "the Redis store needs redis-py: pip install 'aionamespace[redis]'"
        ) from None
    return redis


def client_for(url: StoreUrl, timeout: float) -> Any:
    """A redis-py asyncio client of ``url`` that never retries (a script run again after a
    lost reply would apply twice) and gives up connecting after ``timeout`` seconds.

    It has no ``socket_timeout``: every call of the store is bounded by ``Guard`` already (a
    call cancelled there drops its connection, as redis-py does on any interruption), and
    redis-py's own per-socket timeout costs a task per send (``asyncio.wait_for``) and a timer
    per reply, on every command of a batch (docs/SCALING.md has the figures)."""
    redis = redis_py()
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff

    options = url.client_options()
    options.update(retry=Retry(NoBackoff(), 0), socket_connect_timeout=timeout)
    if url.cluster:
        nodes = [redis.asyncio.cluster.ClusterNode(host, port) for host, port in url.nodes]
        return redis.asyncio.cluster.RedisCluster(startup_nodes=nodes, **options)
    return redis.asyncio.Redis(**options)


def on_asyncio() -> bool:
    """Whether an asyncio loop runs here (not trio)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def describe(client: Any, cluster: bool) -> str:
    """The store as messages name it: where it is, never a password."""
    if cluster:
        nodes = ",".join(
            f"{node.host}:{node.port}" for node in client.nodes_manager.startup_nodes.values()
        )
        return f"redis+cluster://{nodes}"
    options = client.connection_pool.connection_kwargs
    if "path" in options:
        return f"unix://{options['path']}"
    host, port = options.get("host", "localhost"), options.get("port", 6379)
    return f"redis://{host}:{port}/{options.get('db', 0)}"


def unavailable(name: str, timeout: float, error: BaseException) -> StoreUnavailable:
    """The error a call gets when the store ``name`` failed with ``error`` (its cause)."""
    if isinstance(error, TimeoutError) and not str(error):
        reason = f"no answer within {timeout} seconds"
    else:
        reason = f"{type(error).__name__}: {error}"
    lost = StoreUnavailable(f"the store ({name}) is unavailable: {reason}")
    lost.__cause__ = error  # (raise ... from error says it again)
    return lost


class Guard:
    """Bounds what it holds to ``timeout`` seconds and turns every failure of redis-py
    (``errors``) into StoreUnavailable (made by ``make``)."""

    def __init__(
        self,
        timeout: float,
        errors: tuple[type[BaseException], ...],
        make: Callable[[BaseException], StoreUnavailable],
    ) -> None:
        self._errors, self._make = errors, make
        self._scope = anyio.fail_after(timeout)

    async def __aenter__(self) -> None:
        self._scope.__enter__()

    async def __aexit__(self, kind: Any, error: BaseException | None, traceback: Any) -> bool:
        try:
            self._scope.__exit__(kind, error, traceback)
        except TimeoutError as timeout:
            raise self._make(timeout) from timeout
        if isinstance(error, self._errors) and not isinstance(error, StoreUnavailable):
            raise self._make(error) from error
        return False
