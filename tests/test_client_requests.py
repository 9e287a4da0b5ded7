"""A ``ClientConnection`` making requests: ids that only grow, frames the server expects, names
and sizes checked before anything is sent, and ``reset`` for a new connection.
"""

from __future__ import annotations

import itertools
from typing import Any

import msgpack
import pytest

from aionamespace import LocalProtocolError, RemoteProtocolError
from aionamespace.protocol.connection import (
    ClientConnection,
    Hello,
    Limits,
    Request,
    ServerConnection,
)
from greeted_connections import greeted_client, greeted_server
from handmade_frames import ONE, pack


def test_request_ids_strictly_increase_and_survive_reset() -> None:
    client = ClientConnection()
    ids = [client.send_request("ping")[0] for _ in range(5)]
    client.reset()
    ids += [client.send_request("get", "k", "n")[0] for _ in range(5)]
    assert ids[0] >= 1
    assert all(later > earlier for earlier, later in itertools.pairwise(ids))


def test_send_request_frames_are_what_the_server_expects() -> None:
    client = ClientConnection()
    server = greeted_server()
    request_id, frame = client.send_request("set", "key", "name", ONE)
    assert msgpack.unpackb(frame, raw=False) == [request_id, "set", "key", "name", ONE]
    assert server.receive_data(frame) == [Request(request_id, "set", ("key", "name", ONE))]


@pytest.mark.parametrize(
    ("op", "args"),
    [
        ("get", ("", "n")),
        ("get", ("k", "")),
        ("set", ("k", "", ONE)),
        ("del", ("", "n")),
        ("dump", ("",)),
        ("open", ("", {})),
        ("get", ("k", "n" * 9)),
        ("get", ("k" * 9, "n")),
        ("get", ("k", b"n")),
        ("get", (1, "n")),
    ],
    ids=repr,
)
def test_send_request_rejects_invalid_names(op: str, args: tuple[Any, ...]) -> None:
    client = ClientConnection(Limits(max_name_length=8))
    with pytest.raises(ValueError, match="name"):
        client.send_request(op, *args)


@pytest.mark.parametrize(
    ("key", "name"),
    [("", "n"), ("k", ""), ("k", "n" * 9), ("k" * 9, "n"), ("k", b"n"), (1, "n")],
    ids=repr,
)
def test_send_get_checks_names_like_send_request(key: Any, name: Any) -> None:
    client = ClientConnection(Limits(max_name_length=8))
    with pytest.raises(ValueError, match="name") as expected:
        client.send_request("get", key, name)
    with pytest.raises(ValueError, match="name") as got:
        client.send_get(key, name)
    assert str(got.value) == str(expected.value)
    with pytest.raises(ValueError, match="name"):  # every time, not only the first
        client.send_get(key, name)


def test_send_get_frames_are_send_requests() -> None:
    fast, general = ClientConnection(), ClientConnection()
    for name in ["a", "b", "a", "é" * 8]:  # a name checked before takes the short way
        fast_id, fast_frame = fast.send_get("key", name)
        general_id, general_frame = general.send_request("get", "key", name)
        assert (fast_id, fast_frame) == (general_id, general_frame)


@pytest.mark.parametrize("defaults", [{"": ONE}, {"n" * 9: ONE}], ids=repr)
def test_send_request_rejects_invalid_default_names(defaults: dict[str, bytes]) -> None:
    """The names in open's defaults are attribute names too (PROTOCOL.md 6)."""
    client = ClientConnection(Limits(max_name_length=8))
    with pytest.raises(ValueError, match="name"):
        client.send_request("open", "key", defaults)


@pytest.mark.parametrize(("op", "args"), [("ping", ("x",)), ("get", ("k",)), ("dump", ())])
def test_send_request_rejects_wrong_arity(op: str, args: tuple[Any, ...]) -> None:
    with pytest.raises(LocalProtocolError):
        ClientConnection().send_request(op, *args)


def test_send_request_rejects_oversized_frames() -> None:
    client = ClientConnection(Limits(max_frame_bytes=64))
    with pytest.raises(ValueError, match="max_frame_bytes"):
        client.send_request("set", "key", "name", b"x" * 100)
    # A request that fits still goes out, with a larger id than any before.
    request_id, frame = client.send_request("set", "key", "name", b"x")
    assert len(frame) <= 64
    assert request_id >= 1


def test_reset_forgets_the_handshake_and_any_partial_frame() -> None:
    client = greeted_client()
    hello = ServerConnection().send_hello()
    client.receive_data(pack([1, 0, None])[:2])  # half a reply, then the connection breaks
    client.reset()
    assert not client.greeted
    (event,) = client.receive_data(hello)  # a fresh decoder: no leftover bytes in front
    assert type(event) is Hello
    assert client.greeted


def test_reset_replaces_a_broken_decoder() -> None:
    client = greeted_client()
    with pytest.raises(RemoteProtocolError):
        client.receive_data(b"\xc1")
    client.reset()
    (event,) = client.receive_data(ServerConnection().send_hello())
    assert type(event) is Hello
