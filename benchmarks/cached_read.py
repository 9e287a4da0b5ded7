"""A cached read against its floor: the client cache's hot path, measured alone.

The floor is the least a proxy's read can cost: an object whose ``__getattribute__`` returns
from a dict it holds (issue 17: a cached read of an unchanged attribute should reach >= 0.5x
of it). Every contender is read by the same loop, ``for _ in range(n): getattr(ns, name)``
(``await getattr(ns, name)`` for the async ones, against a floor whose ``__getattribute__``
returns a coroutine), round by round in one process, so that the machine's noise hits all
alike; the figures are the min and median of the rounds in ns per read, the ratio is the
floor's time over ours (higher is better).

    python benchmarks/cached_read.py
    python benchmarks/cached_read.py --rounds 15 --reads 200000
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from collections.abc import Callable, Coroutine
from typing import Any

import aionamespace

SMALL_LIST = [1, 2, 3]
SMALL_DICT = {"a": 1, "b": [2, 3]}


class DictFloor:
    """An object whose ``__getattribute__`` returns from a dict it holds, and nothing else."""

    __slots__ = ("_values",)

    def __init__(self, values: dict[str, Any]) -> None:
        object.__setattr__(self, "_values", values)

    def __getattribute__(self, name: str) -> Any:
        return object.__getattribute__(self, "_values")[name]


async def _value(value: Any) -> Any:
    return value


class AsyncDictFloor(DictFloor):
    """The async floor: ``await floor.x`` is a coroutine returning from a dict."""

    __slots__ = ()

    def __getattribute__(self, name: str) -> Any:
        return _value(object.__getattribute__(self, "_values")[name])


def reads(ns: Any, name: str) -> Callable[[int], float]:
    def run(n: int) -> float:
        start = time.perf_counter()
        for _ in range(n):
            getattr(ns, name)
        return time.perf_counter() - start

    return run


def awaited_reads(ns: Any, name: str) -> Callable[[int], Coroutine[Any, Any, float]]:
    async def run(n: int) -> float:
        start = time.perf_counter()
        for _ in range(n):
            await getattr(ns, name)
        return time.perf_counter() - start

    return run


def report(title: str, samples: dict[str, list[float]], floor: str) -> None:
    print(f"\n{title}")
    print(f"  {'read':<28} {'min ns':>8} {'median ns':>10} {'floor/ours (min)':>17}")
    best_floor = min(samples[floor])
    for who, times in samples.items():
        best, middle = min(times), statistics.median(times)
        ratio = best_floor / best
        print(f"  {who:<28} {best:>8.0f} {middle:>10.0f} {ratio:>16.2f}x")


def measure(
    contenders: dict[str, Callable[[int], float]], rounds: int, n: int
) -> dict[str, list[float]]:
    samples: dict[str, list[float]] = {who: [] for who in contenders}
    for run in contenders.values():
        run(n // 10)  # warm up
    for _ in range(rounds):
        for who, run in contenders.items():  # interleaved: the same noise for all
            samples[who].append(run(n) / n * 1e9)
    return samples


async def measure_async(
    address: Any, authkey: bytes, name: str, rounds: int, n: int
) -> dict[str, list[float]]:
    """The async contenders, in one task (``async with`` is entered and left by it)."""
    floor = AsyncDictFloor({"c": 1})
    async with aionamespace.AsyncNamespace(address, name, authkey=authkey, cache=True) as ns:
        for attribute in ("c", "log"):
            await getattr(ns, attribute)  # the first read asks the server, then it is cached
        contenders = {
            "async floor (int)": awaited_reads(floor, "c"),
            "async cached int": awaited_reads(ns, "c"),
            "async cached [1, 2, 3]": awaited_reads(ns, "log"),
        }
        samples: dict[str, list[float]] = {who: [] for who in contenders}
        for run in contenders.values():
            await run(n // 10)  # warm up
        for _ in range(rounds):
            for who, run in contenders.items():
                samples[who].append(await run(n) / n * 1e9)
    return samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--reads", type=int, default=200_000, help="reads per round")
    args = parser.parse_args()

    with aionamespace.Manager() as manager:
        writer = manager.Namespace()
        name = writer._key
        writer.c, writer.log, writer.config = 1, SMALL_LIST, SMALL_DICT
        ns = aionamespace.Namespace(manager.address, name, authkey=manager.authkey, cache=True)
        floor = DictFloor({"c": 1, "log": SMALL_LIST, "config": SMALL_DICT})
        for attribute in ("c", "log", "config"):
            assert getattr(ns, attribute) == getattr(floor, attribute)
        sync = measure(
            {
                "floor (int)": reads(floor, "c"),
                "cached int": reads(ns, "c"),
                "cached [1, 2, 3] (a copy)": reads(ns, "log"),
                "cached small dict (a copy)": reads(ns, "config"),
            },
            args.rounds,
            args.reads,
        )
        awaited = asyncio.run(
            measure_async(manager.address, manager.authkey, name, args.rounds, args.reads)
        )
        ns._close()
    print(f"{args.rounds} rounds of {args.reads:,} reads, interleaved")
    report("sync: getattr(ns, name)", sync, "floor (int)")
    report("async: await getattr(ns, name), inside async with", awaited, "async floor (int)")


if __name__ == "__main__":
    main()
