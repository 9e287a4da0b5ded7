"""deadlines.wait_while_rising bounds a stall, not the whole wait: on a manual clock (its
sleeps advance the clock, nothing really sleeps)."""

from __future__ import annotations

import itertools
from collections.abc import Callable

import pytest

import deadlines


class Clock:
    """Stands for the ``time`` module in deadlines: ``sleep`` advances ``monotonic``."""

    def __init__(self) -> None:
        self.now = 0.0

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    manual = Clock()
    monkeypatch.setattr(deadlines, "time", manual)
    return manual


def rising_every(clock: Clock, seconds: float) -> Callable[[], int]:
    """A count that goes up by one every ``seconds`` of the clock."""
    return lambda: int(clock.now // seconds)


def test_a_count_that_keeps_rising_is_waited_for_past_the_bound(clock: Clock) -> None:
    deadlines.wait_while_rising(rising_every(clock, 1.0), 30, "thirty", seconds=2.0)
    assert 30.0 <= clock.now < 31.0  # fifteen bounds long, and no longer than needed


def test_a_count_that_stalls_fails_after_the_bound(clock: Clock) -> None:
    calls = itertools.count()

    def stalls_at_three() -> int:
        return min(next(calls), 3)

    with pytest.raises(TimeoutError, match=r"until five \(stuck at 3 of 5\)"):
        deadlines.wait_while_rising(stalls_at_three, 5, "five", seconds=2.0)
    assert 2.0 < clock.now < 2.1  # the bound counted from the last rise


def test_a_count_already_there_returns_at_once(clock: Clock) -> None:
    deadlines.wait_while_rising(lambda: 7, 5, "five", seconds=2.0)
    assert clock.now == 0.0
