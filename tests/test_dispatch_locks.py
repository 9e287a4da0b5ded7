"""Locks through the ``Dispatcher``: a waiting ``acquire`` answered when the lock is handed over
(between the pushes it arose between), a withdrawn wait answered after the batch that withdrew
it, a lost connection's locks passed on in order and its waits dropped, and timeouts that fire
when the ``ManualClock`` passes them.
"""

from __future__ import annotations

from dispatch_rig import ONE, TWO, Rig, failed, ok, push


def test_a_deferred_acquire_is_answered_between_the_pushes_it_arose_between() -> None:
    rig = Rig()
    holder, waiter = rig.connect(), rig.connect()
    watch_id = rig.watch(waiter, "k")
    rig.send(holder, [1, "acquire", "k", "L", b"h", None])
    assert rig.send(waiter, [1, "acquire", "k", "L", b"w", None]) == []
    assert rig.send(
        holder, [2, "set", "k", "x", ONE], [3, "release", "k", "L", b"h"], [4, "set", "k", "y", TWO]
    ) == [ok(2, 1), ok(3, True), ok(4, 2)]
    assert len(waiter.writes) == 1
    assert waiter.written() == [push(watch_id, 1, "x", ONE), ok(1), push(watch_id, 2, "y", TWO)]


def test_a_withdrawn_wait_is_answered_after_the_batch_that_withdrew_it() -> None:
    rig = Rig()
    holder, waiter = rig.connect(), rig.connect()
    rig.send(holder, [1, "acquire", "k", "L", b"h", None])
    rig.send(waiter, [1, "acquire", "k", "L", b"w", 30])
    assert rig.send(waiter, [2, "release", "k", "L", b"w"], [3, "ping"]) == [
        ok(2, True),
        ok(3),
        failed(1, "TimeoutError", "the wait for lock 'L' was withdrawn"),
    ]
    assert rig.clock.pending == 0  # its timeout was cancelled
    assert rig.send(holder, [2, "release", "k", "L", b"h"]) == [ok(2, True)]
    assert waiter.writes == []  # not handed to the withdrawn wait


def test_a_lost_holders_locks_pass_to_the_next_waiters_in_order() -> None:
    rig = Rig()
    holder, first, second, third = (rig.connect() for _ in range(4))
    rig.send(holder, [1, "acquire", "k", "L", b"h", None], [2, "acquire", "k", "M", b"h", None])
    rig.send(first, [1, "acquire", "k", "L", b"1", None])
    rig.send(second, [1, "acquire", "k", "L", b"2", None], [2, "acquire", "k", "M", b"2", None])
    rig.send(third, [1, "acquire", "k", "L", b"3", None])
    rig.dispatcher.connection_lost(holder)
    assert first.written() == [ok(1)]  # L: first in, first served
    assert second.written() == [ok(2)]  # M: its only waiter
    assert third.writes == []
    assert rig.send(first, [2, "release", "k", "L", b"1"]) == [ok(2, True)]
    assert second.written() == [ok(2), ok(1)]
    assert third.writes == []


def test_a_lost_connections_waits_are_dropped() -> None:
    rig = Rig()
    holder, leaving, staying = rig.connect(), rig.connect(), rig.connect()
    rig.send(holder, [1, "acquire", "k", "L", b"h", None])
    rig.send(leaving, [1, "acquire", "k", "L", b"a", 30], [2, "acquire", "k", "L", b"b", None])
    rig.send(staying, [1, "acquire", "k", "L", b"s", None])
    rig.dispatcher.connection_lost(leaving)
    assert rig.clock.pending == 0  # the timeout of a dropped wait is cancelled
    assert rig.send(holder, [2, "release", "k", "L", b"h"]) == [ok(2, True)]
    assert staying.written() == [ok(1)]  # skipping both of the lost connection's waits
    assert leaving.writes == []


def test_a_wait_times_out_when_its_timeout_has_passed_and_not_before() -> None:
    rig = Rig()
    holder, waiter, later = rig.connect(), rig.connect(), rig.connect()
    rig.send(holder, [1, "acquire", "k", "L", b"h", None])
    assert rig.send(waiter, [1, "acquire", "k", "L", b"w", 5]) == []
    assert rig.clock.delays == [5]
    rig.clock.advance(4.5)
    assert waiter.writes == []
    rig.clock.advance(0.5)
    assert waiter.written() == [failed(1, "TimeoutError", "lock 'L' not acquired within 5 seconds")]
    rig.send(later, [1, "acquire", "k", "L", b"l", None])
    assert rig.send(holder, [2, "release", "k", "L", b"h"]) == [ok(2, True)]
    assert later.written() == [ok(1)]  # the timed-out wait was out of the line
    assert len(waiter.writes) == 1


def test_a_wait_granted_in_time_never_times_out() -> None:
    rig = Rig()
    holder, waiter = rig.connect(), rig.connect()
    rig.send(holder, [1, "acquire", "k", "L", b"h", None])
    rig.send(waiter, [1, "acquire", "k", "L", b"w", 5])
    rig.clock.advance(1)
    rig.send(holder, [2, "release", "k", "L", b"h"])
    rig.clock.advance(10)
    assert waiter.written() == [ok(1)]
