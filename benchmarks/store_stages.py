"""Where the wall time of one call through a server over Redis goes, stage by stage.

    python benchmarks/store_stages.py                  # about 40 s
    python benchmarks/store_stages.py --ops 500 --rounds 3
    python benchmarks/store_stages.py --quick          # tiny counts: checks that it runs

compare.py's store rows say how a call through an aionamespace server over Redis compares with
redis-py talking to the same Redis; store_costs.py, what each call costs Redis and the server
in commands and CPU. This script says where one call's *wall time* goes, which is what those
rows measure: one sync proxy, one call at a time, as in compare.py (with a cached proxy
following the namespace, as there; ``--unfollowed`` leaves it out).

It starts its own redis-server (a Unix socket, no persistence) and a server over it
(store_server.py, busy polling as ``serve`` does, in a process of its own), with four clock
marks added to that server from the outside (``--serve`` below wraps four methods, nothing in
the package changes): when the client's request arrives, when the server writes its command to
Redis, when Redis's reply arrives, and when the server writes its answer. Per call:

* *before Redis*: request in -> command out (decode, check, pack the Redis command);
* *Redis*: command out -> reply in (Redis's wake-up, its work, the reply's way back);
* *after Redis*: reply in -> answer out (parse the reply, make and write the answer);
* *client*: the rest of the call's wall time: the proxy's own work (packing the request,
  decoding the answer) and both hops between it and the server, wake-ups included.

Then the same for redis-py's ``GET``, ``MGET`` and ``MSET`` on the same Redis (their wall time
and Redis's CPU), and for each row the CPU per call of Redis (``INFO cpu``), the server
(``/proc``) and this process. Medians of the rounds; a round's stages are the medians of its
calls. The marks cost the server a few microseconds per call.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

STAGES = ("before", "redis", "after")
NAMES = 100


# ------------------------------------------------------------------------------ the server


def serve(argv: list[str]) -> None:
    """store_server.py's main, with the four marks; SIGUSR1 prints the stages' medians since
    the last (a line ``stages {...}``) and starts again."""
    import store_server
    from aionamespace.server import shells
    from aionamespace.server.stores import redis_link

    clock = time.perf_counter
    marks = [0.0, 0.0, 0.0]  # request in, command out, reply in (0: not yet, this call)
    samples: dict[str, list[float]] = {stage: [] for stage in STAGES}

    def wrap_received(method: Callable[..., Any]) -> Callable[..., Any]:
        def received(self: Any, *args: Any) -> Any:
            marks[0], marks[1], marks[2] = clock(), 0.0, 0.0
            return method(self, *args)

        return received

    def wrap_answer(method: Callable[..., Any]) -> Callable[..., Any]:
        def answer(self: Any, *args: Any) -> Any:
            if marks[0] and marks[1] and marks[2]:
                now = clock()
                samples["before"].append(marks[1] - marks[0])
                samples["redis"].append(marks[2] - marks[1])
                samples["after"].append(now - marks[2])
                marks[0] = 0.0
            return method(self, *args)

        return answer

    def wrap_mark(method: Callable[..., Any], at: int) -> Callable[..., Any]:
        """Mark ``at`` (1: command out, 2: reply in) the first time, once the one before it is."""

        def marked(self: Any, *args: Any) -> Any:
            if marks[at - 1] and not marks[at]:
                marks[at] = clock()
            return method(self, *args)

        return marked

    connection, link = shells.AsyncioConnection, redis_link._Connection
    connection.buffer_updated = wrap_received(connection.buffer_updated)  # type: ignore[method-assign]
    connection.write = wrap_answer(connection.write)  # type: ignore[method-assign]
    connection.write_all = wrap_answer(connection.write_all)  # type: ignore[method-assign]
    link.write = wrap_mark(link.write, 1)  # type: ignore[method-assign]
    link.data_received = wrap_mark(link.data_received, 2)  # type: ignore[method-assign]

    def report(signum: int, frame: Any) -> None:
        medians = {
            stage: statistics.median(found) * 1e6 if found else None
            for stage, found in samples.items()
        }
        medians["calls"] = len(samples["before"])
        print("stages " + json.dumps(medians), flush=True)
        for found in samples.values():
            found.clear()

    signal.signal(signal.SIGUSR1, report)
    sys.argv = [store_server.__file__, *argv]
    store_server.main()


# ------------------------------------------------------------------------------ the client


def own_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def redis_cpu(client: Any) -> float:
    info = client.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def measure(args: argparse.Namespace) -> list[dict[str, Any]]:
    import redis

    import aionamespace
    import compare
    import store_costs

    rows: list[dict[str, Any]] = []
    with contextlib.ExitStack() as stack:
        directory = stack.enter_context(tempfile.TemporaryDirectory(prefix="aionamespace-"))
        _, redis_path = stack.enter_context(compare.redis_server(directory, "redis"))
        address = os.path.join(directory, "server.sock")
        command = [sys.executable, os.path.abspath(__file__), "--serve", "--unix", address]
        command += ["--store", f"unix://{redis_path}", "--prefix", "bench-store"]
        server = stack.enter_context(compare.child_process(command, compare.server_environment()))
        compare.wait_for_line(server, b"serving on")

        values = {f"n{i}": i for i in range(NAMES)}
        names = list(values)
        ours = aionamespace.Namespace(address, "bench")
        stack.callback(ours._close)
        ours.x, ours.c = 1, 1
        ours._update(**values)
        if not args.unfollowed:  # (as compare.py's store rows: a cached proxy follows)
            cached = aionamespace.Namespace(address, "bench", cache=True)
            stack.callback(cached._close)
            assert cached.c == 1
        direct = redis.Redis(unix_socket_path=redis_path)
        stack.callback(direct.close)
        keyed = {"{bench}" + name: value for name, value in values.items()}
        direct.mset({"{bench}x": 1, **keyed})

        cases: list[tuple[str, bool, Callable[[], object]]] = [
            ("get", True, lambda: ours.x),
            ("set", True, lambda: setattr(ours, "x", 2)),
            (f"_snapshot of {NAMES} names", True, lambda: ours._snapshot(*names)),
            (f"_update of {NAMES} names", True, lambda: ours._update(**values)),
            ("redis-py GET", False, lambda: direct.get("{bench}x")),
            (f"redis-py MGET of {NAMES}", False, lambda: direct.mget(list(keyed))),
            (f"redis-py MSET of {NAMES}", False, lambda: direct.mset(keyed)),
        ]
        for label, through_server, op in cases:
            rounds = []
            for _ in range(args.rounds):
                if through_server:
                    server.send_signal(signal.SIGUSR1)  # (a fresh start for the stages)
                    compare.wait_for_line(server, b"stages")
                before = (own_cpu(), redis_cpu(direct), store_costs.process_cpu(server.pid))
                start = time.perf_counter()
                for _ in range(args.ops):
                    op()
                wall = (time.perf_counter() - start) / args.ops
                after = (own_cpu(), redis_cpu(direct), store_costs.process_cpu(server.pid))
                spent = [(b - a) / args.ops for a, b in zip(before, after, strict=True)]
                found: dict[str, Any] = {"wall": wall * 1e6}
                found["client_cpu"], found["redis_cpu"] = spent[0] * 1e6, spent[1] * 1e6
                if through_server:
                    found["server_cpu"] = spent[2] * 1e6
                    server.send_signal(signal.SIGUSR1)
                    line = compare.wait_for_line(server, b"stages")
                    stages = json.loads(line.split(b"stages ", 1)[1])
                    found.update({stage: stages[stage] for stage in STAGES})
                    found["client"] = found["wall"] - sum(stages[stage] for stage in STAGES)
                rounds.append(found)
            row = {"row": label}
            for field in rounds[0]:
                row[field] = statistics.median(r[field] for r in rounds)
            rows.append(row)
            print_row(row)
    return rows


COLUMNS = (
    ("wall", "wall"),
    ("client", "client"),
    ("before", "before Redis"),
    ("redis", "Redis"),
    ("after", "after Redis"),
    ("redis_cpu", "Redis CPU"),
    ("server_cpu", "server CPU"),
    ("client_cpu", "client CPU"),
)


def print_header() -> None:
    print(f"{'µs per call':32s}" + "".join(f"{title:>14s}" for _, title in COLUMNS))


def print_row(row: dict[str, Any]) -> None:
    cells = "".join(
        f"{row[field]:14.0f}" if row.get(field) is not None else f"{'-':>14s}"
        for field, _ in COLUMNS
    )
    print(f"{row['row']:32s}{cells}", flush=True)


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--serve":
        serve(sys.argv[2:])
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ops", type=int, default=1000, help="calls per round (default 1000)")
    parser.add_argument("--rounds", type=int, default=5, help="rounds per row (default 5)")
    parser.add_argument("--unfollowed", action="store_true", help="no cached proxy following")
    parser.add_argument("--json", metavar="FILE", help="also write the rows as JSON")
    parser.add_argument("--quick", action="store_true", help="tiny counts, no figures")
    args = parser.parse_args()
    if args.quick:
        args.ops, args.rounds = 20, 1
    print(f"{args.rounds} rounds of {args.ops} calls; medians of the rounds", flush=True)
    print_header()
    rows = measure(args)
    if args.json:
        with open(args.json, "w") as out:
            json.dump(rows, out, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
