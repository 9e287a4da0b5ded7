"""The atomic operations (5.3): incr, update and snapshot, cas, append (spliced byte for byte),
setdefault and pop, and what the reference server once got wrong about append.
"""

from __future__ import annotations

from doc_client import Client, assert_error, collect_pushes
from doc_values import assert_same, decode, encode


def test_incr(client: Client) -> None:
    assert client.result("incr", "count", "n", encode(1)) == encode(1)  # unset counts as 0
    assert client.result("incr", "count", "n", encode(-3)) == encode(-2)
    assert client.result("incr", "count", "n", encode(2**64)) == encode(2**64 - 2)  # BIGINT
    assert client.result("incr", "count", "f", encode(0.5)) == encode(0.5)
    assert client.result("incr", "count", "f", encode(2)) == encode(2.5)  # float + int: float
    # The server stores and returns its own encoding: 7 as an int 8 (d0 07) comes back 07.
    assert client.result("incr", "count", "g", b"\xd0\x07") == b"\x07"
    assert client.result("get", "count", "g") == b"\x07"
    revision, values = client.result("snapshot", "count", None)
    assert revision == 6  # one change per incr
    assert {name: decode(blob) for name, blob in values.items()} == {
        "n": 2**64 - 2,
        "f": 2.5,
        "g": 7,
    }
    assert client.result("set", "count", "text", encode("7")) == 7
    assert_error(client.call("incr", "count", "text", encode(1)), "TypeError")  # not a number
    assert_error(client.call("incr", "count", "n", encode(True)), "TypeError")  # a bool is not
    assert_error(client.call("incr", "count", "n", encode("1")), "TypeError")
    assert client.result("set", "count", "huge", encode(10**400)) == 8
    assert_error(client.call("incr", "count", "huge", encode(0.5)), "OverflowError")
    assert client.result("snapshot", "count", ["n"]) == [8, {"n": encode(2**64 - 2)}]


def test_update_and_snapshot(client: Client) -> None:
    assert client.result("snapshot", "shop", None) == [0, {}]  # no namespace: revision 0
    values = {"apples": encode(3), "pears": encode((1, 2)), "plums": encode(None)}
    assert client.result("update", "shop", values) == 1  # three names, one revision
    assert client.result("snapshot", "shop", None) == [1, values]
    assert client.result("snapshot", "shop", ["pears", "kiwis"]) == [1, {"pears": values["pears"]}]
    assert client.result("snapshot", "shop", []) == [1, {}]
    assert client.result("update", "shop", {}) == 1  # nothing changes: the current revision
    assert client.result("set", "shop", "kiwis", encode(0)) == 2
    assert client.result("update", "shop", {"apples": encode(4), "kiwis": encode(1)}) == 3
    revision, current = client.result("snapshot", "shop", None)
    assert revision == 3
    assert {name: decode(blob) for name, blob in current.items()} == {
        "apples": 4,
        "pears": (1, 2),
        "plums": None,
        "kiwis": 1,
    }
    assert client.result("update", "empty", {}) == 0  # creates the namespace, no change
    assert client.result("keys") == ["empty", "shop"]  # sorted


def test_cas(client: Client) -> None:
    assert client.result("cas", "state", "mode", encode("idle"), encode("busy")) is False  # unset
    assert client.result("set", "state", "mode", encode("idle")) == 1
    assert client.result("cas", "state", "mode", encode("busy"), encode("done")) is False
    assert client.result("cas", "state", "mode", encode("idle"), encode("busy")) is True
    assert decode(client.result("get", "state", "mode")) == "busy"
    assert client.result("set", "state", "n", encode(1)) == 3
    assert client.result("cas", "state", "n", encode(1.0), encode(2)) is False  # 1.0 is a float
    assert client.result("cas", "state", "n", encode(True), encode(2)) is False  # True a bool
    assert client.result("cas", "state", "n", b"\xd0\x01", encode(2)) is True  # equal values
    assert client.result("set", "state", "s", encode({1, 2})) == 5
    assert client.result("cas", "state", "s", encode(frozenset({1, 2})), encode(0)) is False
    assert client.result("cas", "state", "s", encode({2, 1}), encode(0)) is True
    assert client.result("snapshot", "state", []) == [6, {}]  # only swaps were changes
    signalling = b"\xd6\x0b" + b"sNaN"  # Decimal('sNaN'): fixext 4, code DECIMAL
    assert client.result("set", "state", "d", signalling) == 7
    assert client.result("cas", "state", "d", b"\xc7\x04\x0b" + b"sNaN", encode(0)) is False
    assert client.result("cas", "state", "d", signalling, encode(0)) is True  # its own bytes


def test_append(client: Client) -> None:
    assert client.result("append", "log", "lines", [encode("a")]) == 1  # unset: an empty list
    assert client.result("append", "log", "lines", [encode(2), encode((3,))]) == 3
    assert client.result("append", "log", "lines", []) == 3  # still a change
    stored = client.result("get", "log", "lines")
    assert stored == encode(["a", 2, (3,)])  # the whole list
    assert client.result("snapshot", "log", []) == [3, {}]
    for revision, container in enumerate([(1, 2), {1, 2}, frozenset({1})], start=4):
        assert client.result("set", "log", "other", encode(container)) == revision
        assert_error(client.call("append", "log", "other", [encode(3)]), "TypeError")  # no list
    assert client.result("set", "log", "text", encode("abc")) == 7
    assert_error(client.call("append", "log", "text", [encode(3)]), "TypeError")
    assert client.result("snapshot", "log", []) == [7, {}]


def test_append_splices_bytes(client: Client) -> None:
    """A new array header, then the stored elements and the items byte for byte (5.3, 9.1)."""
    seven, eight = b"\xd0\x07", b"\xd1\x00\x08"  # 7 and 8 in longer forms than needed
    assert client.result("set", "k", "raw", b"\xdc\x00\x01" + seven) == 1  # [7], array 16
    assert client.result("append", "k", "raw", [eight]) == 2
    assert client.result("get", "k", "raw") == b"\x92" + seven + eight  # the shortest header
    assert client.result("append", "k", "raw", [b"\xc0"] * 14) == 16  # array 16 from 16 on
    assert client.result("get", "k", "raw") == b"\xdc\x00\x10" + seven + eight + b"\xc0" * 14
    watch_id, revision, _ = client.result("watch", "k", None, None)
    assert client.result("append", "k", "raw", [encode("x")]) == 17
    stored = client.result("get", "k", "raw")
    assert stored == b"\xdc\x00\x11" + seven + eight + b"\xc0" * 14 + encode("x")
    assert collect_pushes(client, 1) == [[watch_id, revision + 1, "raw", stored]]  # pushed whole
    assert decode(stored) == [7, 8, *[None] * 14, "x"]


def test_setdefault_pop_and_keys(client: Client) -> None:
    assert client.result("setdefault", "jobs", "next", encode(1)) == encode(1)
    assert client.result("setdefault", "jobs", "next", encode(2)) == encode(1)  # no change
    assert client.result("pop", "jobs", "next") == encode(1)
    assert_error(client.call("pop", "jobs", "next"), "AttributeError")
    assert client.result("snapshot", "jobs", None) == [2, {}]
    assert client.result("keys") == ["jobs"]


# ------------------------------------------------------------------ promises once broken
# Each test states what PROTOCOL.md promises where the reference server once failed it.


def test_append_refuses_a_tuple_whatever_its_marker_header(client: Client) -> None:
    one = b"\x92\xc8\x00\x00\x02\x01"  # (1,), its marker an ext 16: decoders MUST accept it (9.4)
    assert_same(decode(one), (1,))
    assert client.result("set", "k", "t", one) == 1  # the server takes it as a tuple...
    assert_error(client.call("append", "k", "t", [encode(2)]), "TypeError")  # ...not a list
    assert client.result("get", "k", "t") == one


def test_append_refuses_a_list_nested_too_deeply(client: Client) -> None:
    deep = b"\x91" * 256 + b"\xc0"  # 256 levels: as deep as a value may be (9.4)
    assert client.result("set", "k", "deep", deep) == 1
    # 257 levels: refused like any value nested too deeply (a bad request, section 9.4)
    assert_error(client.call("append", "k", "list", [deep]), "RemoteProtocolError")
    assert client.result("snapshot", "k", []) == [1, {}]
