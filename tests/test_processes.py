"""Proxies crossing real process boundaries: queues, pools, every start method, fork, threads.

Children are real processes of each start method, forced explicitly with
``multiprocessing.get_context``; they report through a multiprocessing queue (or their exit
code) and the parent asserts. Child functions are module-level: spawned children import them.
"""

from __future__ import annotations

import asyncio
import gc
import multiprocessing
import os
import threading
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

import aionamespace
from aionamespace import AsyncNamespace, Manager, Namespace
from aionamespace.protocol.connection import Address
from child_processes import CHILD_TIMEOUT_SECONDS, Reports, run_child

START_METHODS = ["spawn", "forkserver", "fork"]

# Python 3.12+ warns when forking a multi-threaded process; these tests fork on purpose.
allow_fork = pytest.mark.filterwarnings(
    "ignore:This process .* is multi-threaded:DeprecationWarning"
)


def unique(prefix: str) -> str:
    """A namespace name no other test (of this session-wide server) uses."""
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def context_for(method: str) -> Any:
    if method not in multiprocessing.get_all_start_methods():
        pytest.skip(f"start method {method!r} is not available here")
    return multiprocessing.get_context(method)


@pytest.fixture
def spawn() -> Any:
    return multiprocessing.get_context("spawn")


@pytest.fixture
def spawn_reports(spawn: Any) -> Iterator[Reports]:
    reports = Reports(spawn)
    yield reports
    reports.close()


# ---------------------------------------------------------------------- children


def swap_through_queues(inbox: Any, outbox: Any, address: Address, authkey: bytes) -> None:
    """Get a proxy from a queue, use it, and send back a proxy made here."""
    ns = inbox.get(timeout=CHILD_TIMEOUT_SECONDS)
    ns.child_saw = ns.greeting
    manager = Manager(address, authkey)
    manager.connect()
    outbox.put(manager.Namespace(reply=f"hello from {os.getpid()}"))


def read_and_mark(ns: Namespace, method: str, report: Any) -> None:
    report.put((os.getpid(), ns.value))
    ns.seen_by = method


def use_inherited_proxy(ns: Namespace) -> None:
    """A forked child: use the proxy whose connection the parent opened, then leave cleanly."""
    assert ns.value == 1
    ns.value = 2
    ns._close()
    gc.collect()  # inherited connections are collected now: they must not hurt the parent's


def get_on_a_connection_of_its_own(ns: Namespace) -> None:
    """A forked child: a get on an inherited proxy goes over a connection this process opened
    (the proxy keeps the pool's per-thread slot, which held the parent's connection)."""
    assert ns.value == 1
    assert ns._aionamespace.local.transport.pid == os.getpid()


def open_board(address: Address, authkey: bytes, name: str, report: Any) -> None:
    board = aionamespace.Namespace(address, name, authkey=authkey)
    report.put(("a", board.a))
    board.b = "from child"
    manager = Manager(address, authkey)
    manager.connect()
    defaults = manager.Namespace(name, a=100, c=3)  # only fills names the board lacks
    report.put(("after defaults", defaults._snapshot()))


_WORKER: dict[str, Namespace] = {}


def init_worker(ns: Namespace) -> None:
    _WORKER["ns"] = ns


def increment(index: int) -> tuple[int, str, int]:
    ns = _WORKER["ns"]
    name = f"n{index}"
    setattr(ns, name, getattr(ns, name) + 1)
    return getattr(ns, name), ns.shared_text, os.getpid()


async def read_async(ns: AsyncNamespace) -> Any:
    async with ns:
        value = await ns.value
        ns.async_child = "was here"
        await ns._flush()
    return value


def read_async_in_child(ns: AsyncNamespace, report: Any) -> None:
    report.put(asyncio.run(read_async(ns)))


# ---------------------------------------------------------------------- tests


def test_proxies_travel_through_queues(manager: Manager, spawn: Any) -> None:
    """A proxy put on a queue works in the child; one made in the child works in the parent."""
    ns = manager.Namespace(greeting="hi")
    inbox, outbox = Reports(spawn), Reports(spawn)
    try:
        process = spawn.Process(
            target=swap_through_queues,
            args=(inbox.queue, outbox.queue, manager.address, manager.authkey),
        )
        process.start()
        inbox.queue.put(ns)
        reply = outbox.get(process)
        process.join(CHILD_TIMEOUT_SECONDS)
        assert process.exitcode == 0
        process.close()
    finally:
        inbox.close()
        outbox.close()
    assert ns.child_saw == "hi"
    assert isinstance(reply, Namespace)
    assert reply.reply.startswith("hello from ")
    assert reply.reply != f"hello from {os.getpid()}"


def test_pool_initializer_shares_a_proxy(manager: Manager, spawn: Any) -> None:
    """Spawned pool workers keep the proxy from the initializer and update distinct names."""
    tasks = 8
    ns = manager.Namespace(shared_text="hi", **{f"n{i}": 10 * i for i in range(tasks)})
    with spawn.Pool(2, initializer=init_worker, initargs=(ns,)) as pool:
        results = pool.map(increment, range(tasks))
        pool.close()
        pool.join()
    assert [(value, text) for value, text, _ in results] == [
        (10 * i + 1, "hi") for i in range(tasks)
    ]
    assert os.getpid() not in {pid for _, _, pid in results}
    assert ns._snapshot() == {"shared_text": "hi", **{f"n{i}": 10 * i + 1 for i in range(tasks)}}


@allow_fork
@pytest.mark.parametrize("method", START_METHODS)
def test_every_start_method(manager: Manager, method: str) -> None:
    context = context_for(method)
    ns = manager.Namespace(value=method)
    reports = Reports(context)
    try:
        assert run_child(context, read_and_mark, ns, method, reports.queue) == 0
        child_pid, value = reports.get()
    finally:
        reports.close()
    assert child_pid != os.getpid()
    assert value == method
    assert ns.seen_by == method


@allow_fork
def test_fork_after_the_parent_used_its_proxy(manager: Manager) -> None:
    """The child gets its own connection; the parent's, opened before the fork, still works."""
    fork = context_for("fork")
    ns = manager.Namespace(value=1)
    assert ns.value == 1  # the parent's connection is open when the child is forked
    assert run_child(fork, use_inherited_proxy, ns) == 0
    # The very next call on the parent's connection succeeds: the child did not shut it down.
    assert ns.value == 2
    ns.value = 3
    assert ns.value == 3
    assert run_child(fork, use_inherited_proxy, manager.Namespace(value=1)) == 0
    assert ns.value == 3


@allow_fork
def test_a_forked_child_gets_on_its_own_connection(manager: Manager) -> None:
    fork = context_for("fork")
    ns = manager.Namespace(value=1)
    assert ns.value == 1  # this thread's connection is in the slot the proxy keeps
    assert run_child(fork, get_on_a_connection_of_its_own, ns) == 0
    assert ns.value == 1


def test_threads_share_one_sync_proxy(manager: Manager) -> None:
    threads, rounds = 8, 200
    ns = manager.Namespace()
    start = threading.Barrier(threads)

    def work(thread: int) -> list[tuple[str, Any]]:
        start.wait(timeout=CHILD_TIMEOUT_SECONDS)
        wrong = []
        for i in range(rounds):
            name = f"t{thread}_{i}"
            setattr(ns, name, (thread, i))
            value = getattr(ns, name)
            if value != (thread, i):
                wrong.append((name, value))
        return wrong

    with ThreadPoolExecutor(threads) as pool:
        results = list(pool.map(work, range(threads)))
    assert results == [[] for _ in range(threads)]
    assert ns._snapshot() == {
        f"t{thread}_{i}": (thread, i) for thread in range(threads) for i in range(rounds)
    }


def test_named_namespace_from_a_child(manager: Manager, spawn: Any, spawn_reports: Reports) -> None:
    name = unique("board")
    board = manager.Namespace(name, a=1)
    assert (
        run_child(spawn, open_board, manager.address, manager.authkey, name, spawn_reports.queue)
        == 0
    )
    assert spawn_reports.get() == ("a", 1)
    assert spawn_reports.get() == ("after defaults", {"a": 1, "b": "from child", "c": 3})
    assert board._snapshot() == {"a": 1, "b": "from child", "c": 3}


def test_initial_values_only_fill_missing_names(manager: Manager) -> None:
    name = unique("defaults")
    first = manager.Namespace(name, a=1)
    first.b = 2
    second = manager.Namespace(name, a=100, b=200, c=3)
    assert second._snapshot() == {"a": 1, "b": 2, "c": 3}
    assert first.c == 3
    assert manager.Namespace(name)._snapshot() == {"a": 1, "b": 2, "c": 3}


def test_async_proxy_in_a_spawned_child(
    manager: Manager, spawn: Any, spawn_reports: Reports
) -> None:
    name = unique("async")
    ns = manager.Namespace(name, value={"nested": (1, 2)})
    async_ns = manager.AsyncNamespace(name)
    assert run_child(spawn, read_async_in_child, async_ns, spawn_reports.queue) == 0
    assert spawn_reports.get() == {"nested": (1, 2)}
    assert ns.async_child == "was here"
