"""Load: many clients of every kind at once on one Manager's server; nothing lost, nothing wrong.

Spawned processes each run sync ``Namespace`` proxies in threads and ``AsyncNamespace``
proxies in tasks (asyncio in even-numbered processes, trio in odd ones); every thread and task
is one client with its own connection. They all connect, meet at a start line (a counter on the
server itself), then for a fixed time do random ``get`` / ``set`` / ``_incr`` on one shared
namespace (the workload is tests/workload.py's, which benchmarks/reliability.py runs too).
Afterwards:

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
import time
from typing import Any

import pytest

from aionamespace import Manager
from workload import INITIAL, plan, run_process

CLIENTS = int(os.environ.get("AIONAMESPACE_LOAD_CLIENTS", "120"))
SECONDS = float(os.environ.get("AIONAMESPACE_LOAD_SECONDS", "3"))
PROCESSES = int(os.environ.get("AIONAMESPACE_LOAD_PROCESSES", "4"))
START_SECONDS = 60.0  # for every client of every process to connect and reach the start line

pytestmark = pytest.mark.timeout(max(60.0, 4 * SECONDS + 30))  # 60 s at the CI size


# ---------------------------------------------------------------------- the test


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
def test_load_loses_nothing(server_backend: str) -> None:
    spawn = multiprocessing.get_context("spawn")
    name = "load"
    plans = plan(CLIENTS, PROCESSES, per_thread=2)  # half threads, half tasks
    with Manager(backend=server_backend) as manager:
        ns = manager.Namespace(name, shared=INITIAL, counter=0)
        assert manager.authkey is not None
        reports = spawn.Queue()
        processes = [
            spawn.Process(
                target=run_process,
                args=(
                    manager.address,
                    manager.authkey,
                    name,
                    backend,
                    first,
                    threads,
                    tasks,
                    CLIENTS,
                    SECONDS,
                    START_SECONDS,
                    reports,
                ),
            )
            for backend, first, threads, tasks in plans
        ]
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
    phantom = [
        (reader["client"], writer, sequence)
        for reader in tallies
        for writer, sequence in reader["seen"].items()
        if sequence >= sets.get(writer, 0)
    ]
    assert not phantom, f"gets returned values their writer never set: {phantom[:5]}"
    last = final["shared"]
    assert last == INITIAL or last[1] < sets[last[0]]
