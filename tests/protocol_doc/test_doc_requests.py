"""Plain requests and their replies (PROTOCOL.md 5, 6): set, get, open and dump, missing names,
the names the wire allows, and values exchanged with the real proxy both ways.
"""

from __future__ import annotations

import datetime as dt
import decimal
import os
import uuid
from typing import Any

import pytest

from aionamespace import Namespace, ServerThread
from doc_client import ERROR, Client, assert_error
from doc_values import BIGINT, TUPLE, assert_same, decode, encode


def test_set_and_get(client: Client) -> None:
    for revision, (name, value, first_byte) in enumerate(
        [
            ("text", "empty", 0xA5),  # fixstr of 5 bytes
            ("count", 42, 0x2A),  # positive fixint
            ("pair", (1, "a"), 0x93),  # an array of 3: the TUPLE marker and the items
            ("huge", 10**30, 0xC7),  # ext 8, code BIGINT
            ("negative_huge", -(10**30), 0xC7),
        ],
        start=1,
    ):
        blob = encode(value)
        assert blob[0] == first_byte
        assert client.result("set", "board", name, blob) == revision  # one change, one revision
        stored = client.result("get", "board", name)
        assert stored == blob  # byte for byte, never re-encoded
        assert_same(decode(stored), value)
    assert client.result("set", "other", "text", encode("x")) == 1  # revisions per namespace
    assert client.result("set", "board", "text", encode("empty")) == 6  # the same value: a change
    assert encode((1, "a"))[1:4] == bytes([0xC7, 0, TUPLE])  # ext 8, length 0, code 2
    assert encode(10**30)[2] == BIGINT


def test_open_and_dump(client: Client) -> None:
    assert client.result("dump", "nowhere") == {}  # a named namespace that does not exist
    key = "#" + os.urandom(16).hex()  # an anonymous namespace: the client makes the key up...
    assert client.call("dump", key)[1:3] == [ERROR, "NamespaceGone"]  # ...and only open makes it
    assert client.result("keys") == []  # neither dump created one
    assert client.result("open", key, {"a": encode(1), "b": encode("x")}) is None
    assert client.result("open", key, {"a": encode(2), "c": encode(None)}) is None
    assert client.result("open", key, {"a": encode(3)}) is None  # sets nothing: no revision
    dump = client.result("dump", key)
    assert {name: decode(blob) for name, blob in dump.items()} == {"a": 1, "b": "x", "c": None}
    assert client.result("del", key, "a") == 3
    assert set(client.result("dump", key)) == {"b", "c"}
    assert client.result("keys") == [key]  # anonymous keys are listed too


SAMPLES: dict[str, Any] = {
    "nothing": None,
    "flag": False,
    "text": "héllo",
    "count": -7,
    "huge": 2**64,
    "negative_huge": -(10**40),
    "power": -(2**71),
    "ratio": 0.25,
    "blob": b"\x00\xff",
    "items": [1, [2, (3, "x")], {"k": (4,)}],
    "mapping": {"a": 1, 2: "two", (1, 2): None, frozenset({3}): "fs", None: dt.date(2024, 1, 1)},
    "pair": (1, (2.5, "b")),
    "tags": {1, 2, 3},
    "frozen": frozenset({"x"}),
    "buffer": bytearray(b"ab\x00"),
    "number": 1.5 - 2j,
    "aware": dt.datetime(
        2024, 5, 17, 13, 45, 30, 123456, tzinfo=dt.timezone(dt.timedelta(hours=-3, minutes=-30))
    ),
    "naive": dt.datetime(1999, 12, 31, 23, 59, 59),
    "day": dt.date(2024, 2, 29),
    "clock": dt.time(8, 0, 0, 1, tzinfo=dt.timezone.utc),
    "span": dt.timedelta(days=-2, seconds=3, microseconds=4),
    "price": decimal.Decimal("-1.50"),
    "infinite": decimal.Decimal("-Infinity"),
    "id": uuid.UUID("12345678-1234-5678-1234-567812345678"),
}


def test_interoperates_with_the_real_proxy(server: ServerThread, client: Client) -> None:
    with Namespace(server.address, "interop") as ns:
        for name, value in SAMPLES.items():
            setattr(ns, name, value)
        for name, value in SAMPLES.items():  # proxy -> independent client
            blob = client.result("get", "interop", name)
            assert blob == encode(value), name
            assert_same(decode(blob), value)
        for revision, (name, value) in enumerate(SAMPLES.items(), start=len(SAMPLES) + 1):
            # independent client -> proxy
            assert client.result("set", "interop", "back_" + name, encode(value)) == revision
            assert_same(getattr(ns, "back_" + name), value)


def test_missing_names_are_attribute_errors(client: Client) -> None:
    assert client.result("set", "board", "present", encode(1)) == 1
    assert_error(client.call("get", "board", "absent"), "AttributeError")
    assert_error(client.call("get", "no such namespace", "absent"), "AttributeError")
    assert_error(client.call("pop", "board", "absent"), "AttributeError")
    reply = client.call("del", "board", "absent")
    assert_error(reply, "AttributeError")
    assert reply[3] == "'Namespace' object has no attribute 'absent'"
    assert client.result("snapshot", "board", None) == [1, {"present": encode(1)}]  # unchanged
    assert client.result("ping") is None  # an error reply leaves the connection usable


def test_underscore_names_are_valid_on_the_wire(server: ServerThread, client: Client) -> None:
    """Only the Python proxies keep _ names to themselves (6)."""
    assert client.result("set", "board", "_private", encode(1)) == 1
    with Namespace(server.address, "board") as ns:
        ns._local = 2  # stays on the proxy
        with pytest.raises(ValueError, match="_private"):
            ns._incr("_private")  # refused before anything is sent
        assert str(ns) == "Namespace()"
    assert client.result("snapshot", "board", None) == [1, {"_private": encode(1)}]


def test_names_of_256_characters_are_valid(client: Client) -> None:
    key, name = "k" * 256, "\N{SNOWMAN}" * 256  # characters, not UTF-8 bytes
    assert_error(client.call("get", key, name), "AttributeError")
    assert client.result("set", key, name, encode(1)) == 1
    assert decode(client.result("get", key, name)) == 1
    assert client.result("acquire", key, name, b"t" * 64, 0) is None  # and 64-byte tokens
