"""An event loop that polls briefly before it sleeps, for a server that owns its loop.

On a machine where waking a sleeping CPU is expensive (virtual machines above all), an event
loop loses to the stdlib's thread-per-connection server on one client's sequential round trips:
a thread blocked in ``recv`` gets a *synchronous* wake-up on the sender's CPU, while
``epoll_wait`` gets an ordinary cross-CPU one (README's Performance section has the figures
of the 2-core VM this project is built on).

``BusyPollSelector`` closes that gap the way kernel busy polling does: after the loop wakes up,
each ``select`` first polls without blocking for up to ``spin_seconds`` (DEFAULT_SPIN_SECONDS), so a
client's next request usually arrives while the server is still awake. It spins at most that
long per sleep, not at all while events keep arriving, and stops spinning after a few spins
that caught nothing (a loaded machine: the spin would take a CPU from the clients) until events
come fast again, so an idle or crowded server still sleeps.
Only processes that own their loop use it (``python -m aionamespace serve``, ``Manager``);
a ``Server`` run inside your own event loop leaves your loop alone.
"""

from __future__ import annotations

import asyncio
import selectors
import time
from typing import Any

__all__ = ["DEFAULT_SPIN_SECONDS", "BusyPollSelector", "busy_poll_loop_factory"]

DEFAULT_SPIN_SECONDS = 50e-6


class BusyPollSelector(selectors.DefaultSelector):
    """The platform's selector, polling for ``spin_seconds`` before each blocking wait."""

    #: Spins in a row that caught nothing before spinning stops paying (the CPUs are busy, or
    #: the clients slow): from then on the selector sleeps at once, until a sleep ends within
    #: one spin, which says events come fast enough again.
    MAX_MISSES = 3

    def __init__(self, spin_seconds: float = DEFAULT_SPIN_SECONDS) -> None:
        super().__init__()
        self._spin_seconds = spin_seconds
        self._misses = 0

    def select(self, timeout: float | None = None) -> list[tuple[Any, int]]:
        if timeout is not None and timeout <= 0:
            return super().select(timeout)
        spin = self._spin_seconds if timeout is None else min(self._spin_seconds, timeout)
        if self._misses < self.MAX_MISSES:
            deadline = time.perf_counter() + spin
            while True:
                ready = super().select(0)
                if ready:
                    self._misses = 0
                    return ready
                if time.perf_counter() >= deadline:
                    break
            self._misses += 1
            if timeout is not None:
                timeout = max(0.0, timeout - spin)
        started = time.perf_counter()
        ready = super().select(timeout)
        if ready and time.perf_counter() - started < spin:
            self._misses = 0  # it would have been caught spinning: spin again
        return ready


def busy_poll_loop_factory(
    spin_seconds: float = DEFAULT_SPIN_SECONDS,
) -> asyncio.AbstractEventLoop:
    """A new selector event loop using ``BusyPollSelector`` (for anyio's ``loop_factory``)."""
    return asyncio.SelectorEventLoop(BusyPollSelector(spin_seconds))
