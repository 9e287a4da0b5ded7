"""A ``ClientConnection`` reading what the server sends: its hello, replies, errors, refusals.

The server's ``send_*`` output parses as the right event (an error reply as the right
exception); anything malformed raises ``RemoteProtocolError``. The proxies' fast paths,
``lone_result`` (the sync proxy's) and ``receive_frames`` (the async proxy's), agree with
``receive_data``, checked by fuzzing.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aionamespace import (
    LocalProtocolError,
    NamespaceError,
    ProtocolError,
    RemoteError,
    RemoteProtocolError,
)
from aionamespace._errors import AuthenticationError
from aionamespace.protocol.connection import (
    NO_FRAME,
    PROTOCOL_NAME,
    PROTOCOL_VERSION,
    REPLY_OK,
    ClientConnection,
    Hello,
    Invalidation,
    Limits,
    Reply,
    ServerConnection,
)
from aionamespace.protocol.events import PUSH_INVALIDATE
from greeted_connections import greeted_client, greeted_server, only_replies
from handmade_frames import ONE, pack


def test_server_hello_parses_on_the_client() -> None:
    limits = Limits(max_frame_bytes=12345)
    client = ClientConnection(limits)
    assert not client.greeted
    (hello,) = client.receive_data(ServerConnection(limits).send_hello())
    assert type(hello) is Hello
    assert hello.version == PROTOCOL_VERSION
    assert hello.info["protocol"] == PROTOCOL_NAME
    assert hello.info["max_frame_bytes"] == 12345
    assert client.greeted


@pytest.mark.parametrize("result", [None, ONE, b"", {"a": ONE, "b": b"\x01"}, 0, "text"], ids=repr)
def test_send_result_parses_as_a_reply(result: Any) -> None:
    client = greeted_client()
    assert client.receive_data(ServerConnection.send_result(42, result)) == [Reply(42, result)]


@pytest.mark.parametrize(
    ("error", "expected_type", "expected_message"),
    [
        (
            AttributeError("'Namespace' object has no attribute 'x'"),
            AttributeError,
            "'Namespace' object has no attribute 'x'",
        ),
        (KeyError("k"), KeyError, "'k'"),
        (TypeError("t"), TypeError, "t"),
        (ValueError("v"), ValueError, "v"),
        (OverflowError("o"), OverflowError, "o"),
        (LookupError("l"), LookupError, "l"),
        (TimeoutError("slow"), TimeoutError, "slow"),
        (NamespaceError("n"), NamespaceError, "n"),
        (ProtocolError("p"), ProtocolError, "p"),
        (AuthenticationError("a"), AuthenticationError, "a"),
        (RemoteProtocolError("you sent garbage"), LocalProtocolError, "you sent garbage"),
    ],
    ids=lambda value: type(value).__name__ if isinstance(value, Exception) else None,
)
def test_send_error_parses_as_the_right_exception(
    error: Exception, expected_type: type[Exception], expected_message: str
) -> None:
    client = greeted_client()
    (reply,) = only_replies(client.receive_data(ServerConnection.send_error(9, error)))
    assert type(reply) is Reply
    assert reply.id == 9
    assert reply.result is None
    assert type(reply.error) is expected_type
    assert str(reply.error) == expected_message


@pytest.mark.parametrize(
    "error",
    [
        ZeroDivisionError("div"),
        RuntimeError("div"),
        LocalProtocolError("div"),
        RemoteError("Inner", "div"),
    ],
)
def test_unknown_error_types_become_remote_error(error: Exception) -> None:
    client = greeted_client()
    (reply,) = only_replies(client.receive_data(ServerConnection.send_error(3, error)))
    assert type(reply.error) is RemoteError
    assert reply.error.remote_type == type(error).__name__
    assert "div" in str(reply.error)


def test_refusal_before_the_hello_raises_on_the_client() -> None:
    server = ServerConnection()
    frame = server.send_refusal(RemoteProtocolError("unsupported protocol version 2"))
    client = ClientConnection()
    with pytest.raises(LocalProtocolError, match="unsupported protocol version 2"):
        client.receive_data(frame)
    assert not client.greeted


def test_refusal_after_the_hello_is_a_reply_with_id_0() -> None:
    server = greeted_server()
    client = greeted_client()
    (reply,) = only_replies(
        client.receive_data(server.send_refusal(RemoteProtocolError("bad frame")))
    )
    assert reply.id == 0
    assert type(reply.error) is LocalProtocolError
    assert str(reply.error) == "bad frame"


@pytest.mark.parametrize(
    ("error", "expected_type"),
    [
        (["RemoteProtocolError", "m"], LocalProtocolError),
        (["AuthenticationError", "m"], AuthenticationError),
        (["ValueError", "m"], ValueError),
        (["AttributeError", "m"], AttributeError),
        (["SomethingElse", "m"], RemoteError),
    ],
    ids=repr,
)
def test_server_hello_carrying_an_error_raises_it(
    error: list[str], expected_type: type[Exception]
) -> None:
    client = ClientConnection()
    with pytest.raises(expected_type) as info:
        client.receive_data(pack({"protocol": PROTOCOL_NAME, "error": error}))
    assert type(info.value) is expected_type
    assert "m" in str(info.value)
    assert not client.greeted


@pytest.mark.parametrize(
    "hello",
    [
        {"protocol": PROTOCOL_NAME, "error": "just a string"},
        {"protocol": PROTOCOL_NAME, "error": ["One"]},
        {"protocol": PROTOCOL_NAME, "error": ["One", 2]},
        {"protocol": PROTOCOL_NAME},
        {"protocol": PROTOCOL_NAME, "version": "1"},
        {"protocol": "other", "version": 1},
        [1, 0, None],
    ],
    ids=repr,
)
def test_malformed_server_hello_is_a_remote_protocol_error(hello: Any) -> None:
    with pytest.raises(RemoteProtocolError):
        ClientConnection().receive_data(pack(hello))


@pytest.mark.parametrize("version", [0, 2, 2**40])
def test_server_hello_with_another_version_is_refused(version: int) -> None:
    """PROTOCOL.md 3.2: a client SHOULD refuse a version other than the one it sent."""
    client = ClientConnection()
    with pytest.raises(RemoteProtocolError, match="version"):
        client.receive_data(pack({"protocol": PROTOCOL_NAME, "version": version}))
    assert not client.greeted


@pytest.mark.parametrize(
    "reply",
    [
        "nope",
        {"id": 1},
        [],
        [1],
        [1, 0],
        ["1", 0, None],
        [None, 0, None],
        [1, 0, None, "extra"],
        [1, 1, "ValueError"],
        [1, 1, "ValueError", 5],
        [1, 1, b"ValueError", "m"],
        [1, 2, None],
        [1, "ok", None],
    ],
    ids=repr,
)
def test_malformed_replies_are_remote_protocol_errors(reply: Any) -> None:
    client = greeted_client()
    with pytest.raises(RemoteProtocolError):
        client.receive_data(pack(reply))


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_fuzz_client_replies(data: bytes) -> None:
    """After the hello the client parses replies or raises RemoteProtocolError."""
    client = greeted_client()
    try:
        events = client.receive_data(data)
    except RemoteProtocolError:
        return
    assert all(type(event) is Reply for event in events)


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (pack([7, 0, b"\x01"]) + pack([8, 0, None]), "two replies"),
        (pack([7, 0, b"\x01"])[:-1], "part of a reply"),
        (pack([6, 0, b"\x01"]), "another request's reply"),
        (pack([True, 0, b"\x01"]), "an id that is not an int"),
        (pack([7, 1, "KeyError", "x"]), "an error reply"),
        (pack([0, PUSH_INVALIDATE, "k", "n"]) + pack([7, 0, b"\x01"]), "a push first"),
        (b"\xc1", "garbage"),
    ],
)
def test_lone_result_takes_only_one_whole_successful_reply(data: bytes, why: str) -> None:
    """The sync proxy's fast path; whatever it declines must still parse as before, since it
    consumed nothing."""
    client = greeted_client()
    assert client.lone_result(7, data) is NO_FRAME, why
    try:
        expected = greeted_client().receive_data(data)
    except RemoteProtocolError:
        with pytest.raises(RemoteProtocolError):
            client.receive_data(data)
    else:  # (repr: an error reply's exception compares by identity)
        assert repr(client.receive_data(data)) == repr(expected)


def test_lone_result_returns_the_result_of_a_whole_reply() -> None:
    client = greeted_client()
    assert client.lone_result(7, pack([7, 0, b"\x01"])) == b"\x01"
    assert client.lone_result(7, pack([7, 0, None])) is None  # nil is a result, not NO_FRAME
    assert client.receive_data(pack([9, 0, 5])) == [Reply(9, 5)]  # nothing was left behind


@settings(max_examples=300, deadline=None)
@given(
    st.integers(1, 3),
    st.one_of(
        st.binary(max_size=60),
        st.lists(
            st.one_of(
                st.integers(-1, 3),
                st.none(),
                st.booleans(),
                st.binary(max_size=3),
                st.text(max_size=3),
            ),
            max_size=4,
        ).map(pack),
    ),
)
def test_fuzz_lone_result_agrees_with_receive_data(request_id: int, data: bytes) -> None:
    result = greeted_client().lone_result(request_id, data)
    if result is NO_FRAME:
        return
    assert greeted_client().receive_data(data) == [Reply(request_id, result)]


def test_receive_frames_leaves_successful_replies_as_their_frames() -> None:
    """The async proxy's view: a ResultFrame is the checked frame; everything else is an event."""
    client = greeted_client()
    data = pack([4, 0, b"\x01"]) + pack([5, 1, "KeyError", "gone"]) + pack([0, 3, "k", "n"])
    answer, error, invalidate = client.receive_frames(data)
    assert answer == [4, REPLY_OK, b"\x01"]
    assert error == Reply(5, error=error.error)
    assert isinstance(error.error, KeyError)
    assert invalidate == Invalidation("k", "n")
    for bad in ([0, 0, 1], [-1, 0, 1], [True, 0, 1], [4, 0]):  # never Answers
        try:
            events = greeted_client().receive_frames(pack(bad))
        except RemoteProtocolError:
            continue
        assert not any(type(event) is list for event in events), bad


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.binary(max_size=20),
            st.lists(
                st.one_of(
                    st.integers(-1, 3),
                    st.none(),
                    st.booleans(),
                    st.binary(max_size=3),
                    st.text(max_size=3),
                ),
                max_size=4,
            ).map(pack),
        ),
        max_size=4,
    ).map(b"".join)
)
def test_fuzz_receive_frames_agrees_with_receive_data(data: bytes) -> None:
    try:
        expected = greeted_client().receive_data(data)
    except RemoteProtocolError:
        with pytest.raises(RemoteProtocolError):
            greeted_client().receive_frames(data)
        return
    frames = greeted_client().receive_frames(data)
    as_events = [Reply(f[0], f[2]) if type(f) is list else f for f in frames]
    assert repr(as_events) == repr(expected)  # (an error reply's exception: by identity)
