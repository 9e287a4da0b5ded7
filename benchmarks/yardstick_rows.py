"""compare.py's rows whose yardstick is another measurement of the same run, not a server.

* **async get, 64 tasks, trio**: 64 tasks sharing one ``AsyncNamespace`` on trio (an anyio
  blocking portal: trio runs in a thread of this process, the caller waits), against the same
  in-memory server as the asyncio row. Its second contender is that row's own aionamespace
  sampler, run in the same slices, so the ratio is paired round by round (issue 17: >= 0.5x).
* **cached read against its floor**: the cached proxy's read of an unchanged attribute against
  the least a Python attribute read can cost when it is answered by ``__getattribute__`` from a
  dict (cached_read.py's ``DictFloor``), measured by the same loop (issue 17: >= 0.5x it).

``fastest_loop()`` is the client loop of the asyncio async rows: uvloop when it is importable
(the ``uvloop`` extra), else asyncio's own; the rows' notes name it.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import time
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import anyio.from_thread

from cached_read import DictFloor  # the floor cached_read.py measures the cache against

__all__ = ["PortalRepeat", "fastest_loop", "finish", "make_rows", "setup"]

#: The contenders of these rows that are not servers (Row.ratio pairs them like any other).
ASYNCIO, FLOOR = "asyncio row", "floor"
TRIO_TARGET, FLOOR_TARGET = 0.5, 0.5


def fastest_loop() -> tuple[asyncio.AbstractEventLoop, str]:
    """A new event loop for async clients, and its name: uvloop's when it is installed."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop(), "asyncio"
    return uvloop.new_event_loop(), f"uvloop {uvloop.__version__}"


class PortalRepeat:
    """compare.py's ``AsyncRepeat`` on the loop of an anyio blocking portal (trio here)."""

    def __init__(
        self,
        portal: anyio.from_thread.BlockingPortal,
        op: Callable[[], Awaitable[object]],
        tasks: int,
        awaits_per_clock: int,
    ) -> None:
        self.portal, self.op, self.tasks = portal, op, tasks
        self.awaits_per_clock = awaits_per_clock

    def __call__(self, seconds: float) -> tuple[float, float]:
        return self.portal.call(self._sample, seconds)

    async def _sample(self, seconds: float) -> tuple[float, float]:
        op, every, done = self.op, self.awaits_per_clock, 0
        start = time.perf_counter()
        deadline = start + seconds

        async def task() -> None:
            nonlocal done
            count = 0
            while time.perf_counter() < deadline:
                for _ in range(every):
                    await op()
                count += every
            done += count

        async with anyio.create_task_group() as group:
            for _ in range(self.tasks):
                group.start_soon(task)
        return done, time.perf_counter() - start


def make_rows(settings: Any, Row: Any, Target: Any) -> dict[str, Any]:
    rows = [
        Row(
            "async_get_trio",
            f"async get, {settings.tasks} tasks, trio",
            "ops/s",
            (Target(f">= {TRIO_TARGET}x the asyncio row", ASYNCIO, TRIO_TARGET),),
        ),
        Row(
            "cached_floor",
            "cached read against its floor",
            "ops/s",
            (Target(f">= {FLOOR_TARGET}x a dict floor", FLOOR, FLOOR_TARGET),),
        ),
    ]
    for row in rows:
        row.missing["stdlib"] = row.missing["redis"] = "-"
    return {row.key: row for row in rows}


def setup(bench: Any, namespace: str, Repeat: Any, gets: Any, awaits_per_clock: int) -> None:
    """Give the rows their samplers: a trio portal with its own proxy of the in-memory
    server, the asyncio row's sampler, the cached proxy and a floor holding the same value."""
    rows, s, stack = bench.rows, bench.settings, bench.stack
    trio_row, floor_row = rows["async_get_trio"], rows["cached_floor"]
    try:
        portal = stack.enter_context(anyio.from_thread.start_blocking_portal("trio"))
    except (ImportError, LookupError) as exc:  # trio is the ``trio`` extra
        trio_row.missing["aionamespace"] = "n/a (no trio)"
        trio_row.notes.append(f"trio cannot run: {exc}")
    else:
        ours = bench.manager.AsyncNamespace(namespace)
        stack.callback(lambda: portal.call(ours._close))
        trio_row.samplers["aionamespace"] = PortalRepeat(
            portal, lambda: ours.x, s.tasks, awaits_per_clock
        )
        trio_row.samplers[ASYNCIO] = rows["async_get"].samplers["aionamespace"]
        trio = importlib.metadata.version("trio")
        trio_row.notes.append(
            f"client: trio {trio} in a thread (anyio blocking portal), "
            f"{s.tasks} tasks on one AsyncNamespace; server: the Manager's, asyncio busy-polling; "
            f"yardstick: the asyncio row's sampler (client on {bench.client_loop_name}), "
            "in the same slices"
        )

    if bench.cached is None:
        floor_row.missing["aionamespace"] = "n/a (no cache)"
        return
    floor = DictFloor({"c": bench.cached.c})
    assert floor.c == bench.cached.c
    floor_row.samplers["aionamespace"] = Repeat(gets(bench.cached, "c"))
    floor_row.samplers[FLOOR] = Repeat(gets(floor, "c"))
    floor_row.notes.append(
        "aionamespace: the cached proxy's read (as the cached row); floor: a class whose "
        "__getattribute__ is object.__getattribute__(self, '_values')[name], by the same loop"
    )


def finish(rows: dict[str, Any]) -> None:
    """After the rounds: the yardsticks' own figures, which the table has no column for."""
    for key, who in (("async_get_trio", ASYNCIO), ("cached_floor", FLOOR)):
        row = rows[key]
        figure, ratio = row.figure(who), row.ratio(who)
        if figure is None or ratio is None:
            continue
        row.extra[who] = figure
        row.notes.append(
            f"{who}: {figure:,.0f} {row.unit} in the same slices; {ratio:.2f}x it "
            "(median of the rounds' paired ratios)"
        )
