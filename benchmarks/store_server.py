"""An aionamespace server over a Redis store, in a process of its own, for compare.py.

    python benchmarks/store_server.py --unix PATH --store URL [--prefix P] [--profile FILE]

It serves as ``python -m aionamespace serve`` does (asyncio with its busy-polling loop, stopped
by SIGTERM) a ``Server(store=RedisStore(URL, prefix=PREFIX))``: the server every host would run
over one shared Redis. ``--profile FILE`` runs it under cProfile and writes the stats to FILE
when it stops (docs/SCALING.md reads such profiles).
"""

from __future__ import annotations

import argparse
import cProfile
import functools

import anyio

from aionamespace.cli.serve import serve
from aionamespace.server.busypoll import DEFAULT_SPIN_SECONDS, busy_poll_loop_factory
from aionamespace.server.stores.redis import RedisStore


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--unix", required=True, metavar="PATH")
    parser.add_argument("--store", required=True, metavar="URL")
    parser.add_argument("--prefix", default="aionamespace")
    parser.add_argument("--profile", metavar="FILE")
    parser.add_argument(
        "--busy-poll-us",
        type=float,
        default=DEFAULT_SPIN_SECONDS * 1e6,
        help="as serve's (0: the plain asyncio loop, whose CPU time is all work)",
    )
    args = parser.parse_args()
    store = RedisStore(args.store, prefix=args.prefix)
    spin = args.busy_poll_us / 1e6
    loop_factory = functools.partial(busy_poll_loop_factory, spin) if spin else None
    run = functools.partial(
        anyio.run,
        functools.partial(serve, args.unix, store=store),  # type: ignore[arg-type]
        backend="asyncio",
        backend_options={} if loop_factory is None else {"loop_factory": loop_factory},
    )
    if args.profile is None:
        run()
        return
    profiler = cProfile.Profile()
    try:
        profiler.runcall(run)
    finally:
        profiler.dump_stats(args.profile)


if __name__ == "__main__":
    main()
