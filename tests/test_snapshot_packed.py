"""``snapshot_packed``: a snapshot's values as one array, announced in the server's hello.

The server answers ``[revision, names, bin]`` (names nil when they are the names asked, in
order) or, for values adding up to 64 KiB or more, ``snapshot``'s ``[revision, map]``; a client
sends it only to a server whose hello listed it, and reads both forms.
"""

from __future__ import annotations

from typing import Any

import msgpack
import pytest

from aionamespace import RemoteProtocolError
from aionamespace.client import calls
from aionamespace.protocol.codec import (
    ValueDecodeError,
    decode_array,
    decode_value,
    encode_value,
    encode_values,
)
from aionamespace.protocol.connection import PROTOCOL_NAME, PROTOCOL_VERSION, ClientConnection
from aionamespace.protocol.events import REPLY_OK
from aionamespace.protocol.frames import LARGE_VALUE_BYTES
from dispatch_rig import Rig

VALUES: dict[str, Any] = {"a": 1, "b": "two", "c": (3, {4}), "d": None}


def test_names_asked_and_all_held_are_left_out_of_the_reply() -> None:
    rig = Rig()
    peer = rig.connect()
    rig.send(peer, [1, "update", "k", encode_values(VALUES)])
    ((request_id, status, result),) = rig.send(peer, [2, "snapshot_packed", "k", ["c", "a"]])
    assert (request_id, status) == (2, REPLY_OK)
    revision, names, packed = result
    assert (revision, names) == (1, None)
    assert packed == b"\x92" + encode_value((3, {4})) + encode_value(1)  # the stored bytes
    assert decode_array(packed) == [(3, {4}), 1]


@pytest.mark.parametrize(
    ("asked", "held"),
    [(["a", "missing", "b"], ["a", "b"]), (["a", "a"], ["a"]), (None, ["a", "b", "c", "d"])],
)
def test_other_names_are_listed_beside_their_values(
    asked: list[str] | None, held: list[str]
) -> None:
    rig = Rig()
    peer = rig.connect()
    rig.send(peer, [1, "update", "k", encode_values(VALUES)])
    ((_, _, (revision, names, packed)),) = rig.send(peer, [2, "snapshot_packed", "k", asked])
    assert revision == 1
    assert names is not None
    assert sorted(names) == held
    assert dict(zip(names, decode_array(packed), strict=True)) == {n: VALUES[n] for n in held}


def test_a_list_grown_by_appends_is_read_in_its_place() -> None:
    # The memory store's fast path (values in the order asked) leaves such a list to snapshot.
    rig = Rig()
    peer = rig.connect()
    rig.send(peer, [1, "update", "k", encode_values({"a": 1, "log": [0]})])
    rig.send(peer, [2, "append", "k", "log", [encode_value(1), encode_value("two")]])
    ((_, _, (revision, names, packed)),) = rig.send(peer, [3, "snapshot_packed", "k", ["log", "a"]])
    assert (revision, names) == (2, None)
    assert decode_array(packed) == [[0, 1, "two"], 1]


def test_large_values_are_answered_as_a_snapshot_map() -> None:
    rig = Rig()
    peer = rig.connect()
    big = b"x" * LARGE_VALUE_BYTES
    rig.send(peer, [1, "update", "k", encode_values({"big": big, "small": 1})])
    ((_, _, result),) = rig.send(peer, [2, "snapshot_packed", "k", ["small", "big"]])
    assert result == [1, {"small": encode_value(1), "big": encode_value(big)}]
    ((_, _, result),) = rig.send(peer, [3, "snapshot_packed", "k", ["small"]])
    assert len(result) == 3  # small enough: packed


def greeted(hello: dict[str, Any]) -> ClientConnection:
    connection = ClientConnection()
    connection.start()
    connection.receive_data(msgpack.packb({"protocol": PROTOCOL_NAME, **hello}))
    return connection


@pytest.mark.parametrize(
    ("ops", "sent"),
    [
        (["snapshot_packed"], "snapshot_packed"),
        (["snapshot_packed", "some_later_op"], "snapshot_packed"),
        ([], "snapshot"),
        (None, "snapshot"),  # an older server: no ops in its hello
        ("snapshot_packed", "snapshot"),  # not an array: ignored
    ],
)
def test_a_snapshot_is_sent_packed_only_to_a_server_that_announced_it(ops: Any, sent: str) -> None:
    hello: dict[str, Any] = {"version": PROTOCOL_VERSION}
    if ops is not None:
        hello["ops"] = ops
    connection = greeted(hello)
    operation, args = calls.snapshot("k", ("a", "b"))
    _, frame = connection.send_request(operation.op, *args)
    assert msgpack.unpackb(frame)[1:] == [sent, "k", ["a", "b"]]


def test_a_new_connection_forgets_what_the_last_server_announced() -> None:
    """Requests sent behind the hello, before the server's comes back, go as plain snapshots:
    the server reached on reconnecting may be an older one."""
    connection = greeted({"version": PROTOCOL_VERSION, "ops": ["snapshot_packed"]})
    assert connection.packs_snapshots
    connection.start()
    _, frame = connection.send_request("snapshot", "k", ["a"])
    assert msgpack.unpackb(frame)[1] == "snapshot"


def test_the_reader_takes_both_forms() -> None:
    operation, _ = calls.snapshot("k", ("a", "b"))
    assert operation.read is not None
    packed = b"\x92" + encode_value("x") + encode_value((1,))
    read = operation.read([5, None, packed])
    assert (read, read.revision) == ({"a": "x", "b": (1,)}, 5)
    read = operation.read([6, ["b"], b"\x91" + encode_value(2)])
    assert (read, read.revision) == ({"b": 2}, 6)
    read = operation.read([7, {"a": encode_value(3)}])
    assert (read, read.revision) == ({"a": 3}, 7)
    with pytest.raises(RemoteProtocolError, match="2 names came with 1 values"):
        operation.read([8, None, b"\x91\x01"])


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        (b"\x01", "expected an array of values, not a int"),
        (b"\x92\xc7\x00\x02\x01", "expected an array of values, not a tuple"),  # a lone marker
        (b"\x92\x01\xc7\x00\x02", "a container marker alone is not a value"),
        (b"\x92\x01", "malformed value"),
    ],
)
def test_decode_array_refuses_what_is_not_an_array_of_values(data: bytes, problem: str) -> None:
    with pytest.raises(ValueDecodeError, match=problem):
        decode_array(data)


def test_decode_array_is_decode_value_of_each() -> None:
    encoded = encode_values(VALUES)
    packed = msgpack.Packer().pack_array_header(len(encoded)) + b"".join(encoded.values())
    assert decode_array(packed) == [decode_value(blob) for blob in encoded.values()]
