"""How cost grows with work (issue 17): what one operation costs as the server holds more.

Each section is a small table, printed, and a panel of one chart (``--plot``):

* **names**: a get's latency (median, p99) from a sync proxy, reading random names of one
  namespace that holds 10, 10k and 1M names (expected flat);
* **namespaces**: the same, in a namespace of 10 names, while the server holds 1 and 10k
  namespaces of 10 names each (expected flat);
* **watchers**: one write seen by 1, 100 and 1,000 watchers (``AsyncNamespace._watch``, each
  its own connection, spread over 4 spawned processes on asyncio): the time from the write's
  start until the last watcher has it, and the slope per watcher (expected linear at worst);
* **snapshot**: ``_snapshot`` of N names for N = 10, 1k and 100k (expected linear: the cost
  per name);
* **memory**: the server's RSS as one namespace grows to 1M names of small values (ints), and
  what each 1M names cost (the history of the writes that made them included: it is bounded
  by max_history_revisions and max_history_bytes).

Every server is ``python -m aionamespace serve --unix`` started here (asyncio, busy-polling:
the default), one per section group, stopped at the end. Each section prints its figure and
the bound README states for it; the bounds are judged there, not asserted by a test.
``--quick`` shrinks every size (1M names become 10k) and runs in seconds: a test runs it.

    python benchmarks/growth.py                    # about a minute
    python benchmarks/growth.py --quick --json out.json --plot growth.png
    python benchmarks/compare.py --growth          # after compare's rows, in the same run
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import random
import selectors
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from typing import Any

import aionamespace

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from growth_watchers import Watchers

__all__ = ["Section", "Sizes", "main", "run"]

SERVER_START_TIMEOUT = 30.0
WARM_UP_SECONDS = 0.1  # of gets, before each latency is measured
#: The bounds README states (figures are judged against them there, and printed here).
FLAT_WITHIN = 2.0  # the largest size's median get at most this many times the smallest's
MICROSECONDS_PER_WATCHER = 50.0
MICROSECONDS_PER_SNAPSHOT_NAME = 4.0
MB_PER_MILLION_NAMES = 250.0


@dataclasses.dataclass(frozen=True)
class Sizes:
    names: tuple[int, ...]
    namespaces: tuple[int, ...]
    watchers: tuple[int, ...]
    snapshot_names: tuple[int, ...]
    gets: int  # timed gets per size
    writes: int  # timed writes per number of watchers
    watcher_processes: int
    fill_batch: int = 10_000  # names per _update while filling
    snapshot_seconds: float = 0.3  # repeat a snapshot for about this long (at least 3 times)

    @classmethod
    def make(cls, quick: bool) -> Sizes:
        if quick:
            return cls(
                names=(10, 1_000, 10_000),
                namespaces=(1, 200),
                watchers=(1, 10, 40),
                snapshot_names=(10, 100, 1_000),
                gets=300,
                writes=4,
                watcher_processes=2,
                snapshot_seconds=0.02,
            )
        return cls(
            names=(10, 10_000, 1_000_000),
            namespaces=(1, 10_000),
            watchers=(1, 100, 1_000),
            snapshot_names=(10, 1_000, 100_000),
            gets=5_000,
            writes=30,
            watcher_processes=4,
        )


@dataclasses.dataclass
class Section:
    """One table: its rows of numbers, the figure it is judged by, and the bound."""

    key: str
    title: str
    columns: tuple[str, ...]
    rows: list[tuple[float, ...]] = dataclasses.field(default_factory=list)
    figure: str = ""
    bound: str = ""
    within: bool | None = None

    def print(self) -> None:
        print(f"\n{self.title}")
        cells = [list(self.columns)] + [[_format(v) for v in row] for row in self.rows]
        widths = [max(len(line[i]) for line in cells) for i in range(len(self.columns))]
        for n, line in enumerate(cells):
            print("  " + "  ".join(cell.rjust(widths[i]) for i, cell in enumerate(line)))
            if n == 0:
                print("  " + "  ".join("-" * w for w in widths))
        verdict = {True: "within", False: "OUTSIDE", None: "n/a"}[self.within]
        print(f"  {self.figure}; bound: {self.bound}: {verdict}")


def _format(value: float) -> str:
    if value == int(value) and (abs(value) >= 1 or value == 0):
        return f"{int(value):,}"
    return f"{value:,.2f}" if abs(value) < 100 else f"{value:,.0f}"


# ---------------------------------------------------------------------------------- servers


@contextlib.contextmanager
def server(directory: str, name: str) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """``python -m aionamespace serve --unix`` (this copy of aionamespace, no authkey)."""
    path = os.path.join(directory, f"{name}.sock")
    env = dict(os.environ)
    env.pop("AIONAMESPACE_AUTHKEY", None)
    package_parent = os.path.dirname(os.path.dirname(os.path.abspath(aionamespace.__file__)))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_parent, env.get("PYTHONPATH")]))
    process = subprocess.Popen(
        [sys.executable, "-m", "aionamespace", "serve", "--unix", path],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=env,
    )
    try:
        _wait_for_line(process, b"serving on")
        yield process, path
    finally:
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        assert process.stdout is not None
        process.stdout.close()


def _wait_for_line(process: subprocess.Popen[bytes], marker: bytes) -> None:
    assert process.stdout is not None
    deadline = time.monotonic() + SERVER_START_TIMEOUT
    seen = b""
    with selectors.DefaultSelector() as selector:
        selector.register(process.stdout, selectors.EVENT_READ)
        while selector.select(max(0.0, deadline - time.monotonic())):
            line = process.stdout.readline()
            seen += line
            if not line or marker in line:
                break
    if marker not in seen:
        raise RuntimeError(f"the server did not start; it said:\n{seen.decode(errors='replace')}")


def rss_mb(pid: int) -> float:
    """A process's resident set size (VmRSS) in MB (10**6 bytes)."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024 / 1e6
    raise RuntimeError(f"no VmRSS in /proc/{pid}/status")


# ---------------------------------------------------------------------------------- measures


def get_latencies(ns: Any, held: int, gets: int, rng: random.Random) -> tuple[float, float]:
    """Median and p99, in µs, of ``gets`` gets of random names among ``n0`` .. ``n{held-1}``."""
    picks = [f"n{rng.randrange(held)}" for _ in range(gets)]
    deadline = time.perf_counter() + WARM_UP_SECONDS
    while time.perf_counter() < deadline:  # warm: the connection, the server's polling
        for name in picks[:100]:
            getattr(ns, name)
    timings = []
    clock = time.perf_counter_ns
    for name in picks:
        start = clock()
        getattr(ns, name)
        timings.append(clock() - start)
    timings.sort()
    return statistics.median(timings) / 1e3, timings[int(len(timings) * 0.99)] / 1e3


def fill(ns: Any, start: int, stop: int, batch: int) -> None:
    """Names ``n{start}`` .. ``n{stop-1}``, each its number, ``batch`` names an update."""
    for first in range(start, stop, batch):
        ns._update(**{f"n{i}": i for i in range(first, min(stop, first + batch))})


def snapshot_seconds(ns: Any, count: int, seconds: float) -> float:
    """The median time of ``_snapshot`` of ``count`` names, repeated for about ``seconds``."""
    names = tuple(f"n{i}" for i in range(count))
    assert len(ns._snapshot(*names)) == count
    timings: list[float] = []
    deadline = time.perf_counter() + seconds
    while len(timings) < 3 or time.perf_counter() < deadline:
        start = time.perf_counter()
        ns._snapshot(*names)
        timings.append(time.perf_counter() - start)
    return statistics.median(timings)


def flat(section: Section, medians: list[float], what: str) -> None:
    growth = medians[-1] / medians[0]
    section.figure = f"median at {what}: {growth:.2f}x the smallest's"
    section.bound = f"flat within {FLAT_WITHIN:g}x"
    section.within = growth <= FLAT_WITHIN


def slope(points: list[tuple[float, float]]) -> float:
    """The least-squares slope of ``(x, y)`` points."""
    mean_x = statistics.fmean(x for x, _ in points)
    mean_y = statistics.fmean(y for _, y in points)
    spread = sum((x - mean_x) ** 2 for x, _ in points)
    return sum((x - mean_x) * (y - mean_y) for x, y in points) / spread if spread else 0.0


# ---------------------------------------------------------------------------------- sections


def names_sections(directory: str, sizes: Sizes, rng: random.Random) -> list[Section]:
    """One namespace grown through ``sizes.names``: get latency and RSS at each size, then
    snapshots of ``sizes.snapshot_names`` names of it."""
    latency = Section(
        "names", "get latency by names in the namespace", ("names", "p50 µs", "p99 µs")
    )
    memory = Section("memory", "server RSS by names of small values", ("names", "RSS MB"))
    snapshot = Section(
        "snapshot", "_snapshot of N names", ("names", "ms per snapshot", "µs per name")
    )
    with server(directory, "names") as (process, path), aionamespace.Namespace(path, "big") as ns:
        ns._ping()
        baseline = rss_mb(process.pid)
        memory.rows.append((0, baseline))
        held = 0
        for size in sizes.names:
            fill(ns, held, size, sizes.fill_batch)
            held = size
            memory.rows.append((size, rss_mb(process.pid)))
            latency.rows.append((size, *get_latencies(ns, held, sizes.gets, rng)))
        for count in sizes.snapshot_names:
            if count > held:
                fill(ns, held, count, sizes.fill_batch)
                held = count
            seconds = snapshot_seconds(ns, count, sizes.snapshot_seconds)
            snapshot.rows.append((count, seconds * 1e3, seconds * 1e6 / count))
    flat(latency, [row[1] for row in latency.rows], f"{sizes.names[-1]:,} names")

    per_million = (memory.rows[-1][1] - baseline) / held * 1e6
    memory.figure = f"{per_million:,.0f} MB per 1M names (from the idle server's {baseline:.1f} MB)"
    memory.bound = f"<= {MB_PER_MILLION_NAMES:g} MB per 1M names"
    memory.within = per_million <= MB_PER_MILLION_NAMES

    largest = snapshot.rows[-1]
    per_name = slope([(row[0], row[1] * 1e3) for row in snapshot.rows])
    snapshot.figure = (
        f"{per_name:.2f} µs per name (slope); {largest[2]:.2f} µs per name at {largest[0]:,}"
    )
    snapshot.bound = f"linear: <= {MICROSECONDS_PER_SNAPSHOT_NAME:g} µs per name"
    snapshot.within = per_name <= MICROSECONDS_PER_SNAPSHOT_NAME
    return [latency, snapshot, memory]


def namespaces_section(directory: str, sizes: Sizes, rng: random.Random) -> Section:
    """Gets in one namespace of 10 names while the server holds more and more namespaces."""
    section = Section(
        "namespaces", "get latency by namespaces on the server", ("namespaces", "p50 µs", "p99 µs")
    )
    ten = {f"n{i}": i for i in range(10)}
    with server(directory, "namespaces") as (_, path), aionamespace.Namespace(path, "ns0") as ns:
        ns._update(**ten)
        held = 1
        for count in sizes.namespaces:
            for i in range(held, count):  # proxies of one server share this thread's connection
                aionamespace.Namespace(path, f"ns{i}")._update(**ten)
            held = max(held, count)
            section.rows.append((count, *get_latencies(ns, len(ten), sizes.gets, rng)))
    flat(section, [row[1] for row in section.rows], f"{sizes.namespaces[-1]:,} namespaces")
    return section


def watchers_section(directory: str, sizes: Sizes) -> Section:
    """One write at a time, until every watcher of it has it."""
    section = Section(
        "watchers",
        "one write, until the last watcher has it",
        ("watchers", "p50 ms", "max ms"),
    )
    with server(directory, "watchers") as (_, path), aionamespace.Namespace(path, "w") as ns:
        ns.x = 0
        with Watchers(sizes.watcher_processes, path, "w") as watchers:
            for count in sizes.watchers:
                times = watchers.measure(count, sizes.writes, ns)
                section.rows.append((count, statistics.median(times) * 1e3, max(times) * 1e3))
    per_watcher = slope([(row[0], row[1] * 1e3) for row in section.rows])
    section.figure = f"{per_watcher:.1f} µs per watcher (slope of the medians)"
    section.bound = f"linear: <= {MICROSECONDS_PER_WATCHER:g} µs per watcher"
    section.within = per_watcher <= MICROSECONDS_PER_WATCHER
    return section


# ---------------------------------------------------------------------------------- run


def run(quick: bool, plot_path: str | None = None, command: str = "") -> dict[str, Any]:
    """Every section, printed; their figures as a dict (for --json); the chart if asked
    (``command``, the one that ran this, is its title)."""
    sizes = Sizes.make(quick)
    rng = random.Random(17)
    print(
        "\nHow cost grows with work (servers: python -m aionamespace serve, asyncio busy-polling)"
        + (" -- --quick: the sizes are shrunk, the figures mean nothing" if quick else ""),
        flush=True,
    )
    with tempfile.TemporaryDirectory(prefix="ans-growth-") as directory:
        sections = names_sections(directory, sizes, rng)
        sections.insert(1, namespaces_section(directory, sizes, rng))
        sections.insert(2, watchers_section(directory, sizes))
    for section in sections:
        section.print()
    if plot_path:
        plot(sections, plot_path, f"how cost grows with work\n{command}")
        print(f"\nplot written to {plot_path}")
    return {
        "quick": quick,
        "sizes": dataclasses.asdict(sizes),
        "sections": {section.key: dataclasses.asdict(section) for section in sections},
    }


def plot(sections: list[Section], path: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, grid = plt.subplots(2, 3, figsize=(13, 8))
    axes = list(grid.flat)
    for ax in axes[len(sections) :]:
        ax.axis("off")
    for ax, section in zip(axes, sections, strict=False):
        xs = [row[0] for row in section.rows]
        # The snapshot's panel shows its cost per name: flat when the cost is linear.
        columns = [2] if section.key == "snapshot" else range(1, len(section.columns))
        for column in columns:
            ax.plot(xs, [row[column] for row in section.rows], "o-", label=section.columns[column])
        if section.key in ("names", "namespaces", "snapshot"):
            ax.set_xscale("symlog", linthresh=1)
        ax.set_xlabel(section.columns[0])
        ax.set_title(section.title, fontsize=9)
        ax.legend(fontsize=7)
        ax.text(
            0.02,
            -0.32,
            f"{section.figure}\nbound: {section.bound}",
            transform=ax.transAxes,
            fontsize=7,
            va="top",
        )
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n".join(__doc__.splitlines()[2:]),
    )
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke run (seconds)")
    parser.add_argument("--json", metavar="FILE", help="also write every figure as JSON")
    parser.add_argument("--plot", metavar="FILE.png", help="also draw the chart (matplotlib)")
    args = parser.parse_args(argv)
    command = shlex.join([sys.executable, *sys.argv])
    print(f"$ {command}")
    print(f"load average {os.getloadavg()}, {os.cpu_count()} CPUs")
    results = run(args.quick, args.plot, f"{command}; load average {os.getloadavg()[0]:.1f}")
    if args.json:
        with open(args.json, "w") as out:
            json.dump(results, out, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
