"""A SIGKILLed server fails every waiting call at once: locks, watches, ``_wait_for``, plain
reads and writes, in threads of the sync proxy and tasks of the async one, all raise
``ConnectionLost`` within a second.

Nothing here sleeps to synchronise: a call is known to be waiting when its thread is blocked
reading its socket (``blocked_reading``) or its task is registered as a waiter
(``request_waiting``).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import anyio
import pytest

from aionamespace import AsyncNamespace, ConnectionLost, Manager
from deadlines import NO_HANG_SECONDS, async_wait_until, wait_until
from server_processes import kill_server
from waiting_calls import blocked_reading, request_waiting

FAIL_FAST_SECONDS = 1.0  # how soon a waiting call must raise once the server is killed

pytestmark = pytest.mark.usefixtures("collect_garbage")


@pytest.fixture
def killable_manager() -> Iterator[Manager]:
    with Manager() as running:
        yield running


def test_sigkill_fails_every_waiting_sync_call(killable_manager: Manager) -> None:
    ns = killable_manager.Namespace("board", w="probe", x=0)
    outcomes: dict[str, tuple[BaseException | None, float]] = {}
    watching = threading.Event()
    busy = threading.Barrier(3)

    def record(name: str, call: Callable[[], Any]) -> Callable[[], None]:
        def run() -> None:
            try:
                call()
            except BaseException as exc:  # reported to the main thread
                outcomes[name] = (exc, time.monotonic())
            else:
                outcomes[name] = (None, time.monotonic())

        return run

    def lock_waiter(timeout: float | None) -> Callable[[], None]:
        def call() -> None:
            with ns._lock("L", timeout=timeout):
                pass

        return call

    def seen(value: Any) -> bool:
        watching.set()
        return False

    def wait_for() -> None:
        ns._wait_for("w", seen)

    def iterate_watch() -> None:
        with ns._watch("x") as watch:
            for _ in watch:
                pass

    def hammer() -> None:
        busy.wait(NO_HANG_SECONDS)
        for i in range(10**9):
            ns.x = i
            assert ns.x == i

    held = ns._lock("L")
    held.__enter__()  # held by the main thread's connection
    threads = {
        name: threading.Thread(target=record(name, call), name=name)
        for name, call in [
            ("lock", lock_waiter(None)),
            ("lock-timeout", lock_waiter(30.0)),
            ("wait_for", wait_for),
            ("watch", iterate_watch),
            ("hammer-1", hammer),
            ("hammer-2", hammer),
        ]
    }
    for thread in threads.values():
        thread.start()
    try:
        wait_until(lambda: blocked_reading(threads["lock"], "__enter__"), "a lock waiter waits")
        wait_until(
            lambda: blocked_reading(threads["lock-timeout"], "__enter__"),
            "the other lock waiter waits",
        )
        assert watching.wait(NO_HANG_SECONDS)
        wait_until(lambda: blocked_reading(threads["wait_for"], "next_push"), "_wait_for waits")
        wait_until(lambda: blocked_reading(threads["watch"], "next_push"), "a watch waits")
        busy.wait(NO_HANG_SECONDS)
        assert not outcomes, outcomes
        killed_at = kill_server(killable_manager)
    finally:
        for thread in threads.values():
            thread.join(NO_HANG_SECONDS)
    assert not [name for name, thread in threads.items() if thread.is_alive()], "threads hang"
    assert sorted(outcomes) == sorted(threads)
    for name, (error, failed_at) in outcomes.items():
        assert isinstance(error, ConnectionLost), f"{name}: {error!r}"
        assert failed_at - killed_at < FAIL_FAST_SECONDS, f"{name}: {failed_at - killed_at:.3f}s"
    with pytest.raises(ConnectionLost):
        held.__exit__(None, None, None)


@pytest.mark.anyio
async def test_sigkill_fails_every_waiting_async_task(killable_manager: Manager) -> None:
    manager = killable_manager
    outcomes: dict[str, tuple[BaseException | None, float]] = {}
    holder = manager.AsyncNamespace("board", w="probe", x=0)
    waiters = AsyncNamespace(manager.address, "board", authkey=manager.authkey)
    watcher = AsyncNamespace(manager.address, "board", authkey=manager.authkey)
    hammered = AsyncNamespace(manager.address, "board", authkey=manager.authkey)
    held, watching, iterating, hammering = (anyio.Event() for _ in range(4))

    async def record(name: str, call: Callable[[], Any]) -> None:
        try:
            await call()
        except Exception as exc:  # collected for the assertions below
            outcomes[name] = (exc, time.monotonic())
        else:
            outcomes[name] = (None, time.monotonic())

    async def hold() -> None:
        with contextlib.suppress(ConnectionLost):  # releasing fails: the server is gone
            async with holder._lock("L"):
                held.set()
                await anyio.sleep_forever()  # until the test is over

    async def lock_waiter(limit: float | None) -> None:
        async with waiters._lock("L", timeout=limit):
            pass

    def seen(value: Any) -> bool:
        watching.set()
        return False

    async def iterate_watch() -> None:
        async with watcher._watch("x") as watch:
            iterating.set()
            async for _ in watch:
                pass

    async def hammer_with_pump() -> None:
        async with hammered:  # a task sends the writes as they are made
            for i in range(10**9):
                hammered.x = i
                assert await hammered.x == i
                hammering.set()

    async def hammer_same_connection() -> None:
        for i in range(10**9):
            hammered.y = i
            assert await hammered.y == i

    tasks: list[tuple[str, Callable[[], Any]]] = [
        ("lock", lambda: lock_waiter(None)),
        ("lock-timeout", lambda: lock_waiter(30.0)),
        ("wait_for", lambda: watcher._wait_for("w", seen)),
        ("watch", iterate_watch),
        ("hammer-1", hammer_with_pump),
        ("hammer-2", hammer_same_connection),
    ]
    with anyio.fail_after(NO_HANG_SECONDS):
        async with anyio.create_task_group() as group:
            group.start_soon(hold)
            await held.wait()
            for name, call in tasks:
                group.start_soon(record, name, call)
            await async_wait_until(request_waiting(waiters, 2), "both lock waiters wait")
            await watching.wait()
            await iterating.wait()
            await hammering.wait()
            assert not outcomes, outcomes
            killed_at = await anyio.to_thread.run_sync(kill_server, manager)
            await async_wait_until(lambda: len(outcomes) == len(tasks), "every task failed")
            group.cancel_scope.cancel()  # the holder
    for ns in (holder, waiters, watcher, hammered):
        with contextlib.suppress(ConnectionLost):
            await ns._close()
    for name, (error, failed_at) in outcomes.items():
        assert isinstance(error, ConnectionLost), f"{name}: {error!r}"
        assert failed_at - killed_at < FAIL_FAST_SECONDS, f"{name}: {failed_at - killed_at:.3f}s"
