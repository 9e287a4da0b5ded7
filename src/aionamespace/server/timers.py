"""The server's timers: one heap and one sleeping task, whatever the backend, however many.

Lock waits with a timeout, handshake deadlines, the farewell of a dropped peer and the end of
an unused anonymous namespace's grace period each need a callback later. A task per timer
(an anyio task sleeping in a cancel scope) costs kilobytes each and a task switch to cancel;
here a timer is a heap entry and a small object, ``call_later`` is a push and cancelling it
only marks it. One task (``Timers.run``) sleeps until the earliest live timer is due, and is
woken when an earlier one is set.

Cancelled timers stay in the heap until they reach its top, unless more than half of it is
cancelled: then the heap is rebuilt from the live ones (asyncio's own rule), so cancelling
stays O(1) amortised and the heap never holds more than about twice the live timers.

Callbacks run in the event loop's thread, outside any batch, in order of their due time (ties
in the order they were set). A callback that raises is logged; the others still run.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import math
import time
from collections.abc import Callable

import anyio

__all__ = ["CallLater", "Timers"]

logger = logging.getLogger("aionamespace.server")

#: ``call_later(delay, callback) -> cancel``: what the dispatcher, the lock table and the
#: connections take (tests give them a clock they move by hand).
CallLater = Callable[[float, Callable[[], None]], Callable[[], None]]

#: The heap is rebuilt once more than this many timers, and more than half of it, are cancelled.
_COMPACT_AT = 64


class _Timer:
    """One timer; ``callback`` is None once it fired or was cancelled."""

    __slots__ = ("callback", "timers")

    def __init__(self, callback: Callable[[], None], timers: Timers) -> None:
        self.callback: Callable[[], None] | None = callback
        self.timers = timers

    def cancel(self) -> None:
        if self.callback is not None:
            self.callback = None
            self.timers._cancelled_one()


class Timers:
    """Every timer of one server; ``run`` fires them (start it once, in the server's tasks)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._heap: list[tuple[float, int, _Timer]] = []
        self._order = itertools.count()  # ties fire in the order they were set
        self._cancelled = 0  # cancelled timers still in the heap
        self._wakeup: anyio.Event | None = None  # set to wake ``run`` before its deadline
        self._sleeping_until = math.inf

    def __len__(self) -> int:
        """Timers set and neither fired nor cancelled."""
        return len(self._heap) - self._cancelled

    def call_later(self, delay: float, callback: Callable[[], None]) -> Callable[[], None]:
        """Call ``callback`` in ``delay`` seconds; returns what cancels it (idempotent)."""
        due = self._clock() + delay
        timer = _Timer(callback, self)
        heapq.heappush(self._heap, (due, next(self._order), timer))
        if due < self._sleeping_until and self._wakeup is not None:
            self._wakeup.set()  # ``run`` sleeps past it: wake it to sleep less
            self._wakeup = None
        return timer.cancel

    def _cancelled_one(self) -> None:
        self._cancelled += 1
        heap = self._heap
        if self._cancelled > _COMPACT_AT and self._cancelled * 2 > len(heap):
            heap[:] = [entry for entry in heap if entry[2].callback is not None]
            heapq.heapify(heap)
            self._cancelled = 0

    def fire_due(self) -> float:
        """Fire every timer due by now; the time the next one is due (inf: none is set)."""
        heap = self._heap
        now = self._clock()
        while heap:
            due, _, timer = heap[0]
            callback = timer.callback
            if callback is None:
                heapq.heappop(heap)
                self._cancelled -= 1
                continue
            if due > now:
                return due
            heapq.heappop(heap)
            timer.callback = None
            try:
                callback()
            except Exception:  # one broken callback must not stop the others, nor the server
                logger.exception("a timer's callback failed")
        return math.inf

    async def run(self) -> None:
        """Fire timers as they fall due, until cancelled."""
        while True:
            due = self.fire_due()
            self._wakeup = wakeup = anyio.Event()
            self._sleeping_until = due
            try:
                with anyio.move_on_after(due - self._clock()):
                    await wakeup.wait()
            finally:
                self._wakeup = None
                self._sleeping_until = math.inf
