"""A client and a server talking with no socket: ``ClientConnection`` bytes go into a
``ServerConnection``, its events are applied by the server's ``Dispatcher`` against a
``MemoryStore``, and the answer's bytes go back into the ``ClientConnection``.
"""

from __future__ import annotations

from typing import Any

import pytest

from aionamespace import LocalProtocolError, MemoryStore, Server
from aionamespace.protocol.codec import decode_value, encode_value
from aionamespace.protocol.connection import (
    PROTOCOL_NAME,
    ClientConnection,
    Hello,
    Limits,
    Reply,
)
from greeted_connections import only_replies
from handmade_frames import ONE, pack
from memory_peer import MemoryPeer


class Wire:
    """A client and a server connected by function calls instead of a socket."""

    def __init__(self, limits: Limits | None = None, store: MemoryStore | None = None) -> None:
        self.store = store if store is not None else MemoryStore()
        self.server = Server(store=self.store, limits=limits)
        self.server_side = self.server.new_connection()
        self.peer = MemoryPeer(self.server_side)
        self.client = ClientConnection(limits)
        (hello,) = self.exchange(self.client.send_hello())
        assert type(hello) is Hello
        assert self.client.greeted

    def exchange(self, data: bytes) -> list[Hello | Reply]:
        events = self.server_side.receive_data(data)
        return self.client.receive_data(b"".join(self.server.dispatcher.respond(self.peer, events)))

    def call(self, op: str, *args: Any) -> Any:
        request_id, frame = self.client.send_request(op, *args)
        (reply,) = self.exchange(frame)
        assert type(reply) is Reply
        assert reply.id == request_id
        if reply.error is not None:
            raise reply.error
        return reply.result

    def get(self, key: str, name: str) -> Any:
        return decode_value(self.call("get", key, name))


def test_conversation_set_get() -> None:
    wire = Wire()
    value = {"a": [1, (2, 3)], "b": {4, 5}, "c": bytearray(b"x")}
    assert wire.call("set", "ns", "value", encode_value(value)) == 1  # the new revision
    assert wire.get("ns", "value") == value
    assert type(wire.get("ns", "value")["c"]) is bytearray
    # The server hands back the very bytes it was given.
    assert wire.call("get", "ns", "value") == encode_value(value)


def test_conversation_ping() -> None:
    assert Wire().call("ping") is None


def test_conversation_get_missing_is_an_attribute_error_like_the_stdlib() -> None:
    wire = Wire()
    with pytest.raises(AttributeError) as info:
        wire.call("get", "ns", "x")
    assert str(info.value) == "'Namespace' object has no attribute 'x'"
    wire.call("set", "ns", "y", ONE)
    with pytest.raises(AttributeError, match="no attribute 'x'"):
        wire.call("get", "ns", "x")


def test_conversation_set_overwrites() -> None:
    wire = Wire()
    wire.call("set", "ns", "a", ONE)
    wire.call("set", "ns", "a", encode_value("two"))
    assert wire.get("ns", "a") == "two"


def test_conversation_del() -> None:
    wire = Wire()
    wire.call("set", "ns", "a", ONE)
    assert wire.call("del", "ns", "a") == 2  # revisions: the set was 1
    with pytest.raises(AttributeError, match="'Namespace' object has no attribute 'a'"):
        wire.call("get", "ns", "a")
    with pytest.raises(AttributeError, match="'Namespace' object has no attribute 'a'"):
        wire.call("del", "ns", "a")
    with pytest.raises(AttributeError):
        wire.call("del", "never-created", "a")


def test_conversation_dump() -> None:
    wire = Wire()
    assert wire.call("dump", "ns") == {}
    wire.call("set", "ns", "a", ONE)
    wire.call("set", "ns", "b", encode_value((1, "x")))
    dumped = wire.call("dump", "ns")
    assert dumped == {"a": ONE, "b": encode_value((1, "x"))}
    assert {name: decode_value(blob) for name, blob in dumped.items()} == {"a": 1, "b": (1, "x")}
    wire.call("del", "ns", "a")
    assert wire.call("dump", "ns") == {"b": encode_value((1, "x"))}


def test_conversation_open_only_fills_missing_names() -> None:
    wire = Wire()
    assert wire.call("open", "ns", {}) is None
    assert wire.call("dump", "ns") == {}
    wire.call("set", "ns", "a", ONE)
    assert wire.call("open", "ns", {"a": encode_value(2), "b": encode_value(3)}) is None
    assert wire.get("ns", "a") == 1
    assert wire.get("ns", "b") == 3
    wire.call("open", "ns", {"a": encode_value(4), "b": encode_value(5), "c": encode_value(6)})
    assert {name: decode_value(blob) for name, blob in wire.call("dump", "ns").items()} == {
        "a": 1,
        "b": 3,
        "c": 6,
    }


def test_conversation_namespaces_are_separate() -> None:
    wire = Wire()
    wire.call("set", "one", "a", ONE)
    with pytest.raises(AttributeError):
        wire.call("get", "two", "a")
    assert wire.call("dump", "two") == {}


def test_conversation_two_connections_share_the_store() -> None:
    store = MemoryStore()
    first, second = Wire(store=store), Wire(store=store)
    first.call("set", "ns", "a", ONE)
    assert second.get("ns", "a") == 1


def test_conversation_bad_request_changes_nothing_and_the_connection_goes_on() -> None:
    wire = Wire()
    wire.call("set", "ns", "a", ONE)
    # Hand-made frames: the client would refuse to send these.
    bad_value = pack([1000, "set", "ns", "a", b"\xc1"])
    bad_defaults = pack([1001, "open", "ns", {"a": encode_value(2), "": ONE}])
    replies = only_replies(wire.exchange(bad_value + bad_defaults))
    assert [reply.id for reply in replies] == [1000, 1001]
    for reply in replies:
        assert type(reply) is Reply
        assert type(reply.error) is LocalProtocolError
    assert wire.get("ns", "a") == 1
    assert wire.call("ping") is None


def test_conversation_pipelined_requests_are_answered_in_order() -> None:
    wire = Wire()
    sent = [wire.client.send_request("set", "ns", f"n{i}", encode_value(i)) for i in range(50)]
    sent += [wire.client.send_request("get", "ns", f"n{i}") for i in range(50)]
    sent.append(wire.client.send_request("get", "ns", "missing"))
    replies = only_replies(wire.exchange(b"".join(frame for _, frame in sent)))
    assert [reply.id for reply in replies] == [request_id for request_id, _ in sent]
    assert [decode_value(reply.result) for reply in replies[50:100]] == list(range(50))
    assert type(replies[-1].error) is AttributeError


def test_conversation_hello_pipelined_with_requests() -> None:
    server = Server()
    server_side = server.new_connection()
    client = ClientConnection()
    set_id, set_frame = client.send_request("set", "ns", "a", ONE)
    get_id, get_frame = client.send_request("get", "ns", "a")
    events = server_side.receive_data(client.send_hello() + set_frame + get_frame)
    answer = b"".join(server.dispatcher.respond(MemoryPeer(server_side), events))
    hello, set_reply, get_reply = client.receive_data(answer)
    assert type(hello) is Hello
    assert set_reply == Reply(set_id, 1)
    assert get_reply == Reply(get_id, ONE)


def test_conversation_garbage_gets_a_connection_level_error() -> None:
    """PROTOCOL.md 7.3: requests before the bad bytes are answered, then [0, 1, ...]."""
    wire = Wire()
    request_id, frame = wire.client.send_request("set", "ns", "a", ONE)
    answered, refusal = only_replies(
        wire.exchange(frame + b"\xc1" + pack([request_id + 1, "ping"]))
    )
    assert answered == Reply(request_id, 1)
    assert refusal.id == 0
    assert type(refusal.error) is LocalProtocolError
    assert wire.server_side.refused
    assert wire.store.snapshot("ns", None)[1] == {"a": ONE}


def test_conversation_wrong_version_gets_the_hello_error_form() -> None:
    server = Server()
    server_side = server.new_connection()
    events = server_side.receive_data(pack({"protocol": PROTOCOL_NAME, "version": 2}))
    client = ClientConnection()
    with pytest.raises(LocalProtocolError, match="unsupported protocol version 2"):
        client.receive_data(b"".join(server.dispatcher.respond(MemoryPeer(server_side), events)))


def test_conversation_over_a_byte_at_a_time() -> None:
    """Both parsers fed one byte per read, as a slow network would."""
    server = Server()
    server_side = server.new_connection()
    client = ClientConnection()
    outgoing = client.send_hello()
    ids = []
    for op, args in [("set", ("ns", "a", ONE)), ("get", ("ns", "a")), ("dump", ("ns",))]:
        request_id, frame = client.send_request(op, *args)
        ids.append(request_id)
        outgoing += frame
    answer = b""
    peer = MemoryPeer(server_side)
    for index in range(len(outgoing)):
        events_in = server_side.receive_data(outgoing[index : index + 1])
        answer += b"".join(server.dispatcher.respond(peer, events_in))
    events: list[Any] = []
    for index in range(len(answer)):
        events += client.receive_data(answer[index : index + 1])
    assert type(events[0]) is Hello
    assert events[1:] == [Reply(ids[0], 1), Reply(ids[1], ONE), Reply(ids[2], {"a": ONE})]
