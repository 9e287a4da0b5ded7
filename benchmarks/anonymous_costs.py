"""What the registry of anonymous namespaces shared over Redis costs, call by call.

    python benchmarks/anonymous_costs.py              # a few seconds
    python benchmarks/anonymous_costs.py --calls 200  # fewer of each

It starts its own redis-server (a Unix socket, no persistence) and, in this process, the
registry a server keeps (stores/redis_anonymous.py) over a ``RedisStore``, and makes each kind
of call N times, reading Redis's ``INFO commandstats`` around them (every command Redis ran,
the script's own included; our INFO left out): a first use that makes a namespace (``open``),
one of a namespace held, a leave, a renewal (a call with nothing else to do), a sweep with
nothing to free, and freeing (the sweep that finds a grace over, the namespace's drop and its
unregistering: per namespace freed). docs/SCALING.md has the table.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from typing import Any

import anyio

from aionamespace import Limits
from aionamespace.server.stores.redis import RedisStore
from aionamespace.server.stores.redis_anonymous import SWEEP_LIMIT, AnonymousRegistry

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import compare

GRACE = 0.05


def commands(client: Any) -> dict[str, int]:
    stats = client.info("commandstats")
    return {
        name.removeprefix("cmdstat_"): value["calls"]
        for name, value in stats.items()
        if name != "cmdstat_info"
    }


async def measure(
    client: Any, label: str, calls: int, run: Callable[[], Awaitable[object]]
) -> tuple[str, dict[str, float], float]:
    before = commands(client)
    began = time.perf_counter()
    await run()
    seconds = time.perf_counter() - began
    after = commands(client)
    per_call = {
        name: (count - before.get(name, 0)) / calls
        for name, count in after.items()
        if count > before.get(name, 0)
    }
    return label, per_call, seconds / calls * 1e6


async def main_async(url: str, client: Any, n: int) -> list[tuple[str, dict[str, float], float]]:
    store = RedisStore(url, Limits(), prefix="costs")
    await store.start()
    held: list[str] = []
    registry = AnonymousRegistry(store, GRACE, 10.0, lambda: held, lambda keys: None)
    other = AnonymousRegistry(store, GRACE, 10.0, lambda: (), lambda keys: None)
    keys = [f"#{i:032x}" for i in range(n)]
    rows = []

    async def first_uses() -> None:
        for key in keys:
            assert await registry.use([(key, True)]) == ["new"]

    async def uses_of_held() -> None:
        for key in keys:
            assert await other.use([(key, False)]) == ["ok"]

    async def leaves() -> None:
        for key in keys:
            other.leave(key)
            await other._call((), sweep=False)

    async def renewals() -> None:
        for _ in range(n):
            await other._call((), sweep=False)

    async def sweeps() -> None:
        for _ in range(n):
            await other._call((), sweep=True)

    async def frees() -> None:
        freed = 0
        while freed < n:
            _, found = await other._call((), sweep=True)
            if found:
                await other._drop(found)
                freed += len(found)

    try:
        await store.apply([("open", (key, {})) for key in keys])
        rows.append(await measure(client, "first use, making it (open)", n, first_uses))
        rows.append(await measure(client, "first use of one held", n, uses_of_held))
        rows.append(await measure(client, "leave (another server still uses it)", n, leaves))
        rows.append(await measure(client, "renewal (a call, nothing else)", n, renewals))
        rows.append(await measure(client, "sweep, nothing to free", n, sweeps))
        for key in keys:
            registry.leave(key)
        await registry._call((), sweep=False)
        await anyio.sleep(GRACE * 2)
        label = f"freeing, per namespace (sweeps of up to {SWEEP_LIMIT})"
        rows.append(await measure(client, label, n, frees))
    finally:
        await store.aclose()
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=1000, help="of each kind (default 1000)")
    args = parser.parse_args()
    print(f"$ {' '.join([os.path.basename(sys.executable), *sys.argv])}")
    with contextlib.ExitStack() as stack:
        directory = tempfile.mkdtemp(prefix="ans-anon-")
        stack.callback(__import__("shutil").rmtree, directory, ignore_errors=True)
        _, redis_path = stack.enter_context(compare.redis_server(directory, "redis"))
        import redis

        client = redis.Redis(unix_socket_path=redis_path)
        stack.callback(client.close)
        print(f"redis: {client.info('server')['redis_version']}, a Unix socket, no persistence")
        rows = anyio.run(main_async, f"unix://{redis_path}", client, args.calls)
    print(f"\n{args.calls} of each, one at a time; per call:\n")
    width = max(len(label) for label, _, _ in rows)
    for label, per_call, usec in rows:
        scripts = per_call.get("evalsha", 0) + per_call.get("eval", 0)
        ran = ", ".join(f"{v:.2g} {k.upper()}" for k, v in sorted(per_call.items()))
        print(f"{label.ljust(width)}  {scripts:4.2g} scripts  {usec:6.0f} µs  {ran}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
