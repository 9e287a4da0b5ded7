"""Anonymous namespaces end to end, on real servers (asyncio and trio) and real processes.

A proxy made with no name creates its namespace (``Namespace``: in its constructor;
``AsyncNamespace``: with its first queued write). The server keeps it while a connection that
used it is open, and ``Limits.anonymous_grace`` seconds after the last one closes: a proxy
pickled to a child started during the grace reaches it; after it, the child, and any unpickled
proxy, gets ``NamespaceGone`` and never a new, empty namespace. Named namespaces stay.
``Limits.max_namespaces`` bounds them all with ``LimitExceeded``.

Nothing here sleeps to wait out a grace period: a second anonymous namespace, left at the same
time, is the marker; once the server has freed it (polled through ``keys``), the grace is over.
"""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import os
import pickle
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import anyio
import pytest

from aionamespace import (
    AsyncNamespace,
    LimitExceeded,
    Limits,
    Manager,
    Namespace,
    NamespaceGone,
    ServerThread,
)
from aionamespace.protocol.connection import Address
from awaited_store import new_store, over_every_store
from child_processes import Reports, run_child
from deadlines import wait_until

pytestmark = pytest.mark.usefixtures("collect_garbage")

T = TypeVar("T")
SHORT_GRACE = 0.2
LONG_GRACE = 120.0  # longer than any child takes to start


@pytest.fixture
def spawn() -> Any:
    return multiprocessing.get_context("spawn")


def serve(short_tmp: str, backend: str, store_kind: str = "memory", **limits: Any) -> ServerThread:
    address, store = os.path.join(short_tmp, "s.sock"), new_store(store_kind)
    return ServerThread(address, backend=backend, limits=Limits(**limits), store=store)


@pytest.fixture
def short_grace(short_tmp: str, server_backend: str, store_kind: str) -> Iterator[ServerThread]:
    with serve(short_tmp, server_backend, store_kind, anonymous_grace=SHORT_GRACE) as server:
        yield server


@pytest.fixture
def long_grace(short_tmp: str, server_backend: str) -> Iterator[ServerThread]:
    with serve(short_tmp, server_backend, anonymous_grace=LONG_GRACE) as server:
        yield server


def in_a_thread(function: Callable[..., T], *args: Any) -> T:
    """``function(*args)`` on a thread of its own: sync proxies share one connection per thread,
    and closing this one must not close the test's."""
    with concurrent.futures.ThreadPoolExecutor(1) as thread:
        return thread.submit(function, *args).result()


def _keys(address: Address) -> list[str]:
    with Namespace(address, "observer") as observer:  # (keys names no namespace)
        return observer._keys()


def keys(address: Address) -> list[str]:
    return in_a_thread(_keys, address)


def key_of(ns: Namespace | AsyncNamespace) -> str:
    return ns._aionamespace.target.key  # type: ignore[no-any-return]


def _left(address: Address) -> str:
    marker = Namespace(address)
    marker._close()
    return key_of(marker)


def left(address: Address) -> str:
    """A marker: an anonymous namespace whose only connection has closed, now; its key."""
    return in_a_thread(_left, address)


def wait_until_freed(address: Address, key: str) -> None:
    wait_until(lambda: key not in keys(address), f"the server freed {key}")


# ---------------------------------------------------------------------- children


def read_and_write(ns: Namespace, report: Any) -> None:
    report.put(ns.x)
    ns.y = "from the child"


def try_everything(ns: Namespace, report: Any) -> None:
    outcomes = []
    for attempt in (
        lambda: ns.x,
        lambda: setattr(ns, "x", 2),
        lambda: ns._open(),
        lambda: hasattr(ns, "x"),
    ):
        try:
            attempt()
            outcomes.append("no error")
        except NamespaceGone:
            outcomes.append("NamespaceGone")
    report.put(outcomes)


# ---------------------------------------------------------------------- creation


def test_a_sync_proxy_creates_its_namespace_when_made(long_grace: ServerThread) -> None:
    ns = Namespace(long_grace.address)
    assert keys(long_grace.address) == [key_of(ns)]  # before any write
    assert str(ns) == "Namespace()"
    ns.x = 1
    assert pickle.loads(pickle.dumps(ns)).x == 1
    ns._close()


@pytest.mark.anyio
async def test_an_async_proxy_creates_its_namespace_with_its_first_write(
    long_grace: ServerThread,
) -> None:
    ns = AsyncNamespace(long_grace.address)  # nothing sent: it cannot block
    assert await anyio.to_thread.run_sync(keys, long_grace.address) == []
    ns.x = 1  # queued behind the creation
    await ns._flush()
    assert await anyio.to_thread.run_sync(keys, long_grace.address) == [key_of(ns)]
    assert await ns.x == 1
    await ns._close()


def test_the_manager_creates_an_anonymous_namespace_before_returning(manager: Manager) -> None:
    ns = manager.Namespace(a=1)
    ans = manager.AsyncNamespace()
    with Namespace(manager.address, "observer", authkey=manager.authkey) as observer:
        assert {key_of(ns), key_of(ans)} <= set(observer._keys())
    assert ns.a == 1


# ---------------------------------------------------------------------- lifetime


@over_every_store
def test_kept_while_a_connection_that_used_it_is_open(short_grace: ServerThread) -> None:
    address = short_grace.address
    ns = Namespace(address)
    ns.x = 1
    wait_until_freed(address, left(address))  # the grace passed; ns's connection stayed
    assert ns.x == 1
    ns._close()


@over_every_store
def test_freed_after_the_grace_and_never_created_again(short_grace: ServerThread) -> None:
    address = short_grace.address
    ns = Namespace(address)
    ns.x = 1
    ns._close()
    wait_until_freed(address, key_of(ns))
    copy = pickle.loads(pickle.dumps(ns))
    for proxy in (ns, copy):
        with pytest.raises(NamespaceGone, match=r"Limits\.anonymous_grace"):
            proxy.x  # noqa: B018
        with pytest.raises(NamespaceGone):
            hasattr(proxy, "x")  # never a silent False
        with pytest.raises(NamespaceGone):
            proxy.x = 2
        with pytest.raises(NamespaceGone):
            proxy._open(x=3)
    assert key_of(ns) not in keys(address)


@over_every_store
@pytest.mark.anyio
async def test_an_async_proxy_of_a_freed_namespace_gets_namespace_gone(
    short_grace: ServerThread,
) -> None:
    address = short_grace.address
    ns = AsyncNamespace(address)
    ns.x = 1
    await ns._close()  # flushes: created, written, then left
    await anyio.to_thread.run_sync(wait_until_freed, address, key_of(ns))
    copy = pickle.loads(pickle.dumps(ns))
    for proxy in (ns, copy):
        with pytest.raises(NamespaceGone):
            await proxy.x
        proxy.x = 2
        with pytest.raises(NamespaceGone):
            await proxy._flush()
        with pytest.raises(NamespaceGone):
            await proxy._open()
        await proxy._close()
    assert key_of(ns) not in await anyio.to_thread.run_sync(keys, address)


@over_every_store
def test_named_namespaces_are_never_freed(short_grace: ServerThread) -> None:
    address = short_grace.address
    with Namespace(address, "board") as board:
        board.x = 1
    with Namespace(address, "empty") as empty:
        empty._open()
    wait_until_freed(address, left(address))
    assert keys(address) == ["board", "empty"]
    with Namespace(address, "board") as board:
        assert board.x == 1


def test_a_proxy_pickled_to_a_child_started_during_the_grace_reaches_it(
    long_grace: ServerThread, spawn: Any
) -> None:
    ns = Namespace(long_grace.address)
    ns.x = "from the parent"
    ns._close()  # no connection uses it now: the proxy is in transit
    reports = Reports(spawn)
    try:
        assert run_child(spawn, read_and_write, ns, reports.queue) == 0
        assert reports.get() == "from the parent"
    finally:
        reports.close()
    assert ns.y == "from the child"
    ns._close()


def test_a_child_started_after_the_grace_gets_namespace_gone(
    short_grace: ServerThread, spawn: Any
) -> None:
    address = short_grace.address
    ns = Namespace(address)
    ns.x = 1
    ns._close()
    wait_until_freed(address, key_of(ns))
    reports = Reports(spawn)
    try:
        assert run_child(spawn, try_everything, ns, reports.queue) == 0
        assert reports.get() == ["NamespaceGone"] * 4
    finally:
        reports.close()
    assert key_of(ns) not in keys(address)


# ---------------------------------------------------------------------- max_namespaces


@over_every_store
def test_max_namespaces_is_a_clear_error_and_changes_nothing(
    short_tmp: str, server_backend: str, store_kind: str
) -> None:
    with serve(short_tmp, server_backend, store_kind, max_namespaces=2) as server:
        address = server.address
        with Namespace(address, "a") as named:
            named.x = 1
            anonymous = Namespace(address)
            with pytest.raises(LimitExceeded, match=r"Limits\.max_namespaces"):
                Namespace(address)
            with pytest.raises(LimitExceeded):
                Namespace(address, "b").x = 1

            async def async_proxy() -> None:
                late = AsyncNamespace(address)
                with pytest.raises(LimitExceeded):
                    await late._flush()
                await late._close()

            for backend in ("asyncio", "trio"):
                anyio.run(async_proxy, backend=backend)
            named.y = 2  # the namespaces held still take writes
            anonymous.z = 3
            assert sorted(named._keys()) == sorted(["a", key_of(anonymous)])
