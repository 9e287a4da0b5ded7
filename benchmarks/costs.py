"""What a get costs on each side, counted from the kernel's books rather than timed (Linux).

On a machine that other work shares, throughput swings by a factor of two from one second to
the next and says little about a change; what each process spent per get swings much less.
For the two rows of compare.py that are limited by CPU on a 2-core machine, this reads
``/proc`` around each sample: the CPU time the client and the server each used per 1,000 gets,
and how often each slept (voluntary context switches: every one is a wake-up the other side
paid for) or was preempted (involuntary ones: on a crowded machine, mostly a woken peer
taking the CPU it ran on). Throughput is printed too, the median sample and the best. CPU
time is read in clock ticks: samples of a second or so keep that coarseness small.

    python benchmarks/costs.py                     # every row, 9 samples each
    python benchmarks/costs.py --rows async --samples 21 --json out.json
    python benchmarks/costs.py --quick             # a smoke test: the figures mean nothing

Rows: ``async``, ``--tasks`` tasks awaiting ``ns.x`` through one AsyncNamespace on the fastest
loop installed (uvloop with the extra), as compare.py's async row; ``trio``, the same tasks on
trio (the ``trio`` extra), as compare.py's trio row (which runs them in a thread); ``processes``,
``--processes`` spawned processes doing sync gets, each its own proxy. The server is a Manager's
(asyncio, busy-polling), one per row. The client's figures of the processes row are the sum
over its processes.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.metadata
import json
import multiprocessing
import os
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import aionamespace

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import yardstick_rows

COLUMNS = (
    "gets/s",
    "client CPU ms",
    "server CPU ms",
    "client sleeps",
    "server sleeps",
    "client preempted",
    "server preempted",
)


def books(pid: int) -> tuple[float, int, int]:
    """A process's CPU seconds (all its threads), voluntary and involuntary switches."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    switches = {}
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith(("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")):
                key, value = line.split(":")
                switches[key] = int(value)
    return cpu, switches["voluntary_ctxt_switches"], switches["nonvoluntary_ctxt_switches"]


def server_pid(manager: aionamespace.Manager) -> int:
    process = manager._process
    assert process is not None, "a Manager that started its own server"
    return process.pid


def per_thousand(gets: int, before: list[tuple[float, int, int]], after: list[Any]) -> list[float]:
    """[client CPU ms, server CPU ms, client sleeps, ...] per 1,000 gets, from the books of
    (client, server) before and after."""
    (c0, s0), (c1, s1) = before, after
    scale = 1000 / gets
    return [
        (c1[0] - c0[0]) * 1e3 * scale,
        (s1[0] - s0[0]) * 1e3 * scale,
        (c1[1] - c0[1]) * scale,
        (s1[1] - s0[1]) * scale,
        (c1[2] - c0[2]) * scale,
        (s1[2] - s0[2]) * scale,
    ]


# ---------------------------------------------------------------------------------- async


def _sampler(
    ns: Any, server: int, seconds: float, run_all: Callable[[Callable[[], Any]], Any]
) -> Callable[[], Any]:
    """A coroutine function measuring one sample: ``run_all(task)`` runs the tasks at once."""

    async def sample() -> list[float]:
        deadline, done = time.perf_counter() + seconds, 0

        async def task() -> None:
            nonlocal done
            while time.perf_counter() < deadline:
                for _ in range(8):
                    await ns.x
                done += 8

        before = [books(os.getpid()), books(server)]
        start = time.perf_counter()
        await run_all(task)
        elapsed = time.perf_counter() - start
        after = [books(os.getpid()), books(server)]
        return [done / elapsed, *per_thousand(done, before, after)]

    return sample


async def _samples(ns: Any, sample: Callable[[], Any], samples: int) -> list[list[float]]:
    await sample()  # connect and warm up
    measured = [await sample() for _ in range(samples)]
    await ns._close()
    return measured


def async_row(tasks: int, samples: int, seconds: float) -> tuple[str, list[list[float]]]:
    loop, loop_name = yardstick_rows.fastest_loop()
    with aionamespace.Manager() as manager:
        manager.Namespace("costs").x = 1
        ns = manager.AsyncNamespace("costs")

        async def run_all(task: Callable[[], Any]) -> None:
            await asyncio.gather(*(task() for _ in range(tasks)))

        sample = _sampler(ns, server_pid(manager), seconds, run_all)
        try:
            measured = loop.run_until_complete(_samples(ns, sample, samples))
            return f"async get, {tasks} tasks, client on {loop_name}", measured
        finally:
            loop.close()


def trio_row(tasks: int, samples: int, seconds: float) -> tuple[str, list[list[float]]]:
    """The async row's gets with the client on trio, run in this process's main thread."""
    import trio

    with aionamespace.Manager() as manager:
        manager.Namespace("costs").x = 1
        ns = manager.AsyncNamespace("costs")

        async def run_all(task: Callable[[], Any]) -> None:
            async with trio.open_nursery() as nursery:
                for _ in range(tasks):
                    nursery.start_soon(task)

        sample = _sampler(ns, server_pid(manager), seconds, run_all)
        version = importlib.metadata.version("trio")
        measured = trio.run(_samples, ns, sample, samples)
        return f"async get, {tasks} tasks, client on trio {version}", measured


# ---------------------------------------------------------------------------------- processes


def _getter(ns: Any, conn: Any) -> None:
    """A spawned process: gets from a common start to a common end, for each command."""
    ns.x  # noqa: B018 - connect now
    conn.send(os.getpid())
    while (command := conn.recv()) is not None:
        start_at, end_at = command
        while time.monotonic() < start_at:
            time.sleep(min(0.005, start_at - time.monotonic()))
        done = 0
        while time.monotonic() < end_at:
            ns.x  # noqa: B018
            done += 1
        conn.send(done)


def processes_row(count: int, samples: int, seconds: float) -> tuple[str, list[list[float]]]:
    context = multiprocessing.get_context("spawn")
    with aionamespace.Manager() as manager:
        ns = manager.Namespace("costs")
        ns.x = 1
        server = server_pid(manager)
        workers = []
        try:
            for _ in range(count):
                parent, child = context.Pipe()
                process = context.Process(target=_getter, args=(ns, child), daemon=True)
                process.start()
                child.close()
                workers.append((process, parent))
            pids = [parent.recv() for _, parent in workers]
            measured = []
            for _ in range(samples + 1):  # the first one warms up
                start_at = time.monotonic() + 0.1
                for _, parent in workers:
                    parent.send((start_at, start_at + seconds))
                while time.monotonic() < start_at:
                    time.sleep(0.001)
                before = [_summed(pids), books(server)]
                done = sum(parent.recv() for _, parent in workers)
                after = [_summed(pids), books(server)]
                measured.append([done / seconds, *per_thousand(done, before, after)])
            return f"{count} spawned processes, sync get", measured[1:]
        finally:
            for process, parent in workers:
                parent.send(None)
                process.join(5)
                if process.is_alive():
                    process.kill()
                    process.join()


def _summed(pids: list[int]) -> tuple[float, int, int]:
    each = [books(pid) for pid in pids]
    return sum(b[0] for b in each), sum(b[1] for b in each), sum(b[2] for b in each)


# ---------------------------------------------------------------------------------- report


def summary(title: str, measured: list[list[float]]) -> dict[str, Any]:
    columns = list(zip(*measured, strict=True))
    medians = [statistics.median(column) for column in columns]
    return {
        "title": title,
        "columns": list(COLUMNS),
        "samples": measured,
        "median": medians,
        "best_gets_per_second": max(columns[0]),
    }


def print_row(row: dict[str, Any]) -> None:
    print(f"\n{row['title']} (median of {len(row['samples'])} samples; per 1,000 gets but gets/s)")
    print("  ".join(f"{column:>16}" for column in row["columns"]))
    print("  ".join(f"{value:>16,.1f}" for value in row["median"]))
    print(f"best sample: {row['best_gets_per_second']:,.0f} gets/s")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument(
        "--rows", default="async,trio,processes", help="some of async, trio, processes"
    )
    parser.add_argument("--samples", type=int, default=9)
    parser.add_argument("--seconds", type=float, default=1.0, help="per sample")
    parser.add_argument("--tasks", type=int, default=64)
    parser.add_argument("--processes", type=int, default=8)
    parser.add_argument("--json", help="write the figures here")
    parser.add_argument("--quick", action="store_true", help="tiny counts: a smoke test")
    args = parser.parse_args(argv)
    if args.quick:
        args.samples, args.seconds, args.tasks, args.processes = 2, 0.1, 8, 2
    return args


def main(argv: list[str] | None = None) -> int:
    if not sys.platform.startswith("linux"):
        print("costs.py reads /proc: Linux only", file=sys.stderr)
        return 2
    args = parse_args(argv)
    wanted = args.rows.split(",")
    results: dict[str, Any] = {}
    if "async" in wanted:
        results["async"] = summary(*async_row(args.tasks, args.samples, args.seconds))
        print_row(results["async"])
    if "trio" in wanted:
        results["trio"] = summary(*trio_row(args.tasks, args.samples, args.seconds))
        print_row(results["trio"])
    if "processes" in wanted:
        results["processes"] = summary(*processes_row(args.processes, args.samples, args.seconds))
        print_row(results["processes"])
    if args.json:
        with open(args.json, "w") as out:
            json.dump({"load": os.getloadavg(), "rows": results}, out, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
