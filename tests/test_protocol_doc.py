"""docs/PROTOCOL.md, tested: an independent client written from the document alone.

The client below uses plain ``socket`` and ``msgpack`` and nothing from aionamespace's
``_protocol`` or ``_codec``: if it can talk to a real server and exchange values with the real
proxies, the document is precise enough to write a client from. The worked example, the
authentication test vector and the value examples in the document are hex dumps; they are
parsed out of PROTOCOL.md and compared with what the library produces (only those tests import
the library's internals, as the reference), so the document cannot silently drift from the code.
"""

from __future__ import annotations

import datetime as dt
import decimal
import hashlib
import hmac
import os
import re
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import Any

import msgpack
import pytest

from aionamespace import Limits, Namespace, ServerThread

DOC = Path(__file__).resolve().parent.parent / "docs" / "PROTOCOL.md"

# ------------------------------------------------------------------ values (PROTOCOL.md, 9)

BIGINT, TUPLE, SET, FROZENSET, BYTEARRAY, COMPLEX = 1, 2, 3, 4, 5, 6
DATETIME, DATE, TIME, TIMEDELTA, DECIMAL, UUID = 7, 8, 9, 10, 11, 12
INT_MIN, INT_MAX = -(2**63), 2**64 - 1


def _items(code: int, items: Any) -> msgpack.ExtType:
    return msgpack.ExtType(code, msgpack.packb([_to_msgpack(item) for item in items]))


def _to_msgpack(value: Any) -> Any:
    """``value`` rebuilt from what msgpack packs natively, extensions as ``ExtType``."""
    cls = type(value)
    if value is None or cls in (bool, float, str, bytes):
        return value
    if cls is int:
        if INT_MIN <= value <= INT_MAX:
            return value
        length = (value if value >= 0 else ~value).bit_length() // 8 + 1
        return msgpack.ExtType(BIGINT, value.to_bytes(length, "big", signed=True))
    if cls is list:
        return [_to_msgpack(item) for item in value]
    if cls is dict:
        return {_to_msgpack(k): _to_msgpack(v) for k, v in value.items()}
    if cls in (tuple, set, frozenset):
        return _items({tuple: TUPLE, set: SET, frozenset: FROZENSET}[cls], value)
    if cls is bytearray:
        return msgpack.ExtType(BYTEARRAY, bytes(value))
    if cls is complex:
        return _items(COMPLEX, [value.real, value.imag])
    if cls in (dt.datetime, dt.date, dt.time):
        code = {dt.datetime: DATETIME, dt.date: DATE, dt.time: TIME}[cls]
        return msgpack.ExtType(code, value.isoformat().encode())
    if cls is dt.timedelta:
        return _items(TIMEDELTA, [value.days, value.seconds, value.microseconds])
    if cls is decimal.Decimal:
        return msgpack.ExtType(DECIMAL, str(value).encode())
    if cls is uuid.UUID:
        return msgpack.ExtType(UUID, value.bytes)
    raise TypeError(f"not a shareable value: {cls.__name__}")


def encode(value: Any) -> bytes:
    return msgpack.packb(_to_msgpack(value), use_bin_type=True, strict_types=True)


def _ext_hook(code: int, data: bytes) -> Any:
    if code == BIGINT:
        return int.from_bytes(data, "big", signed=True)
    if code in (TUPLE, SET, FROZENSET, COMPLEX, TIMEDELTA):
        items = decode(data)
        assert type(items) is list
        if code == COMPLEX:
            return complex(*items)
        if code == TIMEDELTA:
            return dt.timedelta(days=items[0], seconds=items[1], microseconds=items[2])
        return {TUPLE: tuple, SET: set, FROZENSET: frozenset}[code](items)
    if code == BYTEARRAY:
        return bytearray(data)
    if code == DATETIME:
        return dt.datetime.fromisoformat(data.decode())
    if code == DATE:
        return dt.date.fromisoformat(data.decode())
    if code == TIME:
        return dt.time.fromisoformat(data.decode())
    if code == DECIMAL:
        return decimal.Decimal(data.decode())
    if code == UUID:
        return uuid.UUID(bytes=data)
    raise ValueError(f"unknown value extension code {code}")


def decode(data: bytes) -> Any:
    return msgpack.unpackb(data, ext_hook=_ext_hook, raw=False, strict_map_key=False)


def assert_same(actual: Any, expected: Any) -> None:
    """Equal, and of the same types all the way down (a tuple is not a list)."""
    assert type(actual) is type(expected), (actual, expected)
    assert actual == expected
    if type(expected) in (list, tuple):
        for a, e in zip(actual, expected, strict=True):
            assert_same(a, e)
    elif type(expected) is dict:
        assert list(map(type, actual)) == list(map(type, expected))
        for key in expected:
            assert_same(actual[key], expected[key])


# ------------------------------------------------------------------ frames (PROTOCOL.md, 2-5)

HELLO = {"protocol": "aionamespace", "version": 1}
SERVER_LABEL = b"aionamespace/1 server proof\x00"
CLIENT_LABEL = b"aionamespace/1 client proof\x00"


def server_proof(key: bytes, client_challenge: bytes, server_challenge: bytes) -> bytes:
    return hmac.digest(key, SERVER_LABEL + client_challenge + server_challenge, hashlib.sha256)


def client_proof(key: bytes, client_challenge: bytes, server_challenge: bytes) -> bytes:
    return hmac.digest(key, CLIENT_LABEL + server_challenge + client_challenge, hashlib.sha256)


def pack(frame: Any) -> bytes:
    return msgpack.packb(frame, use_bin_type=True)


class Client:
    """One connection: frames out, frames in, request ids counting up from 1."""

    def __init__(self, address: str | tuple[str, int]) -> None:
        if isinstance(address, tuple):
            self.sock = socket.create_connection(address, timeout=10)
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        else:
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.sock.settimeout(10)
            self.sock.connect(address)
        self.frames = msgpack.Unpacker(raw=False, use_list=True)
        self.next_id = 1

    def __enter__(self) -> Client:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.sock.close()

    def send(self, *frames: Any) -> None:
        self.sock.sendall(b"".join(pack(frame) for frame in frames))

    def receive(self, count: int = 1) -> list[Any]:
        received: list[Any] = []
        while True:
            received.extend(self.frames)
            if len(received) >= count:
                assert len(received) == count, "more frames than expected"
                return received
            data = self.sock.recv(65536)
            if not data:
                raise EOFError("the server closed the connection")
            self.frames.feed(data)

    def at_eof(self) -> bool:
        """True when the server has closed the connection and sent nothing more."""
        return self.sock.recv(65536) == b""

    def handshake(self, authkey: bytes | None = None) -> dict[str, Any]:
        challenge = os.urandom(32)
        self.send(HELLO if authkey is None else {**HELLO, "challenge": challenge})
        (hello,) = self.receive()
        assert type(hello) is dict
        assert hello["protocol"] == "aionamespace"
        assert hello["version"] == 1
        if authkey is not None:
            expected = server_proof(authkey, challenge, hello["challenge"])
            assert hmac.compare_digest(hello["proof"], expected), "the server lacks our key"
            self.send({"proof": client_proof(authkey, challenge, hello["challenge"])})
        return hello

    def frame(self, op: str, *args: Any) -> list[Any]:
        request = [self.next_id, op, *args]
        self.next_id += 1
        return request

    def call(self, op: str, *args: Any) -> list[Any]:
        """Send one request, return its whole reply frame."""
        request = self.frame(op, *args)
        self.send(request)
        reply: list[Any]
        (reply,) = self.receive()
        assert reply[0] == request[0]
        return reply

    def result(self, op: str, *args: Any) -> Any:
        reply = self.call(op, *args)
        assert len(reply) == 3, reply
        assert reply[1] == 0, reply
        return reply[2]


def assert_error(reply: list[Any], error_type: str) -> None:
    assert len(reply) == 4, reply
    assert reply[1:3] == [1, error_type], reply
    assert type(reply[3]) is str


@pytest.fixture
def client(server: ServerThread) -> Iterator[Client]:
    with Client(server.address) as connected:
        connected.handshake()
        yield connected


# ------------------------------------------------------------------ the client at work


def test_handshake(server: ServerThread) -> None:
    with Client(server.address) as client:
        hello = client.handshake()
        assert hello["max_frame_bytes"] == 64 * 1024 * 1024
        assert client.result("ping") is None


def test_set_and_get(client: Client) -> None:
    for name, value, first_byte in [
        ("text", "empty", 0xA5),  # fixstr of 5 bytes
        ("count", 42, 0x2A),  # positive fixint
        ("pair", (1, "a"), 0xD6),  # fixext 4, code TUPLE
        ("huge", 10**30, 0xC7),  # ext 8, code BIGINT
        ("negative_huge", -(10**30), 0xC7),
    ]:
        blob = encode(value)
        assert blob[0] == first_byte
        assert client.result("set", "board", name, blob) is None
        stored = client.result("get", "board", name)
        assert stored == blob  # byte for byte, never re-encoded
        assert_same(decode(stored), value)
    assert encode((1, "a"))[1] == TUPLE
    assert encode(10**30)[2] == BIGINT


def test_open_and_dump(client: Client) -> None:
    key = "#" + os.urandom(16).hex()  # an anonymous namespace: the client makes the key up
    assert client.result("dump", key) == {}
    assert client.result("open", key, {"a": encode(1), "b": encode("x")}) is None
    assert client.result("open", key, {"a": encode(2), "c": encode(None)}) is None
    dump = client.result("dump", key)
    assert {name: decode(blob) for name, blob in dump.items()} == {"a": 1, "b": "x", "c": None}
    assert client.result("del", key, "a") is None
    assert set(client.result("dump", key)) == {"b", "c"}


SAMPLES: dict[str, Any] = {
    "nothing": None,
    "flag": False,
    "text": "héllo",
    "count": -7,
    "huge": 2**64,
    "negative_huge": -(10**40),
    "ratio": 0.25,
    "blob": b"\x00\xff",
    "items": [1, [2, (3, "x")], {"k": (4,)}],
    "mapping": {"a": 1, 2: "two", (1, 2): None, frozenset({3}): "fs", None: dt.date(2024, 1, 1)},
    "pair": (1, (2.5, "b")),
    "tags": {1, 2, 3},
    "frozen": frozenset({"x"}),
    "buffer": bytearray(b"ab\x00"),
    "number": 1.5 - 2j,
    "aware": dt.datetime(2024, 5, 17, 13, 45, 30, 123456,
                         tzinfo=dt.timezone(dt.timedelta(hours=-3, minutes=-30))),
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
        for name, value in SAMPLES.items():  # independent client -> proxy
            assert client.result("set", "interop", "back_" + name, encode(value)) is None
            assert_same(getattr(ns, "back_" + name), value)


def test_pipelining_100_requests_in_one_write(server: ServerThread) -> None:
    ids = list(range(10, 1010, 10))  # any positive ids, never reused
    requests: list[Any] = []
    for i, request_id in enumerate(ids):
        if i % 2 == 0:
            requests.append([request_id, "set", "pipe", "n", encode(i)])
        else:
            requests.append([request_id, "get", "pipe", "n"])
    with Client(server.address) as client:
        client.send(HELLO, *requests)  # the hello too: requests may follow it at once
        hello, *replies = client.receive(1 + len(requests))
        assert hello["version"] == 1
    assert [reply[0] for reply in replies] == ids
    for i, reply in enumerate(replies):
        assert reply[1] == 0
        if i % 2 == 0:
            assert reply[2] is None
        else:
            assert decode(reply[2]) == i - 1  # applied in order: sees the set just before


def test_missing_names_are_attribute_errors(client: Client) -> None:
    assert client.result("set", "board", "present", encode(1)) is None
    assert_error(client.call("get", "board", "absent"), "AttributeError")
    assert_error(client.call("get", "no such namespace", "absent"), "AttributeError")
    reply = client.call("del", "board", "absent")
    assert_error(reply, "AttributeError")
    assert reply[3] == "'Namespace' object has no attribute 'absent'"
    assert client.result("ping") is None  # an error reply leaves the connection usable


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
        ("open", ("board", {"x": b"\xc0", "": b"\xc0"})),  # a bad name among the defaults
        ("open", ("board", {"x": 1})),  # defaults are bins
    ],
)
def test_bad_requests_get_error_replies(client: Client, op: str, args: tuple[Any, ...]) -> None:
    assert_error(client.call(op, *args), "RemoteProtocolError")
    assert client.result("dump", "board") == {}  # nothing was applied


def test_names_of_256_characters_are_valid(client: Client) -> None:
    key, name = "k" * 256, "\N{SNOWMAN}" * 256  # characters, not UTF-8 bytes
    assert_error(client.call("get", key, name), "AttributeError")
    assert client.result("set", key, name, encode(1)) is None
    assert decode(client.result("get", key, name)) == 1


def test_wrong_version_gets_the_hello_error_form(server: ServerThread) -> None:
    with Client(server.address) as client:
        client.send({"protocol": "aionamespace", "version": 2})
        (hello,) = client.receive()
        assert set(hello) == {"protocol", "error"}
        assert hello["protocol"] == "aionamespace"
        error_type, message = hello["error"]
        assert error_type == "RemoteProtocolError"
        assert "version" in message
        assert client.at_eof()


def test_connection_level_error(client: Client) -> None:
    client.send([0, "ping"])  # id 0 is never a request id
    (error,) = client.receive()
    assert error[:3] == [0, 1, "RemoteProtocolError"]
    assert client.at_eof()


def test_broken_frame_after_the_hello(server: ServerThread) -> None:
    with Client(server.address) as client:
        client.send(HELLO, [1, "ping"], "not a request", [2, "ping"])
        hello, reply, error = client.receive(3)
        assert hello["version"] == 1
        assert reply == [1, 0, None]  # what came before the broken frame is answered
        assert error[:3] == [0, 1, "RemoteProtocolError"]
        assert client.at_eof()  # and nothing after it


KEY = b"doc key"


@pytest.fixture(params=["unix", "tcp"])
def keyed_server(request: pytest.FixtureRequest, short_tmp: str) -> Iterator[ServerThread]:
    address = os.path.join(short_tmp, "k.sock") if request.param == "unix" else ("127.0.0.1", 0)
    with ServerThread(address, authkey=KEY) as running:
        yield running


def test_authentication(keyed_server: ServerThread) -> None:
    with Client(keyed_server.address) as client:
        hello = client.handshake(KEY)
        assert len(hello["challenge"]) == 32
        assert client.result("set", "vault", "secret", encode((1, 2))) is None
        with Namespace(keyed_server.address, "vault", authkey=KEY) as ns:
            assert ns.secret == (1, 2)
            ns.answer = 42
        assert decode(client.result("get", "vault", "answer")) == 42


def test_wrong_proof_is_refused(keyed_server: ServerThread) -> None:
    with Client(keyed_server.address) as client:
        client.send({**HELLO, "challenge": os.urandom(32)})
        (hello,) = client.receive()
        assert set(hello) >= {"challenge", "proof"}
        client.send({"proof": bytes(32)}, [1, "ping"])  # the request must never run
        (error,) = client.receive()
        assert error[:3] == [0, 1, "AuthenticationError"]
        assert client.at_eof()


def test_missing_challenge_is_refused(keyed_server: ServerThread) -> None:
    with Client(keyed_server.address) as client:
        client.send(HELLO)
        (hello,) = client.receive()
        assert set(hello) == {"protocol", "error"}
        assert hello["error"][0] == "AuthenticationError"
        assert client.at_eof()


@pytest.fixture(params=["unix", "tcp"])
def small_server(request: pytest.FixtureRequest, short_tmp: str) -> Iterator[ServerThread]:
    address = os.path.join(short_tmp, "s.sock") if request.param == "unix" else ("127.0.0.1", 0)
    with ServerThread(address, limits=Limits(max_frame_bytes=100_000)) as running:
        yield running


def test_frames_over_max_frame_bytes_drop_the_connection(small_server: ServerThread) -> None:
    with Client(small_server.address) as client:
        assert client.handshake()["max_frame_bytes"] == 100_000
        assert client.result("set", "board", "fits", encode(b"x" * 50_000)) is None
        client.send(client.frame("set", "board", "too_big", encode(b"x" * 100_100)))
        (error,) = client.receive()
        assert error[:3] == [0, 1, "RemoteProtocolError"]
        assert client.at_eof()


# ------------------------------------------------------------------ the document itself


def doc_examples() -> dict[str, str]:
    """Every ``<!-- example: name -->`` hex block of PROTOCOL.md, by name."""
    text = DOC.read_text(encoding="utf-8")
    blocks = re.findall(r"<!-- example: ([\w-]+) -->\n```hex\n(.*?)```", text, re.DOTALL)
    assert len(blocks) == len(set(dict(blocks))), "duplicate example names"
    return dict(blocks)


def hex_bytes(block: str) -> bytes:
    return bytes.fromhex("".join(line.partition("#")[0] for line in block.splitlines()))


def recv_exactly(sock: socket.socket, count: int) -> bytes:
    data = b""
    while len(data) < count:
        chunk = sock.recv(count - len(data))
        if not chunk:
            break
        data += chunk
    return data


def test_worked_example_matches_the_library(server: ServerThread) -> None:
    # This test alone uses the library's internals: they are the reference the document shows.
    from aionamespace._codec import encode_value
    from aionamespace._protocol import ClientConnection

    examples = {name: hex_bytes(block) for name, block in doc_examples().items()}
    value = encode_value("empty")

    reference = ClientConnection()
    assert examples["client-hello"] == reference.send_hello() == pack(HELLO)
    expected_requests = {
        "set-request": ("set", "board", "item", value),
        "get-request": ("get", "board", "item"),
        "missing-request": ("get", "board", "missing"),
    }
    for request_id, (name, (op, *args)) in enumerate(expected_requests.items(), start=1):
        assert examples[name] == reference.send_request(op, *args)[1], name
        assert examples[name] == pack([request_id, op, *args]), name

    # Replay the client's side against a real server; its answers must be the documented bytes.
    with Client(server.address) as client:
        for sent, answered in [("client-hello", "server-hello"), ("set-request", "set-reply"),
                               ("get-request", "get-reply"),
                               ("missing-request", "missing-reply")]:
            client.sock.sendall(examples[sent])
            assert recv_exactly(client.sock, len(examples[answered])) == examples[answered], sent
    with Client(server.address) as client:
        client.sock.sendall(examples["bad-hello"])
        assert recv_exactly(client.sock, 4096) == examples["hello-refusal"]


def test_auth_test_vector_matches_the_library() -> None:
    from aionamespace import _auth

    examples = doc_examples()
    key, client_challenge, server_challenge = b"secret", bytes(range(32)), bytes(range(32, 64))
    documented = hex_bytes(examples["auth-server-proof"])
    assert documented == server_proof(key, client_challenge, server_challenge)
    assert documented == _auth.server_proof(key, client_challenge, server_challenge)
    documented = hex_bytes(examples["auth-client-proof"])
    assert documented == client_proof(key, client_challenge, server_challenge)
    assert documented == _auth.client_proof(key, client_challenge, server_challenge)


VALUE_EXAMPLES: list[tuple[str, Any]] = [
    ("None", None),
    ("True", True),
    ("-1", -1),
    ("2**64 - 1", 2**64 - 1),
    ("0.5", 0.5),
    ("'é'", "é"),
    ("b'\\x00'", b"\x00"),
    ("[1, 'a']", [1, "a"]),
    ("{'a': 1}", {"a": 1}),
    ("2**64", 2**64),
    ("-(2**64)", -(2**64)),
    ("(1, 'a')", (1, "a")),
    ("{1, 2}", {1, 2}),
    ("frozenset({'x'})", frozenset({"x"})),
    ("bytearray(b'ab')", bytearray(b"ab")),
    ("1.5-2j", 1.5 - 2j),
    ("datetime(2024, 5, 17, 13, 45, 30, 123456, tzinfo=timezone(timedelta(hours=2)))",
     dt.datetime(2024, 5, 17, 13, 45, 30, 123456, tzinfo=dt.timezone(dt.timedelta(hours=2)))),
    ("datetime(2024, 5, 17, 13, 45)", dt.datetime(2024, 5, 17, 13, 45)),
    ("date(2024, 5, 17)", dt.date(2024, 5, 17)),
    ("time(13, 45, 30, tzinfo=timezone.utc)", dt.time(13, 45, 30, tzinfo=dt.timezone.utc)),
    ("timedelta(days=-1, seconds=5, microseconds=7)",
     dt.timedelta(days=-1, seconds=5, microseconds=7)),
    ("Decimal('-3.14')", decimal.Decimal("-3.14")),
    ("UUID('12345678-1234-5678-1234-567812345678')",
     uuid.UUID("12345678-1234-5678-1234-567812345678")),
    ("{(1, 2): None}", {(1, 2): None}),
]


def test_value_examples_match_the_library() -> None:
    from aionamespace._codec import decode_value, encode_value

    lines = doc_examples()["values"].strip().splitlines()
    labels = [line.partition("#")[2].strip() for line in lines]
    assert labels == [label for label, _ in VALUE_EXAMPLES]
    for line, (label, value) in zip(lines, VALUE_EXAMPLES, strict=True):
        documented = bytes.fromhex(line.partition("#")[0])
        assert documented == encode_value(value) == encode(value), label
        assert_same(decode(documented), value)
        assert_same(decode_value(documented), value)


def doc_table(name: str) -> list[list[str]]:
    """The body rows of the table after ``<!-- table: name -->``, as lists of cells."""
    text = DOC.read_text(encoding="utf-8")
    match = re.search(rf"<!-- table: {name} -->\n((?:\|.*\n)+)", text)
    assert match is not None, name
    rows = match.group(1).splitlines()[2:]
    return [[cell.strip() for cell in row.strip("|").split("|")] for row in rows]


def test_doc_tables_list_what_the_library_has() -> None:
    from aionamespace._codec import ExtCode
    from aionamespace._errors import _REMOTE_TYPES
    from aionamespace._protocol import OPS

    assert [row[0].strip("`") for row in doc_table("operations")] == list(OPS)
    assert {int(row[0]): row[1].strip("`") for row in doc_table("ext-codes")} == {
        code.value: code.name for code in ExtCode
    }
    names = [row[0].strip("`") for row in doc_table("error-types")]
    assert names[-1] == "any other name"
    assert sorted(names[:-1]) == sorted(_REMOTE_TYPES)
