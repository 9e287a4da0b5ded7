"""compare.py's Redis-store rows: an aionamespace server over Redis against redis-py direct.

The server (store_server.py: ``Server(store=RedisStore(...))``, asyncio with the busy-polling
loop a Manager's server runs) is a process of its own on a Unix socket, over the run's Redis
(a Unix socket, no persistence); the other contender is redis-py talking to that same Redis.
The same rows run over a 3-master Redis Cluster started for the run (redis_cluster.py), the
direct keys under one hash tag (one slot, as a namespace's keys are). These rows join every
run in which Redis is measured, so that their figures always sit beside the in-memory
server's of the same run (the cached read is compared with that one).

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
from redis_cluster import redis_cluster

__all__ = ["finish", "make_rows", "setup"]

SERVER_SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "store_server.py")
#: The contender (not in the table) that reads through the in-memory server's cached proxy in
#: the cached rows, interleaved with the cached proxy over Redis: the yardstick of their target.
IN_MEMORY = "in-memory"
#: The cached read's target: its paired ratio to the in-memory server's cached read (noise
#: on this shared machine moves a ratio of two equal things by a few percent).
CACHED_FLOOR = 0.9


#: (suffix of the rows' keys, what their labels start with)
VARIANTS = (("", "over Redis"), ("_cluster", "over a 3-master cluster"))
KINDS = ("sync_get", "async_get", "snapshot", "update", "cached_get")


def make_rows(settings: Any, Row: Any, Target: Any) -> dict[str, Any]:
    n, tasks = settings.names, settings.tasks
    rows = []
    for suffix, where in VARIANTS:
        rows += [
            Row(
                f"store_sync_get{suffix}",
                f"{where}: sync get, one client",
                "ops/s",
                (Target(">= 0.5x redis GET", "redis", 0.5),),
            ),
            Row(
                f"store_async_get{suffix}",
                f"{where}: async get, {tasks} tasks",
                "ops/s",
                (Target(">= 2x redis.asyncio", "redis", 2),),
            ),
            Row(
                f"store_snapshot{suffix}",
                f"{where}: _snapshot of {n} names",
                "names/s",
                (Target(">= 1x MGET", "redis", 1),),
            ),
            Row(
                f"store_update{suffix}",
                f"{where}: _update of {n} names",
                "names/s",
                (Target(">= 1x MSET", "redis", 1),),
            ),
            Row(f"store_cached_get{suffix}", f"{where}: cached read, unchanged", "ops/s", ()),
        ]
    return {row.key: row for row in rows}


def setup(bench: Any, helpers: Any) -> None:
    """Start a server over the run's Redis, and one over a cluster started for it, and give
    the rows their samplers (``helpers``: compare.py's child_process, wait_for_line,
    server_environment, Repeat, AsyncRepeat, gets and repeat)."""
    for suffix, _ in VARIANTS:
        for kind in KINDS:
            bench.rows[f"store_{kind}{suffix}"].missing["stdlib"] = "-"
    if bench.redis_path is None:
        for suffix, _ in VARIANTS:
            for kind in KINDS:
                row = bench.rows[f"store_{kind}{suffix}"]
                row.missing["aionamespace"] = row.missing["redis"] = "n/a (no Redis)"
        return
    import redis
    import redis.asyncio
    import redis.asyncio.cluster
    import redis.cluster

    path = bench.redis_path
    direct = redis.Redis(unix_socket_path=path)
    adirect = redis.asyncio.Redis(unix_socket_path=path)
    _variant(bench, helpers, "", f"unix://{path}", direct, adirect, "")

    nodes = bench.stack.enter_context(redis_cluster(bench.directory, helpers.child_process))
    url = "redis+cluster://" + ",".join(f"{host}:{port}" for host, port in nodes)
    direct = redis.cluster.RedisCluster(
        startup_nodes=[redis.cluster.ClusterNode(host, port) for host, port in nodes]
    )
    adirect = redis.asyncio.cluster.RedisCluster(
        startup_nodes=[redis.asyncio.cluster.ClusterNode(host, port) for host, port in nodes]
    )
    _variant(bench, helpers, "_cluster", url, direct, adirect, "{bench}")
    note = (
        "cluster: 3 masters on loopback TCP, no persistence; redis: redis-py's RedisCluster, "
        "keys of one hash tag (one slot, as a namespace's)"
    )
    bench.rows["store_sync_get_cluster"].notes.append(note)


def _variant(
    bench: Any, h: Any, suffix: str, url: str, direct: Any, adirect: Any, tag: str
) -> None:
    """One server over ``url`` against ``direct`` and ``adirect`` (redis-py clients of the same
    Redis), the direct keys prefixed by ``tag``."""
    s, stack = bench.settings, bench.stack
    rows = {kind: bench.rows[f"store_{kind}{suffix}"] for kind in KINDS}
    address = os.path.join(bench.directory, f"over-redis{suffix}.sock")
    command = [sys.executable, SERVER_SCRIPT, "--unix", address]
    command += ["--store", url, "--prefix", "bench-store"]
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

    stack.callback(direct.close)
    stack.callback(lambda: bench.loop.run_until_complete(adirect.aclose()))
    x, keys = tag + "x", [tag + name for name in names]
    values = {tag + name: value for name, value in bench.values.items()}
    direct.mset({x: 1, **values})
    assert direct.mget(keys) == [str(v).encode() for v in bench.values.values()]

    samplers = {
        "sync_get": (h.Repeat(h.gets(ours, "x")), h.Repeat(h.repeat(lambda: direct.get(x)))),
        "async_get": (
            h.AsyncRepeat(bench.loop, lambda: aours.x, s.tasks),
            h.AsyncRepeat(bench.loop, lambda: adirect.get(x), s.tasks),
        ),
        "snapshot": (
            h.Repeat(h.repeat(lambda: ours._snapshot(*names)), s.names),
            h.Repeat(h.repeat(lambda: direct.mget(keys)), s.names),
        ),
        "update": (
            h.Repeat(h.repeat(lambda: ours._update(**bench.values)), s.names),
            h.Repeat(h.repeat(lambda: direct.mset(values)), s.names),
        ),
    }
    for kind, (mine, theirs) in samplers.items():
        rows[kind].samplers["aionamespace"] = mine
        rows[kind].samplers["redis"] = theirs
    rows["cached_get"].samplers["aionamespace"] = h.Repeat(h.gets(cached, "c"))
    rows["cached_get"].missing["redis"] = "-"
    if bench.cached is not None:  # the in-memory server's cached proxy, in the same slices
        rows["cached_get"].samplers[IN_MEMORY] = h.Repeat(h.gets(bench.cached, "c"))
    if suffix:
        return
    rows["sync_get"].notes.append(
        "aionamespace: a proxy -> a server process over Redis (store_server.py) -> Redis; "
        "redis: redis-py GET on the same Redis (a Unix socket, no persistence)"
    )
    rows["async_get"].notes.append(
        f"{s.tasks} tasks on one AsyncNamespace; redis: {s.tasks} tasks on one redis.asyncio client"
    )
    rows["snapshot"].notes.append(f"redis: MGET of {s.names} keys")
    rows["update"].notes.append(f"redis: MSET of {s.names} keys")


def finish(rows: dict[str, Any], Target: Any) -> None:
    """After the rounds: the cached reads against the in-memory server's, slice by slice."""
    for suffix, _ in VARIANTS:
        row = rows[f"store_cached_get{suffix}"]
        ours, baseline = row.samples.get("aionamespace", []), row.samples.get(IN_MEMORY, [])
        paired = [a / b for a, b in zip(ours, baseline, strict=False) if a and b]
        if not paired:
            continue
        ratio, figure = statistics.median(paired), statistics.median(baseline)
        row.targets = (
            Target(f">= {CACHED_FLOOR}x in-memory cached read", IN_MEMORY, CACHED_FLOOR),
        )
        row.extra["ratio_to_memory"] = ratio
        row.notes.append(
            f"{ratio:.2f}x the in-memory server's cached proxy read in the same slices "
            f"({figure:,.0f} ops/s): median of the rounds' paired ratios"
        )
