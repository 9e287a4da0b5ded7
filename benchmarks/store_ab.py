"""Two source trees' servers over one Redis, alternated: CPU per call of client, server, Redis.

    python benchmarks/store_ab.py BEFORE/src AFTER/src [--rounds 9] [--calls 300] [--rows R]
    BP="--busy-poll-us 0" python benchmarks/store_ab.py /work/main/src src

One redis-server (a Unix socket, no persistence), one store_server.py per tree (each its own
prefix), each with a plain sync proxy and a cached proxy on the namespace (so the server
follows it, as in compare.py's store rows). Per round and row, ``--calls`` calls through each
server in turn (which goes first alternates): wall time, this process's CPU, the server's CPU
(/proc) and Redis's (INFO cpu) per call, and Redis's commands per call (INFO commandstats:
calls per call x usec_per_call; over a cluster's nodes with ``--cluster``). Prints each side's
medians and the medians of after/before per round. ``BP="--busy-poll-us 0"``: the servers run
the plain asyncio loop, whose CPU time is all work. Rows: update, snapshot (of 100 names), get,
set.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import tempfile
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import redis

import aionamespace
import compare
from redis_cluster import redis_cluster
from store_costs import process_cpu

SERVER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "store_server.py")
VALUES = {f"n{i}": i for i in range(100)}
NAMES = list(VALUES)
ROWS = {
    "update": lambda ns: ns._update(**VALUES),
    "snapshot": lambda ns: ns._snapshot(*NAMES),
    "get": lambda ns: ns.x,
    "set": lambda ns: setattr(ns, "x", 2),
}


def redis_cpu(clients: list[Any]) -> float:
    cpus = [client.info("cpu") for client in clients]
    return float(sum(cpu["used_cpu_user"] + cpu["used_cpu_sys"] for cpu in cpus))


def measure(clients: list[Any], ns: Any, pid: int, row: str, calls: int) -> tuple[Any, ...]:
    for client in clients:
        client.config_resetstat()
    run = ROWS[row]
    c0, s0, r0, w0 = time.process_time(), process_cpu(pid), redis_cpu(clients), time.perf_counter()
    for _ in range(calls):
        run(ns)
    w1, c1, s1, r1 = time.perf_counter(), time.process_time(), process_cpu(pid), redis_cpu(clients)
    commands: dict[str, tuple[int, int]] = {}
    for client in clients:
        for name, s in client.info("commandstats").items():
            if name not in ("cmdstat_config|resetstat", "cmdstat_info"):
                done, usec = commands.get(name.removeprefix("cmdstat_"), (0, 0))
                commands[name.removeprefix("cmdstat_")] = (done + s["calls"], usec + s["usec"])
    per = 1e6 / calls
    return (w1 - w0) * per, (c1 - c0) * per, (s1 - s0) * per, (r1 - r0) * per, commands


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("before")
    parser.add_argument("after")
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--calls", type=int, default=300)
    parser.add_argument("--rows", default="update,snapshot")
    parser.add_argument("--cluster", action="store_true", help="over a 3-master cluster")
    args = parser.parse_args()
    trees, rows = (args.before, args.after), args.rows.split(",")
    directory = tempfile.mkdtemp()
    path = os.path.join(directory, "redis.sock")
    with contextlib.ExitStack() as stack:
        command = ["redis-server", "--port", "0", "--unixsocket", path]
        command += ["--save", "", "--appendonly", "no"]
        stack.enter_context(compare.child_process(command))
        client = redis.Redis(unix_socket_path=path)
        url = f"unix://{path}"
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        clients = [client]
        if args.cluster:
            nodes = stack.enter_context(redis_cluster(directory, compare.child_process))
            url = "redis+cluster://" + ",".join(f"{host}:{port}" for host, port in nodes)
            clients = [redis.Redis(host=host, port=port) for host, port in nodes]
        sides = []
        for i, tree in enumerate(trees):
            address = os.path.join(directory, f"s{i}.sock")
            env = dict(os.environ, PYTHONPATH=tree)
            command = [sys.executable, SERVER, "--unix", address, "--store", url]
            command += ["--prefix", f"p{i}", *os.environ.get("BP", "").split()]
            process = stack.enter_context(compare.child_process(command, env))
            compare.wait_for_line(process, b"serving on")
            ns = aionamespace.Namespace(address, "bench")
            ns.x = ns.c = 1
            ns._update(**VALUES)
            cached = aionamespace.Namespace(address, "bench", cache=True)
            assert cached.c == 1  # (the server follows the namespace from here)
            sides.append((ns, process.pid))
        results: dict[str, list[list[Any]]] = {row: [[], []] for row in rows}
        for round_ in range(args.rounds):
            for row in rows:
                for side in (0, 1) if round_ % 2 == 0 else (1, 0):
                    ns, pid = sides[side]
                    results[row][side].append(measure(clients, ns, pid, row, args.calls))
        labels = ("wall", "client", "server", "redis")
        for row in rows:
            print(f"== {row}: {args.rounds} rounds of {args.calls}; us per call (medians)")
            for side in (0, 1):
                got = results[row][side]
                medians = [statistics.median(r[j] for r in got) for j in range(4)]
                commands = " ".join(
                    f"{name}:{calls / args.calls:.2f}x{usec / max(calls, 1):.1f}us"
                    for name, (calls, usec) in got[-1][4].items()
                )
                figures = " ".join(f"{lab} {m:.1f}" for lab, m in zip(labels, medians, strict=True))
                print(f"  {trees[side]}: {figures} | {commands}")
            before, after = results[row]
            for j, lab in enumerate(labels):
                ratios = [b[j] / a[j] for a, b in zip(before, after, strict=True) if a[j] and b[j]]
                if ratios:
                    print(
                        f"  {lab} after/before: median {statistics.median(ratios):.3f} "
                        f"(min {min(ratios):.3f}, max {max(ratios):.3f})"
                    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
