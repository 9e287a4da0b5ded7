"""compare.py's Redis-store rows: an aionamespace server over Redis against redis-py direct.

The server (store_server.py: ``Server(store=RedisStore(...))``, asyncio with the busy-polling
loop a Manager's server runs) is a process of its own on a Unix socket, over the run's Redis
(a Unix socket, no persistence); the other contender is redis-py talking to that same Redis.
These rows join every run in which Redis is measured, so that their figures always sit beside
the in-memory server's of the same run (the cached read is compared with that one).

Targets (issue 16): a sync get at least 0.5x a direct GET (one more hop: the client's request
goes to the server, which asks Redis); 64 tasks on one async proxy at least 2x 64 tasks on one
``redis.asyncio`` client (the server pipelines their calls into batches); ``_snapshot`` and
``_update`` of 100 names at least MGET and MSET; a cached read as fast as the in-memory
server's (it never leaves the client).
"""

from __future__ import annotations

import os
import statistics
import sys
from typing import Any

import aionamespace

__all__ = ["finish", "make_rows", "setup"]

SERVER_SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "store_server.py")
#: The cached read's target: its paired ratio to the in-memory server's cached read (noise
#: on this shared machine moves a ratio of two equal things by a few percent).
CACHED_FLOOR = 0.9


def make_rows(settings: Any, Row: Any, Target: Any) -> dict[str, Any]:
    n, tasks = settings.names, settings.tasks
    rows = [
        Row(
            "store_sync_get",
            "over Redis: sync get, one client",
            "ops/s",
            (Target(">= 0.5x redis GET", "redis", 0.5),),
        ),
        Row(
            "store_async_get",
            f"over Redis: async get, {tasks} tasks",
            "ops/s",
            (Target(">= 2x redis.asyncio", "redis", 2),),
        ),
        Row(
            "store_snapshot",
            f"over Redis: _snapshot of {n} names",
            "names/s",
            (Target(">= 1x MGET", "redis", 1),),
        ),
        Row(
            "store_update",
            f"over Redis: _update of {n} names",
            "names/s",
            (Target(">= 1x MSET", "redis", 1),),
        ),
        Row("store_cached_get", "over Redis: cached read, unchanged", "ops/s", ()),
    ]
    return {row.key: row for row in rows}


def setup(bench: Any, helpers: Any) -> None:
    """Start the server over the run's Redis and give the rows their samplers (``helpers``:
    compare.py's child_process, wait_for_line, server_environment, Repeat, AsyncRepeat,
    gets and repeat)."""
    rows = {key: row for key, row in bench.rows.items() if key.startswith("store_")}
    for row in rows.values():
        row.missing["stdlib"] = "-"
    if bench.redis_path is None:
        for row in rows.values():
            row.missing["aionamespace"] = row.missing["redis"] = "n/a (no Redis)"
        return
    import redis
    import redis.asyncio

    s, stack, h = bench.settings, bench.stack, helpers
    address = os.path.join(bench.directory, "over-redis.sock")
    command = [sys.executable, SERVER_SCRIPT, "--unix", address]
    command += ["--store", f"unix://{bench.redis_path}", "--prefix", "bench-store"]
    process = stack.enter_context(h.child_process(command, h.server_environment()))
    h.wait_for_line(process, b"serving on")

    ours = aionamespace.Namespace(address, "bench")
    stack.callback(ours._close)
    ours.x, ours.c = 1, 1
    ours._update(**bench.values)
    aours = aionamespace.AsyncNamespace(address, "bench")
    stack.callback(lambda: bench.loop.run_until_complete(aours._close()))
    cached = aionamespace.Namespace(address, "bench", cache=True)
    stack.callback(cached._close)
    names = list(bench.values)
    assert dict(ours._snapshot(*names)) == bench.values
    assert cached.c == 1

    direct = redis.Redis(unix_socket_path=bench.redis_path)
    stack.callback(direct.close)
    adirect = redis.asyncio.Redis(unix_socket_path=bench.redis_path)
    stack.callback(lambda: bench.loop.run_until_complete(adirect.aclose()))
    direct.mset({"x": 1, **bench.values})

    samplers = {
        "store_sync_get": (
            h.Repeat(h.gets(ours, "x")),
            h.Repeat(h.repeat(lambda: direct.get("x"))),
        ),
        "store_async_get": (
            h.AsyncRepeat(bench.loop, lambda: aours.x, s.tasks),
            h.AsyncRepeat(bench.loop, lambda: adirect.get("x"), s.tasks),
        ),
        "store_snapshot": (
            h.Repeat(h.repeat(lambda: ours._snapshot(*names)), s.names),
            h.Repeat(h.repeat(lambda: direct.mget(names)), s.names),
        ),
        "store_update": (
            h.Repeat(h.repeat(lambda: ours._update(**bench.values)), s.names),
            h.Repeat(h.repeat(lambda: direct.mset(bench.values)), s.names),
        ),
    }
    for key, (mine, theirs) in samplers.items():
        rows[key].samplers["aionamespace"] = mine
        rows[key].samplers["redis"] = theirs
    rows["store_cached_get"].samplers["aionamespace"] = h.Repeat(h.gets(cached, "c"))
    rows["store_cached_get"].missing["redis"] = "-"

    rows["store_sync_get"].notes.append(
        "aionamespace: a proxy -> a server process over Redis (store_server.py) -> Redis; "
        "redis: redis-py GET on the same Redis (a Unix socket, no persistence)"
    )
    rows["store_async_get"].notes.append(
        f"{s.tasks} tasks on one AsyncNamespace; redis: {s.tasks} tasks on one redis.asyncio client"
    )
    rows["store_snapshot"].notes.append(f"redis: MGET of {s.names} keys")
    rows["store_update"].notes.append(f"redis: MSET of {s.names} keys")


def finish(rows: dict[str, Any], Target: Any) -> None:
    """After the rounds: the cached read against the in-memory server's, round by round."""
    row, memory = rows["store_cached_get"], rows["cached_get"]
    ours, baseline = row.samples.get("aionamespace", []), memory.samples.get("aionamespace", [])
    paired = [a / b for a, b in zip(ours, baseline, strict=False) if a and b]
    figure = memory.figure("aionamespace")
    if not paired or figure is None:
        return
    ratio = statistics.median(paired)
    row.targets = (
        Target(f">= {CACHED_FLOOR}x in-memory cached read", "at_least", CACHED_FLOOR * figure),
    )
    row.extra["ratio_to_memory"] = ratio
    row.notes.append(
        f"{ratio:.2f}x the in-memory server's cached read of this run ({figure:,.0f} ops/s), "
        "median of the rounds' paired ratios"
    )
