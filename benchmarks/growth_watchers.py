"""growth.py's watchers: spawned processes that watch one name, and say when they saw a write.

Each process opens, when asked, its share of the watchers (``AsyncNamespace._watch``: each its
own connection) on a fresh asyncio loop, says it is ready, and then reports, for every value
written, the moment its last watcher had it (``time.monotonic()``: one clock for every process
of the machine). The parent writes one value at a time and waits for every report, so a write
never overlaps the next: the time measured is one write's, from its start until the last
watcher of all the processes has it.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import multiprocessing.connection
import signal
import time
from typing import Any

import aionamespace
from spawned import Spawned

__all__ = ["Watchers"]

START_TIMEOUT = 120.0
SEEN_TIMEOUT = 60.0
CONNECT_AT_ONCE = 50  # watchers a process connects concurrently (the server bounds handshakes)


class Watchers(Spawned):
    """``processes`` spawned processes watching ``name`` ``x`` of namespace ``key`` at ``path``."""

    def __init__(self, processes: int, path: str, key: str) -> None:
        super().__init__(processes, _process, (path, key), "a watcher process")
        try:
            for conn in self.conns:
                self._receive(conn, "started", START_TIMEOUT)
        except BaseException:
            self.close()
            raise

    def _receive(
        self, conn: multiprocessing.connection.Connection, kind: str, timeout: float
    ) -> Any:
        got, *values = self.message(conn, timeout, repr(kind))
        if got != kind:
            raise RuntimeError(f"a watcher process sent {got!r} {values}, not {kind!r}")
        return values

    def measure(self, count: int, writes: int, ns: Any) -> list[float]:
        """``count`` watchers, spread over the processes; ``writes`` writes to ``ns.x`` (a sync
        proxy), one at a time; each write's time until the last watcher had it, in seconds."""
        processes = len(self.conns)
        shares = [count // processes + (i < count % processes) for i in range(processes)]
        active = [conn for conn, share in zip(self.conns, shares, strict=True) if share]
        for conn, share in zip(self.conns, shares, strict=True):
            if share:
                conn.send((share, writes))
        for conn in active:
            self._receive(conn, "ready", START_TIMEOUT)
        times = []
        for value in range(1, writes + 1):
            start = time.monotonic()
            ns.x = value
            last = 0.0
            for conn in active:
                seen, at = self._receive(conn, "seen", SEEN_TIMEOUT)
                if seen != value:
                    raise RuntimeError(f"a watcher process saw {seen!r}, not {value}")
                last = max(last, at)
            times.append(last - start)
        for conn in active:
            self._receive(conn, "closed", START_TIMEOUT)
        return times


# ---------------------------------------------------------------------------------- in a process


def _process(conn: multiprocessing.connection.Connection, path: str, key: str) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C and stops us
    try:
        conn.send(("started",))
        while (command := conn.recv()) is not None:
            count, writes = command
            asyncio.run(_watch(conn, path, key, count, writes))
            conn.send(("closed",))
    except EOFError:
        pass
    except Exception as exc:
        with contextlib.suppress(OSError):
            conn.send(("error", f"{type(exc).__name__}: {exc}"))


async def _watch(
    conn: multiprocessing.connection.Connection, path: str, key: str, count: int, writes: int
) -> None:
    """``count`` watchers of ``x``, until each has seen the value ``writes``."""
    seen: dict[Any, list[Any]] = {}  # value -> [watchers that have it, the last one's time]

    async def follow(watch: Any) -> None:
        async for event in watch:
            now = time.monotonic()
            entry = seen.setdefault(event.value, [0, 0.0])
            entry[0] += 1
            entry[1] = max(entry[1], now)
            if entry[0] == count:
                conn.send(("seen", event.value, entry[1]))
            if event.value == writes:
                return

    async with contextlib.AsyncExitStack() as stack:
        watches: list[Any] = []
        for first in range(0, count, CONNECT_AT_ONCE):
            batch = range(first, min(count, first + CONNECT_AT_ONCE))
            watches += await asyncio.gather(
                *(
                    stack.enter_async_context(aionamespace.AsyncNamespace(path, key)._watch("x"))
                    for _ in batch
                )
            )
        conn.send(("ready",))
        await asyncio.gather(*(follow(watch) for watch in watches))
