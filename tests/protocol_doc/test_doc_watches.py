"""Watches (10, 11): a push for every change, watches of some names, history replayed from a
revision, HistoryExpired when the history no longer reaches it, and unwatch.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from aionamespace import Limits, Namespace, ServerThread
from doc_client import Client, assert_error, collect_pushes, connect
from doc_values import encode


def test_watch_sees_the_changes_of_the_real_proxy(server: ServerThread, client: Client) -> None:
    every = client.frame("watch", "live", None, None)  # every name, from now on
    only_a = client.frame("watch", "live", ["a"], None)
    client.send(every, only_a)
    every_id, revision, values = client.reply(every[0])[2]
    assert (revision, values) == (0, {})  # the namespace does not exist yet
    only_a_id, revision, values = client.reply(only_a[0])[2]
    assert (revision, values) == (0, {})
    assert only_a_id != every_id

    with Namespace(server.address, "live") as ns:
        ns.a = 1
        assert ns._update(b=(2,), c="three") == 2
        del ns.a
        ns._incr("n", 5)
        assert ns._append("log", "x", 2) == 2
        assert ns._cas("c", "three", 3.0) is True
        assert ns._pop("b") == (2,)

    pushes = collect_pushes(client, 10)
    mine = [push[1:] for push in pushes if push[0] == every_id]
    assert mine == [
        [1, "a", encode(1)],
        [2, "b", encode((2,))],  # one update: one revision, one push per name, in map order
        [2, "c", encode("three")],
        [3, "a", None],  # deleted
        [4, "n", encode(5)],
        [5, "log", encode(["x", 2])],
        [6, "c", encode(3.0)],
        [7, "b", None],  # popped
    ]
    assert [push[1:] for push in pushes if push[0] == only_a_id] == [
        [1, "a", encode(1)],
        [3, "a", None],
    ]  # only its names: revisions may jump

    # Watching with since=nil now: the current values, at the current revision.
    reply = client.result("watch", "live", None, None)
    assert reply[1:] == [7, {"c": encode(3.0), "n": encode(5), "log": encode(["x", 2])}]
    assert client.result("unwatch", reply[0]) is True
    assert client.result("unwatch", reply[0]) is False  # already stopped


def test_watch_since_replays_history(client: Client) -> None:
    assert client.result("set", "hist", "x", encode(1)) == 1
    assert client.result("set", "hist", "y", encode(2)) == 2
    assert client.result("del", "hist", "x") == 3
    assert client.result("update", "hist", {"x": encode(3), "y": encode(4)}) == 4

    watch_id, revision, values = client.result("watch", "hist", None, 1)
    assert (revision, values) == (4, {})  # with since: no values, the changes are pushed
    assert collect_pushes(client, 4) == [
        [watch_id, 2, "y", encode(2)],
        [watch_id, 3, "x", None],
        [watch_id, 4, "x", encode(3)],
        [watch_id, 4, "y", encode(4)],
    ]
    assert client.result("set", "hist", "z", encode(5)) == 5  # then live, without a gap
    assert collect_pushes(client, 1) == [[watch_id, 5, "z", encode(5)]]

    y_only, revision, values = client.result("watch", "hist", ["y"], 1)
    assert (revision, values) == (5, {})
    assert collect_pushes(client, 2) == [  # the first watch is still on: it sees nothing new
        [y_only, 2, "y", encode(2)],
        [y_only, 4, "y", encode(4)],
    ]

    _, revision, values = client.result("watch", "hist", None, 5)  # since = current
    assert (revision, values) == (5, {})
    assert client.quiet()

    expired = client.call("watch", "hist", None, 6)  # ahead: as after a server restart
    assert_error(expired, "HistoryExpired")
    assert_error(client.call("watch", "nowhere", None, 1), "HistoryExpired")
    assert client.result("watch", "nowhere", None, 0)[1:] == [0, {}]


@pytest.fixture
def short_history_server(short_tmp: str) -> Iterator[ServerThread]:
    limits = Limits(max_history_revisions=3)
    with ServerThread(os.path.join(short_tmp, "h.sock"), limits=limits) as running:
        yield running


def test_history_expired(short_history_server: ServerThread) -> None:
    with connect(short_history_server) as client:
        for i in range(1, 6):
            assert client.result("set", "h", "x", encode(i)) == i
        for since in (0, 1):  # revisions 2 and earlier are forgotten: 3 are kept
            assert_error(client.call("watch", "h", None, since), "HistoryExpired")
        watch_id, revision, _ = client.result("watch", "h", None, 2)
        assert revision == 5
        assert collect_pushes(client, 3) == [
            [watch_id, 3, "x", encode(3)],
            [watch_id, 4, "x", encode(4)],
            [watch_id, 5, "x", encode(5)],
        ]


@pytest.fixture
def tiny_history_server(short_tmp: str) -> Iterator[ServerThread]:
    limits = Limits(max_history_revisions=2)
    with ServerThread(os.path.join(short_tmp, "t.sock"), limits=limits) as running:
        yield running


def test_history_keeps_whole_revisions(tiny_history_server: ServerThread) -> None:
    """The history counts revisions, not names, and never replays part of one (10.2, 10.3)."""
    with connect(tiny_history_server) as client:
        values = {"a": encode(1), "b": encode(2), "c": encode(3)}
        assert client.result("update", "h", values) == 1  # three names, one revision
        assert client.result("update", "h", {"a": encode(4), "d": encode(5)}) == 2
        watch_id, revision, _ = client.result("watch", "h", None, 0)  # 2 revisions are kept
        assert revision == 2
        assert collect_pushes(client, 5) == [
            [watch_id, 1, "a", encode(1)],
            [watch_id, 1, "b", encode(2)],
            [watch_id, 1, "c", encode(3)],
            [watch_id, 2, "a", encode(4)],
            [watch_id, 2, "d", encode(5)],
        ]
        assert client.result("set", "h", "e", encode(6)) == 3  # revision 1 is forgotten, whole
        assert collect_pushes(client, 1) == [[watch_id, 3, "e", encode(6)]]
        assert_error(client.call("watch", "h", None, 0), "HistoryExpired")
        other_id, _, _ = client.result("watch", "h", None, 1)
        assert collect_pushes(client, 3) == [
            [other_id, 2, "a", encode(4)],
            [other_id, 2, "d", encode(5)],
            [other_id, 3, "e", encode(6)],
        ]


def test_unwatch(server: ServerThread, client: Client) -> None:
    watch_id, _, _ = client.result("watch", "quiet", None, None)
    with connect(server) as other:
        assert other.result("unwatch", watch_id) is False  # not its watch
        assert client.result("unwatch", watch_id) is True
        assert other.result("set", "quiet", "x", encode(1)) == 1
    assert client.quiet()  # stopped: no pushes
