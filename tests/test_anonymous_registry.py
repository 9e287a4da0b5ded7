"""The registry of anonymous namespaces shared through Redis (stores/redis_anonymous.py), its
steps one at a time: what a crash between them leaves, standalone and cluster.

Each registry stands for one server: a real ``RedisStore`` on the session's Redis (or
Cluster), its calls made by hand instead of by a server's batches and its ``run``, so that a
test stops exactly where a server would die. Times are Redis's; the test only waits for them
to pass (polling the registry, as a sweep would).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

import anyio
import pytest

import redis_rig
from aionamespace import Limits
from aionamespace.protocol.codec import encode_value
from aionamespace.server.stores.redis import RedisStore
from aionamespace.server.stores.redis_anonymous import AnonymousRegistry
from deadlines import NO_HANG_SECONDS

KEY = "#" + "ab" * 16
GRACE = 0.2
LEASE = 0.6
STORE_TIMEOUT = 0.3  # tombstones are stale after max(1 s, 3 timeouts): 1 s here


@pytest.fixture(params=["standalone", "cluster"])
def url(request: pytest.FixtureRequest) -> str:
    engine = redis_rig.standalone() if request.param == "standalone" else redis_rig.cluster()
    return engine.url


def run(main: Callable[[], Awaitable[None]]) -> None:
    anyio.run(main, backend="asyncio")


class Server:
    """A store and its registry, as one server over the board has them."""

    def __init__(self, url: str, prefix: str, lease: float = LEASE) -> None:
        self.store = RedisStore(url, Limits(), prefix=prefix, timeout=STORE_TIMEOUT)
        self.uses: list[str] = []
        self.told_gone: list[str] = []
        self.registry = AnonymousRegistry(
            self.store, GRACE, lease, lambda: self.uses, self.told_gone.extend
        )

    async def __aenter__(self) -> Server:
        await self.store.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.store.aclose()

    async def sweep(self) -> list[str]:
        """One sweep: the keys it declared freed (tombstoned), not dropped."""
        _, freed = await self.registry._call((), sweep=True)
        return freed


async def sweep_until(server: Server, what: str) -> list[str]:
    """Sweep until a sweep declares something freed (Redis's time must pass first)."""
    deadline = time.monotonic() + NO_HANG_SECONDS
    while not (freed := await server.sweep()):
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        await anyio.sleep(0.02)
    return freed


def test_a_tombstone_is_never_used_again_and_any_server_finishes_its_drop(
    url: str, redis_prefix: str
) -> None:
    async def main() -> None:
        async with Server(url, redis_prefix) as a, Server(url, redis_prefix) as b:
            assert await a.registry.use([(KEY, True)]) == ["new"]
            await a.store.apply([("open", (KEY, {"x": encode_value(1)}))])
            assert await b.registry.use([(KEY, False)]) == ["ok"]
            a.registry.leave(KEY)
            b.registry.leave(KEY)
            await a.registry._call((), sweep=False)
            await b.registry._call((), sweep=False)
            assert await sweep_until(a, "the grace is over") == [KEY]
            # A dies here: declared freed, not dropped. Nobody may use it again, not even
            # with an open; the board still lists it until the drop is done.
            assert await b.registry.use([(KEY, False), (KEY, True)]) == ["gone", "gone"]
            assert KEY in await b.store.keys()
            # B claims the stale tombstone and finishes the drop.
            freed = await sweep_until(b, "the tombstone is stale")
            assert freed == [KEY]
            await b.registry._drop(freed)
            assert KEY not in await b.store.keys()
            assert (await b.store.apply([("snapshot", (KEY, None))]))[0] == (0, {})
            # Unknown now: only an open makes it (a fresh key, as clients make them).
            assert await b.registry.use([(KEY, False)]) == ["gone"]
            assert await b.registry.use([(KEY, True)]) == ["new"]

    run(main)


def test_a_dead_servers_use_ends_with_its_lease_then_the_grace_runs(
    url: str, redis_prefix: str
) -> None:
    async def main() -> None:
        async with Server(url, redis_prefix) as dead, Server(url, redis_prefix) as alive:
            assert await dead.registry.use([(KEY, True)]) == ["new"]
            used = time.monotonic()
            # It never calls again (killed): the other's sweeps find its lease over.
            await sweep_until(alive, "the dead server's use ends and its grace runs out")
            assert time.monotonic() - used >= LEASE + GRACE - 0.05  # (Redis's clock vs ours)
            assert await alive.registry.use([(KEY, False)]) == ["gone"]

    run(main)


def test_a_server_whose_uses_ran_out_is_told_which_namespaces_went(
    url: str, redis_prefix: str
) -> None:
    async def main() -> None:
        async with Server(url, redis_prefix) as cut, Server(url, redis_prefix) as other:
            assert await cut.registry.use([(KEY, True), (KEY + "2", True)]) == ["new", "new"]
            cut.uses[:] = [KEY, KEY + "2"]  # its connections use both
            assert await other.registry.use([(KEY + "2", False)]) == ["ok"]
            # ``cut`` cannot renew for longer than its lease; the other sweeps meanwhile.
            await sweep_until(other, "the cut server's use of KEY is over")
            # Reaching Redis again, it learns its id is gone: it uses both again under a new
            # one; the one freed meanwhile is told (its server drops those connections).
            first_id = cut.registry.server_id
            assert await cut.registry.use([]) == []
            assert cut.registry.server_id != first_id
            assert cut.told_gone == [KEY]
            assert await other.registry.use([(KEY + "2", False)]) == ["ok"]
            other.registry.leave(KEY + "2")
            await other.registry._call((), sweep=False)
            # Still used by ``cut`` under its new id: never freed while it renews.
            for _ in range(3):
                await anyio.sleep(GRACE)
                assert await other.sweep() == []
                await cut.registry._call((), sweep=False)

    run(main)


def test_a_queued_leave_taken_back_keeps_the_use(url: str, redis_prefix: str) -> None:
    async def main() -> None:
        async with Server(url, redis_prefix) as a:
            assert await a.registry.use([(KEY, True)]) == ["new"]
            a.registry.leave(KEY)
            assert a.registry.leaving(KEY)
            assert a.registry.take_back(KEY)  # a connection used it again before it was sent
            assert not a.registry.leaving(KEY)
            for _ in range(3):
                await anyio.sleep(GRACE)
                assert await a.sweep() == []

    run(main)
