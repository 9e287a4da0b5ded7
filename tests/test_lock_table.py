"""``LockTable``, the server's locks, alone: who holds a lock, who waits for it and in which
order, timeouts, withdrawn waits, and a lost connection's locks passed on.

Owners are (connection, token) pairs as the dispatcher makes them; the connections here are
plain objects. Each deferred acquire's ``grant`` records what it was answered. Timeouts run on a
``ManualClock``: they fire when the test advances it, not by sleeping.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

import pytest

from aionamespace.server.locks import LockTable
from manual_clock import ManualClock

A, B, C = object(), object(), object()  # three connections


class Answers:
    """The ``grant`` callbacks of deferred acquires: what each was answered, in order."""

    def __init__(self) -> None:
        self.log: list[tuple[str, str | None]] = []  # (waiter, None or the error's message)

    def grant(self, waiter: str) -> Callable[[BaseException | None], None]:
        def answer(error: BaseException | None) -> None:
            if error is not None:
                assert type(error) is TimeoutError
            self.log.append((waiter, None if error is None else str(error)))

        return answer


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def table(clock: ManualClock) -> LockTable:
    return LockTable(clock.call_later)


@pytest.fixture
def answers() -> Answers:
    return Answers()


def test_a_free_lock_is_taken_at_once(table: LockTable, answers: Answers) -> None:
    assert table.acquire("k", "L", (A, b"a"), None, answers.grant("a")) is True
    assert answers.log == []  # answered by the return value, never through grant
    assert table.release("k", "L", (A, b"a")) is True
    assert table.release("k", "L", (A, b"a")) is False  # free now
    assert table.acquire("k", "L", (B, b"b"), None, answers.grant("b")) is True


def test_waiters_are_served_first_in_first_out(table: LockTable, answers: Answers) -> None:
    assert table.acquire("k", "L", (A, b"a"), None, answers.grant("a")) is True
    for connection, token in [(B, b"b"), (C, b"c"), (A, b"a2")]:
        assert (
            table.acquire("k", "L", (connection, token), None, answers.grant(token.decode()))
            is False
        )
    assert answers.log == []
    assert table.release("k", "L", (A, b"a")) is True
    assert answers.log == [("b", None)]
    assert table.release("k", "L", (B, b"b")) is True
    assert table.release("k", "L", (C, b"c")) is True
    assert answers.log == [("b", None), ("c", None), ("a2", None)]
    assert table.release("k", "L", (A, b"a2")) is True
    assert table.acquire("k", "L", (C, b"c"), None, answers.grant("c")) is True  # free again


def test_locks_are_named_by_key_and_name(table: LockTable, answers: Answers) -> None:
    assert table.acquire("k", "L", (A, b"a"), None, answers.grant("a")) is True
    assert table.acquire("k", "M", (B, b"b"), None, answers.grant("b")) is True
    assert table.acquire("other", "L", (C, b"c"), None, answers.grant("c")) is True


def test_tokens_tell_apart_owners_on_one_connection(table: LockTable, answers: Answers) -> None:
    assert table.acquire("k", "L", (A, b"one"), None, answers.grant("one")) is True
    assert table.acquire("k", "L", (A, b"two"), None, answers.grant("two")) is False
    assert table.release("k", "L", (A, b"two")) is True  # withdrawn, not released
    assert table.release("k", "L", (A, b"one")) is True
    assert answers.log == [("two", "the wait for lock 'L' was withdrawn")]


def test_an_owner_cannot_take_or_await_a_lock_twice(table: LockTable, answers: Answers) -> None:
    assert table.acquire("k", "L", (A, b"a"), None, answers.grant("a")) is True
    with pytest.raises(ValueError, match="already held or awaited with this token"):
        table.acquire("k", "L", (A, b"a"), None, answers.grant("a again"))
    assert table.acquire("k", "L", (B, b"b"), 5, answers.grant("b")) is False
    with pytest.raises(ValueError, match="already held or awaited with this token"):
        table.acquire("k", "L", (B, b"b"), None, answers.grant("b again"))
    assert table.release("k", "L", (A, b"a")) is True
    assert answers.log == [("b", None)]  # the refused attempts changed nothing


def test_only_the_holder_or_a_waiter_releases(table: LockTable, answers: Answers) -> None:
    assert table.release("k", "never", (A, b"a")) is False
    assert table.acquire("k", "L", (A, b"a"), None, answers.grant("a")) is True
    assert table.release("k", "L", (B, b"a")) is False  # the same token, another connection
    assert table.release("k", "L", (A, b"b")) is False
    assert table.acquire("k", "L", (B, b"b"), None, answers.grant("b")) is False
    assert table.release("k", "L", (A, b"a")) is True
    assert answers.log == [("b", None)]


def test_a_withdrawn_wait_is_answered_and_leaves_the_line(
    table: LockTable, answers: Answers, clock: ManualClock
) -> None:
    table.acquire("k", "L", (A, b"a"), None, answers.grant("a"))
    table.acquire("k", "L", (B, b"b"), 10, answers.grant("b"))
    table.acquire("k", "L", (C, b"c"), None, answers.grant("c"))
    assert table.release("k", "L", (B, b"b")) is True
    assert answers.log == [("b", "the wait for lock 'L' was withdrawn")]
    assert clock.pending == 0  # its timeout is cancelled
    clock.advance(20)
    table.release("k", "L", (A, b"a"))
    assert answers.log[1:] == [("c", None)]


def test_a_wait_times_out_when_the_clock_passes_its_timeout(
    table: LockTable, answers: Answers, clock: ManualClock
) -> None:
    table.acquire("k", "L", (A, b"a"), None, answers.grant("a"))
    assert table.acquire("k", "L", (B, b"b"), 2.5, answers.grant("b")) is False
    assert table.acquire("k", "L", (C, b"c"), None, answers.grant("c")) is False
    assert clock.delays == [2.5]  # a wait without a timeout sets no timer
    clock.advance(2.4)
    assert answers.log == []
    clock.advance(0.1)
    assert answers.log == [("b", "lock 'L' not acquired within 2.5 seconds")]
    assert table.release("k", "L", (B, b"b")) is False  # out of the line
    table.release("k", "L", (A, b"a"))
    assert answers.log[1:] == [("c", None)]


def test_a_timeout_of_zero_expires_at_the_next_turn_of_the_clock(
    table: LockTable, answers: Answers, clock: ManualClock
) -> None:
    table.acquire("k", "L", (A, b"a"), None, answers.grant("a"))
    assert table.acquire("k", "L", (B, b"b"), 0, answers.grant("b")) is False
    assert answers.log == []  # not inside acquire: its caller answers the batch first
    clock.advance(0)
    assert answers.log == [("b", "lock 'L' not acquired within 0 seconds")]


def test_a_wait_granted_in_time_never_times_out(
    table: LockTable, answers: Answers, clock: ManualClock
) -> None:
    table.acquire("k", "L", (A, b"a"), None, answers.grant("a"))
    table.acquire("k", "L", (B, b"b"), 5, answers.grant("b"))
    clock.advance(4)
    table.release("k", "L", (A, b"a"))
    assert clock.pending == 0
    clock.advance(10)
    assert answers.log == [("b", None)]


def test_a_lost_connection_passes_every_lock_it_held_to_the_next_waiter(
    table: LockTable, answers: Answers
) -> None:
    table.acquire("k", "L", (A, b"a"), None, answers.grant("a"))
    table.acquire("k", "M", (A, b"a"), None, answers.grant("a"))
    table.acquire("k", "L", (B, b"b"), None, answers.grant("b on L"))
    table.acquire("k", "L", (C, b"c"), None, answers.grant("c on L"))
    table.acquire("k", "M", (C, b"c"), None, answers.grant("c on M"))
    table.drop_connection(A)
    assert sorted(answers.log) == [("b on L", None), ("c on M", None)]  # L: first in line
    assert table.release("k", "L", (B, b"b")) is True
    assert answers.log[-1] == ("c on L", None)


def test_a_lost_connections_waits_are_dropped_unanswered(
    table: LockTable, answers: Answers, clock: ManualClock
) -> None:
    table.acquire("k", "L", (A, b"a"), None, answers.grant("a"))
    table.acquire("k", "L", (B, b"b1"), 5, answers.grant("b1"))
    table.acquire("k", "L", (C, b"c"), None, answers.grant("c"))
    table.acquire("k", "L", (B, b"b2"), None, answers.grant("b2"))
    table.drop_connection(B)
    assert clock.pending == 0  # the dropped wait's timeout is cancelled
    clock.advance(10)
    table.release("k", "L", (A, b"a"))
    assert answers.log == [("c", None)]  # B's waits were never answered
    assert table.release("k", "L", (C, b"c")) is True
    assert table.acquire("k", "L", (B, b"b2"), None, answers.grant("b2")) is True  # free


def test_a_lost_holder_waiting_on_its_own_lock_passes_it_to_another_connection(
    table: LockTable, answers: Answers
) -> None:
    table.acquire("k", "L", (A, b"first"), None, answers.grant("first"))
    table.acquire("k", "L", (A, b"second"), None, answers.grant("second"))
    table.acquire("k", "L", (B, b"b"), None, answers.grant("b"))
    table.drop_connection(A)
    assert answers.log == [("b", None)]  # not A's own second token


def test_a_lost_connection_that_held_nothing_changes_nothing(
    table: LockTable, answers: Answers
) -> None:
    table.acquire("k", "L", (A, b"a"), None, answers.grant("a"))
    table.acquire("k", "L", (B, b"b"), None, answers.grant("b"))
    table.drop_connection(C)
    assert answers.log == []
    assert table.release("k", "L", (A, b"a")) is True
    assert answers.log == [("b", None)]


def test_a_lost_connection_touches_only_what_it_held_and_awaited(
    table: LockTable, answers: Answers, clock: ManualClock
) -> None:
    others = 200_000
    for i in range(others):  # held by others: a lost connection has nothing to do with them
        table.acquire("k", f"lock {i}", (B, b"b"), None, answers.grant("b"))
    table.acquire("k", "own", (A, b"a"), None, answers.grant("a"))
    table.acquire("k", "lock 1", (A, b"a"), 5, answers.grant("a on lock 1"))
    table.acquire("k", "own", (C, b"c"), None, answers.grant("c on own"))
    calls = 0

    def count(frame: object, event: str, arg: object) -> None:
        nonlocal calls
        calls += 1

    sys.setprofile(count)
    try:
        table.drop_connection(A)
    finally:
        sys.setprofile(None)
    assert answers.log == [("c on own", None)]
    assert clock.pending == 0
    assert calls < 100, f"{calls} calls to drop a connection holding one lock and awaiting one"
