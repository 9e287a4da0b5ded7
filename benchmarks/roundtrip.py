"""Sync get/set round trips: aionamespace against multiprocessing's SyncManager().Namespace().

Both servers run in their own processes, started by this script, and are measured in the same
run, interleaved round by round so that the machine's noise hits both alike. Each figure is the
median of the rounds; the ratio is ours / stdlib (higher is better, the target is >= 1.0).

    python benchmarks/roundtrip.py                # Unix sockets (both managers' default)
    python benchmarks/roundtrip.py --transport tcp
    python benchmarks/roundtrip.py --rounds 15 --ops 20000 --json out.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from collections.abc import Callable
from multiprocessing.managers import SyncManager
from typing import Any

import aionamespace


def time_gets(ns: Any, ops: int) -> float:
    start = time.perf_counter()
    for _ in range(ops):
        ns.item  # noqa: B018 - the read is the point
    return ops / (time.perf_counter() - start)


def time_sets(ns: Any, ops: int) -> float:
    start = time.perf_counter()
    for i in range(ops):
        ns.item = i
    return ops / (time.perf_counter() - start)


BENCHES: dict[str, Callable[[Any, int], float]] = {"get": time_gets, "set": time_sets}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--transport", choices=["unix", "tcp"], default="unix")
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--ops", type=int, default=5000, help="operations per round")
    parser.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    args = parser.parse_args()

    tcp = args.transport == "tcp"
    stdlib = SyncManager(address=("127.0.0.1", 0)) if tcp else SyncManager()
    stdlib.start()
    ours = aionamespace.Manager(("127.0.0.1", 0) if tcp else None)
    ours.start()
    try:
        contenders = {"stdlib": stdlib.Namespace(), "aionamespace": ours.Namespace()}
        for ns in contenders.values():
            ns.item = 0
            time_gets(ns, 500)  # warm up connections and caches
        samples: dict[tuple[str, str], list[float]] = {
            (who, op): [] for who in contenders for op in BENCHES
        }
        for _ in range(args.rounds):
            for op, bench in BENCHES.items():
                for who, ns in contenders.items():
                    samples[who, op].append(bench(ns, args.ops))
    finally:
        ours.shutdown()
        stdlib.shutdown()

    print(
        f"sync round trips over {args.transport}, {args.rounds} rounds x {args.ops} ops, "
        f"Python {platform.python_version()}, {platform.machine()}"
    )
    print(f"{'op':<6}{'stdlib ops/s':>14}{'aionamespace ops/s':>20}{'ratio':>8}")
    results = {}
    for op in BENCHES:
        base = statistics.median(samples["stdlib", op])
        mine = statistics.median(samples["aionamespace", op])
        results[op] = {"stdlib": base, "aionamespace": mine, "ratio": mine / base}
        print(f"{op:<6}{base:>14,.0f}{mine:>20,.0f}{mine / base:>7.2f}x")
    if args.json:
        with open(args.json, "w") as out:
            json.dump(
                {
                    "transport": args.transport,
                    "rounds": args.rounds,
                    "ops": args.ops,
                    "results": results,
                },
                out,
                indent=2,
            )


if __name__ == "__main__":
    main()
