"""What each operation of a server over Redis costs: Redis commands, round trips, CPU.

    python benchmarks/store_costs.py              # about 30 s
    python benchmarks/store_costs.py --ops 500    # fewer of each (faster, coarser CPU figures)

It starts its own redis-server (a Unix socket, no persistence) and one or two aionamespace
servers over it (store_server.py, processes of their own), runs each operation N times in a
row from one sync proxy (so nothing is batched with anything else), and reads around them:

* Redis's ``INFO commandstats`` (calls and microseconds per command; our own INFO left out),
* ``INFO stats``: ``total_writes_processed``, the replies Redis wrote to a client, which for
  one client waiting on each answer is the number of round trips (a pipeline's replies go out
  in one write),
* ``INFO cpu`` (Redis's user + system CPU) and the server process's (``/proc/PID/stat``).

The last rows are 64 tasks on one AsyncNamespace, whose calls the server sends in batches:
there a round trip carries many operations and the CPU per operation is what bounds a
server's throughput (docs/SCALING.md does the arithmetic).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from typing import Any

import aionamespace

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import compare

SERVER_SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "store_server.py")
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
NAMES = 100


def process_cpu(pid: int) -> float:
    """A process's user + system CPU seconds (every thread)."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


class Meter:
    """Redis's counters and the servers' CPU, read before and after a run of operations."""

    def __init__(self, redis: Any, pids: list[int]) -> None:
        self.redis, self.pids = redis, pids

    def read(self) -> dict[str, Any]:
        info = self.redis.info("all")
        commands = {
            name.removeprefix("cmdstat_"): (stats["calls"], stats["usec"])
            for name, stats in info.items()
            if name.startswith("cmdstat_") and name != "cmdstat_info"
        }
        return {
            "commands": commands,
            "writes": info["total_writes_processed"],
            "redis_cpu": info["used_cpu_user"] + info["used_cpu_sys"],
            "server_cpu": sum(process_cpu(pid) for pid in self.pids),
        }

    def measure(self, label: str, ops: int, run: Callable[[], object]) -> dict[str, Any]:
        before = self.read()
        start = time.perf_counter()
        run()
        seconds = time.perf_counter() - start
        after = self.read()
        calls: dict[str, float] = {}
        usec = 0.0
        for name, (count, spent) in after["commands"].items():
            was = before["commands"].get(name, (0, 0))
            if count > was[0]:
                calls[name] = (count - was[0]) / ops
                usec += spent - was[1]
        return {
            "label": label,
            "ops": ops,
            "commands": calls,
            "round_trips": (after["writes"] - before["writes"] - 1) / ops,  # (-1: our INFO)
            "redis_usec": usec / ops,
            "redis_cpu_usec": (after["redis_cpu"] - before["redis_cpu"]) * 1e6 / ops,
            "server_cpu_usec": (after["server_cpu"] - before["server_cpu"]) * 1e6 / ops,
            "rate": ops / seconds,
        }


@contextlib.contextmanager
def store_server(directory: str, name: str, redis_path: str) -> Iterator[tuple[str, int]]:
    address = os.path.join(directory, f"{name}.sock")
    command = [sys.executable, SERVER_SCRIPT, "--unix", address]
    command += ["--store", f"unix://{redis_path}", "--prefix", "costs", "--busy-poll-us", "0"]
    with compare.child_process(command, compare.server_environment()) as process:
        compare.wait_for_line(process, b"serving on")
        yield address, process.pid


def sequential(ns: Any, other: Any, n: int) -> list[tuple[str, int, Callable[[], object]]]:
    """(label, operations, run) for one sync proxy, each operation waiting for its answer."""
    values = {f"n{i}": i for i in range(NAMES)}
    ns._update(x=0, n=0, **values)
    for i in range(n):
        setattr(ns, f"t{i}", i)
    cached = aionamespace.Namespace(ns._aionamespace.target.address, "costs", cache=True)

    def loop(op: Callable[[int], object], count: int = n) -> Callable[[], None]:
        def run() -> None:
            for i in range(count):
                op(i)

        return run

    def alternate() -> None:  # every incr finds the other server's write: its guess misses
        for _ in range(n // 2):
            ns._incr("n")
            other._incr("n")

    def cas(i: int) -> None:
        assert ns._cas("x", i, i + 1)

    def watch_resume(i: int) -> None:
        with ns._watch(since=since) as watch:
            watch.next(timeout=5)

    def watches() -> None:
        nonlocal since
        since = ns._update(w=0)  # each watch replays one change: the next
        ns.w = 1
        loop(watch_resume, n // 4)()

    def lock(i: int) -> None:
        with ns._lock("l"):
            pass

    since = 0
    runs = [
        ("get", n, loop(lambda i: ns.x)),
        ("set", n, loop(lambda i: setattr(ns, "x", i))),
        (f"_update of {NAMES} names", n, loop(lambda i: ns._update(**values))),
        (f"_snapshot of {NAMES} names", n, loop(lambda i: ns._snapshot(*values))),
        ("_incr, this server alone", n, loop(lambda i: ns._incr("n"))),
        ("_incr, alternating with another server", n // 2 * 2, alternate),
        ("_cas, the value expected", n, lambda: [ns.__setattr__("x", 0), *map(cas, range(n))]),
        ("_append of one item", n, loop(lambda i: ns._append("log", i))),
        ("_watch(since=...) opened (history read)", n // 4, watches),
        ("tracked get (cache=True, first read)", n, loop(lambda i: getattr(cached, f"t{i}"))),
        ("cached get (cache=True, unchanged)", n, loop(lambda i: cached.t0)),
        ("lock acquire + release", n, loop(lock)),
    ]
    return runs


def pipelined(address: str, n: int, tasks: int, op: str) -> Callable[[], None]:
    """``tasks`` tasks on one AsyncNamespace, ``n`` operations in all."""

    async def main() -> None:
        async with aionamespace.AsyncNamespace(address, "costs") as ans:
            await ans.x

            async def task() -> None:
                for i in range(n // tasks):
                    if op == "get":
                        await ans.x
                    else:
                        await ans._update(x=i)

            await asyncio.gather(*(task() for _ in range(tasks)))

    return lambda: asyncio.run(main())


def print_table(results: list[dict[str, Any]]) -> None:
    header = (
        "operation",
        "scripts",
        "round trips",
        "commands Redis ran (the scripts' own included)",
        "Redis CPU µs",
        "server CPU µs",
        "ops/s",
    )
    lines = [header]
    for r in results:
        commands = r["commands"]
        scripts = commands.get("evalsha", 0) + commands.get("eval", 0)
        ran = ", ".join(f"{v:.2g} {k.upper()}" for k, v in sorted(commands.items()))
        lines.append(
            (
                r["label"],
                f"{scripts:.2g}",
                f"{r['round_trips']:.2f}",
                ran or "none",
                f"{r['redis_cpu_usec']:.1f}",
                f"{r['server_cpu_usec']:.0f}",
                f"{r['rate']:,.0f}",
            )
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    for i, line in enumerate(lines):
        cells = (
            c.ljust(w) if j in (0, 3) else c.rjust(w)
            for j, (c, w) in enumerate(zip(line, widths, strict=True))
        )
        print("  ".join(cells).rstrip())
        if i == 0:
            print("  ".join("-" * w for w in widths))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ops", type=int, default=2000, help="of each operation (default 2000)")
    parser.add_argument("--tasks", type=int, default=64)
    args = parser.parse_args()
    n = max(8, args.ops)
    print(f"$ {' '.join([os.path.basename(sys.executable), *sys.argv])}")
    info = compare.machine()
    print(
        f"machine: {info['cpu_count']} CPUs {info['cpu_model']}, {info['python']}, "
        f"load average {info['load_average']}"
    )
    print(
        f"aionamespace {info['aionamespace']} ({info['aionamespace_source']}); "
        + ", ".join(f"{k} {v}" for k, v in info["packages"].items())
    )
    with contextlib.ExitStack() as stack:
        directory = tempfile.mkdtemp(prefix="ans-costs-")
        stack.callback(__import__("shutil").rmtree, directory, ignore_errors=True)
        _, redis_path = stack.enter_context(compare.redis_server(directory, "redis"))
        import redis

        client = redis.Redis(unix_socket_path=redis_path)
        stack.callback(client.close)
        print(f"redis: {client.info('server')['redis_version']}, a Unix socket, no persistence")
        first, pid = stack.enter_context(store_server(directory, "one", redis_path))
        second, other_pid = stack.enter_context(store_server(directory, "two", redis_path))
        ns = aionamespace.Namespace(first, "costs")
        other = aionamespace.Namespace(second, "costs")
        stack.callback(ns._close)
        stack.callback(other._close)
        meter = Meter(client, [pid, other_pid])
        results = []
        for label, ops, run in sequential(ns, other, n):
            results.append(meter.measure(label, ops, run))
        many = n * 4 // args.tasks * args.tasks
        for op in ("get", "update"):
            label = f"{args.tasks} tasks, one AsyncNamespace: {'get' if op == 'get' else 'set'}"
            results.append(meter.measure(label, many, pipelined(first, many, args.tasks, op)))
    print(f"\n{n} of each operation from one sync proxy (each waits for its answer); per op:\n")
    print_table(results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
