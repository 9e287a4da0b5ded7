"""A ``ServerConnection`` before its handshake completes: small, shallow frames, decoded whole.

Until a client has said hello and authenticated, each frame it sends may be at most
``max_handshake_bytes`` long and nest ``max_handshake_depth`` arrays and maps; a frame over
either is refused from its header, and what the server holds meanwhile is the unfinished
frame's bytes, no more. The bytes after the hello and the proof are parsed only once the
handshake has completed, under the full limits (so a wrong proof leaves them unparsed).
"""

from __future__ import annotations

import contextlib
import struct
import tracemalloc
from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aionamespace import AuthenticationError, RemoteProtocolError
from aionamespace.protocol.connection import (
    PROTOCOL_NAME,
    ClientConnection,
    Hello,
    Limits,
    Request,
    ServerConnection,
)
from aionamespace.protocol.handshake import HandshakeDecoder
from greeted_connections import refusal_error
from handmade_frames import HELLO, msgpack_leaves, pack

KEY = b"handshake key"
MAX = Limits().max_handshake_bytes


def hello_of(size: int) -> bytes:
    """A valid hello of exactly ``size`` bytes (padded by a key the server ignores)."""
    padding = size
    while len(frame := pack({"protocol": PROTOCOL_NAME, "version": 1, "pad": "x" * padding})) != (
        size
    ):
        padding -= len(frame) - size
    return frame


def nested(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth - 1):  # the hello itself is the first level
        value = [value]
    return value


def test_a_hello_up_to_max_handshake_bytes_passes() -> None:
    for feed in ("whole", "bytewise"):
        server = ServerConnection()
        data = hello_of(MAX)
        if feed == "whole":
            events = server.receive_data(data)
        else:
            events = [event for i in range(MAX) for event in server.receive_data(data[i : i + 1])]
        assert [type(event) for event in events] == [Hello]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (hello_of(MAX + 1), f"handshake frame larger than max_handshake_bytes ({MAX})"),
        (b"\xc6\x03\xc0\x00\x00", f"handshake frame larger than max_handshake_bytes ({MAX})"),
        (b"\xdc\xff\xff" * 1000, "handshake frame nested deeper than max_handshake_depth (4)"),
        (
            pack({"protocol": PROTOCOL_NAME, "version": 1, "x": nested(5)}),
            "handshake frame nested deeper than max_handshake_depth (4)",
        ),
        (b"\x91\xc1", "malformed frame: FormatError"),
    ],
    ids=["one-byte-over", "60-mib-bin-header", "nested-array-headers", "deep-map", "bad-byte"],
)
def test_a_handshake_frame_over_a_bound_is_refused_from_its_header(
    data: bytes, message: str
) -> None:
    server = ServerConnection()
    events = server.receive_data(data)
    error = refusal_error(events)
    assert type(error) is RemoteProtocolError
    assert str(error).startswith(message)
    assert server.refused
    assert not server.greeted


def test_nesting_up_to_max_handshake_depth_passes() -> None:
    server = ServerConnection()
    (hello,) = server.receive_data(pack({"protocol": PROTOCOL_NAME, "version": 1, "x": nested(4)}))
    assert type(hello) is Hello
    assert hello.info["x"] == [[[1]]]


def test_a_smaller_max_frame_bytes_bounds_the_hello_too() -> None:
    server = ServerConnection(Limits(max_frame_bytes=64))
    error = refusal_error(server.receive_data(hello_of(65)))
    assert str(error) == "handshake frame larger than max_frame_bytes (64)"


def test_requests_behind_the_hello_meet_the_full_limits() -> None:
    """The advice of PROTOCOL.md 3.5: hello and requests in one write, without an authkey."""
    big = pack([1, "set", "k", "x", pack(b"x" * 100_000)])
    for cut in (None, len(HELLO) + 1000):
        server = ServerConnection()
        data = HELLO + big + pack([2, "ping"])
        parts = [data] if cut is None else [data[:cut], data[cut:]]
        events = [event for part in parts for event in server.receive_data(part)]
        assert [type(event) for event in events] == [Hello, Request, Request]


def handshake(server: ServerConnection, client: ClientConnection) -> bytes:
    """Hello both ways; the client's proof, to send."""
    (hello,) = server.receive_data(client.start())
    assert type(hello) is Hello
    client.receive_data(server.send_hello())
    assert client.greeted
    return client.handshake_reply()


def test_requests_behind_the_proof_are_parsed_once_it_verifies() -> None:
    big = pack([1, "set", "k", "x", pack(b"x" * 100_000)])
    for cut in (None, 5, 1000):
        server, client = ServerConnection(authkey=KEY), ClientConnection(authkey=KEY)
        data = handshake(server, client) + big
        parts = [data] if cut is None else [data[:cut], data[cut:]]
        events = [event for part in parts for event in server.receive_data(part)]
        assert [type(event) for event in events] == [Request]
        assert server.ready


def test_nothing_behind_a_wrong_proof_is_parsed() -> None:
    server, client = ServerConnection(authkey=KEY), ClientConnection(authkey=KEY)
    handshake(server, client)
    behind = b"\xc1" * 10 + b"\xdc\xff\xff" * 1000  # garbage: parsed, it would say so
    error = refusal_error(server.receive_data(pack({"proof": bytes(32)}) + behind))
    assert type(error) is AuthenticationError
    assert str(error) == "authentication failed: wrong authkey"


def test_a_proof_over_the_bounds_is_refused() -> None:
    server, client = ServerConnection(authkey=KEY), ClientConnection(authkey=KEY)
    handshake(server, client)
    error = refusal_error(server.receive_data(pack({"proof": b"x" * MAX})))
    assert str(error) == f"handshake frame larger than max_handshake_bytes ({MAX})"
    assert server.greeted  # so the refusal is a connection-level error (PROTOCOL.md 3.4)


@pytest.mark.parametrize(
    "attack",
    [
        b"\xdc\xff\xff" * 1000,  # nested array headers: ~58 MB per connection
        b"\xde\xff\xff" * 1000,  # nested map headers
        b"\xc6\x03\xc0\x00\x00" + b"x" * 60_000,  # the start of a 60 MiB hello
        hello_of(MAX)[:-1],  # a hello one byte short of whole: held, at most MAX
    ],
    ids=["nested-arrays", "nested-maps", "unfinished-60-mib", "unfinished-max"],
)
def test_an_unauthenticated_peer_makes_the_server_allocate_little(attack: bytes) -> None:
    """tracemalloc, in process: the peak a hundred connections' handshakes allocate."""
    servers = [ServerConnection(authkey=KEY) for _ in range(100)]
    tracemalloc.start()
    try:
        for server in servers:
            for start in range(0, len(attack), 65536):  # as the server reads: 64 KiB at a time
                server.receive_data(attack[start : start + 65536])
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 100 * (MAX + 4096), f"{peak / 100:.0f} bytes per connection"


# ---------------------------------------------------------------------------- against msgpack

# Lengths on each side of every header kind's bounds: fixext (1 to 16), 8 bit, 16 bit, 32 bit.
lengths = st.sampled_from([0, 1, 2, 3, 4, 8, 16, 17, 31, 32, 255, 256, 300, 65535, 65536])
leaves = st.one_of(
    msgpack_leaves,
    lengths.map(lambda n: "s" * n),  # fixstr, str 8, 16, 32
    lengths.map(lambda n: b"b" * n),  # bin 8, 16, 32
    lengths.map(lambda n: msgpack.ExtType(7, b"e" * n)),  # fixext, ext 8, 16, 32
    st.floats(width=32).map(lambda f: msgpack.ExtType(5, struct.pack(">f", f))),
    lengths.map(lambda n: [0] * min(n, 300)),  # fixarray, array 16
)
values = st.recursive(
    leaves,
    lambda inner: st.lists(inner, max_size=20) | st.dictionaries(st.text(max_size=4), inner),
    max_leaves=25,
)


def depth_of(value: Any) -> int:
    if isinstance(value, list):
        return 1 + max(map(depth_of, value), default=0)
    if isinstance(value, dict):
        return 1 + max(map(depth_of, value.values()), default=0)
    return 0


EVERY_HEADER = [
    *(
        v
        for n in (0, 1, 2, 4, 8, 16, 17, 300)
        for v in ("s" * n, b"b" * n, msgpack.ExtType(7, b"e" * n))
    ),
    *([0] * n for n in (0, 15, 16, 300)),
    *({f"k{i}": i for i in range(n)} for n in (0, 15, 16, 200)),
    *(n for n in (0, 127, 128, -32, -33, -200, 255, 256, 2**16, 2**32, 2**63, -(2**31), -(2**63))),
    *(None, True, False, 1.5, msgpack.ExtType(5, struct.pack(">f", 1.5)), "é" * 40),
]


@pytest.mark.parametrize("value", EVERY_HEADER, ids=lambda value: pack(value)[:3].hex())
def test_every_kind_of_header_is_followed(value: Any) -> None:
    """Each msgpack header kind, at each length it has, fed whole and byte by byte."""
    data = pack(value) + HELLO
    assert len(data) < MAX
    for piece in (len(data), 1):
        decoder = HandshakeDecoder(Limits())
        received = [
            frame
            for start in range(0, len(data), piece)
            for frame in decoder.frames(data[start : start + piece])
        ]
        assert received == [value, msgpack.unpackb(HELLO)]


@settings(max_examples=100, deadline=None)
@given(st.lists(values, min_size=1, max_size=4), st.integers(1, 5000))
def test_frames_are_cut_where_msgpack_cuts_them(sent: list[Any], piece: int) -> None:
    """Each frame whole, or a refusal naming the bound it passed; however the bytes are cut."""
    limits = Limits()
    data = b"".join(map(pack, sent))
    decoder = HandshakeDecoder(limits)
    received: list[Any] = []
    refusal = ""
    try:
        for start in range(0, len(data), piece):
            received.extend(decoder.frames(data[start : start + piece]))
    except RemoteProtocolError as exc:
        refusal = str(exc)
    if not refusal:
        assert received == sent
        assert all(len(pack(value)) <= limits.max_handshake_bytes for value in sent)
        assert all(depth_of(value) <= limits.max_handshake_depth for value in sent)
        return
    assert received == sent[: len(received)]
    over = sent[len(received)]
    if "larger than" in refusal:
        assert len(pack(over)) > limits.max_handshake_bytes
    else:
        assert refusal.startswith("handshake frame nested deeper than max_handshake_depth")
        assert depth_of(over) > limits.max_handshake_depth


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=5000))
def test_any_bytes_give_frames_or_a_remote_protocol_error(data: bytes) -> None:
    decoder = HandshakeDecoder(Limits())
    with contextlib.suppress(RemoteProtocolError):
        list(decoder.frames(data))


def test_a_peer_between_hello_and_proof_holds_none_of_the_read() -> None:
    """The bytes after the hello are looked at, not kept: only the unfinished proof is."""
    server, client = ServerConnection(authkey=KEY), ClientConnection(authkey=KEY)
    read = bytearray(client.start() + b"\x81")  # the hello, and the proof's first byte
    (hello,) = server.receive_data(memoryview(read))
    assert type(hello) is Hello
    read.extend(b"x")  # a bytearray with a view exported cannot be resized
