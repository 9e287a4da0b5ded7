"""Anonymous namespaces shared by ``serve --store URL`` processes over one Redis, for real.

A proxy made through one server and pickled into a process connected to another reaches its
namespace there; one server's last connection closing does not free a namespace another server
still uses; once no server uses it, it is freed after the grace (``--anonymous-grace``), by
whichever server sweeps first; a server SIGKILLed while it alone used one stops renewing its
use, which ends with its lease (``--store-lock-lease``), and the other server frees the
namespace after the grace from then; a server restarted over the board serves a namespace
still in its grace. Freed, a namespace is ``NamespaceGone`` through every server, never a new
empty one. (The registry itself: stores/redis_anonymous.py; its crash-safe drop:
test_anonymous_registry.py.)
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import os
import time
from collections.abc import Iterator
from typing import Any

import pytest

import redis_rig
from aionamespace import Namespace, NamespaceGone, StoreUnavailable
from aionamespace.protocol.addresses import parse_address
from deadlines import NO_HANG_SECONDS, wait_until
from server_processes import ServeProcess

pytestmark = pytest.mark.usefixtures("collect_garbage")

CTX = multiprocessing.get_context("spawn")
GRACE_SECONDS = 0.5
LEASE_SECONDS = 1.0
#: What freeing may take beyond its due time on a loaded machine (sweeps are a third of the
#: grace apart, jittered; a spawned process, a round trip, a poll).
SLACK_SECONDS = 2.5
#: ``--anonymous-grace`` of a server that sweeps seldom (a tenth of it apart).
SLOW_GRACE_SECONDS = 3.0
#: ``--store-timeout`` of the servers whose Redis goes away under them.
STORE_TIMEOUT = 1.0


def serve(engine: Any, prefix: str, path: str, grace: float = GRACE_SECONDS) -> ServeProcess:
    return ServeProcess(
        path,
        "asyncio",
        "--store",
        engine.url,
        "--store-prefix",
        prefix,
        "--anonymous-grace",
        str(grace),
        "--store-lock-lease",
        str(LEASE_SECONDS),
    )


def address(server: ServeProcess) -> str:
    assert isinstance(server.address, str)
    return server.address


def through(proxy: Namespace, server: ServeProcess) -> Namespace:
    """A proxy of ``proxy``'s namespace at another server (what a pickled proxy becomes on a
    host whose sidecar listens at the same path): it creates nothing, and connects on use."""
    target = proxy._aionamespace.target
    moved = dataclasses.replace(target, address=parse_address(address(server)))
    return Namespace._from_target(moved)  # type: ignore[no-any-return]


def held(server: ServeProcess, key: str) -> bool:
    """Whether the board still holds ``key`` (``keys`` through ``server``)."""
    with Namespace(address(server), "probe") as probe:
        return key in probe._keys()


@pytest.fixture(params=["redis", "redis-cluster"])
def engine(request: pytest.FixtureRequest) -> Any:
    return redis_rig.standalone() if request.param == "redis" else redis_rig.cluster()


@pytest.fixture
def two_servers(engine: Any, short_tmp: str, redis_prefix: str) -> Iterator[list[ServeProcess]]:
    servers: list[ServeProcess] = []
    try:
        for index in range(2):
            servers.append(serve(engine, redis_prefix, os.path.join(short_tmp, f"a{index}.sock")))
        yield servers
    finally:
        for server in servers:
            server.close()


# ---------------------------------------------------------------------- children (module level)


def read_and_write(proxy: Namespace) -> None:
    """In a spawned child: the namespace's values are there; a write of it goes back."""
    proxy.seen = proxy.x + 1
    proxy._append("log", "child")


# ---------------------------------------------------------------------- the tests


def test_a_proxy_made_through_one_server_works_in_a_child_of_the_other(
    two_servers: list[ServeProcess],
) -> None:
    first, second = two_servers
    with Namespace(address(first)) as ns:
        ns.x = 41
        ns.log = []
        child = CTX.Process(target=read_and_write, args=(through(ns, second),))
        child.start()
        child.join(NO_HANG_SECONDS * 3)
        assert child.exitcode == 0
        child.close()
        assert ns.seen == 42  # written through the other server, seen through this one
        assert ns.log == ["child"]
        key = ns._aionamespace.target.key
        assert held(second, key)
        assert held(first, key)


def test_a_namespace_lives_while_any_server_uses_it_then_for_the_grace(
    two_servers: list[ServeProcess],
) -> None:
    first, second = two_servers
    made = Namespace(address(first))
    made.x = 1
    key = made._aionamespace.target.key
    other = through(made, second)
    assert other.x == 1  # the second server uses it too
    made._close()  # the first server's last connection using it is gone
    # Past what the first server's use alone would have kept it: still there, still served.
    time.sleep(LEASE_SECONDS + GRACE_SECONDS + 1.0)  # (a non-event: nothing announces it)
    assert other.x == 1
    again = through(other, first)
    assert again.x == 1  # and through the first server again
    again._close()
    other._close()
    closed = time.monotonic()
    wait_until(lambda: not held(first, key), "the namespace is freed", GRACE_SECONDS + 10)
    assert time.monotonic() - closed >= GRACE_SECONDS * 0.9
    assert time.monotonic() - closed < GRACE_SECONDS + SLACK_SECONDS
    for server in two_servers:
        with pytest.raises(NamespaceGone, match=r"Limits\.anonymous_grace"):
            _ = through(made, server).x


def test_a_namespace_of_a_killed_server_is_freed_after_its_lease_and_the_grace(
    redis_standalone: redis_rig.RedisServer, short_tmp: str, redis_prefix: str
) -> None:
    doomed = serve(redis_standalone, redis_prefix, os.path.join(short_tmp, "doomed.sock"))
    survivor = serve(redis_standalone, redis_prefix, os.path.join(short_tmp, "survivor.sock"))
    try:
        made = Namespace(address(doomed))
        made.x = 1
        key = made._aionamespace.target.key
        assert held(survivor, key)
        killed = doomed.kill()  # its connection stays "open" as far as Redis knows: no leave
        wait_until(
            lambda: not held(survivor, key),
            "the survivor frees it",
            LEASE_SECONDS + GRACE_SECONDS + NO_HANG_SECONDS,
        )
        took = time.monotonic() - killed
        # Its use ended when its lease did (renewed a third of a lease apart, at most a lease
        # after the kill), then the grace ran.
        assert took >= GRACE_SECONDS + LEASE_SECONDS / 2
        assert took < LEASE_SECONDS + GRACE_SECONDS + SLACK_SECONDS
        with pytest.raises(NamespaceGone):
            _ = through(made, survivor).x
    finally:
        doomed.close()
        survivor.close()


def test_a_restarted_server_serves_a_namespace_still_in_its_grace(
    redis_standalone: redis_rig.RedisServer, short_tmp: str, redis_prefix: str
) -> None:
    path = os.path.join(short_tmp, "restarted.sock")
    server = serve(redis_standalone, redis_prefix, path, grace=60)
    try:
        made = Namespace(address(server))
        made.x = 1
        server.kill()
        server = serve(redis_standalone, redis_prefix, path, grace=60)  # same path, new process
        again = through(made, server)
        assert again.x == 1  # in its grace: served, and used again from now on
        again.x = 2
        assert again._snapshot()["x"] == 2
        again._close()
    finally:
        server.close()


def test_only_open_makes_one_and_a_key_never_made_is_gone_everywhere(
    redis_standalone: redis_rig.RedisServer, short_tmp: str, redis_prefix: str
) -> None:
    servers = [
        serve(redis_standalone, redis_prefix, os.path.join(short_tmp, f"o{index}.sock"))
        for index in range(2)
    ]
    try:
        # A proxy made and never created (``_from_target`` sends no ``open``): every op but
        # ``open`` naming its key is NamespaceGone through either server, and makes nothing.
        with Namespace(address(servers[0])) as made:
            unmade = Namespace._from_target(
                dataclasses.replace(made._aionamespace.target, key="#" + "0" * 32)
            )
        for server in servers:
            proxy = through(unmade, server)
            with pytest.raises(NamespaceGone, match="never created"):
                proxy.x = 1
            with pytest.raises(NamespaceGone):
                _ = proxy._snapshot()
            proxy._close()
        assert not held(servers[1], "#" + "0" * 32)
    finally:
        for server in servers:
            server.close()


def test_redis_down_for_longer_than_a_lease_fails_first_uses_promptly_and_frees_nothing(
    short_tmp: str, redis_prefix: str
) -> None:
    # Redis keeps its data across the restart (an append-only file): the outage alone is tried.
    redis = redis_rig.private_standalone("appendonly yes\nappendfsync always\n")
    servers = [
        ServeProcess(
            os.path.join(short_tmp, f"p{index}.sock"),
            "asyncio",
            "--store",
            redis.url,
            "--store-prefix",
            redis_prefix,
            "--store-timeout",
            str(STORE_TIMEOUT),
            "--anonymous-grace",
            str(grace),
            "--store-lock-lease",
            str(LEASE_SECONDS),
        )
        for index, grace in enumerate((SLOW_GRACE_SECONDS, GRACE_SECONDS))
    ]
    try:
        made = Namespace(address(servers[0]))
        made.x = 1  # used through the first server, its connection open throughout
        redis.stop()
        began = time.monotonic()
        with pytest.raises(StoreUnavailable, match="unavailable"):
            _ = through(made, servers[1]).x  # a first use: the registry does not answer
        assert time.monotonic() - began < STORE_TIMEOUT + SLACK_SECONDS
        # Every lease and grace in Redis runs out meanwhile (a non-event to wait out).
        time.sleep(LEASE_SECONDS + SLOW_GRACE_SECONDS + 1.0)
        redis.start()
        # The idle second server sweeps (every 0.1 s) more often than the first calls (every
        # 0.3 s or so), so it would find the first dead and free its namespace; but no
        # server sweeps for a lease after its calls failed: each renews first. Nothing is freed,
        # and the same proxies work again with nothing done by hand.
        deadline = time.monotonic() + 2 * (LEASE_SECONDS + GRACE_SECONDS)
        while time.monotonic() < deadline:  # (a non-event, watched for a few leases)
            try:
                assert made.x == 1
            except StoreUnavailable:
                pass  # (the first calls after Redis is back may still find it gone)
            time.sleep(0.1)
        assert made.x == 1
        assert through(made, servers[1]).x == 1
    finally:
        for server in servers:
            server.close()
        redis.remove()
