"""``manager.Lock()`` and ``manager.AsyncLock()``: locks to hand to workers, as the stdlib's
(issue 13, "what ported programs reached for").

A lock made by the Manager pickles into spawned children (address, authkey and name: never a
held state), excludes across processes (counted: a read-modify-write counter, exact), and a
SIGKILLed holder frees it. Child functions are module-level: spawned children import them.
"""

from __future__ import annotations

import multiprocessing
import os
import pickle
import signal
from typing import Any

import anyio
import anyio.lowlevel
import pytest

from aionamespace import Manager, Namespace
from aionamespace.client.locks import AsyncLock, Lock
from child_processes import CHILD_TIMEOUT_SECONDS, Reports
from deadlines import NO_HANG_SECONDS

CHILDREN = 3
ROUNDS = 40


def count_under_lock(lock: Lock, ns: Namespace) -> None:
    for _ in range(ROUNDS):
        with lock:
            value = ns.counter
            ns.counter = value + 1


def hold_until_killed(lock: Lock, report: Any) -> None:
    lock.acquire()
    report.put(os.getpid())
    signal.pause()  # until SIGKILL


@pytest.fixture
def spawn() -> Any:
    return multiprocessing.get_context("spawn")


def test_spawned_children_share_a_manager_lock(manager: Manager, spawn: Any) -> None:
    lock = manager.Lock()
    ns = manager.Namespace(counter=0)
    children = [spawn.Process(target=count_under_lock, args=(lock, ns)) for _ in range(CHILDREN)]
    for child in children:
        child.start()
    count_under_lock(lock, ns)  # the parent takes its turns too
    for child in children:
        child.join(CHILD_TIMEOUT_SECONDS)
    assert [child.exitcode for child in children] == [0] * CHILDREN
    assert ns.counter == (CHILDREN + 1) * ROUNDS


def test_a_sigkilled_holder_frees_a_manager_lock(manager: Manager, spawn: Any) -> None:
    lock = manager.Lock("jobs")
    reports = Reports(spawn)
    child = spawn.Process(target=hold_until_killed, args=(lock, reports.queue))
    child.start()
    try:
        assert reports.get(child) == child.pid  # the child holds it
        assert lock.acquire(blocking=False) is False
        os.kill(child.pid, signal.SIGKILL)
        assert lock.acquire(timeout=NO_HANG_SECONDS)  # the server freed it
        lock.release()
    finally:
        child.join(NO_HANG_SECONDS)
        reports.close()
    assert child.exitcode == -signal.SIGKILL


def test_a_pickled_manager_lock_carries_no_held_state(manager: Manager) -> None:
    lock = manager.Lock()
    assert lock.name != manager.Lock().name  # each one new
    assert manager.Lock("jobs").name == "jobs"
    with lock:
        blob = pickle.dumps(lock)
    copy = pickle.loads(blob)
    assert isinstance(copy, Lock)
    assert copy.name == lock.name
    assert not copy.locked()
    assert manager.authkey is not None
    assert manager.authkey in blob
    with copy:  # the same lock, free again
        assert copy.locked()
        assert not lock.locked()
        with pytest.raises(RuntimeError, match="not re-entrant"):
            lock.acquire()


async def test_manager_async_lock_shared_by_tasks(manager: Manager, anyio_backend: str) -> None:
    lock = pickle.loads(pickle.dumps(manager.AsyncLock()))
    assert isinstance(lock, AsyncLock)
    ns = manager.AsyncNamespace(counter=0)
    other = manager.Lock(lock.name)  # the same lock, for sync code

    async def count() -> None:
        for _ in range(ROUNDS):
            async with lock:
                value = await ns.counter
                await anyio.lowlevel.checkpoint()
                ns.counter = value + 1

    with anyio.fail_after(NO_HANG_SECONDS * 3):
        async with anyio.create_task_group() as group:
            for _ in range(CHILDREN):
                group.start_soon(count)
    assert await ns.counter == CHILDREN * ROUNDS
    async with lock:
        assert other.acquire(blocking=False) is False
    assert other.acquire(blocking=False)
    other.release()
    await ns._close()
    await lock.aclose()
