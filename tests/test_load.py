"""Load: many clients of every kind at once on one Manager's server; nothing lost, nothing wrong.

Spawned processes each run sync ``Namespace`` proxies in threads and ``AsyncNamespace``
proxies in tasks (asyncio in even-numbered processes, trio in odd ones); every thread and task
is one client with its own connection. They all connect, meet at a start line (a counter on the
server itself), then for a fixed time do random ``get`` / ``set`` / ``_incr`` on one shared
namespace. Afterwards:

* no client saw an error;
* no increment was lost: the server's counter equals the sum of the increments the clients
  report having made;
* every ``get`` returned a value some client set: values are ``(client, sequence)`` pairs, and
  no client saw a sequence number its writer had not reached.

The size fits CI: 120 clients for 3 seconds, about 4 s per server backend (asyncio and trio)
on 2 cores.
Environment variables set the full size when run by hand::

    AIONAMESPACE_LOAD_CLIENTS=1000 AIONAMESPACE_LOAD_SECONDS=10 \\
        python -m pytest tests/test_load.py -q

``AIONAMESPACE_LOAD_PROCESSES`` (default 4) sets how many processes share the clients. The
per-test timeout grows with the duration. ``benchmarks/reliability.py`` runs the same kind of
load at full size and records the figures in docs/RELIABILITY.md.
"""

from __future__ import annotations

import multiprocessing
import os
import queue
import random
import threading
import time
from typing import Any

import anyio
import pytest

from aionamespace import AsyncNamespace, Manager, Namespace
from aionamespace._protocol import Address

CLIENTS = int(os.environ.get("AIONAMESPACE_LOAD_CLIENTS", "120"))
SECONDS = float(os.environ.get("AIONAMESPACE_LOAD_SECONDS", "3"))
PROCESSES = int(os.environ.get("AIONAMESPACE_LOAD_PROCESSES", "4"))
START_SECONDS = 60.0  # for every client of every process to connect and reach the start line
INITIAL = ("init", 0)

pytestmark = pytest.mark.timeout(max(60.0, 4 * SECONDS + 30))  # 60 s at the CI size


# ---------------------------------------------------------------------- a client's work


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

    def saw(self, value: Any) -> None:
        if value == INITIAL:
            return
        if (type(value) is tuple and len(value) == 2 and type(value[0]) is int
                and type(value[1]) is int):
            writer, sequence = value
            if sequence > self.seen.get(writer, -1):
                self.seen[writer] = sequence
        elif len(self.bad_values) < 5:
            self.bad_values.append(value)

    def report(self) -> dict[str, Any]:
        return dict(vars(self))


def sync_client(ns: Namespace, tally: Tally, go: threading.Event, deadline: list[float]) -> None:
    rng = random.Random(tally.client)
    try:
        ns._ping()  # connected before the start
        if not go.wait(START_SECONDS):
            raise TimeoutError("no start signal")
        while time.monotonic() < deadline[0]:
            choice = rng.random()
            if choice < 0.4:
                tally.saw(ns.shared)
            elif choice < 0.7:
                ns.shared = (tally.client, tally.sets)
                tally.sets += 1
            else:
                by = rng.randint(1, 3)
                ns._incr("counter", by)
                tally.increments += by
            tally.ops += 1
    except Exception as exc:  # reported to the parent, which fails the test
        tally.errors.append(repr(exc))
    finally:
        ns._close()


async def async_client(ns: AsyncNamespace, tally: Tally, go: anyio.Event,
                       deadline: list[float]) -> None:
    rng = random.Random(tally.client)
    try:
        await go.wait()
        while time.monotonic() < deadline[0]:
            choice = rng.random()
            if choice < 0.4:
                tally.saw(await ns.shared)
            elif choice < 0.7:
                ns.shared = (tally.client, tally.sets)
                tally.sets += 1
                await ns._flush()
            else:
                by = rng.randint(1, 3)
                await ns._incr("counter", by)
                tally.increments += by
            tally.ops += 1
    except Exception as exc:  # reported to the parent, which fails the test
        tally.errors.append(repr(exc))
    finally:
        await ns._close()


# ---------------------------------------------------------------------- one process


def run_process(address: Address, authkey: bytes, name: str, backend: str, first_client: int,
                threads: int, tasks: int, total: int, seconds: float, reports: Any) -> None:
    """A spawned process: ``threads`` sync clients and ``tasks`` async clients on ``backend``."""
    tallies = [Tally(first_client + i) for i in range(threads + tasks)]
    go = threading.Event()
    deadline = [0.0]
    workers = [threading.Thread(target=sync_client, args=(
        Namespace(address, name, authkey=authkey), tally, go, deadline))
        for tally in tallies[:threads]]
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
            await line._wait_for("connected", lambda count: count >= total,
                                 timeout=START_SECONDS)
            await line._close()
            deadline[0] = time.monotonic() + seconds
            go.set()
            async_go.set()
        await anyio.to_thread.run_sync(join_all, workers)

    try:
        anyio.run(main, backend=backend)
    finally:
        go.set()
        join_all(workers)
        reports.put([tally.report() for tally in tallies])


def join_all(workers: list[threading.Thread]) -> None:
    for worker in workers:
        worker.join(START_SECONDS + 60)


# ---------------------------------------------------------------------- the test


def plan(clients: int, processes: int) -> list[tuple[str, int, int, int]]:
    """(backend, first client, threads, tasks) per process: half threads, half tasks."""
    processes = max(1, min(processes, clients))
    plans, first = [], 0
    for index in range(processes):
        count = clients // processes + (index < clients % processes)
        threads = count // 2
        plans.append(("asyncio" if index % 2 == 0 else "trio", first, threads, count - threads))
        first += count
    return plans


def collect(reports: Any, processes: list[Any], expected: int) -> list[dict[str, Any]]:
    """Every process's report (bounded wait; fails at once for a process that died)."""
    tallies: list[dict[str, Any]] = []
    received = 0
    deadline = time.monotonic() + START_SECONDS + 3 * SECONDS + 30
    while received < expected:
        try:
            tallies.extend(reports.get(timeout=0.1))
            received += 1
        except queue.Empty:
            dead = [p.exitcode for p in processes if not p.is_alive() and p.exitcode != 0]
            if dead and reports.empty():
                pytest.fail(f"a load process died (exit codes {dead})")
            if time.monotonic() > deadline:
                pytest.fail("the load processes did not report in time")
    return tallies


@pytest.mark.slow
@pytest.mark.parametrize("server_backend", ["asyncio", "trio"])
def test_load_loses_nothing(server_backend: str) -> None:
    spawn = multiprocessing.get_context("spawn")
    name = "load"
    plans = plan(CLIENTS, PROCESSES)
    with Manager(backend=server_backend) as manager:
        ns = manager.Namespace(name, shared=INITIAL, counter=0)
        assert manager.authkey is not None
        reports = spawn.Queue()
        processes = [spawn.Process(target=run_process, args=(
            manager.address, manager.authkey, name, backend, first, threads, tasks, CLIENTS,
            SECONDS, reports)) for backend, first, threads, tasks in plans]
        try:
            for process in processes:
                process.start()
            tallies = collect(reports, processes, len(processes))
            for process in processes:
                process.join(30)
        finally:
            for process in processes:
                if process.is_alive():
                    process.kill()
                    process.join()
                process.close()
            reports.close()
            reports.join_thread()
        final = ns._snapshot()
        ns._close()

    assert len(tallies) == CLIENTS
    errors = [(t["client"], error) for t in tallies for error in t["errors"]]
    assert not errors, f"{len(errors)} errors, e.g. {errors[:5]}"
    assert all(t["ops"] > 0 for t in tallies), "a client never got to run"
    assert final["counter"] == sum(t["increments"] for t in tallies), "increments were lost"
    assert final["connected"] == CLIENTS
    bad = [value for t in tallies for value in t["bad_values"]]
    assert not bad, f"gets returned values nobody set: {bad[:5]}"
    sets = {t["client"]: t["sets"] for t in tallies}
    phantom = [(reader["client"], writer, sequence) for reader in tallies
               for writer, sequence in reader["seen"].items()
               if sequence >= sets.get(writer, 0)]
    assert not phantom, f"gets returned values their writer never set: {phantom[:5]}"
    last = final["shared"]
    assert last == INITIAL or last[1] < sets[last[0]]
