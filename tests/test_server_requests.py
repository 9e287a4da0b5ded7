"""A ``ServerConnection`` after the hello: request frames become ``Request`` events.

A request with a usable id but unusable contents becomes a ``BadRequest`` (answered with an
error; the connection goes on); a frame that is no request at all, or bad bytes, end the events
with a ``Refusal``. Checked by example and by fuzzing: ``receive_data`` never raises, and only
valid requests become ``Request`` events.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aionamespace import RemoteProtocolError
from aionamespace.protocol.codec import encode_value
from aionamespace.protocol.connection import (
    OPS,
    BadRequest,
    Hello,
    Limits,
    Refusal,
    Request,
    ServerConnection,
)
from aionamespace.protocol.ops import check_args
from greeted_connections import greeted_server, refusal_error
from handmade_frames import HELLO, ONE, frames, pack


@pytest.mark.parametrize(
    ("frame", "op", "args"),
    [
        ([1, "ping"], "ping", ()),
        ([2, "open", "key", {}], "open", ("key", {})),
        (
            [3, "open", "key", {"a": ONE, "b": encode_value((1, 2))}],
            "open",
            ("key", {"a": ONE, "b": encode_value((1, 2))}),
        ),
        ([4, "get", "key", "name"], "get", ("key", "name")),
        ([5, "set", "key", "name", ONE], "set", ("key", "name", ONE)),
        ([6, "del", "key", "name"], "del", ("key", "name")),
        ([7, "dump", "key"], "dump", ("key",)),
        ([2**64 - 1, "get", "k", "n"], "get", ("k", "n")),
        ([8, "get", "ключ", "name with spaces & ☃"], "get", ("ключ", "name with spaces & ☃")),
        ([9, "get", "k" * 256, "n" * 256], "get", ("k" * 256, "n" * 256)),
    ],
    ids=lambda value: repr(value)[:40],
)
def test_requests_become_request_events(frame: list[Any], op: str, args: tuple[Any, ...]) -> None:
    server = greeted_server()
    assert server.receive_data(pack(frame)) == [Request(frame[0], op, args)]


def test_hello_and_requests_in_one_chunk() -> None:
    server = ServerConnection()
    hello, *requests = server.receive_data(HELLO + pack([1, "ping"]) + pack([2, "dump", "k"]))
    assert type(hello) is Hello
    assert requests == [Request(1, "ping", ()), Request(2, "dump", ("k",))]


BAD_REQUESTS: list[tuple[list[Any], str]] = [
    ([5, "nope"], "unknown operation"),
    ([5, "GET", "k", "n"], "unknown operation"),
    ([5, 7], "unknown operation"),
    ([5, None, "k"], "unknown operation"),
    ([5, b"get", "k", "n"], "unknown operation"),
    ([5, ["get"], "k", "n"], "unknown operation"),
    ([5, "ping", "extra"], "takes 0 arguments"),
    ([5, "get", "k"], "get:"),
    ([5, "get", "k", "n", "extra"], "get:"),
    ([5, "set", "k", "n"], "set:"),
    ([5, "dump"], "dump:"),
    ([5, "open", "k"], "open:"),
    ([5, "get", "k", b"n"], "get:"),
    ([5, "get", 1, "n"], "get:"),
    ([5, "get", "k", None], "get:"),
    ([5, "set", "k", "n", "a str, not bin"], "set:"),
    ([5, "set", "k", "n", None], "set:"),
    ([5, "set", "k", "n", 1], "set:"),
    ([5, "open", "k", [ONE]], "open:"),
    ([5, "open", "k", None], "open:"),
    ([5, "dump", 1], "dump:"),
    ([5, "del", "k", ["n"]], "del:"),
    ([5, "get", "", "n"], "empty"),
    ([5, "get", "k", ""], "empty"),
    ([5, "set", "", "n", ONE], "empty"),
    ([5, "set", "k", "", ONE], "empty"),
    ([5, "del", "k", ""], "empty"),
    ([5, "dump", ""], "empty"),
    ([5, "open", "", {}], "empty"),
    ([5, "open", "k", {"": ONE}], "empty"),
    ([5, "get", "k" * 257, "n"], "longer"),
    ([5, "get", "k", "n" * 257], "longer"),
    ([5, "set", "k", "n" * 257, ONE], "longer"),
    ([5, "dump", "k" * 1000], "longer"),
    ([5, "open", "k", {"n" * 257: ONE}], "longer"),
    ([5, "open", "k", {b"n": ONE}], "names must be str"),
    ([5, "open", "k", {"n": "a str, not bin"}], "values travel as bin"),
    ([5, "open", "k", {"n": 1}], "values travel as bin"),
    ([5, "open", "k", {"a": ONE, "n": b"\xc1"}], "malformed value"),
    ([5, "set", "k", "n", b""], "malformed value"),
    ([5, "set", "k", "n", b"\xc1"], "malformed value"),
    ([5, "set", "k", "n", b"\x92\x01"], "malformed value"),
    ([5, "set", "k", "n", ONE + b"\x01"], "malformed value"),
    ([5, "set", "k", "n", b"\xd4\x0d\x00"], "unknown value extension code 13"),
    ([5, "set", "k", "n", b"\xd4\x02\x05"], "zero-length container marker"),
    # a set marker with a payload:
    ([5, "set", "k", "n", b"\xc7\x03\x03\x91\x91\x01"], "zero-length container marker"),
]


@pytest.mark.parametrize(("frame", "fragment"), BAD_REQUESTS, ids=lambda v: repr(v)[:50])
def test_bad_requests_become_bad_request_with_the_same_id(frame: list[Any], fragment: str) -> None:
    server = greeted_server()
    events = server.receive_data(pack(frame) + pack([6, "ping"]))
    assert len(events) == 2
    bad = events[0]
    assert type(bad) is BadRequest
    assert bad.id == frame[0]
    assert fragment in bad.message
    # A bad request does not end the connection.
    assert events[1] == Request(6, "ping", ())
    assert not server.refused


TIMESTAMP = b"\xc7\x04\xff\x00\x00\x00\x00"  # msgpack's timestamp (-1), in ext 8 form


@pytest.mark.parametrize(
    "frame",
    [
        [5, "set", "k", "n", b"\xd6\xff\x00\x00\x00\x00"],
        [5, "set", "k", "n", TIMESTAMP],
        [5, "set", "k", "n", b"\xc8\x00\x08\xff" + b"\x00" * 8],
        [5, "set", "k", "n", b"\x92\x01" + TIMESTAMP],
        [5, "open", "k", {"a": ONE, "n": TIMESTAMP}],
    ],
    ids=["fixext-4", "ext-8", "ext-16", "in-a-list", "in-open"],
)
def test_msgpack_timestamps_are_bad_requests(frame: list[Any]) -> None:
    """PROTOCOL.md 9.4: extension -1 is not a valid value; the server refuses it."""
    server = greeted_server()
    (event,) = server.receive_data(pack(frame))
    assert type(event) is BadRequest
    assert event.id == 5


def test_name_length_limit_is_configurable() -> None:
    server = greeted_server(Limits(max_name_length=8))
    events = server.receive_data(
        pack([1, "get", "k" * 8, "n" * 8])
        + pack([2, "get", "k" * 9, "n"])
        + pack([3, "get", "k", "n" * 9])
        + pack([4, "open", "k", {"n" * 9: ONE}])
    )
    assert events[0] == Request(1, "get", ("k" * 8, "n" * 8))
    for event, request_id in zip(events[1:], [2, 3, 4], strict=True):
        assert type(event) is BadRequest
        assert event.id == request_id
        assert "longer than 8" in event.message


@pytest.mark.parametrize(
    "frame",
    [
        "not an array",
        {"id": 1, "op": "ping"},
        5,
        None,
        b"\x01",
        [],
        [1],
        [0, "ping"],
        [-1, "ping"],
        [-(2**63), "ping"],
        ["1", "ping"],
        [1.0, "ping"],
        [True, "ping"],
        [None, "ping"],
        [b"\x01", "ping"],
        [[1], "ping"],
    ],
    ids=repr,
)
def test_malformed_request_frames_are_refused(frame: Any) -> None:
    server = greeted_server()
    events = server.receive_data(pack([1, "ping"]) + pack(frame) + pack([2, "ping"]))
    # What came before the bad frame is answered; nothing after it is parsed.
    assert events[0] == Request(1, "ping", ())
    assert len(events) == 2
    assert type(refusal_error(events)) is RemoteProtocolError
    assert server.refused
    assert server.receive_data(pack([3, "ping"])) == []


def test_garbage_after_the_hello_is_refused() -> None:
    server = greeted_server()
    events = server.receive_data(pack([1, "ping"]) + b"\xc1" + pack([2, "ping"]))
    assert type(refusal_error(events)) is RemoteProtocolError
    assert server.receive_data(pack([3, "ping"])) == []


@st.composite
def request_frames(draw: st.DrawFn) -> Any:
    """Request-shaped arrays with plausible ops and arguments, or anything else."""
    request_id = draw(st.integers(-5, 2**64 - 1) | frames)
    op = draw(st.sampled_from(sorted(OPS)) | frames)
    plausible_args = st.one_of(
        st.text(max_size=5),
        st.binary(max_size=10),
        st.just(ONE),
        st.dictionaries(st.text(max_size=3), st.binary(max_size=4) | st.just(ONE), max_size=2),
        frames,
    )
    args = draw(st.lists(plausible_args, max_size=4))
    return draw(st.just([request_id, op, *args]) | frames)


@settings(max_examples=300, deadline=None)
@given(st.lists(request_frames(), min_size=1, max_size=6))
def test_fuzz_server_requests(frames_in: list[Any]) -> None:
    server = greeted_server()
    events = server.receive_data(b"".join(pack(frame) for frame in frames_in))
    for frame, event in zip(frames_in, events, strict=False):  # a Refusal ends early
        if isinstance(event, Refusal):
            assert event is events[-1]
            assert type(event.error) is RemoteProtocolError
            break
        assert isinstance(event, (Request, BadRequest))
        assert event.id == frame[0]
        assert event.id > 0
        if type(event) is Request:
            assert event.op == frame[1]
            assert event.args == tuple(frame[2:])
            assert len(event.args) == len(OPS[event.op])
            assert check_args(Limits(), event.op, event.args) is None  # only valid ones pass
    else:
        assert len(events) == len(frames_in)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_fuzz_server_bytes_after_hello(data: bytes) -> None:
    server = greeted_server()
    events = server.receive_data(data)
    assert all(type(event) in (Request, BadRequest, Refusal) for event in events)
    if any(type(event) is Refusal for event in events):
        refusal_error(events)


def test_server_survives_a_set_of_deeply_nested_tuples() -> None:
    """A 1.5 KB request must get a BadRequest, not kill the server process.

    Each TUPLE level is decoded by a nested msgpack.unpackb with a large C frame; run in a
    subprocess so that a crash fails this test only.
    """
    code = textwrap.dedent("""
        import msgpack
        from aionamespace.protocol.connection import BadRequest, ServerConnection
        blob = msgpack.packb(0)
        for _ in range(300):
            blob = msgpack.packb(msgpack.ExtType(2, b"\\x91" + blob))
        server = ServerConnection()
        hello = msgpack.packb({"protocol": "aionamespace", "version": 1})
        frame = msgpack.packb([1, "set", "k", "n", blob], use_bin_type=True)
        events = server.receive_data(hello + frame)
        print(type(events[-1]).__name__, events[-1].id)
    """)
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=50, check=False
    )
    assert proc.returncode == 0, f"the server process died (exit status {proc.returncode})"
    assert proc.stdout.split() == ["BadRequest", "1"]
