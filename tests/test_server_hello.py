"""A ``ServerConnection`` before the hello: a client's hello accepted, anything else refused.

``receive_data`` never raises: a bad hello (the wrong version, the error form only a server may
send, garbage, too many bytes) ends the events with a ``Refusal`` and nothing after it is parsed.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aionamespace import RemoteProtocolError
from aionamespace.protocol.connection import (
    PROTOCOL_NAME,
    PROTOCOL_VERSION,
    BadRequest,
    Hello,
    Limits,
    Refusal,
    Request,
    ServerConnection,
)
from greeted_connections import refusal_error
from handmade_frames import HELLO, frames, pack


def test_hello_is_accepted() -> None:
    server = ServerConnection()
    assert not server.greeted
    (hello,) = server.receive_data(
        pack({"protocol": PROTOCOL_NAME, "version": 1, "future_key": [1, 2]})
    )
    assert type(hello) is Hello
    assert hello.version == 1
    assert hello.info["future_key"] == [1, 2]
    assert server.greeted
    assert not server.refused


def test_hello_fed_one_byte_at_a_time() -> None:
    server = ServerConnection()
    events: list[Any] = []
    for index in range(len(HELLO)):
        events += server.receive_data(HELLO[index : index + 1])
    assert [type(event) for event in events] == [Hello]


@pytest.mark.parametrize(
    "first_frame",
    [
        {"protocol": PROTOCOL_NAME, "version": 2},
        {"protocol": PROTOCOL_NAME, "version": 0},
        {"protocol": PROTOCOL_NAME, "version": "1"},
        {"protocol": PROTOCOL_NAME, "version": 1.0},
        {"protocol": PROTOCOL_NAME, "version": True},
        {"protocol": PROTOCOL_NAME},
        {"version": 1},
        {"protocol": "aionamespace2", "version": 1},
        {"protocol": b"aionamespace", "version": 1},
        {"protocol": PROTOCOL_NAME, "version": 1, "error": 5},
        {"protocol": PROTOCOL_NAME, "version": 1, "error": ["only one"]},
        {},
        [1, "ping"],
        ["aionamespace", 1],
        "aionamespace",
        1,
        None,
    ],
    ids=repr,
)
def test_bad_hello_is_refused_with_remote_protocol_error(first_frame: Any) -> None:
    server = ServerConnection()
    events = server.receive_data(pack(first_frame) + pack([1, "ping"]))
    assert len(events) == 1
    assert type(refusal_error(events)) is RemoteProtocolError
    assert server.refused
    assert not server.greeted
    assert server.receive_data(HELLO) == []


@pytest.mark.parametrize(
    "error",
    [
        ["ValueError", "x"],
        ["NoSuchError", "x"],
        ["RemoteProtocolError", "x"],
        ["AttributeError", "x"],
        ["KeyError", "x"],
    ],
    ids=repr,
)
def test_client_hello_carrying_an_error_is_refused_not_raised(error: list[str]) -> None:
    """Only a server may send the hello error form (PROTOCOL.md 3.1: a client MUST NOT).

    A client that does must be refused like any bad hello: receive_data promises never to
    raise, and on trio an exception escaping it takes the whole server down.
    """
    server = ServerConnection()
    events = server.receive_data(pack({"protocol": PROTOCOL_NAME, "version": 1, "error": error}))
    assert type(refusal_error(events)) is RemoteProtocolError


def test_garbage_before_the_hello_is_refused() -> None:
    server = ServerConnection()
    assert type(refusal_error(server.receive_data(b"\xc1"))) is RemoteProtocolError


def test_oversized_hello_is_refused() -> None:
    server = ServerConnection(Limits(max_frame_bytes=64))
    frame = pack({"protocol": PROTOCOL_NAME, "version": 1, "padding": "x" * 100})
    assert type(refusal_error(server.receive_data(frame))) is RemoteProtocolError


@st.composite
def client_hellos(draw: st.DrawFn) -> Any:
    """Hello-shaped maps (often nearly valid), or anything else."""
    hello = draw(
        st.fixed_dictionaries(
            {},
            optional={
                "protocol": st.just(PROTOCOL_NAME) | frames,
                "version": st.just(PROTOCOL_VERSION) | frames,
                "error": st.lists(st.text(max_size=20), max_size=3) | frames,
                "challenge": st.binary(min_size=32, max_size=32) | frames,
            },
        )
    )
    return draw(st.just(hello) | frames)


@settings(max_examples=300, deadline=None)
@given(client_hellos(), st.lists(frames, max_size=4))
def test_fuzz_server_hello_never_raises(first: Any, rest: list[Any]) -> None:
    server = ServerConnection()
    events = server.receive_data(pack(first) + b"".join(pack(frame) for frame in rest))
    assert all(type(event) in (Hello, Request, BadRequest, Refusal) for event in events)
    if events and type(events[0]) is Hello:
        assert server.greeted
    else:
        assert type(refusal_error(events)) is RemoteProtocolError
