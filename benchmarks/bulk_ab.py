"""Two bulk rows of compare.py, two source trees, one process: where the heap is shared too.

compare.py's "1 MiB bytes get" and "_update of 100 names" rows run a sync proxy in the same
process as the stdlib's and redis-py's clients. What a large get costs there depends on that
process's heap as much as on the code: a buffer of 1 MiB freed next to others lets glibc give
the memory back, and the next one is paged in again by the kernel, fault by fault (a cost
far above the copy's on a virtual machine). So this measures both trees' sync proxies (as in
ab_trees.py) and the stdlib's, in one process against one Manager (the ``before`` tree's
server, so that only the clients differ), alternated round by round: per call, wall time,
this process's CPU time and its minor page faults; the figure to read is the median over
rounds of after/before, and beside it the stdlib's time over each tree's.

    python benchmarks/bulk_ab.py /work/main/src src              # before, after
    python benchmarks/bulk_ab.py A/src B/src --rows get --rounds 41
    python benchmarks/bulk_ab.py src src --quick                 # a smoke test
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from multiprocessing.managers import SyncManager
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from ab_trees import TREES, import_trees

#: One call's figures: wall µs, CPU µs, minor page faults.
Figures = tuple[float, float, float]


def sample(call: Callable[[], object], seconds: float) -> Figures:
    """Call ``call`` for about ``seconds``; its figures per call."""
    calls, faults = 0, resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    start, cpu = time.perf_counter(), time.process_time()
    while True:
        call()
        calls += 1
        wall = time.perf_counter() - start
        if wall >= seconds:
            break
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
    return wall / calls * 1e6, (time.process_time() - cpu) / calls * 1e6, faults / calls


def measure(calls: dict[str, Callable[[], object]], args: argparse.Namespace) -> dict[str, list]:
    for call in calls.values():
        sample(call, args.seconds)  # warm up
    figures: dict[str, list[Figures]] = {name: [] for name in calls}
    names = list(calls)
    for number in range(args.rounds):
        for name in names if number % 2 == 0 else names[::-1]:
            figures[name].append(sample(calls[name], args.seconds))
    return figures


def report(title: str, figures: dict[str, list[Figures]]) -> None:
    print(f"\n{title} ({len(figures['before'])} rounds; per call, medians)")
    for name, values in figures.items():
        wall, cpu, faults = (statistics.median(v[i] for v in values) for i in range(3))
        print(f"  {name:>6}: wall {wall:.1f} µs  CPU {cpu:.1f} µs  faults {faults:.1f}")
    for what, i in (("wall", 0), ("CPU", 1)):
        pairs = zip(figures["before"], figures["after"], strict=True)
        ratio = statistics.median(after[i] / before[i] for before, after in pairs)
        print(f"  after/before {what}, median over rounds: {ratio:.3f}")
    if "stdlib" in figures:
        for tree in TREES:
            pairs = zip(figures["stdlib"], figures[tree], strict=True)
            ratio = statistics.median(theirs[0] / ours[0] for theirs, ours in pairs)
            print(f"  stdlib/{tree} wall, median over rounds: {ratio:.3f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("before", help="a source tree holding aionamespace/ (say main's src)")
    parser.add_argument("after", help="another (say this branch's src)")
    parser.add_argument("--rows", default="get,update")
    parser.add_argument("--rounds", type=int, default=21)
    parser.add_argument("--seconds", type=float, default=0.1, help="per sample")
    parser.add_argument("--quick", action="store_true", help="tiny counts: a smoke test")
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.seconds = 2, 0.01
    wanted = args.rows.split(",")
    blob = os.urandom(1 << 20)
    values = {f"n{i}": i for i in range(100)}
    with tempfile.TemporaryDirectory(prefix="bulk-ab-") as into, SyncManager() as stdlib:
        trees = import_trees([args.before, args.after], into)
        theirs = stdlib.Namespace()
        theirs.blob = blob
        with trees["before"].Manager() as manager:
            proxies: dict[str, Any] = {}
            for name, tree in trees.items():
                ns = proxies[name] = tree.Namespace(manager.address, authkey=manager.authkey)
                ns.blob = blob
                ns._update(**values)
                assert ns.blob == blob, "a wrong answer is worth no figure"
            if "get" in wanted:
                calls: dict[str, Callable[[], object]] = {
                    name: (lambda ns=ns: ns.blob) for name, ns in proxies.items()
                }
                calls["stdlib"] = lambda: theirs.blob
                report("get: a sync get of 1 MiB of bytes", measure(calls, args))
            if "update" in wanted:
                calls = {name: (lambda ns=ns: ns._update(**values)) for name, ns in proxies.items()}
                report("update: _update of 100 names (ints)", measure(calls, args))
            for ns in proxies.values():
                ns._close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
