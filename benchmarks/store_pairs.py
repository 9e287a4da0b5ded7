"""compare.py's three sync over-Redis rows alone, as paired ratios: quicker to rerun, and
steadier on a shared machine.

    python benchmarks/store_pairs.py                  # 9 rounds of the three rows: about 20 s
    python benchmarks/store_pairs.py --rounds 15 --rows get,snapshot
    python benchmarks/store_pairs.py --quick          # a smoke test: the figures mean nothing

It starts a redis-server (a Unix socket, no persistence) and store_server.py over it (the
server of compare.py's store rows: asyncio with the busy-polling loop), then per row and per
round times one sync proxy through the server and redis-py on the same Redis, in slices that
alternate (which goes first alternates too), so that a round's ratio compares the two under
the same load. As in compare.py's rows, a cached proxy (``cache=True``) reads the proxy's
namespace too, so the server follows it (stores/redis_follow.py); ``--unfollowed`` leaves it
out. It prints per row the median of the rounds' ratios (> 1: ours faster), the
worst and best round, each side's median rate, and how often the proxy's reply poll
(client/busypoll.py) gave up on a call: a *miss* (the reply came after the poll window, or
the CPUs were busy), per 1,000 calls.

Rows (their targets, issue 16): ``get`` a sync get against a GET (>= 0.5x), ``snapshot``
``_snapshot`` of 100 names against an MGET of their keys (>= 1x, in names/s), ``update``
``_update`` of 100 names against an MSET (>= 1x).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator

import aionamespace
from aionamespace.client import busypoll

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import compare

SERVER_SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "store_server.py")
ROWS = ("get", "snapshot", "update")
NAMES = 100


class MissCounter:
    """Counts the proxy's reply-poll misses (wraps ``ReplyPoll._missed`` while in use)."""

    def __init__(self) -> None:
        self.misses = 0

    @contextlib.contextmanager
    def counting(self) -> Iterator[MissCounter]:
        missed = busypoll.ReplyPoll._missed

        def counted(poll: busypoll.ReplyPoll) -> None:
            self.misses += 1
            missed(poll)

        busypoll.ReplyPoll._missed = counted  # type: ignore[method-assign,assignment]
        try:
            yield self
        finally:
            busypoll.ReplyPoll._missed = missed  # type: ignore[method-assign]


def rate(run: Callable[[], object], units: int, seconds: float) -> tuple[float, int]:
    """(units per second, calls) of ``run`` called again and again for about ``seconds``."""
    calls = 0
    started = time.perf_counter()
    deadline = started + seconds
    while True:
        for _ in range(10):
            run()
        calls += 10
        now = time.perf_counter()
        if now >= deadline:
            return calls * units / (now - started), calls


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--slice", type=float, default=0.25, help="seconds per side per round")
    parser.add_argument("--rows", default=",".join(ROWS), help=f"of {', '.join(ROWS)}")
    parser.add_argument("--quick", action="store_true", help="2 rounds of short slices")
    parser.add_argument(
        "--unfollowed",
        action="store_true",
        help="without compare.py's cached proxy on the namespace (the server then does not "
        "follow it)",
    )
    args = parser.parse_args(argv)
    rows = args.rows.split(",")
    if not set(rows) <= set(ROWS) or args.rounds < 1:
        parser.error(f"--rows takes names of {', '.join(ROWS)}; --rounds at least 1")
    if args.quick:
        args.rounds, args.slice = 2, 0.02
    import redis

    print(f"$ {' '.join([os.path.basename(sys.executable), *sys.argv])}")
    print(f"load average {os.getloadavg()}; {args.rounds} rounds of {args.slice:g} s a side")
    with contextlib.ExitStack() as stack:
        directory = stack.enter_context(tempfile.TemporaryDirectory(prefix="store-pairs-"))
        _, path = stack.enter_context(compare.redis_server(directory, "redis"))
        address = os.path.join(directory, "server.sock")
        command = [sys.executable, SERVER_SCRIPT, "--unix", address]
        command += ["--store", f"unix://{path}", "--prefix", "pairs"]
        server = stack.enter_context(compare.child_process(command, compare.server_environment()))
        compare.wait_for_line(server, b"serving on")
        ours = aionamespace.Namespace(address, "bench")
        stack.callback(ours._close)
        if not args.unfollowed:  # (compare.py's rows keep one: the server follows "bench")
            cached = aionamespace.Namespace(address, "bench", cache=True)
            stack.callback(cached._close)
        direct = redis.Redis(unix_socket_path=path)
        stack.callback(direct.close)
        values = {f"n{i}": i for i in range(NAMES)}
        names = list(values)
        ours.x = 1
        ours._update(**values)
        direct.mset({"x": 1, **values})
        assert dict(ours._snapshot(*names)) == values
        if not args.unfollowed:
            assert cached.x == 1
        contenders = {
            "get": (lambda: ours.x, lambda: direct.get("x"), 1),
            "snapshot": (lambda: ours._snapshot(*names), lambda: direct.mget(names), NAMES),
            "update": (lambda: ours._update(**values), lambda: direct.mset(values), NAMES),
        }
        counter = stack.enter_context(MissCounter().counting())
        print(
            f"{'row':9}  {'ratio':>6}  {'worst':>6}  {'best':>6}  {'ours':>10}  {'redis-py':>10}"
            "  poll misses per 1,000 calls"
        )
        for row in rows:
            mine, theirs, units = contenders[row]
            rate(mine, units, args.slice / 4)  # (warm up both)
            rate(theirs, units, args.slice / 4)
            ratios, ours_rates, their_rates = [], [], []
            misses, calls = counter.misses, 0
            for turn in range(args.rounds):
                if turn % 2:
                    theirs_rate, _ = rate(theirs, units, args.slice)
                    ours_rate, done = rate(mine, units, args.slice)
                else:
                    ours_rate, done = rate(mine, units, args.slice)
                    theirs_rate, _ = rate(theirs, units, args.slice)
                calls += done
                ratios.append(ours_rate / theirs_rate)
                ours_rates.append(ours_rate)
                their_rates.append(theirs_rate)
            print(
                f"{row:9}  {statistics.median(ratios):6.3f}  {min(ratios):6.3f}  "
                f"{max(ratios):6.3f}  {statistics.median(ours_rates):10,.0f}  "
                f"{statistics.median(their_rates):10,.0f}  "
                f"{(counter.misses - misses) * 1000 / calls:.0f}",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
