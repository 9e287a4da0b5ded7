"""``Timers``, the server's one timer heap, run by its one task on asyncio and on trio.

Timers fire in order of their due time (ties in the order they were set), a cancelled one never
fires, an earlier timer set while the task sleeps towards a later one wakes it, a callback that
raises does not stop the others, and cancelling many keeps the heap near the live timers.
"""

from __future__ import annotations

import logging

import anyio
import pytest

from aionamespace.server.timers import Timers
from deadlines import NO_HANG_SECONDS

pytestmark = pytest.mark.anyio


async def test_timers_fire_in_order_of_due_time_ties_in_the_order_set() -> None:
    timers = Timers()
    fired: list[str] = []
    done = anyio.Event()
    for name, delay in [("c", 0.06), ("a", 0.02), ("b", 0.04), ("a2", 0.02), ("now", 0)]:
        timers.call_later(delay, lambda name=name: fired.append(name))
    timers.call_later(0.08, done.set)
    with anyio.fail_after(NO_HANG_SECONDS):
        async with anyio.create_task_group() as group:
            group.start_soon(timers.run)
            await done.wait()
            group.cancel_scope.cancel()
    assert fired == ["now", "a", "a2", "b", "c"]
    assert len(timers) == 0


async def test_a_cancelled_timer_never_fires_and_cancelling_twice_is_harmless() -> None:
    timers = Timers()
    fired: list[str] = []
    done = anyio.Event()
    cancel = timers.call_later(0.01, lambda: fired.append("cancelled"))
    timers.call_later(0.02, done.set)
    cancel()
    cancel()
    assert len(timers) == 1
    with anyio.fail_after(NO_HANG_SECONDS):
        async with anyio.create_task_group() as group:
            group.start_soon(timers.run)
            await done.wait()
            group.cancel_scope.cancel()
    assert fired == []


async def test_an_earlier_timer_wakes_the_task_sleeping_towards_a_later_one() -> None:
    timers = Timers()
    fired = anyio.Event()
    timers.call_later(3600, lambda: None)
    with anyio.fail_after(NO_HANG_SECONDS):
        async with anyio.create_task_group() as group:
            group.start_soon(timers.run)
            await anyio.sleep(0.01)  # let it go to sleep towards the hour
            started = anyio.current_time()
            timers.call_later(0.01, fired.set)
            await fired.wait()
            group.cancel_scope.cancel()
    assert anyio.current_time() - started < NO_HANG_SECONDS / 2


async def test_a_callback_that_raises_is_logged_and_the_others_still_fire(
    caplog: pytest.LogCaptureFixture,
) -> None:
    timers = Timers()
    fired: list[str] = []
    done = anyio.Event()

    def broken() -> None:
        raise RuntimeError("broken callback")

    timers.call_later(0, broken)
    timers.call_later(0, lambda: fired.append("after"))
    timers.call_later(0.01, done.set)
    with caplog.at_level(logging.ERROR, "aionamespace.server"), anyio.fail_after(NO_HANG_SECONDS):
        async with anyio.create_task_group() as group:
            group.start_soon(timers.run)
            await done.wait()
            group.cancel_scope.cancel()
    assert fired == ["after"]
    assert "a timer's callback failed" in caplog.text


def test_cancelled_timers_do_not_pile_up_in_the_heap() -> None:
    timers = Timers()
    keep = [timers.call_later(3600, lambda: None) for _ in range(100)]
    for _ in range(100):
        cancels = [timers.call_later(3600, lambda: None) for _ in range(1000)]
        for cancel in cancels:
            cancel()
    assert len(timers) == len(keep)
    assert len(timers._heap) <= 2 * len(keep) + 64 + 1
