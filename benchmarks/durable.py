"""compare.py's durable rows: a server with a data file against Redis with an append-only file.

Each policy is compared with its match, in the same run as every other row:

* ``--data`` (SQLite ``synchronous=NORMAL``: a commit survives the server's crash) against
  Redis ``appendonly yes, appendfsync everysec`` (a write survives Redis's crash; the last
  second may be lost with the machine);
* ``--data --fsync`` (``synchronous=FULL``: an fsync per commit) against ``appendfsync
  always`` (an fsync per write, or per batch of writes arriving together).

The rows: a sync set, ``_update`` of 100 names against MSET, and 64 async tasks setting. With
``--fsync``, 64 tasks must reach 10 times one sync client's rate: they share commits (group
commit), where one client waits for an fsync per write. Each row says, in its notes, what the
data file costs against the in-memory server's row of the same run.
"""

from __future__ import annotations

import contextlib
import os
from typing import Any

import aionamespace

__all__ = ["finish", "make_rows", "setup"]

#: (suffix of the rows' keys, the server's option, Redis's appendfsync)
POLICIES = (("data", False, "everysec"), ("fsync", True, "always"))
GROUP_COMMIT_FACTOR = 10


def make_rows(settings: Any, Row: Any, Target: Any) -> dict[str, Any]:
    rows = {}
    for suffix, fsync, appendfsync in POLICIES:
        flags = "--data --fsync" if fsync else "--data"
        against = Target(f">= 1.0x redis ({appendfsync})", "redis", 1.0)
        rows[f"sync_set_{suffix}"] = Row(
            f"sync_set_{suffix}", f"sync set, one client, {flags}", "ops/s", (against,)
        )
        rows[f"update_{suffix}"] = Row(
            f"update_{suffix}", f"_update of {settings.names} names, {flags}", "names/s", (against,)
        )
        rows[f"async_set_{suffix}"] = Row(
            f"async_set_{suffix}",
            f"async set, {settings.tasks} tasks, {flags}",
            "ops/s",
            (against,),
        )
    return rows


def setup(bench: Any, redis_server: Any, Repeat: Any, AsyncRepeat: Any, sets: Any) -> None:
    """Start the durable servers (an aionamespace Manager with a data file, a Redis with an
    append-only file, per policy) and give the rows their samplers."""
    s, rows, stack = bench.settings, bench.rows, bench.stack
    for suffix, fsync, appendfsync in POLICIES:
        data = os.path.join(bench.directory, f"board-{suffix}.db")
        manager = stack.enter_context(aionamespace.Manager(data=data, fsync=fsync))
        ours = manager.Namespace("bench")
        stack.callback(ours._close)
        ours.x = 0
        aours = manager.AsyncNamespace("bench")
        stack.callback(lambda aours=aours: bench.loop.run_until_complete(aours._close()))
        values = bench.values
        rows[f"sync_set_{suffix}"].samplers["aionamespace"] = Repeat(sets(ours, "x"))
        rows[f"update_{suffix}"].samplers["aionamespace"] = Repeat(
            lambda n, ours=ours, values=values: [ours._update(**values) for _ in range(n)],
            s.names,
        )
        rows[f"async_set_{suffix}"].samplers["aionamespace"] = AsyncRepeat(
            bench.loop, lambda aours=aours: aours._update(x=1), s.tasks
        )
        rows[f"async_set_{suffix}"].notes.append(
            "aionamespace: await ns._update(x=1) (a set that waits for its answer); redis: "
            f"SET from {s.tasks} tasks sharing one redis.asyncio client"
        )
        if bench.redis_path is None:
            for kind in ("sync_set", "update", "async_set"):
                rows[f"{kind}_{suffix}"].missing["redis"] = "n/a"
            continue
        _setup_redis(bench, suffix, appendfsync, redis_server, Repeat, AsyncRepeat)


def _setup_redis(
    bench: Any, suffix: str, appendfsync: str, redis_server: Any, Repeat: Any, AsyncRepeat: Any
) -> None:
    import redis
    import redis.asyncio

    s, rows, stack = bench.settings, bench.rows, bench.stack
    directory = os.path.join(bench.directory, f"redis-{suffix}")
    os.mkdir(directory)
    _, path = stack.enter_context(redis_server(directory, "redis", appendfsync=appendfsync))
    client = redis.Redis(unix_socket_path=path)
    stack.callback(client.close)
    assert client.config_get("appendonly")["appendonly"] == "yes"
    assert client.config_get("appendfsync")["appendfsync"] == appendfsync
    values = bench.values

    def sets(n: int) -> None:
        for i in range(n):
            client.set("x", i)

    rows[f"sync_set_{suffix}"].samplers["redis"] = Repeat(sets)
    rows[f"update_{suffix}"].samplers["redis"] = Repeat(
        lambda n: [client.mset(values) for _ in range(n)], s.names
    )
    aclient = redis.asyncio.Redis(unix_socket_path=path)
    stack.callback(lambda: bench.loop.run_until_complete(aclient.aclose()))
    rows[f"async_set_{suffix}"].samplers["redis"] = AsyncRepeat(
        bench.loop, lambda: aclient.set("x", 1), s.tasks
    )
    for kind in ("sync_set", "update", "async_set"):
        rows[f"{kind}_{suffix}"].notes.append(
            f"redis: appendonly yes, appendfsync {appendfsync}, on a Unix socket"
        )


def finish(rows: dict[str, Any], Target: Any) -> None:
    """After the rounds: what the data file costs against memory, and the group-commit target
    (64 tasks with --fsync against one sync client with --fsync, same run)."""
    memory = {"sync_set": "sync_set", "update": "update", "async_set": None}
    for suffix, _, _ in POLICIES:
        for kind, in_memory in memory.items():
            row = rows[f"{kind}_{suffix}"]
            ours = row.figure("aionamespace")
            if in_memory is None or ours is None:
                continue
            baseline = rows[in_memory].figure("aionamespace")
            if baseline:
                row.notes.append(
                    f"the in-memory server's row in this run: {baseline:,.0f} {row.unit} "
                    f"(the data file keeps {ours / baseline:.0%} of it)"
                )
    one = rows["sync_set_fsync"].figure("aionamespace")
    grouped = rows["async_set_fsync"]
    if one:
        with contextlib.suppress(TypeError):
            grouped.targets = (
                *grouped.targets,
                Target(
                    f">= {GROUP_COMMIT_FACTOR}x one sync client (group commit)",
                    "at_least",
                    GROUP_COMMIT_FACTOR * one,
                ),
            )
        figure = grouped.figure("aionamespace")
        if figure is not None:
            grouped.notes.append(
                f"{figure / one:.1f}x one sync client's --fsync set rate ({one:,.0f} ops/s): "
                "commits are shared by the writes that arrive during one"
            )
