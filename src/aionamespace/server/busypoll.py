"""An event loop that polls briefly before it sleeps, for a server that owns its loop.

On a machine where waking a sleeping CPU is expensive (virtual machines above all), an event
loop loses to the stdlib's thread-per-connection server on one client's sequential round trips:
a thread blocked in ``recv`` gets a *synchronous* wake-up on the sender's CPU, while
``epoll_wait`` gets an ordinary cross-CPU one (README's Performance section has the figures
of the 2-core VM this project is built on).

``BusyPollSelector`` closes that gap the way kernel busy polling does: after the loop wakes up,
each ``select`` first polls without blocking for up to ``spin_seconds`` (DEFAULT_SPIN_SECONDS), so a
client's next request usually arrives while the server is still awake. It spins at most that
long per sleep (or up to MAX_WIDENING times that: "Widening"), not at all while events keep
arriving, and stops spinning after a few spins that caught nothing (a loaded machine: the
spin would take a CPU from the clients) until events come fast again, so an idle or crowded
server still sleeps.
Only processes that own their loop use it (``python -m aionamespace serve``, ``Manager``);
a ``Server`` run inside your own event loop leaves your loop alone.

**Widening.** A sync client whose next request regularly comes a little after the spin
ended (one that reads a snapshot of 100 names, and makes its next request, takes longer than
a get) would make every spin miss, and every request then wakes a CPU gone idle. So when a
sleep ends with events less than ``MAX_WIDENING`` spins after the loop ran out of work, the
next spin lasts twice that wait (at most ``MAX_WIDENING`` spins); a widened spin that misses,
or that the CPUs being busy left less than half of its time to run, narrows back to
``spin_seconds`` and stops widening for a number of wake-ups that doubles each time (on a
crowded machine a widened spin mostly misses, and each miss takes a CPU the client wanted),
until a widened spin catches its events with a CPU to itself. A selector spinning 0 seconds
never widens.

**A reply due.** A server over a Redis store waits, per batch, for Redis's reply, and the spin
above rarely covers it: a sync client's next request comes later than a spin, so after a few
misses the selector sleeps, and Redis's reply then wakes a CPU gone idle, late. So while a
reply is due (``replies_due``, kept by the store's links, redis_link.py) a select first polls
for up to ``reply_poll_seconds`` (DEFAULT_REPLY_POLL_SECONDS), yielding the CPU between two
polls (``sched_yield``: Redis, on this CPU maybe, goes first), as a sync proxy polls for its own
reply (client/busypoll.py), and backs off as it does: a poll that caught nothing, or that the
CPUs being busy left less than half of its time to run, is a miss, and after a few misses in a
row no reply is polled for during a number of selects that doubles each time. Nothing due,
nothing polled.
"""

from __future__ import annotations

import asyncio
import os
import selectors
import time
import weakref
from typing import Any

__all__ = [
    "DEFAULT_REPLY_POLL_SECONDS",
    "DEFAULT_SPIN_SECONDS",
    "BusyPollSelector",
    "busy_poll_loop_factory",
    "selector_of",
]

DEFAULT_SPIN_SECONDS = 50e-6
#: As long as a sync proxy polls for its reply (``Limits.reply_poll``).
DEFAULT_REPLY_POLL_SECONDS = 200e-6

_yield = getattr(os, "sched_yield", lambda: None)
_selectors: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, BusyPollSelector] = (
    weakref.WeakKeyDictionary()
)


class BusyPollSelector(selectors.DefaultSelector):
    """The platform's selector, polling for ``spin_seconds`` before each blocking wait."""

    #: Spins in a row that caught nothing before spinning stops paying (the CPUs are busy, or
    #: the clients slow): from then on the selector sleeps at once, until a sleep ends within
    #: one spin, which says events come fast enough again.
    MAX_MISSES = 3

    #: The most selects a reply poll stops for after ``MAX_MISSES`` misses in a row.
    MAX_REPLY_BACKOFF = 4096

    #: How many times ``spin_seconds`` a spin may widen to (module docstring, "Widening").
    MAX_WIDENING = 4

    def __init__(
        self,
        spin_seconds: float = DEFAULT_SPIN_SECONDS,
        reply_poll_seconds: float = DEFAULT_REPLY_POLL_SECONDS,
    ) -> None:
        super().__init__()
        self._spin_seconds = spin_seconds
        self._window = spin_seconds  # how long the next spin lasts: widened, or spin_seconds
        self._widen_skip = 0  # selects left that do not widen the spin
        self._widen_backoff = 1  # how many the next stop lasts
        self._misses = 0
        #: Replies this loop awaits from a store (its links count them): polled for.
        self.replies_due = 0
        self._reply_poll_seconds = reply_poll_seconds
        self._reply_misses = 0
        self._reply_skip = 0  # selects left that do not poll for a reply
        self._reply_backoff = 1  # how many the next stop lasts

    def select(self, timeout: float | None = None) -> list[tuple[Any, int]]:
        if timeout is not None and timeout <= 0:
            return super().select(timeout)
        if self.replies_due and self._reply_poll_seconds > 0:
            if self._reply_skip:
                self._reply_skip -= 1
            else:
                return self._poll_reply(timeout)
        spin = self._window if timeout is None else min(self._window, timeout)
        idle = time.perf_counter()  # when the loop ran out of work
        if self._misses < self.MAX_MISSES:
            deadline = idle + spin
            widened = self._window > self._spin_seconds
            ran = time.thread_time() if widened else 0.0  # (a system call: only when needed)
            while True:
                ready = super().select(0)
                if ready:
                    self._misses = 0
                    if widened:
                        if self._crowded(idle, ran):
                            self._narrow()
                        else:
                            self._widen_backoff = 1
                    return ready
                if time.perf_counter() >= deadline:
                    break
            self._misses += 1
            if widened:
                self._narrow()
            if timeout is not None:
                timeout = max(0.0, timeout - spin)
        started = time.perf_counter()
        ready = super().select(timeout)
        if ready:
            now = time.perf_counter()
            if now - started < spin:
                self._misses = 0  # it would have been caught spinning: spin again
            elif self._widen_skip:
                self._widen_skip -= 1
            elif now - idle < self._spin_seconds * self.MAX_WIDENING:
                # Events came a little after the spin ended: the next spin lasts twice as
                # long as this wait did, within MAX_WIDENING spins.
                self._window = min(2 * (now - idle), self._spin_seconds * self.MAX_WIDENING)
                self._misses = 0
        return ready

    def _narrow(self) -> None:
        """A widened spin missed, or the CPUs are busy: back to ``spin_seconds``, and no
        widening for a number of wake-ups that doubles each time (a widened spin that catches
        its events with a CPU to itself sets it back to one)."""
        self._window = self._spin_seconds
        self._widen_skip = self._widen_backoff
        self._widen_backoff = min(2 * self._widen_backoff, self.MAX_REPLY_BACKOFF)

    @staticmethod
    def _crowded(started: float, ran: float) -> bool:
        """Whether a spin since ``started`` (wall) and ``ran`` (this thread's CPU time) ran
        for less than half its time: other processes want the CPUs, so widening costs them."""
        return 2 * (time.thread_time() - ran) < time.perf_counter() - started

    def _poll_reply(self, timeout: float | None) -> list[tuple[Any, int]]:
        """Poll while a reply is due (module docstring), then sleep for what is left of
        ``timeout``."""
        window = (
            self._reply_poll_seconds if timeout is None else min(self._reply_poll_seconds, timeout)
        )
        started, ran = time.perf_counter(), time.thread_time()
        deadline = started + window
        while True:
            ready = super().select(0)
            if ready:
                if self._crowded(started, ran):
                    self._reply_missed()  # caught, but the CPUs are busy
                else:
                    self._reply_misses, self._reply_backoff = 0, 1
                return ready
            if time.perf_counter() >= deadline:
                break
            _yield()
        self._reply_missed()
        if timeout is not None:
            timeout = max(0.0, timeout - window)
        return super().select(timeout)

    def _reply_missed(self) -> None:
        self._reply_misses += 1
        if self._reply_misses >= self.MAX_MISSES:
            self._reply_misses = 0
            self._reply_skip = self._reply_backoff
            self._reply_backoff = min(2 * self._reply_backoff, self.MAX_REPLY_BACKOFF)


def busy_poll_loop_factory(
    spin_seconds: float = DEFAULT_SPIN_SECONDS,
    reply_poll_seconds: float = DEFAULT_REPLY_POLL_SECONDS,
) -> asyncio.AbstractEventLoop:
    """A new selector event loop using ``BusyPollSelector`` (for anyio's ``loop_factory``)."""
    selector = BusyPollSelector(spin_seconds, reply_poll_seconds)
    loop = asyncio.SelectorEventLoop(selector)
    _selectors[loop] = selector
    return loop


def selector_of(loop: asyncio.AbstractEventLoop) -> BusyPollSelector | None:
    """The busy-polling selector of a loop ``busy_poll_loop_factory`` made, else None."""
    return _selectors.get(loop)
