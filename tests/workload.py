"""The load workload, shared by tests/test_load.py and benchmarks/reliability.py.

Spawned processes each run sync ``Namespace`` proxies in threads and ``AsyncNamespace`` proxies
in tasks (asyncio in even-numbered processes, trio in odd ones); every thread and task is one
client with its own connection. They all connect, meet at a start line (a counter on the server
itself), then for a fixed time do random ``get`` / ``set`` / ``_incr`` on one shared namespace,
each keeping a ``Tally`` of what it did and saw: enough for the caller to prove that no
increment was lost and that every get returned a value some client had set. No pytest here, so
that the reliability script can import it too (it puts ``tests/`` on its path).
"""

from __future__ import annotations

import random
import threading
import time
from typing import Any

import anyio
import anyio.to_thread

from aionamespace import AsyncNamespace, Namespace
from aionamespace.protocol.connection import Address

__all__ = ["INITIAL", "Tally", "plan", "run_process"]

INITIAL = ("init", 0)  # the shared value before any client sets it


class Tally:
    """What one client did and saw."""

    def __init__(self, client: int) -> None:
        self.client = client
        self.ops = 0
        self.sets = 0  # this client's values were (client, 0) .. (client, sets - 1)
        self.increments = 0  # the sum of every ``by`` it added to the counter
        self.seen: dict[int, int] = {}  # writer -> highest sequence number read
        self.bad_values: list[Any] = []
        self.errors: list[str] = []
        self.latencies: list[float] = []  # seconds, per operation

    def saw(self, value: Any) -> None:
        if value == INITIAL:
            return
        if (
            type(value) is tuple
            and len(value) == 2
            and type(value[0]) is int
            and type(value[1]) is int
        ):
            writer, sequence = value
            if sequence > self.seen.get(writer, -1):
                self.seen[writer] = sequence
        elif len(self.bad_values) < 5:
            self.bad_values.append(value)

    def choose(self, rng: random.Random) -> str:
        """The next operation, by the workload's mix: 40% get, 30% set, 30% _incr."""
        choice = rng.random()
        return "get" if choice < 0.4 else "set" if choice < 0.7 else "incr"

    def report(self) -> dict[str, Any]:
        return dict(vars(self))


def sync_client(
    ns: Namespace, tally: Tally, go: threading.Event, deadline: list[float], start_seconds: float
) -> None:
    rng = random.Random(tally.client)
    try:
        ns._ping()  # connected before the start
        if not go.wait(start_seconds):
            raise TimeoutError("no start signal")
        while (start := time.monotonic()) < deadline[0]:
            op = tally.choose(rng)
            if op == "get":
                tally.saw(ns.shared)
            elif op == "set":
                ns.shared = (tally.client, tally.sets)
                tally.sets += 1
            else:
                by = rng.randint(1, 3)
                ns._incr("counter", by)
                tally.increments += by
            tally.latencies.append(time.monotonic() - start)
            tally.ops += 1
    except Exception as exc:  # reported to the parent, which fails
        tally.errors.append(repr(exc))
    finally:
        ns._close()


async def async_client(
    ns: AsyncNamespace, tally: Tally, go: anyio.Event, deadline: list[float]
) -> None:
    rng = random.Random(tally.client)
    try:
        await go.wait()
        while (start := time.monotonic()) < deadline[0]:
            op = tally.choose(rng)
            if op == "get":
                tally.saw(await ns.shared)
            elif op == "set":
                ns.shared = (tally.client, tally.sets)
                tally.sets += 1
                await ns._flush()
            else:
                by = rng.randint(1, 3)
                await ns._incr("counter", by)
                tally.increments += by
            tally.latencies.append(time.monotonic() - start)
            tally.ops += 1
    except Exception as exc:  # reported to the parent, which fails
        tally.errors.append(repr(exc))
    finally:
        await ns._close()


def run_process(
    address: Address,
    authkey: bytes,
    name: str,
    backend: str,
    first_client: int,
    threads: int,
    tasks: int,
    total: int,
    seconds: float,
    start_seconds: float,
    reports: Any,
) -> None:
    """A spawned process: ``threads`` sync clients and ``tasks`` async clients on ``backend``,
    starting once all ``total`` clients of every process are connected (``start_seconds`` at
    most); puts the list of its clients' tally reports on ``reports``."""
    tallies = [Tally(first_client + i) for i in range(threads + tasks)]
    go = threading.Event()
    deadline = [0.0]
    workers = [
        threading.Thread(
            target=sync_client,
            args=(Namespace(address, name, authkey=authkey), tally, go, deadline, start_seconds),
            daemon=True,
        )
        for tally in tallies[:threads]
    ]
    for worker in workers:
        worker.start()

    async def main() -> None:
        async_go = anyio.Event()
        proxies = [AsyncNamespace(address, name, authkey=authkey) for _ in range(tasks)]
        async with anyio.create_task_group() as group:
            for ns, tally in zip(proxies, tallies[threads:], strict=True):
                await ns._ping()  # connected before the start
                group.start_soon(async_client, ns, tally, async_go, deadline)
            # The start line: this process is connected; wait until every process is.
            line = AsyncNamespace(address, name, authkey=authkey)
            await line._incr("connected", threads + tasks)
            await line._wait_for("connected", lambda count: count >= total, timeout=start_seconds)
            await line._close()
            deadline[0] = time.monotonic() + seconds
            go.set()
            async_go.set()
        await anyio.to_thread.run_sync(join_all, workers, start_seconds + 60)

    try:
        anyio.run(main, backend=backend)
    finally:
        go.set()
        join_all(workers, start_seconds + 60)
        reports.put([tally.report() for tally in tallies])


def join_all(workers: list[threading.Thread], seconds: float) -> None:
    for worker in workers:
        worker.join(seconds)


def plan(clients: int, processes: int, per_thread: int) -> list[tuple[str, int, int, int]]:
    """(backend, first client, threads, tasks) per process: one in ``per_thread`` of each
    process's clients is a thread, the rest are tasks."""
    processes = max(1, min(processes, clients))
    plans, first = [], 0
    for index in range(processes):
        count = clients // processes + (index < clients % processes)
        threads = count // per_thread
        plans.append(("asyncio" if index % 2 == 0 else "trio", first, threads, count - threads))
        first += count
    return plans
