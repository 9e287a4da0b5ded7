"""Client-cache tracking (11.5): every get tracks its name; the name's next change is
invalidated, once.
"""

from __future__ import annotations

from aionamespace import ServerThread
from doc_client import OK, Client, assert_error, connect
from doc_values import decode, encode


def test_tracking_invalidates_once(server: ServerThread, client: Client) -> None:
    """track: every get tracks its name; its next change is invalidated, once (11.5)."""
    assert_error(client.call("track", 1), "RemoteProtocolError")  # a flag is a bool
    assert client.result("track", True) is None
    with connect(server) as other:
        assert other.result("set", "k", "x", encode(1)) == 1
        assert decode(client.result("get", "k", "x")) == 1  # tracks x
        assert_error(client.call("get", "k", "missing"), "AttributeError")  # a miss too
        assert client.result("snapshot", "k", None)[0] == 1  # snapshot and dump track nothing
        assert set(client.result("dump", "k")) == {"x"}
        assert other.result("set", "k", "y", encode(2)) == 2  # not read with get: nothing
        assert other.result("set", "k", "x", encode(2)) == 3
        assert other.result("set", "k", "x", encode(3)) == 4  # once: x is not tracked now
        assert other.result("cas", "k", "missing", encode(0), encode(1)) is False  # no change
        assert other.result("update", "k", {"missing": encode(5), "y": encode(6)}) == 5
        assert client.receive(2) == [[0, 3, "k", "x"], [0, 3, "k", "missing"]]
        assert client.quiet()

        # Its own change too: after the replies of its batch, as every push (2).
        assert decode(client.result("get", "k", "x")) == 3
        change, ping = client.frame("set", "k", "x", encode(4)), client.frame("ping")
        client.send(change, ping)
        frames = client.receive(3)
        assert frames.index([change[0], OK, 6]) < frames.index([0, 3, "k", "x"])
        assert [ping[0], OK, None] in frames

        # Off: later gets track nothing, but what was tracked is still invalidated, once.
        assert decode(client.result("get", "k", "x")) == 4
        assert client.result("track", False) is None
        assert decode(client.result("get", "k", "y")) == 6
        assert other.result("set", "k", "y", encode(7)) == 7
        assert other.result("set", "k", "x", encode(8)) == 8
        assert client.receive() == [[0, 3, "k", "x"]]
        assert client.quiet()
