"""The client cache: local reads, invalidated by the server; read-your-writes; copies."""

from __future__ import annotations

import multiprocessing
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import anyio
import pytest

from aionamespace import AsyncNamespace, ConnectionLost, Namespace, ServerThread
from aionamespace.client.tracking import CACHES
from awaited_store import over_every_store
from deadlines import wait_until
from server_processes import ServeProcess

DEADLINE_SECONDS = 5.0
READER_THREADS = 2
WRITES = 2_000
SWITCH_SECONDS = 0.0002


def eventually(read: Callable[[], Any], expected: Any) -> None:
    """Cached reads converge: the invalidation is on its way (no sleep: each try is a read)."""
    deadline = time.monotonic() + DEADLINE_SECONDS
    while read() != expected:
        assert time.monotonic() < deadline, f"the cache still shows {read()!r}"


@over_every_store
def test_cached_reads_see_other_writers(server: ServerThread) -> None:
    writer = Namespace(server.address, "board")
    reader = Namespace(server.address, "board", cache=True)
    writer.x = 1
    assert reader.x == 1
    cache = CACHES.existing(reader._aionamespace.target)
    assert cache is not None
    assert cache.table.namespace("board")["x"] == 1  # served locally from now on
    for value in range(2, 50):
        writer.x = value
        eventually(lambda: reader.x, value)
    del writer.x
    eventually(lambda: hasattr(reader, "x"), False)


@over_every_store
def test_missing_names_are_cached_until_set(server: ServerThread) -> None:
    writer = Namespace(server.address, "missing")
    reader = Namespace(server.address, "missing", cache=True)
    with pytest.raises(AttributeError, match="'ghost'"):
        _ = reader.ghost
    writer.ghost = "here"
    eventually(lambda: getattr(reader, "ghost", None), "here")


@over_every_store
def test_read_your_writes(server: ServerThread) -> None:
    ns = Namespace(server.address, "own", cache=True)
    for value in range(100):
        ns.x = value
        assert ns.x == value  # never the cached previous value
        ns._incr("n")
        assert ns.n == value + 1


def test_read_your_writes_while_other_threads_read(
    socket_path: str, cli_servers: list[ServeProcess]
) -> None:
    """A write acknowledged to a thread is seen by that thread's next read, even while other
    threads of the process read the same name through the shared cache connection: a read sent
    before the write reached the server must not leave the old value behind once the write is
    acknowledged (issue 12, item 10: 24-319 stale reads of 5,000-20,000 before the fix)."""
    cli_servers.append(ServeProcess(socket_path))
    writer = Namespace(socket_path, "ryw", cache=True)
    reader = Namespace(socket_path, "ryw", cache=True)
    writer.x = -1
    done = threading.Event()
    reads = [0] * READER_THREADS

    def read(index: int) -> None:
        while not done.is_set():
            _ = reader.x
            reads[index] += 1

    threads = [
        threading.Thread(target=read, args=(index,), name=f"cached reader {index}")
        for index in range(READER_THREADS)
    ]
    switch_interval = sys.getswitchinterval()
    sys.setswitchinterval(SWITCH_SECONDS)  # the writer waits less for the GIL: a faster test
    for thread in threads:
        thread.start()
    stale = []
    try:
        for value in range(WRITES):
            writer.x = value
            seen = writer.x
            if seen != value:
                stale.append((value, seen))
    finally:
        done.set()
        for thread in threads:
            thread.join(DEADLINE_SECONDS)
        sys.setswitchinterval(switch_interval)
    assert not any(thread.is_alive() for thread in threads)
    assert all(reads)  # every reader really read meanwhile
    assert stale == [], f"{len(stale)} stale reads of {WRITES:,}, e.g. {stale[:5]}"


@over_every_store
def test_mutable_values_are_copies(server: ServerThread) -> None:
    ns = Namespace(server.address, "copies", cache=True)
    ns.log = [1]
    first = ns.log
    first.append(2)
    assert ns.log == [1]
    assert ns.log is not ns.log


def test_a_lost_connection_empties_the_cache(short_tmp: str) -> None:
    address = f"{short_tmp}/c.sock"
    with ServerThread(address) as running:
        ns = Namespace(running.address, "gone", cache=True)
        ns.x = 1
        assert ns.x == 1
        cache = ns._aionamespace.cache
    # The reader thread learns of the end from the server's goodbye; until it has (a loaded
    # machine may not run it within the server's farewell), a read is served as cached.
    wait_until(lambda: cache is not None and not cache.usable, "the cache sees the end")
    with pytest.raises(ConnectionLost):
        _ = ns.x  # not a stale cached 1
    cache = CACHES.existing(ns._aionamespace.target)
    assert cache is None


def _child_reads(ns: Namespace, queue: Any) -> None:
    queue.put(ns.x)


def _child_reads_once_told(ns: Namespace, told: Any, queue: Any) -> None:
    told.wait(10)
    queue.put(ns.x)


def test_a_forked_child_never_reads_what_the_parent_cached(server: ServerThread) -> None:
    """A forked child's proxy holds a copy of its namespace's dict, which no reader thread
    keeps current there: it must be empty in the child, whatever changes after the fork."""
    writer = Namespace(server.address, "forked-later")
    reader = Namespace(server.address, "forked-later", cache=True)
    writer.x = "before"
    assert reader.x == "before"  # cached, in the dict the proxy holds
    context = multiprocessing.get_context("fork")
    queue, told = context.Queue(), context.Event()
    child = context.Process(target=_child_reads_once_told, args=(reader, told, queue))
    child.start()
    writer.x = "after"  # invalidates the parent's cache, not the child's copy of it
    told.set()
    assert queue.get(timeout=10) == "after"
    child.join(timeout=10)
    assert child.exitcode == 0
    queue.close()
    queue.join_thread()


def test_reads_are_cached_again_after_an_invalidation(server: ServerThread) -> None:
    """An invalidation that empties the namespace's dict lets it go (``CacheTable``); the next
    read through the server points the proxy at the dict its reply filled, so the reads after
    it are served locally again."""
    writer = Namespace(server.address, "again")
    reader = Namespace(server.address, "again", cache=True)
    writer.x = 1
    assert reader.x == 1
    writer.x = 2
    eventually(lambda: reader.x, 2)
    cache = CACHES.existing(reader._aionamespace.target)
    assert cache is not None
    assert reader._aionamespace.values is cache.table.namespace("again")
    assert reader._aionamespace.values == {"x": 2}


def test_a_forked_child_reads_through_its_own_cache(server: ServerThread) -> None:
    writer = Namespace(server.address, "forked")
    reader = Namespace(server.address, "forked", cache=True)
    writer.x = "before"
    assert reader.x == "before"
    writer.x = "after"
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    child = context.Process(target=_child_reads, args=(reader, queue))
    child.start()
    assert queue.get(timeout=10) == "after"  # the child never trusts the parent's cache
    child.join(timeout=10)
    assert child.exitcode == 0
    queue.close()
    queue.join_thread()


@over_every_store
@pytest.mark.anyio
async def test_async_cache_inside_async_with(server: ServerThread) -> None:
    writer = Namespace(server.address, "acache")
    writer.x = 1
    async with AsyncNamespace(server.address, "acache", cache=True) as ns:
        assert await ns.x == 1
        assert ns._aionamespace.table.cache is not None
        with anyio.fail_after(DEADLINE_SECONDS):
            for value in range(2, 30):
                writer.x = value
                while await ns.x != value:
                    await anyio.lowlevel.checkpoint()
        ns.x = "mine"
        assert await ns.x == "mine"  # read-your-writes, before any acknowledgement
        ns.log = [1]
        first = await ns.log
        first.append(2)
        assert await ns.log == [1]


@over_every_store
@pytest.mark.anyio
async def test_async_cache_outside_async_with_reads_through(server: ServerThread) -> None:
    writer = Namespace(server.address, "through")
    writer.x = 1
    ns = AsyncNamespace(server.address, "through", cache=True)
    assert await ns.x == 1
    writer.x = 2
    assert await ns.x == 2  # nobody keeps the cache current here: every read asks the server
    await ns._close()
