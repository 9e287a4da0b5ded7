"""A server polls for a store's reply while one is due (server/busypoll.py, "A reply due").

The selector's state machine on a real socket pair (nothing polled while nothing is due, polls
that catch nothing given up for ever longer, a caught reply resetting that), and the Redis
store's links telling a real redis-server's replies due to their loop's selector.
"""

from __future__ import annotations

import asyncio
import selectors
import socket
import time

import anyio
import pytest

import redis_rig
from aionamespace.server import busypoll
from aionamespace.server.busypoll import BusyPollSelector, busy_poll_loop_factory, selector_of
from aionamespace.server.stores.redis_link import Endpoint, Link
from aionamespace.server.stores.redis_wire import pack


@pytest.fixture
def selector():
    ours, theirs = socket.socketpair()
    chosen = BusyPollSelector(spin_seconds=0, reply_poll_seconds=0.0005)
    chosen.register(ours, selectors.EVENT_READ)
    yield chosen, theirs
    chosen.close()
    ours.close()
    theirs.close()


def _cpu_during_select(chosen: BusyPollSelector, timeout: float) -> float:
    started = time.thread_time()
    assert chosen.select(timeout) == []
    return time.thread_time() - started


def test_a_reply_due_is_polled_for_and_nothing_due_is_slept_on(selector, monkeypatch):
    """Counted by the CPU yields between two polls, not by CPU time: a crowded machine (the
    suite's workers) may leave a polling thread next to no CPU time."""
    chosen, _ = selector
    chosen._reply_poll_seconds = 0.2
    yields = []
    monkeypatch.setattr(busypoll, "_yield", lambda: yields.append(None))
    assert _cpu_during_select(chosen, 0.2) < 0.05  # asleep: nothing is due
    assert yields == []
    chosen.replies_due = 1
    _cpu_during_select(chosen, 0.2)
    assert len(yields) > 10  # polling, yielding between polls
    assert chosen._reply_misses == 1


def test_reply_polls_that_catch_nothing_stop_for_ever_longer_and_a_caught_reply_resets(
    selector, monkeypatch
):
    chosen, theirs = selector
    chosen.replies_due = 1
    misses = BusyPollSelector.MAX_MISSES

    def miss(times: int) -> None:
        for _ in range(times):
            assert chosen.select(0.001) == []

    miss(misses - 1)
    assert (chosen._reply_misses, chosen._reply_skip) == (misses - 1, 0)
    miss(1)  # the third miss in a row: the next select does not poll
    assert (chosen._reply_misses, chosen._reply_skip, chosen._reply_backoff) == (0, 1, 2)
    miss(1)  # that select slept at once: not counted
    assert (chosen._reply_misses, chosen._reply_skip) == (0, 0)
    miss(misses)  # polling again, missing again: a stop twice as long
    assert (chosen._reply_skip, chosen._reply_backoff) == (2, 4)
    miss(2)
    theirs.sendall(b"x")  # a reply there at once: caught by a poll with the CPU to itself
    chosen._reply_poll_seconds = 5.0
    _crowded(monkeypatch, chosen, False)
    assert len(chosen.select(None)) == 1
    assert (chosen._reply_misses, chosen._reply_skip, chosen._reply_backoff) == (0, 0, 1)


def test_a_reply_caught_while_the_cpus_are_busy_counts_as_a_miss(selector, monkeypatch):
    """A poll that catches its reply but got less than half a CPU meanwhile (other processes
    want the CPUs) is no reason to go on polling: it counts as a miss."""
    chosen, theirs = selector
    chosen.replies_due = 1
    theirs.sendall(b"x")
    chosen._reply_poll_seconds = 5.0
    _crowded(monkeypatch, chosen, True)
    assert len(chosen.select(None)) == 1
    assert (chosen._reply_misses, chosen._reply_skip, chosen._reply_backoff) == (1, 0, 1)


def _crowded(monkeypatch: pytest.MonkeyPatch, chosen: BusyPollSelector, crowded: bool) -> None:
    """Whether the selector's polls had less than half a CPU: the test's choice, not the
    machine's (the suite's workers, beside it, preempt it at times)."""
    monkeypatch.setattr(chosen, "_crowded", lambda started, ran: crowded)


def test_a_link_tells_its_loops_selector_the_replies_due() -> None:
    """A link on a busy-polling loop counts each batch written until its replies are in, or
    its connection is closed with it in flight; on another loop it counts nothing."""
    server = redis_rig.standalone()
    key = redis_rig.unique_prefix("due")

    async def main() -> None:
        loop = asyncio.get_running_loop()
        chosen = selector_of(loop)
        assert chosen is not None
        link = Link(Endpoint("test", path=server.socket_path))
        try:
            await link.connect()
            assert chosen.replies_due == 0
            first = link.submit(pack("SET", key, b"1"), 1)
            second = link.submit(pack("GET", key) + pack("GET", key), 2)
            assert chosen.replies_due == 2
            assert await first == [b"OK"]
            assert await second == [b"1", b"1"]
            assert chosen.replies_due == 0
            blocked = link.submit(pack("BLPOP", key + ":list", 30), 1)  # answered in 30 s
            assert chosen.replies_due == 1
            link.close(ConnectionError("closed with a batch in flight"))
            with pytest.raises(ConnectionError, match="in flight"):
                await blocked
            assert chosen.replies_due == 0
        finally:
            link.close(ConnectionError("done"))

    async def elsewhere() -> None:
        link = Link(Endpoint("test", path=server.socket_path))
        try:
            assert link.poller is None
            assert await link.call(pack("GET", key), 1) == [b"1"]
        finally:
            link.close(ConnectionError("done"))

    try:
        anyio.run(main, backend="asyncio", backend_options={"loop_factory": busy_poll_loop_factory})
        anyio.run(elsewhere, backend="asyncio")
    finally:
        with server.client() as client:
            client.delete(key)
