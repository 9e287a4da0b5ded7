"""A clock the test moves: ``call_later`` for the server's lock timeouts, without sleeping.

``Dispatcher`` and ``LockTable`` take a ``call_later(delay, callback) -> cancel``; the server
gives them its timer heap (``server/timers.py``). ``ManualClock.call_later`` only notes the
timer: it fires when the test calls ``advance`` past its due time, so a timeout happens exactly
where the test says.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

__all__ = ["ManualClock"]


@dataclasses.dataclass(eq=False)
class _Timer:
    due: float
    callback: Callable[[], None]
    cancelled: bool = False

    def cancel(self) -> None:
        self.cancelled = True


class ManualClock:
    """Timers that fire, in due order, when ``advance`` reaches them."""

    def __init__(self) -> None:
        self.now = 0.0
        self._timers: list[_Timer] = []
        self.delays: list[float] = []  # every delay asked for, in order

    def call_later(self, delay: float, callback: Callable[[], None]) -> Callable[[], None]:
        self.delays.append(delay)
        timer = _Timer(self.now + delay, callback)
        self._timers.append(timer)
        return timer.cancel

    def advance(self, seconds: float) -> None:
        """Move the clock on by ``seconds``, firing every timer due by then (a timer that an
        earlier one cancels does not fire)."""
        self.now += seconds
        while True:
            due = [timer for timer in self._timers if not timer.cancelled and timer.due <= self.now]
            if not due:
                return
            timer = min(due, key=lambda t: t.due)  # the earliest; ties in the order set
            self._timers.remove(timer)
            timer.callback()

    @property
    def pending(self) -> int:
        """Timers neither fired nor cancelled."""
        return sum(not timer.cancelled for timer in self._timers)
