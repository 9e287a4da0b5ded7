"""A busy-polling server's spin widens for a client that comes back a little late
(server/busypoll.py, "Widening"), and narrows again, for ever longer, when that misses.

The selector's state machine on a real socket pair; the late client is a timer thread writing
to it. Its timings are generous (milliseconds where the server spins microseconds), and a
widening that a crowded machine delayed past its reach is tried again.
"""

from __future__ import annotations

import selectors
import socket
import threading

import pytest

from aionamespace.server.busypoll import BusyPollSelector

SPIN = 0.005  # seconds: the selector's spin_seconds here
WIDEST = SPIN * BusyPollSelector.MAX_WIDENING
LATE = 2.5 * SPIN  # when the late client writes: after the spin, within reach of widening


@pytest.fixture
def selector():
    ours, theirs = socket.socketpair()
    chosen = BusyPollSelector(spin_seconds=SPIN, reply_poll_seconds=0)
    chosen.register(ours, selectors.EVENT_READ)
    yield chosen, ours, theirs
    chosen.close()
    ours.close()
    theirs.close()


def _late_event(chosen: BusyPollSelector, ours: socket.socket, theirs: socket.socket) -> None:
    """A select that an event written ``LATE`` after it began ends (then read away)."""
    timer = threading.Timer(LATE, theirs.sendall, (b"x",))
    timer.start()
    try:
        assert len(chosen.select(1.0)) == 1
    finally:
        timer.join()
    assert ours.recv(16) == b"x"


def _widened(chosen, ours, theirs) -> bool:
    for _ in range(5):  # a crowded machine may wake the timer past WIDEST: again
        _late_event(chosen, ours, theirs)
        if chosen._window > SPIN:
            return True
    return False


def test_a_client_back_a_little_after_the_spin_widens_it(selector) -> None:
    chosen, ours, theirs = selector
    assert chosen._window == SPIN
    assert _widened(chosen, ours, theirs)
    assert SPIN < chosen._window <= WIDEST
    assert chosen._misses == 0  # spinning again, however many spins had missed


def test_a_widened_spin_that_misses_narrows_and_stops_widening_for_ever_longer(
    selector,
) -> None:
    chosen, ours, theirs = selector
    assert _widened(chosen, ours, theirs)
    assert chosen.select(WIDEST) == []  # nothing comes: the widened spin missed
    assert chosen._window == SPIN
    assert (chosen._widen_skip, chosen._widen_backoff) == (1, 2)
    for _ in range(5):  # (a crowded machine may have it caught, not slept on: again)
        _late_event(chosen, ours, theirs)  # in reach, but during the stop: never widens
        assert chosen._window == SPIN
        if chosen._widen_skip == 0:
            break
    assert chosen._widen_skip == 0
    assert _widened(chosen, ours, theirs)
    assert chosen.select(WIDEST) == []
    assert (chosen._window, chosen._widen_skip, chosen._widen_backoff) == (SPIN, 2, 4)


def test_a_widened_spin_that_catches_its_event_sets_the_stop_back(selector) -> None:
    chosen, ours, theirs = selector
    chosen._widen_backoff = 8  # (as after three misses)
    assert _widened(chosen, ours, theirs)
    theirs.sendall(b"x")  # there at once: caught by the widened spin, the CPU its own
    assert len(chosen.select(1.0)) == 1
    assert ours.recv(16) == b"x"
    if chosen._window > SPIN:  # the spin ran with a CPU to itself: the stop is set back
        assert chosen._widen_backoff == 1
    else:  # a crowded machine took the CPU meanwhile: narrowed, as after a miss
        assert (chosen._widen_skip, chosen._widen_backoff) == (8, 16)


def test_a_selector_that_does_not_spin_never_widens() -> None:
    ours, theirs = socket.socketpair()
    chosen = BusyPollSelector(spin_seconds=0, reply_poll_seconds=0)
    chosen.register(ours, selectors.EVENT_READ)
    try:
        _late_event(chosen, ours, theirs)
        assert chosen._window == 0
    finally:
        chosen.close()
        ours.close()
        theirs.close()
