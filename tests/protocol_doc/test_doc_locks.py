"""Locks (12): acquire answered at once or deferred until the hand-over, first in first out,
withdrawn, timed out, passed on when the holder's connection closes; a lock name is no
attribute.
"""

from __future__ import annotations

import time

from aionamespace import ServerThread
from doc_client import OK, Client, assert_error, connect
from doc_values import decode, encode


def test_acquire_waits_and_its_reply_is_deferred(server: ServerThread) -> None:
    with connect(server) as a, connect(server) as b:
        assert a.result("acquire", "jobs", "queue", b"ta", None) is None  # free: at once
        acquire = b.frame("acquire", "jobs", "queue", b"tb", 30)
        ping = b.frame("ping")
        b.send(acquire, ping)
        assert b.receive() == [[ping[0], OK, None]]  # the later request is answered first
        assert b.quiet()  # the acquire waits
        assert a.result("set", "jobs", "next", encode(7)) == 1  # the holder works meanwhile
        assert a.result("release", "jobs", "queue", b"tb") is False  # not a's owner
        assert a.result("release", "jobs", "queue", b"ta") is True
        assert b.receive() == [[acquire[0], OK, None]]  # the deferred reply: b holds it now
        assert decode(b.result("get", "jobs", "next")) == 7
        assert_error(b.call("acquire", "jobs", "queue", b"tb", None), "ValueError")  # reentry
        assert_error(a.call("acquire", "jobs", "queue", b"ta", 0), "TimeoutError")  # held
        assert b.result("release", "jobs", "queue", b"tb") is True
        assert b.result("release", "jobs", "queue", b"tb") is False  # free now
        assert a.result("acquire", "jobs", "queue", b"ta", 0) is None


def test_waits_are_first_in_first_out_and_withdrawn(server: ServerThread) -> None:
    with connect(server) as a, connect(server) as b:
        assert a.result("acquire", "k", "lock", b"holder", None) is None
        first = b.frame("acquire", "k", "lock", b"first", None)
        second = a.frame("acquire", "k", "lock", b"second", None)  # same connection, new owner
        b.send(first)
        assert b.quiet()
        a.send(second)
        assert a.quiet()
        # Withdrawing a wait answers it with TimeoutError. That deferred reply arises while the
        # release's batch is applied, so it follows the replies to that batch, the release's
        # own included, however the server splits the write into batches (2, 12.2, 12.3).
        ping = b.frame("ping")
        withdrawn = b.frame("acquire", "k", "lock", b"x", None)
        release = b.frame("release", "k", "lock", b"x")
        b.send(ping, withdrawn, release)
        replies = b.receive(3)
        assert replies[:2] == [[ping[0], OK, None], [release[0], OK, True]]
        assert replies[2][0] == withdrawn[0]
        assert_error(replies[2], "TimeoutError")
        assert replies[2][3] == "the wait for lock 'lock' was withdrawn"
        assert a.result("release", "k", "lock", b"holder") is True
        assert b.receive() == [[first[0], OK, None]]  # first in, first served
        assert a.quiet()
        assert b.result("release", "k", "lock", b"first") is True
        assert a.reply(second[0]) == [second[0], OK, None]


def test_wait_times_out(server: ServerThread) -> None:
    with connect(server) as a, connect(server) as b:
        assert a.result("acquire", "k", "lock", b"t", None) is None
        started = time.monotonic()
        reply = b.call("acquire", "k", "lock", b"t", 0.2)  # the same token: another owner
        assert time.monotonic() - started >= 0.15
        assert_error(reply, "TimeoutError")
        assert b.result("release", "k", "lock", b"t") is False  # the wait is gone


def test_lock_passes_on_when_its_holder_disconnects(server: ServerThread) -> None:
    with connect(server) as b:
        with connect(server) as a:
            assert a.result("acquire", "k", "lock", b"a", None) is None
            waiting = b.frame("acquire", "k", "lock", b"b", None)
            b.send(waiting)
            assert b.quiet()
        assert b.receive() == [[waiting[0], OK, None]]  # a's connection closed: b holds it


def test_lock_names_are_not_attributes(client: Client) -> None:
    assert client.result("acquire", "board", "x", b"t", None) is None
    assert client.result("keys") == []  # no namespace created
    assert_error(client.call("get", "board", "x"), "AttributeError")
    assert client.result("set", "board", "x", encode(1)) == 1  # a lock protects nothing
