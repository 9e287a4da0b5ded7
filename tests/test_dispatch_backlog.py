"""The push backlog bound (``Limits.max_push_backlog_bytes``, PROTOCOL.md 8): a connection with more
unsent bytes than that gets the ConnectionLost refusal instead of its next push or deferred
reply, and is dropped; one that reads is never dropped, and a dropped holder's lock passes on
once the connection is gone.
"""

from __future__ import annotations

from aionamespace import Limits
from aionamespace.protocol.codec import encode_value
from dispatch_rig import Rig, failed, ok, push

MAX_PUSH_BACKLOG_BYTES = Limits().max_push_backlog_bytes


def test_a_watcher_that_never_reads_is_refused_and_dropped_past_the_bound() -> None:
    rig = Rig()
    writer, watcher = rig.connect(), rig.connect(reads=False)
    watch_id = rig.watch(watcher, "k")
    big = encode_value(b"x" * 2**20)
    revision = 0
    while not watcher.dropped:
        revision += 1
        assert revision <= 20, "never dropped"
        assert rig.send(writer, [revision, "set", "k", "x", big]) == [ok(revision, revision)]
    *pushes, refusal = watcher.written()
    assert refusal == failed(
        0,
        "ConnectionLost",
        f"more than {MAX_PUSH_BACKLOG_BYTES} bytes of "
        "events went unread; watch again from the last revision seen",
    )
    assert pushes == [push(watch_id, r, "x", big) for r in range(1, revision)]
    sent = [len(data) for data in watcher.writes[:-1]]
    assert sum(sent[:-1]) <= MAX_PUSH_BACKLOG_BYTES < sum(sent)  # written while not past it
    assert not watcher.closed  # dropped, not closed: a close would wait for the unread bytes


def test_a_watcher_that_reads_is_never_dropped() -> None:
    rig = Rig()
    writer, watcher = rig.connect(), rig.connect(reads=True)
    watch_id = rig.watch(watcher, "k")
    big = encode_value(b"x" * 2**20)
    for revision in range(1, 21):
        rig.send(writer, [revision, "set", "k", "x", big])
    assert watcher.written() == [push(watch_id, r, "x", big) for r in range(1, 21)]
    assert not watcher.dropped


def test_a_lock_held_by_a_peer_dropped_past_the_bound_passes_on_when_it_is_lost() -> None:
    rig = Rig()
    writer, stuck, waiter = rig.connect(), rig.connect(reads=False), rig.connect()
    rig.watch(stuck, "k")
    waiter_id = rig.watch(waiter, "k")
    rig.send(stuck, [1, "acquire", "k", "L", b"s", None])
    rig.send(waiter, [1, "acquire", "k", "L", b"w", None])
    big = encode_value(b"x" * 2**20)
    revision = 0
    while not stuck.dropped:
        revision += 1
        assert revision <= 20, "never dropped"
        rig.send(writer, [revision, "set", "k", "x", big])
    assert ok(1) not in waiter.written()  # dropped is not gone: the lock is still held
    rig.dispatcher.connection_lost(stuck)  # what the trio shell does, once its task ends
    assert waiter.written() == [
        *(push(waiter_id, r, "x", big) for r in range(1, revision + 1)),
        ok(1),
    ]


def test_a_lock_passed_on_by_a_drop_at_once_follows_the_pushes_that_arose_before() -> None:
    rig = Rig()
    writer, stuck, waiter = rig.connect(), rig.connect(reads=False), rig.connect()
    stuck.on_drop = lambda: rig.dispatcher.connection_lost(stuck)  # as AsyncioConnection.drop
    rig.watch(stuck, "k")  # stuck watches first: its pushes are written first
    waiter_id = rig.watch(waiter, "k")
    rig.send(stuck, [1, "acquire", "k", "L", b"s", None])
    rig.send(waiter, [1, "acquire", "k", "L", b"w", None])
    big = encode_value(b"x" * 2**20)
    revision = 0
    while not stuck.dropped:
        revision += 1
        assert revision <= 20, "never dropped"
        rig.send(writer, [revision, "set", "k", "x", big])
    # The batch that dropped stuck changed x (a push for waiter), then stuck was gone, its lock
    # handed over: the grant arose after the push, and must arrive after it.
    assert waiter.written()[-2:] == [push(waiter_id, revision, "x", big), ok(1)]
