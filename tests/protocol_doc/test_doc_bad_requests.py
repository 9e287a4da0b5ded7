"""Bad requests (5.3, 9.4): an error reply of type RemoteProtocolError, with the message the
document quotes; nothing is applied, and the connection goes on.
"""

from __future__ import annotations

from typing import Any

import msgpack
import pytest

from doc_client import Client, assert_error, pack
from doc_values import encode
from protocol_md import DOC

TIMESTAMP = b"\xd6\xff\x00\x00\x00\x01"  # msgpack's own timestamp extension (-1), 32-bit form


@pytest.mark.parametrize(
    ("op", "args"),
    [
        ("frobnicate", ()),
        ("get", ("board",)),  # too few arguments
        ("ping", ("extra",)),  # too many
        ("get", ("board", 1)),  # a name must be a str
        ("set", ("board", "x", "not bin")),  # a value must be a bin
        ("get", ("board", "")),  # names are non-empty...
        ("get", ("board", "x" * 257)),  # ...and at most 256 characters
        ("get", ("k" * 257, "x")),
        ("set", ("board", "x", b"\x01\x02")),  # not exactly one msgpack object
        ("set", ("board", "x", pack(msgpack.ExtType(13, b"")))),  # unknown extension code
        ("set", ("board", "x", TIMESTAMP)),  # msgpack timestamps are not values...
        ("set", ("board", "x", b"\x91" + TIMESTAMP)),  # ...at any depth...
        ("set", ("board", "x", b"\xc7\x04\xff\x00\x00\x00\x01")),  # ...in any encoding
        ("set", ("board", "x", b"\x92\x01\xc7\x00\x02")),  # a marker must lead its array
        ("set", ("board", "x", b"\xc7\x00\x02")),  # and is no value alone
        ("set", ("board", "x", b"\xd4\x02\x00")),  # a marker has no payload
        ("set", ("board", "x", b"\x91" * 257 + b"\xc0")),  # nested deeper than 256 levels
        ("open", ("board", {"x": b"\xc0", "": b"\xc0"})),  # a bad name among the defaults
        ("open", ("board", {"x": 1})),  # defaults are bins
        ("update", ("board", {"x": encode(1), "y": b"\xc1"})),  # all or nothing
        ("update", ("board", [])),  # values is a map
        ("append", ("board", "x", encode(1))),  # items is an array...
        ("append", ("board", "x", [encode(1), "two"])),  # ...of bins
        ("cas", ("board", "x", encode(1))),  # cas takes expected and new
        ("snapshot", ("board", "x")),  # names? is an array or nil
        ("snapshot", ("board", ["x", ""])),
        ("watch", ("board", None, -1)),  # revision? is an int >= 0...
        ("watch", ("board", None, True)),  # ...and a bool is not an int
        ("watch", ("board", None, 1.0)),
        ("unwatch", (0,)),  # watch ids are >= 1
        ("acquire", ("board", "lock", b"", None)),  # tokens are 1 to 64 bytes
        ("acquire", ("board", "lock", b"t" * 65, None)),
        ("acquire", ("board", "lock", "token", None)),  # and bin
        ("acquire", ("board", "lock", b"t", -1)),  # timeouts are >= 0...
        ("acquire", ("board", "lock", b"t", float("inf"))),  # ...and finite
        ("acquire", ("board", "lock", b"t", float("nan"))),
        ("acquire", ("board", "lock", b"t", False)),
        ("release", ("board", "lock")),
    ],
)
def test_bad_requests_get_error_replies(client: Client, op: str, args: tuple[Any, ...]) -> None:
    assert_error(client.call(op, *args), "RemoteProtocolError")
    assert client.result("keys") == []  # nothing was applied, not even a namespace created


@pytest.mark.parametrize(
    ("request_args", "message"),
    [
        (("x",), "unknown operation 'x'"),
        (("get", "board"), "get: takes 2 arguments (key, name), not 1"),
        (("get", "board", 1), "get: names must be str, not int"),
        (("set", "board", "", encode(1)), "set: names must not be empty"),
        (("get", "board", "x" * 257), "get: name longer than 256 characters"),
        (("set", "board", "x", "1"), "set: values travel as bin"),
        (
            ("set", "board", "x", pack(msgpack.ExtType(13, b""))),
            "set: unknown value extension code 13",
        ),
        (("acquire", "board", "lock", b"", None), "acquire: a lock token is 1 to 64 bytes"),
        (("track", 1), "track: expected true or false"),
    ],
)
def test_error_messages_are_as_documented(
    client: Client, request_args: tuple[Any, ...], message: str
) -> None:
    """Messages are for humans (5.3), but the ones the document quotes are the real ones."""
    reply = client.call(*request_args)
    assert_error(reply, "RemoteProtocolError")
    assert reply[3] == message
    assert f"`{message}`" in " ".join(DOC.read_text(encoding="utf-8").split())  # unwrapped
