"""One lock object shared by threads, or by tasks, as ``threading.Lock`` is (issue 13, item 3).

Before, a second thread entering ``with lock:`` got ``RuntimeError: ... already held by this
Lock object`` instead of waiting its turn. Exclusion is counted, not timed: a read-modify-write
of a counter inside the lock, with a yield between the read and the write, must end exact.
"""

from __future__ import annotations

import pickle
import threading

import anyio
import anyio.lowlevel
import pytest

from aionamespace import AsyncNamespace, Namespace, ServerThread
from deadlines import NO_HANG_SECONDS

pytestmark = [
    pytest.mark.usefixtures("collect_garbage"),
    # Over a server's own locks, and over locks shared through Redis (stores/redis_locks.py).
    pytest.mark.parametrize("store_kind", ["memory", "redis", "redis-cluster"], indirect=True),
]

THREADS = 4
ROUNDS = 150


def test_four_threads_share_one_lock_object(server: ServerThread) -> None:
    ns = Namespace(server.address, "shared-lock")
    ns.counter = 0
    lock = ns._lock("c")
    errors: list[BaseException] = []

    def with_block() -> None:
        for _ in range(ROUNDS):
            with lock:
                value = ns.counter
                ns.counter = value + 1

    def acquire_release() -> None:
        for _ in range(ROUNDS):
            assert lock.acquire()
            try:
                value = ns.counter
                ns.counter = value + 1
            finally:
                lock.release()

    def run(work: object) -> None:
        try:
            work()  # type: ignore[operator]
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [
        threading.Thread(target=run, args=(work,))
        for work in [with_block, with_block, acquire_release, acquire_release]
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(NO_HANG_SECONDS * 6)
    assert not any(thread.is_alive() for thread in threads), "a thread hangs"
    assert errors == []
    assert ns.counter == THREADS * ROUNDS
    assert not lock.locked()


def test_the_thread_that_acquired_holds_it(server: ServerThread) -> None:
    """``release()`` from another thread raises RuntimeError (as ``threading.RLock``'s does);
    ``locked()``, non-blocking and timed acquires answer as ``threading.Lock``'s."""
    ns = Namespace(server.address, "ownership")
    lock = ns._lock("c")
    assert not lock.locked()
    assert lock.acquire(blocking=False)
    assert lock.locked()
    outcome: dict[str, object] = {}

    def other_thread() -> None:
        try:
            lock.release()
        except RuntimeError as exc:
            outcome["release"] = exc
        outcome["try"] = lock.acquire(blocking=False)
        outcome["timed"] = lock.acquire(timeout=0.05)
        outcome["locked"] = lock.locked()

    thread = threading.Thread(target=other_thread)
    thread.start()
    thread.join(NO_HANG_SECONDS)
    assert "does not hold it (another thread does)" in str(outcome["release"])
    assert outcome["try"] is False
    assert outcome["timed"] is False
    assert outcome["locked"] is True  # held, by the other thread
    with pytest.raises(RuntimeError, match="not re-entrant"):  # at once, never a deadlock
        lock.acquire()
    with pytest.raises(RuntimeError, match="not re-entrant"):  # nor through another object
        ns._lock("c").acquire()
    lock.release()
    assert not lock.locked()
    with pytest.raises(RuntimeError, match="un-acquired"):
        lock.release()
    with pytest.raises(ValueError, match="non-blocking"):
        lock.acquire(blocking=False, timeout=1)
    with lock:
        copy = pickle.loads(pickle.dumps(lock))  # carries no token, no held state
        assert not copy.locked()
        with pytest.raises(RuntimeError, match="not re-entrant"):  # the same lock
            copy.acquire()
    assert copy.acquire(blocking=False)
    copy.release()


async def test_four_tasks_share_one_lock_object(server: ServerThread, anyio_backend: str) -> None:
    async with AsyncNamespace(server.address, "shared-async-lock") as ns:
        ns.counter = 0
        lock = ns._lock("c")

        async def with_block() -> None:
            for _ in range(ROUNDS):
                async with lock:
                    value = await ns.counter
                    await anyio.lowlevel.checkpoint()  # another task may run here
                    ns.counter = value + 1

        async def acquire_release() -> None:
            for _ in range(ROUNDS):
                assert await lock.acquire()
                try:
                    value = await ns.counter
                    await anyio.lowlevel.checkpoint()
                    ns.counter = value + 1
                finally:
                    await lock.release()

        with anyio.fail_after(NO_HANG_SECONDS * 6):
            async with anyio.create_task_group() as group:
                for work in [with_block, with_block, acquire_release, acquire_release]:
                    group.start_soon(work)
        assert await ns.counter == THREADS * ROUNDS
        assert not lock.locked()


async def test_the_task_that_acquired_holds_it(server: ServerThread, anyio_backend: str) -> None:
    async with AsyncNamespace(server.address, "async-ownership") as ns:
        lock = ns._lock("c")
        assert await lock.acquire(blocking=False)
        assert lock.locked()
        outcome: dict[str, object] = {}

        async def other_task() -> None:
            try:
                await lock.release()
            except RuntimeError as exc:
                outcome["release"] = exc
            outcome["try"] = await lock.acquire(blocking=False)
            outcome["timed"] = await lock.acquire(timeout=0.05)

        async with anyio.create_task_group() as group:
            group.start_soon(other_task)
        assert "does not hold it (another task does)" in str(outcome["release"])
        assert outcome["try"] is False
        assert outcome["timed"] is False
        with pytest.raises(RuntimeError, match="not re-entrant"):
            await ns._lock("c").acquire()
        await lock.release()
        assert not lock.locked()
        with pytest.raises(RuntimeError, match="un-acquired"):
            await lock.release()
