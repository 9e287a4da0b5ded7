"""The server's op layer without sockets: ``Dispatcher`` answering batches for many connections.

Requests are packed by hand, parsed by a ``MemoryPeer``'s ``ServerConnection`` and applied as
one batch, the way a shell does it with the bytes of one read. What comes back is compared frame
for frame: a batch's answer, and what the dispatcher writes to the other connections (watch
pushes, cache invalidations), write by write.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import msgpack
import pytest

from aionamespace import Limits
from aionamespace.protocol.codec import encode_value
from aionamespace.protocol.events import REPLY_ERROR
from aionamespace.protocol.frames import LARGE_VALUE_BYTES
from aionamespace.server.stores import MemoryStore
from dispatch_rig import ONE, THREE, TWO, Rig, failed, invalidation, joined, ok, push
from memory_peer import unpack_all


def test_a_batch_is_answered_in_request_order_leaving_out_a_waiting_acquire() -> None:
    rig = Rig()
    holder, waiter = rig.connect(), rig.connect()
    assert rig.send(holder, [1, "acquire", "k", "L", b"h", None]) == [ok(1)]
    assert rig.send(
        waiter,
        [1, "set", "k", "x", ONE],
        [2, "acquire", "k", "L", b"w", None],
        [3, "get", "k", "x"],
        [4, "get", "k", "y"],
        [5, "ping"],
    ) == [
        ok(1, 1),
        ok(3, ONE),
        failed(4, "AttributeError", "'Namespace' object has no attribute 'y'"),
        ok(5),
    ]
    assert waiter.writes == []  # the acquire waits: nothing yet
    assert rig.send(holder, [2, "release", "k", "L", b"h"]) == [ok(2, True)]
    assert waiter.writes == [msgpack.packb(ok(2))]  # answered at the hand-over, in one write


def test_a_batch_stops_once_its_answers_pass_the_budget() -> None:
    """``respond_some``: a connection that does not read its answers is applied a budget at a
    time; what was not applied stays for the next call, in order."""
    rig = Rig()
    peer = rig.connect()
    value = encode_value(b"v" * 1000)
    rig.store.set("k", "x", value)
    events = peer.protocol.receive_data(
        b"".join(
            msgpack.packb(request)
            for request in [
                [1, "get", "k", "x"],
                [2, "get", "k", "x"],
                [3, "set", "k", "y", ONE],
                [4, "ping"],
            ]
        )
    )
    answers, applied = rig.dispatcher.respond_some(peer, events, 1500)
    assert applied == 2  # the second answer passed 1500 bytes
    assert unpack_all(b"".join(answers)) == [ok(1, value), ok(2, value)]
    assert rig.store.snapshot("k", None)[0] == 1  # the set was not applied yet
    answers, applied = rig.dispatcher.respond_some(peer, events[applied:], 1500)
    assert (applied, unpack_all(b"".join(answers))) == (2, [ok(3, 2), ok(4)])


def test_runs_of_gets_between_other_requests_read_what_came_before() -> None:
    """A batch's gets are answered a run at a time (plain_gets.py): a run ends at a write,
    at a get the long way answers (a missing name, a large value), and starts again after."""
    rig = Rig()
    peer = rig.connect()
    large = encode_value(b"v" * LARGE_VALUE_BYTES)
    rig.store.set("k", "big", large)
    answers = rig.send(
        peer,
        [1, "set", "k", "x", ONE],
        [2, "get", "k", "x"],
        [3, "get", "k", "x"],
        [4, "set", "k", "x", TWO],
        [5, "get", "k", "x"],
        [6, "get", "k", "nope"],
        [7, "get", "k", "x"],
        [8, "get", "k", "big"],
        [9, "get", "k", "x"],
    )
    assert answers == [
        ok(1, 2),
        ok(2, ONE),
        ok(3, ONE),
        ok(4, 3),
        ok(5, TWO),
        failed(6, "AttributeError", "'Namespace' object has no attribute 'nope'"),
        ok(7, TWO),
        ok(8, large),
        ok(9, TWO),
    ]


def test_a_run_of_gets_answers_each_with_its_own_key_and_name() -> None:
    """A run reads a (key, name) once for the gets of it in a row (plain_gets.py): a get of
    another name or of the same name in another namespace reads its own value."""
    rig = Rig()
    peer = rig.connect()
    for key, name, value in [("k", "x", ONE), ("k", "y", TWO), ("j", "x", THREE)]:
        rig.store.set(key, name, value)
    answers = rig.send(
        peer,
        [1, "get", "k", "x"],
        [2, "get", "k", "x"],
        [3, "get", "k", "y"],
        [4, "get", "k", "x"],
        [5, "get", "j", "x"],
        [6, "get", "j", "x"],
        [7, "get", "k", "x"],
    )
    assert answers == [
        ok(1, ONE),
        ok(2, ONE),
        ok(3, TWO),
        ok(4, ONE),
        ok(5, THREE),
        ok(6, THREE),
        ok(7, ONE),
    ]


@pytest.mark.parametrize("kind", ["replays", "own pushes"])
def test_what_a_batch_queues_for_its_own_connection_counts_against_the_budget(
    kind: str,
) -> None:
    """Watch replays, and the pushes of a connection's own changes to its own watches, count
    with its replies: a batch of them stops at the budget like one of large replies."""
    rig = Rig()
    peer = rig.connect()
    value = encode_value(b"v" * 20_000)
    if kind == "replays":
        for _ in range(100):
            rig.store.set("k", "x", value)
        requests = [[i, "watch", "k", None, 0] for i in range(1, 4)]
    else:
        for _ in range(100):
            rig.watch(peer, "k")
        requests = [[i, "set", "k", "x", value] for i in range(1, 4)]
    events = peer.protocol.receive_data(b"".join(msgpack.packb(r) for r in requests))
    answers, applied = rig.dispatcher.respond_some(peer, events, 1024 * 1024)
    assert applied == 1  # 100 pushes of 20 kB: past the budget after the first request
    frames = unpack_all(joined(answers))
    assert frames[0][:2] == [1, 0]
    assert [frame[3] for frame in frames[1:]] == (
        list(range(1, 101)) if kind == "replays" else [1] * 100
    )


def test_a_large_value_is_answered_with_the_stores_own_bytes() -> None:
    rig = Rig()
    peer = rig.connect()
    rig.store.set("k", "big", encode_value(b"x" * LARGE_VALUE_BYTES))
    stored = rig.store.get("k", "big")
    events = peer.protocol.receive_data(
        b"".join(
            msgpack.packb(request) for request in [[1, "ping"], [2, "get", "k", "big"], [3, "ping"]]
        )
    )
    answers = rig.dispatcher.respond(peer, events)
    assert any(buffer is stored for buffer in answers)  # written as it is, never copied
    assert unpack_all(b"".join(answers)) == [ok(1), ok(2, stored), ok(3)]


def test_a_store_that_fails_unexpectedly_gets_an_error_reply_and_a_log(
    caplog: pytest.LogCaptureFixture,
) -> None:
    class BrokenStore(MemoryStore):  # (not keys: the dispatcher reads them as it starts)
        def snapshot(self, key: str, names: Sequence[str] | None) -> tuple[int, dict[str, bytes]]:
            raise RuntimeError("the disk is on fire")

    rig = Rig(BrokenStore())
    peer = rig.connect()
    with caplog.at_level(logging.ERROR, logger="aionamespace.server"):
        answers = rig.send(peer, [1, "dump", "k"], [2, "set", "k", "x", ONE])
    assert answers == [failed(1, "RuntimeError", "the disk is on fire"), ok(2, 1)]
    assert [record.getMessage() for record in caplog.records] == ["internal error applying dump"]


def test_a_batchs_pushes_reach_each_other_watcher_in_one_write() -> None:
    rig = Rig()
    writer, everything, only_y, elsewhere = (rig.connect() for _ in range(4))
    all_id = rig.watch(everything, "k")
    y_id = rig.watch(only_y, "k", ["y"])
    rig.watch(elsewhere, "other")
    assert rig.send(
        writer,
        [1, "set", "k", "x", ONE],
        [2, "set", "k", "y", TWO],
        [3, "del", "k", "x"],
        [4, "update", "k", {"x": THREE, "y": ONE}],
    ) == [ok(1, 1), ok(2, 2), ok(3, 3), ok(4, 4)]  # the writer watches nothing: replies only
    assert len(everything.writes) == 1
    assert everything.written() == [
        push(all_id, 1, "x", ONE),
        push(all_id, 2, "y", TWO),
        push(all_id, 3, "x", None),
        push(all_id, 4, "x", THREE),
        push(all_id, 4, "y", ONE),
    ]
    assert len(only_y.writes) == 1
    assert only_y.written() == [push(y_id, 2, "y", TWO), push(y_id, 4, "y", ONE)]
    assert elsewhere.writes == []
    assert rig.send(writer, [5, "set", "k", "y", THREE]) == [ok(5, 5)]
    assert len(everything.writes) == len(only_y.writes) == 2  # the next batch, the next write


def test_a_watchers_own_changes_follow_its_replies_in_its_answer() -> None:
    rig = Rig()
    watcher = rig.connect()
    watch_id = rig.watch(watcher, "k")
    assert rig.send(watcher, [1, "set", "k", "x", ONE], [2, "ping"], [3, "set", "k", "y", TWO]) == [
        ok(1, 1),
        ok(2),
        ok(3, 2),
        push(watch_id, 1, "x", ONE),
        push(watch_id, 2, "y", TWO),
    ]
    assert watcher.writes == []


def test_the_pushes_of_a_refused_batch_come_before_the_refusal() -> None:
    rig = Rig()
    watcher = rig.connect()
    watch_id = rig.watch(watcher, "k")
    *answers, refusal = rig.send_bytes(watcher, msgpack.packb([1, "set", "k", "x", ONE]) + b"\xc1")
    assert answers == [ok(1, 1), push(watch_id, 1, "x", ONE)]
    assert refusal[:3] == [0, REPLY_ERROR, "RemoteProtocolError"]


def test_a_watch_from_a_revision_replays_the_changes_after_its_reply() -> None:
    rig = Rig()
    writer, watcher = rig.connect(), rig.connect()
    rig.send(
        writer,
        [1, "set", "k", "x", ONE],
        [2, "set", "k", "y", TWO],
        [3, "del", "k", "x"],
        [4, "update", "k", {"x": THREE, "z": ONE}],
    )
    (reply, *replayed) = rig.send(watcher, [1, "watch", "k", None, 1])
    all_id = reply[2][0]
    assert reply == ok(1, [all_id, 4, {}])  # from a revision: no values, the changes instead
    assert replayed == [
        push(all_id, 2, "y", TWO),
        push(all_id, 3, "x", None),
        push(all_id, 4, "x", THREE),
        push(all_id, 4, "z", ONE),
    ]
    (reply, *replayed) = rig.send(watcher, [2, "watch", "k", ["x"], 0])
    x_id = reply[2][0]
    assert replayed == [
        push(x_id, 1, "x", ONE),
        push(x_id, 3, "x", None),
        push(x_id, 4, "x", THREE),
    ]
    (reply,) = rig.send(watcher, [3, "watch", "k", ["x", "y"], None])
    assert reply[2][1:] == [4, {"x": THREE, "y": TWO}]  # from now: the current values
    rig.send(writer, [5, "set", "k", "z", TWO])
    assert watcher.written() == [push(all_id, 5, "z", TWO)]  # then live, for each its names


def test_a_watch_the_history_cannot_serve_is_refused_and_never_started() -> None:
    rig = Rig(MemoryStore(Limits(max_history_revisions=2)))
    writer, watcher = rig.connect(), rig.connect()
    for revision in range(1, 5):
        assert rig.send(writer, [revision, "set", "k", "x", encode_value(revision)]) == [
            ok(revision, revision)
        ]
    assert rig.send(watcher, [1, "watch", "k", None, 1]) == [
        failed(
            1,
            "HistoryExpired",
            "revision 1 is older than the history kept (oldest: 3); resync "
            "with _snapshot() and watch from its revision",
        )
    ]
    assert rig.send(watcher, [2, "watch", "k", None, 5]) == [
        failed(
            2,
            "HistoryExpired",
            "revision 5 is ahead of this namespace (4): the server was "
            "restarted; resync with _snapshot() and watch from its revision",
        )
    ]
    (reply, *replayed) = rig.send(watcher, [3, "watch", "k", None, 2])  # the oldest it serves
    watch_id = reply[2][0]
    assert replayed == [
        push(watch_id, 3, "x", encode_value(3)),
        push(watch_id, 4, "x", encode_value(4)),
    ]
    rig.send(writer, [5, "set", "k", "x", ONE])
    assert watcher.written() == [push(watch_id, 5, "x", ONE)]  # the refused two never started


def test_only_its_own_connection_stops_a_watch() -> None:
    rig = Rig()
    writer, watcher = rig.connect(), rig.connect()
    watch_id = rig.watch(watcher, "k")
    assert rig.send(writer, [1, "unwatch", watch_id]) == [ok(1, False)]
    rig.send(writer, [2, "set", "k", "x", ONE])
    assert watcher.written() == [push(watch_id, 1, "x", ONE)]
    assert rig.send(watcher, [1, "unwatch", watch_id]) == [ok(1, True)]
    assert rig.send(watcher, [2, "unwatch", watch_id]) == [ok(2, False)]
    rig.send(writer, [3, "set", "k", "x", TWO])
    assert len(watcher.writes) == 1  # stopped


def test_a_lost_connection_is_sent_nothing_more() -> None:
    rig = Rig()
    writer, watcher, reader = rig.connect(), rig.connect(), rig.connect()
    rig.watch(watcher, "k")
    assert rig.send(reader, [1, "track", True], [2, "get", "k", "x"])[0] == ok(1)
    rig.dispatcher.connection_lost(watcher)
    rig.dispatcher.connection_lost(reader)
    assert rig.send(writer, [1, "set", "k", "x", ONE]) == [ok(1, 1)]
    assert watcher.writes == reader.writes == []


def test_a_tracked_read_is_invalidated_once() -> None:
    rig = Rig()
    writer, reader, other_reader = rig.connect(), rig.connect(), rig.connect()
    rig.send(writer, [1, "set", "k", "x", ONE])
    for peer in (reader, other_reader):
        assert rig.send(peer, [1, "track", True], [2, "get", "k", "x"]) == [ok(1), ok(2, ONE)]
    assert rig.send(reader, [3, "get", "k", "missing"])[0][2] == "AttributeError"  # tracked too
    rig.send(reader, [4, "snapshot", "k", None], [5, "dump", "k"])  # these track nothing
    rig.send(writer, [2, "set", "k", "y", TWO])
    assert reader.writes == []  # y was never read with get
    rig.send(writer, [3, "set", "k", "x", TWO], [4, "set", "k", "x", THREE])
    assert reader.writes == [msgpack.packb(invalidation("k", "x"))]  # once for two changes
    assert other_reader.written() == [invalidation("k", "x")]  # each reader its own
    rig.send(writer, [5, "update", "k", {"missing": ONE, "x": ONE}])
    assert reader.written() == [invalidation("k", "x"), invalidation("k", "missing")]
    assert rig.send(reader, [6, "get", "k", "x"]) == [ok(6, ONE)]  # read again: tracked again
    rig.send(writer, [6, "set", "k", "x", TWO])
    assert reader.written()[2:] == [invalidation("k", "x")]


def test_a_readers_own_change_is_invalidated_after_its_reply() -> None:
    rig = Rig()
    reader = rig.connect()
    rig.send(reader, [1, "track", True], [2, "set", "k", "x", ONE], [3, "get", "k", "x"])
    assert rig.send(reader, [4, "set", "k", "x", TWO], [5, "ping"]) == [
        ok(4, 2),
        ok(5),
        invalidation("k", "x"),
    ]


def test_tracking_off_tracks_no_more_but_invalidates_what_it_tracked() -> None:
    rig = Rig()
    writer, reader = rig.connect(), rig.connect()
    rig.send(writer, [1, "update", "k", {"x": ONE, "y": ONE}])
    rig.send(
        reader, [1, "track", True], [2, "get", "k", "x"], [3, "track", False], [4, "get", "k", "y"]
    )
    rig.send(writer, [2, "set", "k", "y", TWO], [3, "set", "k", "x", TWO])
    assert reader.written() == [invalidation("k", "x")]


@pytest.mark.parametrize("crowd", [0, 300])
@pytest.mark.parametrize("watched", [False, True])
def test_an_update_of_many_names_invalidates_the_cached_ones_in_its_order(
    watched: bool, crowd: int
) -> None:
    """With no watch on the namespace the cached names are found at once (the shortcut: the
    fewer of the changes and the cached names, here or with ``crowd`` more cached, looked up in
    the other), with one name by name: the same invalidations, none for another namespace's."""
    rig = Rig()
    writer, reader = rig.connect(), rig.connect()
    if watched:
        rig.watch(rig.connect(), "k")
    names = [f"n{i}" for i in range(100)]
    rig.send(writer, [1, "update", "k", dict.fromkeys(names, ONE)])
    rig.send(writer, [2, "update", "other", dict.fromkeys(names, ONE)])
    rig.send(reader, [1, "track", True], [2, "get", "k", "n70"], [3, "get", "k", "n5"])
    rig.send(reader, [4, "get", "other", "n1"])
    rig.send(reader, *([10 + i, "get", "crowd", f"n{i}"] for i in range(crowd)))
    assert len(rig.dispatcher._tracked) == 3 + crowd
    reader.writes.clear()
    rig.send(writer, [3, "update", "k", dict.fromkeys(reversed(names), TWO)])
    assert reader.written() == [invalidation("k", "n70"), invalidation("k", "n5")]
    rig.send(writer, [4, "update", "k", dict.fromkeys(names, ONE)])  # invalidated once
    assert reader.written()[2:] == []
    rig.send(writer, [5, "update", "other", {"n2": TWO, "n1": TWO}])
    assert reader.written()[2:] == [invalidation("other", "n1")]
