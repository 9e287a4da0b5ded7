"""The order frames arrive in (2, 4.4, 11.4): replies in request order, then a batch's pushes
and deferred replies in the order they arose, on its own connection and on the others.
"""

from __future__ import annotations

from typing import Any

from aionamespace import ServerThread
from doc_client import HELLO, OK, PUSH, Client, connect, is_push
from doc_values import decode, encode


def test_pipelining_100_requests_in_one_write(server: ServerThread) -> None:
    ids = list(range(10, 1010, 10))  # any positive ids, never reused
    requests: list[Any] = []
    for i, request_id in enumerate(ids):
        if i % 2 == 0:
            requests.append([request_id, "set", "pipe", "n", encode(i)])
        else:
            requests.append([request_id, "get", "pipe", "n"])
    with Client(server.address) as client:
        client.send(HELLO, *requests)  # the hello too: requests may follow it at once
        hello, *replies = client.receive(1 + len(requests))
        assert hello["version"] == 1
    assert [reply[0] for reply in replies] == ids  # no deferred op: replies in request order
    for i, reply in enumerate(replies):
        assert reply[1] == OK
        if i % 2 == 0:
            assert reply[2] == i // 2 + 1  # the revision of this set
        else:
            assert decode(reply[2]) == i - 1  # applied in order: sees the set just before


def test_own_changes_are_pushed_after_the_reply(client: Client) -> None:
    watch_id, _, _ = client.result("watch", "mine", None, None)
    client.send(client.frame("set", "mine", "x", encode(1)))
    reply, push = client.receive(2)  # the reply to the set first, then its push (11.4)
    assert reply == [2, OK, 1]
    assert push == [0, PUSH, watch_id, 1, "x", encode(1)]


def test_frames_for_another_connection_keep_the_order_they_arose_in(
    server: ServerThread,
) -> None:
    """A batch's pushes and deferred replies for another connection, in order (2, 4.4, 11.4)."""
    with connect(server) as a, connect(server) as b:
        watch_id = b.result("watch", "k", None, None)[0]
        assert a.result("acquire", "k", "lock", b"a", None) is None
        waiting = b.frame("acquire", "k", "lock", b"b", None)
        b.send(waiting)
        assert b.quiet()
        first, release, second = (
            a.frame("set", "k", "x", encode(1)),
            a.frame("release", "k", "lock", b"a"),
            a.frame("set", "k", "y", encode(2)),
        )
        a.send(first, release, second)
        assert a.receive(3) == [[first[0], OK, 1], [release[0], OK, True], [second[0], OK, 2]]
        assert b.receive(3) == [
            [0, PUSH, watch_id, 1, "x", encode(1)],  # the change made before the release...
            [waiting[0], OK, None],  # ...then the lock granted by the release...
            [0, PUSH, watch_id, 2, "y", encode(2)],  # ...then the change made after it
        ]
        assert b.quiet()
        assert a.quiet()


def test_frames_for_the_own_connection_follow_the_replies(client: Client) -> None:
    """A batch's own pushes and deferred replies: after its replies, in the order they arose."""
    watch_id = client.result("watch", "k", None, None)[0]
    assert client.result("acquire", "k", "lock", b"holder", None) is None
    waiting = client.frame("acquire", "k", "lock", b"waiter", None)  # same connection, new owner
    client.send(waiting)
    assert client.quiet()
    change, release, ping = (
        client.frame("set", "k", "x", encode(1)),
        client.frame("release", "k", "lock", b"holder"),
        client.frame("ping"),
    )
    client.send(change, release, ping)
    frames = client.receive(5)
    replies = [frame for frame in frames if frame[0] != waiting[0] and not is_push(frame)]
    assert replies == [[change[0], OK, 1], [release[0], OK, True], [ping[0], OK, None]]
    push, grant = [0, PUSH, watch_id, 1, "x", encode(1)], [waiting[0], OK, None]
    # However the server splits the write into batches, the push follows the set's reply, and
    # the grant follows the release's reply and the push, which arose before it.
    assert frames.index([change[0], OK, 1]) < frames.index(push) < frames.index(grant)
    assert frames.index([release[0], OK, True]) < frames.index(grant)
    assert client.quiet()
