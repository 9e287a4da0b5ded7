"""compare.py's row of many concurrent connections: 8 spawned processes, 125 connections each.

Each contender is written the way a demanding user would write it:

* aionamespace: in each process one event loop (uvloop when installed, else asyncio's) and 125
  ``AsyncNamespace`` proxies, each with its own connection, each read in a loop by a task of
  its own (``await ns.x``);
* the stdlib: in each process 125 threads, each with its own connection (a ``SyncManager``
  proxy opens one per thread), each reading ``ns.x`` in a loop; the server runs a thread per
  connection.

Both are opened before the rounds and kept open, so no connection is made while measuring.
Every connection starts at a common start; a sample counts the gets every connection completed
between a common start plus a lead-in and a common end (a get that ends outside is not
counted), summed over the processes: aggregate ops/s.
Issue 17's target: at least 2x the stdlib.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import multiprocessing.connection
import queue
import signal
import threading
import time
from typing import Any

import aionamespace
from spawned import Spawned
from yardstick_rows import fastest_loop

__all__ = ["Crowd", "make_rows", "setup"]

TARGET = 2.0
START_MARGIN = 0.15  # seconds between telling the processes and their common start
#: Seconds from the common start before gets are counted: 1,000 connections that start at
#: once take a while to settle (the stdlib's server most: a thread each wakes).
LEAD_IN = 0.25
START_TIMEOUT = 120.0
CONNECT_AT_ONCE = 25  # connections a process opens concurrently


def make_rows(settings: Any, Row: Any, Target: Any) -> dict[str, Any]:
    total = settings.crowd_processes * settings.crowd_connections
    row = Row(
        "connections_get",
        f"{total:,} connections from {settings.crowd_processes} processes, aggregate get",
        "ops/s",
        (Target(f">= {TARGET:g}x stdlib", "stdlib", TARGET),),
    )
    row.missing["redis"] = "-"
    return {row.key: row}


def setup(bench: Any, namespace: str, theirs: Any) -> None:
    """Spawn the processes (each opens its connections to both servers) and give the row its
    samplers: the gets read ``x`` of the Manager's ``namespace`` and of ``theirs`` (a proxy of
    the SyncManager's namespace)."""
    s, row = bench.settings, bench.rows["connections_get"]
    row.slices = 1  # each slice pays a lead-in: one per round
    row.slice_seconds = s.process_seconds
    print(
        f"  spawning {s.crowd_processes} processes of {s.crowd_connections} connections ...",
        flush=True,
    )
    manager = bench.manager
    crowd = Crowd(
        s.crowd_processes,
        s.crowd_connections,
        (manager.address, manager.authkey),
        namespace,
        theirs,
    )
    bench.stack.callback(crowd.close)
    for who in ("aionamespace", "stdlib"):
        row.samplers[who] = lambda seconds, who=who: crowd.sample(who, seconds)
    row.notes.append(
        f"aionamespace: per process, {s.crowd_connections} AsyncNamespace proxies, each its own "
        f"connection and task, on {crowd.loop_name}; server: the Manager's (asyncio, "
        f"busy-polling). stdlib: per process, {s.crowd_connections} threads, each its own "
        "connection; the SyncManager's server runs a thread per connection"
    )


class Crowd(Spawned):
    """``processes`` spawned processes, each holding ``connections`` connections per contender
    (``server``: the Manager's address and authkey)."""

    def __init__(
        self,
        processes: int,
        connections: int,
        server: tuple[Any, bytes | None],
        namespace: str,
        theirs: Any,
    ) -> None:
        address, authkey = server
        arguments = (connections, address, authkey, namespace, theirs)
        super().__init__(processes, _process, arguments, "a crowd process")
        try:
            names = {self.value(conn, START_TIMEOUT) for conn in self.conns}
            self.loop_name = ", ".join(sorted(names))
        except BaseException:
            self.close()
            raise

    def sample(self, who: str, seconds: float) -> tuple[float, float]:
        """Every connection of every process gets from ``who`` during the same ``seconds``."""
        start_at = time.monotonic() + START_MARGIN
        count_at = start_at + LEAD_IN
        for conn in self.conns:
            conn.send((who, start_at, count_at, count_at + seconds))
        counts = [self.value(conn, seconds + 60) for conn in self.conns]
        return float(sum(counts)), seconds


# ---------------------------------------------------------------------------------- in a process


def _process(
    conn: multiprocessing.connection.Connection,
    connections: int,
    address: Any,
    authkey: bytes | None,
    key: str,
    theirs: Any,
) -> None:
    """A spawned process: opens its connections, then runs each command it is sent."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C and stops us
    loop, loop_name = fastest_loop()
    threads: list[threading.Thread] = []
    inboxes: list[queue.SimpleQueue[list[float] | None]] = []
    counts: queue.SimpleQueue[int | BaseException] = queue.SimpleQueue()
    proxies: list[aionamespace.AsyncNamespace] = []
    try:
        proxies = [
            aionamespace.AsyncNamespace(address, key, authkey=authkey) for _ in range(connections)
        ]
        loop.run_until_complete(_connect(proxies))
        for _ in range(connections):
            inbox: queue.SimpleQueue[list[float] | None] = queue.SimpleQueue()
            thread = threading.Thread(target=_stdlib_thread, args=(theirs, inbox, counts))
            thread.start()
            threads.append(thread)
            inboxes.append(inbox)
        _gather_counts(counts, connections)  # each thread has connected
        conn.send(("ready", loop_name))
        while (command := _command(conn)) is not None:
            who, *window = command
            if who == "aionamespace":
                done = loop.run_until_complete(_async_gets(proxies, *window))
            else:
                for inbox in inboxes:
                    inbox.put(window)
                done = _gather_counts(counts, connections)
            conn.send(("done", done))
    except Exception as exc:
        with contextlib.suppress(OSError):
            conn.send(("error", f"{type(exc).__name__}: {exc!r}"))
    finally:
        for inbox in inboxes:
            inbox.put(None)
        for thread in threads:
            thread.join(10)
        for proxy in proxies:
            with contextlib.suppress(Exception):
                loop.run_until_complete(proxy._close())
        loop.close()


def _command(conn: multiprocessing.connection.Connection) -> tuple[Any, ...] | None:
    """The parent's next command (who, start, count from, end); None: stop (or it is gone)."""
    try:
        command: tuple[Any, ...] | None = conn.recv()
    except EOFError:
        return None
    return command


async def _connect(proxies: list[aionamespace.AsyncNamespace]) -> None:
    """Each proxy's connection, ``CONNECT_AT_ONCE`` at a time (the server bounds handshakes)."""
    values = []
    for first in range(0, len(proxies), CONNECT_AT_ONCE):
        batch = proxies[first : first + CONNECT_AT_ONCE]
        values += await asyncio.gather(*(proxy.x for proxy in batch))
    if len(set(values)) != 1:
        raise RuntimeError(f"the proxies read different values: {set(values)}")


async def _async_gets(
    proxies: list[aionamespace.AsyncNamespace], start: float, count_from: float, end: float
) -> int:
    async def reader(ns: aionamespace.AsyncNamespace) -> int:
        await asyncio.sleep(max(0.0, start - time.monotonic()))  # the common start
        done = 0
        while True:
            await ns.x
            now = time.monotonic()
            if now >= end:
                return done
            done += now >= count_from

    return sum(await asyncio.gather(*(reader(ns) for ns in proxies)))


def _stdlib_thread(
    ns: Any,
    inbox: queue.SimpleQueue[list[float] | None],
    counts: queue.SimpleQueue[int | BaseException],
) -> None:
    try:
        _ = ns.x  # this thread's connection, opened now
        counts.put(0)
        while (command := inbox.get()) is not None:
            start, count_from, end = command
            time.sleep(max(0.0, start - time.monotonic()))  # the common start
            done = 0
            while True:
                _ = ns.x
                now = time.monotonic()
                if now >= end:
                    break
                done += now >= count_from
            counts.put(done)
    except BaseException as exc:
        counts.put(exc)


def _gather_counts(counts: queue.SimpleQueue[int | BaseException], expected: int) -> int:
    total = 0
    for _ in range(expected):
        count = counts.get(timeout=START_TIMEOUT)
        if isinstance(count, BaseException):
            raise RuntimeError(f"a stdlib thread failed: {count!r}")
        total += count
    return total
