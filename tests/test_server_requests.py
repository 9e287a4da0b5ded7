"""The sans-IO wire protocol (``_protocol``): frames, both state machines, addresses.

No sockets and no event loop: bytes go from a ``ClientConnection`` into a ``ServerConnection``,
the server's events are applied by the server's ``Dispatcher`` against a ``MemoryStore``, and
the reply bytes go back into the ``ClientConnection``.

The parser's promise, checked here by example and by fuzzing: whatever bytes arrive,
``FrameDecoder.feed`` returns frames (those completed before any bad bytes) or raises
``RemoteProtocolError``, and ``ServerConnection.receive_data`` returns events (ending with a
``Refusal`` when the stream is unusable) and never raises.
"""

from __future__ import annotations

import itertools
import subprocess
import sys
import textwrap
from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aionamespace import (
    LocalProtocolError,
    MemoryStore,
    NamespaceError,
    ProtocolError,
    RemoteError,
    RemoteProtocolError,
    Server,
)
from aionamespace._errors import AuthenticationError
from aionamespace.protocol.codec import decode_value, encode_value
from aionamespace.protocol.connection import (
    NO_FRAME,
    OPS,
    PROTOCOL_NAME,
    PROTOCOL_VERSION,
    REPLY_OK,
    Address,
    BadRequest,
    ClientConnection,
    FrameDecoder,
    Hello,
    Invalidate,
    Limits,
    Refusal,
    Reply,
    Request,
    ServerConnection,
    format_address,
    parse_address,
)
from aionamespace.protocol.events import PUSH_INVALIDATE
from aionamespace.protocol.ops import check_args


def pack(frame: Any) -> bytes:
    packed: bytes = msgpack.packb(frame, use_bin_type=True)
    return packed


HELLO = pack({"protocol": PROTOCOL_NAME, "version": PROTOCOL_VERSION})
ONE = encode_value(1)

# ----------------------------------------------------------------------------- strategies

msgpack_leaves = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.floats(allow_nan=False),
    st.text(max_size=20),
    st.binary(max_size=20),
)
frames = st.recursive(
    msgpack_leaves,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=8), inner,
                                                                 max_size=5),
    max_leaves=12,
)


# ----------------------------------------------------------------------------- FrameDecoder

SAMPLE_FRAMES: list[Any] = [
    {"protocol": PROTOCOL_NAME, "version": 1},
    [1, "get", "key", "name"],
    [2, "set", "key", "name", ONE],
    "just a string",
    2**64 - 1,
    -(2**63),
    None,
    True,
    1.5,
    b"\x00" * 300,
    {"nested": [1, [2, [3, {"deep": b"bytes"}]]]},
    "é" * 70000,  # str 32, longer than one 64 KiB read
    [],
    {},
]
SAMPLE_BYTES = b"".join(pack(frame) for frame in SAMPLE_FRAMES)


def feed_bytewise(decoder: FrameDecoder, data: bytes) -> list[Any]:
    frames_out: list[Any] = []
    for index in range(len(data)):
        frames_out += decoder.feed(data[index : index + 1])
    return frames_out


def test_frames_fed_whole() -> None:
    assert FrameDecoder(Limits().max_frame_bytes).feed(SAMPLE_BYTES) == SAMPLE_FRAMES


def test_frames_fed_one_byte_at_a_time() -> None:
    decoder = FrameDecoder(Limits().max_frame_bytes)
    assert feed_bytewise(decoder, SAMPLE_BYTES) == SAMPLE_FRAMES


def test_a_frame_comes_out_only_when_complete() -> None:
    decoder = FrameDecoder(1000)
    frame = pack([7, "get", "key", "name"])
    for index in range(len(frame) - 1):
        assert decoder.feed(frame[index : index + 1]) == []
    assert decoder.feed(frame[-1:]) == [[7, "get", "key", "name"]]


def test_feed_accepts_memoryview() -> None:
    buffer = bytearray(SAMPLE_BYTES)
    decoder = FrameDecoder(Limits().max_frame_bytes)
    assert decoder.feed(memoryview(buffer)) == SAMPLE_FRAMES


def test_many_frames_in_one_chunk_all_come_out() -> None:
    chunk = b"".join(pack([request_id, "ping"]) for request_id in range(1, 5001))
    frames_out = FrameDecoder(Limits().max_frame_bytes).feed(chunk)
    assert frames_out == [[request_id, "ping"] for request_id in range(1, 5001)]


@settings(max_examples=200, deadline=None)
@given(st.lists(frames, min_size=1, max_size=8), st.data())
def test_frames_survive_any_split(frames_in: list[Any], data: st.DataObject) -> None:
    stream = b"".join(pack(frame) for frame in frames_in)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=10)))
    decoder = FrameDecoder(Limits().max_frame_bytes)
    frames_out: list[Any] = []
    start = 0
    for cut in [*cuts, len(stream)]:
        frames_out += decoder.feed(stream[start:cut])
        start = cut
    assert frames_out == frames_in


def test_frame_larger_than_max_frame_bytes_fed_whole() -> None:
    decoder = FrameDecoder(100)
    with pytest.raises(RemoteProtocolError, match="max_frame_bytes"):
        decoder.feed(pack(b"x" * 200))


def test_frame_larger_than_max_frame_bytes_fed_bytewise() -> None:
    decoder = FrameDecoder(100)
    frame = pack(b"x" * 200)
    with pytest.raises(RemoteProtocolError, match="max_frame_bytes"):
        feed_bytewise(decoder, frame)
    with pytest.raises(RemoteProtocolError):
        decoder.feed(pack(1))


def test_frame_of_exactly_max_frame_bytes_is_accepted() -> None:
    frame = pack(b"x" * 98)
    assert len(frame) == 100
    assert FrameDecoder(100).feed(frame) == [b"x" * 98]


def test_many_small_frames_in_a_read_larger_than_max_frame_bytes() -> None:
    """max_frame_bytes bounds one frame, not one read: pipelined small frames all pass."""
    chunk = b"".join(pack([request_id, "get", "key", "name"]) for request_id in range(1, 101))
    assert len(chunk) > 1000
    frames_out = FrameDecoder(100).feed(chunk)
    assert frames_out == [[request_id, "get", "key", "name"] for request_id in range(1, 101)]


def test_frame_within_documented_margin_survives_pipelined_followers() -> None:
    """PROTOCOL.md 8: a frame of up to max_frame_bytes - 65536 bytes is always accepted,
    even when a full 64 KiB read completes it together with frames pipelined behind it."""
    limit = 65536 + 4096
    big = pack(b"b" * 4000)
    followers = b"".join(pack([n, "ping"]) for n in range(1, 20000))
    stream = big + followers
    decoder = FrameDecoder(limit)
    frames_out = decoder.feed(stream[:2000])
    for start in range(2000, len(stream), 65536):
        frames_out += decoder.feed(stream[start : start + 65536])
    assert frames_out == [b"b" * 4000, *([n, "ping"] for n in range(1, 20000))]


@pytest.mark.parametrize(
    "garbage",
    [
        b"\xc1",  # never used
        b"\xa2\xff\xfe",  # str with invalid UTF-8
        b"\x81\x01\x02",  # frame-level map with an int key
        b"\x81\x91\x01\x02",  # frame-level map with an array key
        b"\x91" * 2000 + b"\x01",  # nested deeper than msgpack's stack
    ],
    ids=["c1", "bad-utf8", "int-map-key", "array-map-key", "too-deep"],
)
def test_garbage_breaks_the_decoder_for_good(garbage: bytes) -> None:
    decoder = FrameDecoder(Limits().max_frame_bytes)
    with pytest.raises(RemoteProtocolError, match="malformed frame"):
        decoder.feed(garbage)
    with pytest.raises(RemoteProtocolError):
        decoder.feed(HELLO)
    with pytest.raises(RemoteProtocolError):
        decoder.feed(b"")


def test_frames_before_garbage_come_out_then_the_decoder_is_broken() -> None:
    """The frames completed before the bad bytes deserve their answers; nothing after them."""
    decoder = FrameDecoder(Limits().max_frame_bytes)
    assert decoder.feed(pack([1, "ping"]) + pack([2, "ping"]) + b"\xc1" + pack([3, "ping"])) == [
        [1, "ping"], [2, "ping"],
    ]
    with pytest.raises(RemoteProtocolError, match="malformed frame"):
        decoder.feed(pack([4, "ping"]))
    with pytest.raises(RemoteProtocolError):
        decoder.feed(b"")


def feed_all(decoder: FrameDecoder, chunks: list[bytes]) -> tuple[list[Any], bool]:
    """Every frame that came out, and whether the decoder ended up broken.

    Only RemoteProtocolError may come out of ``feed``: anything else fails the test.
    """
    frames_out: list[Any] = []
    for chunk in chunks:
        try:
            frames_out += decoder.feed(chunk)
        except RemoteProtocolError:
            return frames_out, True
    try:
        decoder.feed(b"")
    except RemoteProtocolError:
        return frames_out, True
    return frames_out, False


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_fuzz_frame_decoder(data: bytes) -> None:
    whole = feed_all(FrameDecoder(Limits().max_frame_bytes), [data])
    bytewise = feed_all(
        FrameDecoder(Limits().max_frame_bytes), [data[i : i + 1] for i in range(len(data))]
    )
    # Both ways of feeding agree on the frames (compared packed, as nan != nan) and on the end.
    assert whole[1] == bytewise[1]
    assert pack(whole[0]) == pack(bytewise[0])


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200), st.integers(1, 300))
def test_fuzz_frame_decoder_with_a_small_limit(data: bytes, limit: int) -> None:
    whole = feed_all(FrameDecoder(limit), [data])
    bytewise = feed_all(FrameDecoder(limit), [data[i : i + 1] for i in range(len(data))])
    assert whole[1] == bytewise[1]
    assert pack(whole[0]) == pack(bytewise[0])


# ----------------------------------------------------------------------------- server side


def greeted_server(limits: Limits | None = None) -> ServerConnection:
    server = ServerConnection(limits)
    events = server.receive_data(HELLO)
    assert len(events) == 1
    assert type(events[0]) is Hello
    assert server.greeted
    return server


def refusal_error(events: list[Any]) -> Exception:
    """The error of the Refusal that must end ``events``."""
    assert events, "expected a Refusal, got no events"
    assert type(events[-1]) is Refusal, f"expected a Refusal last, got {events!r}"
    assert all(type(event) is not Refusal for event in events[:-1])
    error: Exception = events[-1].error
    return error


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
    "error", [["ValueError", "x"], ["NoSuchError", "x"], ["RemoteProtocolError", "x"],
              ["AttributeError", "x"], ["KeyError", "x"]],
    ids=repr,
)
def test_client_hello_carrying_an_error_is_refused_not_raised(error: list[str]) -> None:
    """Only a server may send the hello error form (PROTOCOL.md 3.1: a client MUST NOT).

    A client that does must be refused like any bad hello: receive_data promises never to
    raise, and on trio an exception escaping it takes the whole server down.
    """
    server = ServerConnection()
    events = server.receive_data(
        pack({"protocol": PROTOCOL_NAME, "version": 1, "error": error})
    )
    assert type(refusal_error(events)) is RemoteProtocolError


def test_garbage_before_the_hello_is_refused() -> None:
    server = ServerConnection()
    assert type(refusal_error(server.receive_data(b"\xc1"))) is RemoteProtocolError


def test_oversized_hello_is_refused() -> None:
    server = ServerConnection(Limits(max_frame_bytes=64))
    frame = pack({"protocol": PROTOCOL_NAME, "version": 1, "padding": "x" * 100})
    assert type(refusal_error(server.receive_data(frame))) is RemoteProtocolError


@pytest.mark.parametrize(
    ("frame", "op", "args"),
    [
        ([1, "ping"], "ping", ()),
        ([2, "open", "key", {}], "open", ("key", {})),
        ([3, "open", "key", {"a": ONE, "b": encode_value((1, 2))}], "open",
         ("key", {"a": ONE, "b": encode_value((1, 2))})),
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
def test_requests_become_request_events(frame: list[Any], op: str, args: tuple[Any, ...]
                                        ) -> None:
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
def test_bad_requests_become_bad_request_with_the_same_id(frame: list[Any], fragment: str
                                                          ) -> None:
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
        pack([1, "get", "k" * 8, "n" * 8]) + pack([2, "get", "k" * 9, "n"])
        + pack([3, "get", "k", "n" * 9]) + pack([4, "open", "k", {"n" * 9: ONE}])
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
def client_hellos(draw: st.DrawFn) -> Any:
    """Hello-shaped maps (often nearly valid), or anything else."""
    hello = draw(st.fixed_dictionaries(
        {},
        optional={
            "protocol": st.just(PROTOCOL_NAME) | frames,
            "version": st.just(PROTOCOL_VERSION) | frames,
            "error": st.lists(st.text(max_size=20), max_size=3) | frames,
            "challenge": st.binary(min_size=32, max_size=32) | frames,
        },
    ))
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


@st.composite
def request_frames(draw: st.DrawFn) -> Any:
    """Request-shaped arrays with plausible ops and arguments, or anything else."""
    request_id = draw(st.integers(-5, 2**64 - 1) | frames)
    op = draw(st.sampled_from(sorted(OPS)) | frames)
    plausible_args = st.one_of(
        st.text(max_size=5), st.binary(max_size=10), st.just(ONE),
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


# ----------------------------------------------------------------------------- server output


def only_replies(events: list[Hello | Reply]) -> list[Reply]:
    replies = [event for event in events if isinstance(event, Reply)]
    assert len(replies) == len(events), f"expected only replies, got {events!r}"
    return replies


def greeted_client(limits: Limits | None = None) -> ClientConnection:
    client = ClientConnection(limits)
    events = client.receive_data(ServerConnection(limits).send_hello())
    assert len(events) == 1
    assert type(events[0]) is Hello
    assert client.greeted
    return client


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


@pytest.mark.parametrize(
    "result", [None, ONE, b"", {"a": ONE, "b": b"\x01"}, 0, "text"], ids=repr
)
def test_send_result_parses_as_a_reply(result: Any) -> None:
    client = greeted_client()
    assert client.receive_data(ServerConnection.send_result(42, result)) == [Reply(42, result)]


@pytest.mark.parametrize(
    ("error", "expected_type", "expected_message"),
    [
        (AttributeError("'Namespace' object has no attribute 'x'"), AttributeError,
         "'Namespace' object has no attribute 'x'"),
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


@pytest.mark.parametrize("error", [ZeroDivisionError("div"), RuntimeError("div"),
                                   LocalProtocolError("div"), RemoteError("Inner", "div")])
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
def test_server_hello_carrying_an_error_raises_it(error: list[str],
                                                  expected_type: type[Exception]) -> None:
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


@pytest.mark.parametrize(("data", "why"), [
    (pack([7, 0, b"\x01"]) + pack([8, 0, None]), "two replies"),
    (pack([7, 0, b"\x01"])[:-1], "part of a reply"),
    (pack([6, 0, b"\x01"]), "another request's reply"),
    (pack([True, 0, b"\x01"]), "an id that is not an int"),
    (pack([7, 1, "KeyError", "x"]), "an error reply"),
    (pack([0, PUSH_INVALIDATE, "k", "n"]) + pack([7, 0, b"\x01"]), "a push first"),
    (b"\xc1", "garbage"),
])
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
@given(st.integers(1, 3), st.one_of(
    st.binary(max_size=60),
    st.lists(st.one_of(st.integers(-1, 3), st.none(), st.booleans(), st.binary(max_size=3),
                       st.text(max_size=3)), max_size=4).map(pack),
))
def test_fuzz_lone_result_agrees_with_receive_data(request_id: int, data: bytes) -> None:
    result = greeted_client().lone_result(request_id, data)
    if result is NO_FRAME:
        return
    assert greeted_client().receive_data(data) == [Reply(request_id, result)]


def test_receive_frames_leaves_successful_replies_as_their_frames() -> None:
    """The async proxy's view: an Answer is the checked frame; everything else is an event."""
    client = greeted_client()
    data = pack([4, 0, b"\x01"]) + pack([5, 1, "KeyError", "gone"]) + pack([0, 3, "k", "n"])
    answer, error, invalidate = client.receive_frames(data)
    assert answer == [4, REPLY_OK, b"\x01"]
    assert error == Reply(5, error=error.error)
    assert isinstance(error.error, KeyError)
    assert invalidate == Invalidate("k", "n")
    for bad in ([0, 0, 1], [-1, 0, 1], [True, 0, 1], [4, 0]):  # never Answers
        try:
            events = greeted_client().receive_frames(pack(bad))
        except RemoteProtocolError:
            continue
        assert not any(type(event) is list for event in events), bad


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(
    st.binary(max_size=20),
    st.lists(st.one_of(st.integers(-1, 3), st.none(), st.booleans(), st.binary(max_size=3),
                       st.text(max_size=3)), max_size=4).map(pack),
), max_size=4).map(b"".join))
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


# ----------------------------------------------------------------------------- client side


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


# ----------------------------------------------------------------------------- conversation


class Peer:
    """What the dispatcher writes to, outside a batch's answer (pushes, deferred replies)."""

    def __init__(self, protocol: ServerConnection) -> None:
        self.protocol = protocol
        self.written: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.written.append(data)


class Wire:
    """A client and a server connected by function calls instead of a socket."""

    def __init__(self, limits: Limits | None = None, store: MemoryStore | None = None) -> None:
        self.store = store if store is not None else MemoryStore()
        self.server = Server(store=self.store, limits=limits)
        self.server_side = self.server.new_connection()
        self.peer = Peer(self.server_side)
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
        "a": 1, "b": 3, "c": 6,
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
    answer = b"".join(server.dispatcher.respond(Peer(server_side), events))
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
        client.receive_data(b"".join(server.dispatcher.respond(Peer(server_side), events)))


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
    peer = Peer(server_side)
    for index in range(len(outgoing)):
        events_in = server_side.receive_data(outgoing[index:index + 1])
        answer += b"".join(server.dispatcher.respond(peer, events_in))
    events: list[Any] = []
    for index in range(len(answer)):
        events += client.receive_data(answer[index : index + 1])
    assert type(events[0]) is Hello
    assert events[1:] == [Reply(ids[0], 1), Reply(ids[1], ONE), Reply(ids[2], {"a": ONE})]


# ----------------------------------------------------------------------------- crash safety


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


# ----------------------------------------------------------------------------- addresses


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        ("/tmp/ns.sock", "/tmp/ns.sock"),
        ("/tmp/with:colon/ns.sock", "/tmp/with:colon/ns.sock"),
        ("relative.sock", "relative.sock"),
        ("./dir/ns.sock", "./dir/ns.sock"),
        ("unix:/tmp/ns.sock", "/tmp/ns.sock"),
        ("unix:relative:with:colons", "relative:with:colons"),
        ("localhost:8000", ("localhost", 8000)),
        ("127.0.0.1:0", ("127.0.0.1", 0)),
        ("example.com:65535", ("example.com", 65535)),
        (":8000", ("127.0.0.1", 8000)),
        ("tcp://localhost:8000", ("localhost", 8000)),
        ("tcp:localhost:8000", ("localhost", 8000)),
        ("tcp://[::1]:8000", ("::1", 8000)),
        ("[::1]:8000", ("::1", 8000)),
        ("[fe80::1]:1", ("fe80::1", 1)),
        (("h", 5), ("h", 5)),
        (("::1", 0), ("::1", 0)),
        (("h", "80"), ("h", 80)),
    ],
    ids=repr,
)
def test_parse_address(address: object, expected: Address) -> None:
    assert parse_address(address) == expected


@pytest.mark.parametrize(
    "bad",
    [
        ("h", -1), ("h", 70000), ("h", 65536), ("h", "x"), ("h", None), ("h", 5.0), ("h", True),
        ("h", ""), "h:-1", "h:70000", "h:x", "h:", "[::1]:port", "tcp://host", "tcp://", "",
        None, 5, b"/tmp/ns.sock", ("h",), ("h", 1, 2), (1, 2), ["h", 1],
    ],
    ids=repr,
)
def test_parse_address_rejects(bad: object) -> None:
    with pytest.raises(ValueError, match=r"address|port"):
        parse_address(bad)


@pytest.mark.parametrize(
    "address",
    ["/tmp/ns.sock", "unix:/tmp/ns.sock", "localhost:8000", "tcp://h:1", "[::1]:8000",
     ("::1", 9), ("h", 0), ("10.0.0.1", 65535)],
    ids=repr,
)
def test_format_address_round_trips(address: object) -> None:
    parsed = parse_address(address)
    assert parse_address(format_address(parsed)) == parsed


hosts = st.one_of(
    st.from_regex(r"[a-z0-9]([a-z0-9.-]{0,20}[a-z0-9])?", fullmatch=True),
    st.sampled_from(["::1", "::", "fe80::1", "2001:db8::42", "127.0.0.1", "0.0.0.0"]),
)
absolute_paths = st.text(
    st.characters(exclude_characters="\x00", exclude_categories=["Cs"]), max_size=40
).map(lambda rest: "/" + rest)


@settings(max_examples=200, deadline=None)
@given(st.tuples(hosts, st.integers(0, 65535)) | absolute_paths)
def test_format_address_round_trips_any_address(address: Address) -> None:
    assert parse_address(format_address(address)) == address


@pytest.mark.parametrize("path", ["host:80", "a:b", "unix:x/y", "tcp:x"], ids=repr)
def test_format_address_round_trips_relative_paths_with_colons(path: str) -> None:
    """A relative Unix path given as unix:PATH must not come back as TCP, or fail to parse."""
    parsed = parse_address("unix:" + path)
    assert parsed == path
    assert parse_address(format_address(parsed)) == path
