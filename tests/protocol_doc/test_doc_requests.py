"""docs/PROTOCOL.md, tested: an independent client written from the document alone.

The client below uses plain ``socket``, ``ssl`` and ``msgpack`` and nothing from aionamespace's
``_protocol``, ``_ops`` or ``_codec``: if it can talk to a real server (on asyncio and on trio,
over Unix sockets, TCP and TLS) and exchange values, watch events and locks with the real
proxies, the document is precise enough to write a client from. The worked examples, the
authentication test vector and the value examples in the document are hex dumps; they are
parsed out of PROTOCOL.md and compared with what the library produces, and the document's
tables and limits are compared with the library's (only those tests import the library's
internals, as the reference), so the document cannot silently drift from the code.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import decimal
import hashlib
import hmac
import os
import re
import socket
import ssl
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from types import TracebackType
from typing import Any

import msgpack
import pytest
import trustme

from aionamespace import Limits, MemoryStore, Namespace, ServerThread

DOC = Path(__file__).resolve().parents[2] / "docs" / "PROTOCOL.md"

# ------------------------------------------------------------------ values (PROTOCOL.md, 9)

BIGINT, TUPLE, SET, FROZENSET, BYTEARRAY, COMPLEX = 1, 2, 3, 4, 5, 6
DATETIME, DATE, TIME, TIMEDELTA, DECIMAL, UUID = 7, 8, 9, 10, 11, 12
INT_MIN, INT_MAX = -(2**63), 2**64 - 1


def _numbers(code: int, numbers: list[int] | list[float]) -> msgpack.ExtType:
    return msgpack.ExtType(code, msgpack.packb(numbers))


def _container(code: int, items: Any) -> tuple[Any, ...]:
    """A marker-led array: a zero-length extension of the container's code, then the items.

    A Python tuple, which msgpack packs as an array, so that it can also be a map key.
    """
    return (msgpack.ExtType(code, b""), *(_to_msgpack(item) for item in items))


def _to_msgpack(value: Any) -> Any:
    """``value`` rebuilt from what msgpack packs natively, extensions as ``ExtType``.

    Only marker-led arrays are tuples in the result, so msgpack can pack it as it is.
    """
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
        return _container({tuple: TUPLE, set: SET, frozenset: FROZENSET}[cls], value)
    if cls is bytearray:
        return msgpack.ExtType(BYTEARRAY, bytes(value))
    if cls is complex:
        return _numbers(COMPLEX, [value.real, value.imag])
    if cls in (dt.datetime, dt.date, dt.time):
        code = {dt.datetime: DATETIME, dt.date: DATE, dt.time: TIME}[cls]
        return msgpack.ExtType(code, value.isoformat().encode())
    if cls is dt.timedelta:
        return _numbers(TIMEDELTA, [value.days, value.seconds, value.microseconds])
    if cls is decimal.Decimal:
        return msgpack.ExtType(DECIMAL, str(value).encode())
    if cls is uuid.UUID:
        return msgpack.ExtType(UUID, value.bytes)
    raise TypeError(f"not a shareable value: {cls.__name__}")


def encode(value: Any) -> bytes:
    return msgpack.packb(_to_msgpack(value), use_bin_type=True)


class Marker:
    """A decoded container marker, until the array it leads is complete."""

    def __init__(self, build: type[tuple[Any, ...]] | type[set[Any]] | type[frozenset[Any]],
                 ) -> None:
        self.build = build


MARKERS = {TUPLE: Marker(tuple), SET: Marker(set), FROZENSET: Marker(frozenset)}


def _list_hook(items: list[Any]) -> Any:
    if items and isinstance(items[0], Marker):
        return items[0].build(items[1:])
    return items


def _ext_hook(code: int, data: bytes) -> Any:
    if code in MARKERS:
        assert data == b"", "a container marker has no payload"
        return MARKERS[code]
    if code == BIGINT:
        return int.from_bytes(data, "big", signed=True)
    if code in (COMPLEX, TIMEDELTA):
        numbers = msgpack.unpackb(data)
        assert type(numbers) is list
        if code == COMPLEX:
            return complex(*numbers)
        return dt.timedelta(days=numbers[0], seconds=numbers[1], microseconds=numbers[2])
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
    value = msgpack.unpackb(data, ext_hook=_ext_hook, list_hook=_list_hook, raw=False,
                            strict_map_key=False)
    assert not isinstance(value, Marker)
    return value


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


# ------------------------------------------------------------------ frames (PROTOCOL.md, 2-4)

HELLO = {"protocol": "aionamespace", "version": 1}
SERVER_LABEL = b"aionamespace/1 server proof\x00"
CLIENT_LABEL = b"aionamespace/1 client proof\x00"
OK, ERROR, PUSH = 0, 1, 2


def server_proof(key: bytes, client_challenge: bytes, server_challenge: bytes) -> bytes:
    return hmac.digest(key, SERVER_LABEL + client_challenge + server_challenge, hashlib.sha256)


def client_proof(key: bytes, client_challenge: bytes, server_challenge: bytes) -> bytes:
    return hmac.digest(key, CLIENT_LABEL + server_challenge + client_challenge, hashlib.sha256)


def pack(frame: Any) -> bytes:
    return msgpack.packb(frame, use_bin_type=True)


def is_push(frame: Any) -> bool:
    return type(frame) is list and frame[:2] == [0, PUSH]


class Client:
    """One connection: frames out; frames in, kept in arrival order until taken.

    Replies are taken by request id and pushes by kind (PROTOCOL.md, 4.4), so a deferred reply
    or a push arriving among other replies is kept until it is asked for.
    """

    def __init__(self, address: str | tuple[str, int],
                 ssl_context: ssl.SSLContext | None = None) -> None:
        if isinstance(address, tuple):
            sock = socket.create_connection(address, timeout=10)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        else:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(10)
            try:
                sock.connect(address)
            except BaseException:
                sock.close()
                raise
        if ssl_context is not None:  # TLS first; everything else runs inside it (2)
            # The test certificate names 127.0.0.1 and localhost; a Unix socket has no host name.
            hostname = address[0] if isinstance(address, tuple) else "localhost"
            try:
                sock = ssl_context.wrap_socket(sock, server_hostname=hostname)
            except BaseException:
                sock.close()
                raise
        self.sock = sock
        self.frames = msgpack.Unpacker(raw=False, use_list=True)
        self.inbox: list[Any] = []  # complete frames received and not taken yet
        self.next_id = 1

    def __enter__(self) -> Client:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.sock.close()

    def send(self, *frames: Any) -> None:
        self.sock.sendall(b"".join(pack(frame) for frame in frames))

    def _read(self) -> None:
        data = self.sock.recv(65536)
        if not data:
            raise EOFError("the server closed the connection")
        self.frames.feed(data)
        self.inbox.extend(self.frames)

    def receive(self, count: int = 1) -> list[Any]:
        """The next ``count`` frames, in arrival order."""
        while len(self.inbox) < count:
            self._read()
        taken, self.inbox = self.inbox[:count], self.inbox[count:]
        return taken

    def take(self, wanted: Callable[[Any], bool]) -> Any:
        """The first frame ``wanted`` accepts, reading as needed; the others stay in the inbox."""
        while True:
            for index, frame in enumerate(self.inbox):
                if wanted(frame):
                    return self.inbox.pop(index)
            self._read()

    def reply(self, request_id: int) -> list[Any]:
        """The reply to request ``request_id`` (a connection-level error fails the test)."""
        frame = self.take(lambda f: f[0] == request_id or f[:2] == [0, ERROR])
        assert frame[0] == request_id, f"connection-level error: {frame}"
        assert (len(frame) == 3 and frame[1] == OK) or (
            len(frame) == 4 and frame[1] == ERROR and type(frame[2]) is type(frame[3]) is str
        ), frame
        return frame

    def push(self) -> list[Any]:
        """The next push, as ``[watch_id, revision, name, value]``."""
        frame = self.take(is_push)
        assert len(frame) == 6, frame
        _, _, watch_id, revision, name, value = frame
        assert type(watch_id) is int
        assert watch_id >= 1
        assert type(revision) is int
        assert revision >= 1
        assert type(name) is str
        assert value is None or type(value) is bytes
        return frame[2:]

    def quiet(self, seconds: float = 0.2) -> bool:
        """True when nothing is waiting and nothing arrives within ``seconds``."""
        if self.inbox:
            return False
        self.sock.settimeout(seconds)
        try:
            self._read()
        except TimeoutError:
            return True
        finally:
            self.sock.settimeout(10)
        return not self.inbox

    def at_eof(self) -> bool:
        """True when the server has closed the connection and sent nothing more."""
        return not self.inbox and self.sock.recv(65536) == b""

    def until_eof(self) -> list[Any]:
        """Every frame until the server closes the connection."""
        frames: list[Any] = []
        with contextlib.suppress(EOFError):
            while True:
                frames.extend(self.receive())
        return frames

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
        return self.reply(request[0])

    def result(self, op: str, *args: Any) -> Any:
        reply = self.call(op, *args)
        assert reply[1] == OK, reply
        return reply[2]


def assert_error(reply: list[Any], error_type: str) -> None:
    assert len(reply) == 4, reply
    assert reply[1:3] == [ERROR, error_type], reply
    assert type(reply[3]) is str


def connect(server: ServerThread) -> Client:
    client = Client(server.address)
    try:
        client.handshake()
    except BaseException:
        client.sock.close()
        raise
    return client


@pytest.fixture
def client(server: ServerThread) -> Iterator[Client]:
    with connect(server) as connected:
        yield connected


# ------------------------------------------------------------------ the client at work


def test_handshake(server: ServerThread) -> None:
    with Client(server.address) as client:
        hello = client.handshake()
        assert hello["max_frame_bytes"] == 64 * 1024 * 1024
        assert client.result("ping") is None


def test_set_and_get(client: Client) -> None:
    for revision, (name, value, first_byte) in enumerate([
        ("text", "empty", 0xA5),  # fixstr of 5 bytes
        ("count", 42, 0x2A),  # positive fixint
        ("pair", (1, "a"), 0x93),  # an array of 3: the TUPLE marker and the items
        ("huge", 10**30, 0xC7),  # ext 8, code BIGINT
        ("negative_huge", -(10**30), 0xC7),
    ], start=1):
        blob = encode(value)
        assert blob[0] == first_byte
        assert client.result("set", "board", name, blob) == revision  # one change, one revision
        stored = client.result("get", "board", name)
        assert stored == blob  # byte for byte, never re-encoded
        assert_same(decode(stored), value)
    assert client.result("set", "other", "text", encode("x")) == 1  # revisions per namespace
    assert client.result("set", "board", "text", encode("empty")) == 6  # the same value: a change
    assert encode((1, "a"))[1:4] == bytes([0xC7, 0, TUPLE])  # ext 8, length 0, code 2
    assert encode(10**30)[2] == BIGINT


def test_open_and_dump(client: Client) -> None:
    key = "#" + os.urandom(16).hex()  # an anonymous namespace: the client makes the key up
    assert client.result("dump", key) == {}
    assert client.result("keys") == []  # dump did not create it
    assert client.result("open", key, {"a": encode(1), "b": encode("x")}) is None
    assert client.result("open", key, {"a": encode(2), "c": encode(None)}) is None
    assert client.result("open", key, {"a": encode(3)}) is None  # sets nothing: no revision
    dump = client.result("dump", key)
    assert {name: decode(blob) for name, blob in dump.items()} == {"a": 1, "b": "x", "c": None}
    assert client.result("del", key, "a") == 3
    assert set(client.result("dump", key)) == {"b", "c"}
    assert client.result("keys") == [key]  # anonymous keys are listed too


SAMPLES: dict[str, Any] = {
    "nothing": None,
    "flag": False,
    "text": "héllo",
    "count": -7,
    "huge": 2**64,
    "negative_huge": -(10**40),
    "power": -(2**71),
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
        for revision, (name, value) in enumerate(SAMPLES.items(), start=len(SAMPLES) + 1):
            # independent client -> proxy
            assert client.result("set", "interop", "back_" + name, encode(value)) == revision
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
    assert [reply[0] for reply in replies] == ids  # no deferred op: replies in request order
    for i, reply in enumerate(replies):
        assert reply[1] == OK
        if i % 2 == 0:
            assert reply[2] == i // 2 + 1  # the revision of this set
        else:
            assert decode(reply[2]) == i - 1  # applied in order: sees the set just before


def test_missing_names_are_attribute_errors(client: Client) -> None:
    assert client.result("set", "board", "present", encode(1)) == 1
    assert_error(client.call("get", "board", "absent"), "AttributeError")
    assert_error(client.call("get", "no such namespace", "absent"), "AttributeError")
    assert_error(client.call("pop", "board", "absent"), "AttributeError")
    reply = client.call("del", "board", "absent")
    assert_error(reply, "AttributeError")
    assert reply[3] == "'Namespace' object has no attribute 'absent'"
    assert client.result("snapshot", "board", None) == [1, {"present": encode(1)}]  # unchanged
    assert client.result("ping") is None  # an error reply leaves the connection usable


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


def test_underscore_names_are_valid_on_the_wire(server: ServerThread, client: Client) -> None:
    """Only the Python proxies keep _ names to themselves (6)."""
    assert client.result("set", "board", "_private", encode(1)) == 1
    with Namespace(server.address, "board") as ns:
        ns._local = 2  # stays on the proxy
        with pytest.raises(ValueError, match="_private"):
            ns._incr("_private")  # refused before anything is sent
        assert str(ns) == "Namespace()"
    assert client.result("snapshot", "board", None) == [1, {"_private": encode(1)}]


def test_names_of_256_characters_are_valid(client: Client) -> None:
    key, name = "k" * 256, "\N{SNOWMAN}" * 256  # characters, not UTF-8 bytes
    assert_error(client.call("get", key, name), "AttributeError")
    assert client.result("set", key, name, encode(1)) == 1
    assert decode(client.result("get", key, name)) == 1
    assert client.result("acquire", key, name, b"t" * 64, 0) is None  # and 64-byte tokens


# ------------------------------------------------------------------ atomic operations (5.3)


def test_incr(client: Client) -> None:
    assert client.result("incr", "count", "n", encode(1)) == encode(1)  # unset counts as 0
    assert client.result("incr", "count", "n", encode(-3)) == encode(-2)
    assert client.result("incr", "count", "n", encode(2**64)) == encode(2**64 - 2)  # BIGINT
    assert client.result("incr", "count", "f", encode(0.5)) == encode(0.5)
    assert client.result("incr", "count", "f", encode(2)) == encode(2.5)  # float + int: float
    # The server stores and returns its own encoding: 7 as an int 8 (d0 07) comes back 07.
    assert client.result("incr", "count", "g", b"\xd0\x07") == b"\x07"
    assert client.result("get", "count", "g") == b"\x07"
    revision, values = client.result("snapshot", "count", None)
    assert revision == 6  # one change per incr
    assert {name: decode(blob) for name, blob in values.items()} == {
        "n": 2**64 - 2, "f": 2.5, "g": 7}
    assert client.result("set", "count", "text", encode("7")) == 7
    assert_error(client.call("incr", "count", "text", encode(1)), "TypeError")  # not a number
    assert_error(client.call("incr", "count", "n", encode(True)), "TypeError")  # a bool is not
    assert_error(client.call("incr", "count", "n", encode("1")), "TypeError")
    assert client.result("set", "count", "huge", encode(10**400)) == 8
    assert_error(client.call("incr", "count", "huge", encode(0.5)), "OverflowError")
    assert client.result("snapshot", "count", ["n"]) == [8, {"n": encode(2**64 - 2)}]


def test_update_and_snapshot(client: Client) -> None:
    assert client.result("snapshot", "shop", None) == [0, {}]  # no namespace: revision 0
    values = {"apples": encode(3), "pears": encode((1, 2)), "plums": encode(None)}
    assert client.result("update", "shop", values) == 1  # three names, one revision
    assert client.result("snapshot", "shop", None) == [1, values]
    assert client.result("snapshot", "shop", ["pears", "kiwis"]) == [1, {"pears": values["pears"]}]
    assert client.result("snapshot", "shop", []) == [1, {}]
    assert client.result("update", "shop", {}) == 1  # nothing changes: the current revision
    assert client.result("set", "shop", "kiwis", encode(0)) == 2
    assert client.result("update", "shop", {"apples": encode(4), "kiwis": encode(1)}) == 3
    revision, current = client.result("snapshot", "shop", None)
    assert revision == 3
    assert {name: decode(blob) for name, blob in current.items()} == {
        "apples": 4, "pears": (1, 2), "plums": None, "kiwis": 1}
    assert client.result("update", "empty", {}) == 0  # creates the namespace, no change
    assert client.result("keys") == ["empty", "shop"]  # sorted


def test_cas(client: Client) -> None:
    assert client.result("cas", "state", "mode", encode("idle"), encode("busy")) is False  # unset
    assert client.result("set", "state", "mode", encode("idle")) == 1
    assert client.result("cas", "state", "mode", encode("busy"), encode("done")) is False
    assert client.result("cas", "state", "mode", encode("idle"), encode("busy")) is True
    assert decode(client.result("get", "state", "mode")) == "busy"
    assert client.result("set", "state", "n", encode(1)) == 3
    assert client.result("cas", "state", "n", encode(1.0), encode(2)) is False  # 1.0 is a float
    assert client.result("cas", "state", "n", encode(True), encode(2)) is False  # True a bool
    assert client.result("cas", "state", "n", b"\xd0\x01", encode(2)) is True  # equal values
    assert client.result("set", "state", "s", encode({1, 2})) == 5
    assert client.result("cas", "state", "s", encode(frozenset({1, 2})), encode(0)) is False
    assert client.result("cas", "state", "s", encode({2, 1}), encode(0)) is True
    assert client.result("snapshot", "state", []) == [6, {}]  # only swaps were changes
    signalling = b"\xd6\x0b" + b"sNaN"  # Decimal('sNaN'): fixext 4, code DECIMAL
    assert client.result("set", "state", "d", signalling) == 7
    assert client.result("cas", "state", "d", b"\xc7\x04\x0b" + b"sNaN", encode(0)) is False
    assert client.result("cas", "state", "d", signalling, encode(0)) is True  # its own bytes


def test_append(client: Client) -> None:
    assert client.result("append", "log", "lines", [encode("a")]) == 1  # unset: an empty list
    assert client.result("append", "log", "lines", [encode(2), encode((3,))]) == 3
    assert client.result("append", "log", "lines", []) == 3  # still a change
    stored = client.result("get", "log", "lines")
    assert stored == encode(["a", 2, (3,)])  # the whole list
    assert client.result("snapshot", "log", []) == [3, {}]
    for revision, container in enumerate([(1, 2), {1, 2}, frozenset({1})], start=4):
        assert client.result("set", "log", "other", encode(container)) == revision
        assert_error(client.call("append", "log", "other", [encode(3)]), "TypeError")  # no list
    assert client.result("set", "log", "text", encode("abc")) == 7
    assert_error(client.call("append", "log", "text", [encode(3)]), "TypeError")
    assert client.result("snapshot", "log", []) == [7, {}]


def test_append_splices_bytes(client: Client) -> None:
    """A new array header, then the stored elements and the items byte for byte (5.3, 9.1)."""
    seven, eight = b"\xd0\x07", b"\xd1\x00\x08"  # 7 and 8 in longer forms than needed
    assert client.result("set", "k", "raw", b"\xdc\x00\x01" + seven) == 1  # [7], array 16
    assert client.result("append", "k", "raw", [eight]) == 2
    assert client.result("get", "k", "raw") == b"\x92" + seven + eight  # the shortest header
    assert client.result("append", "k", "raw", [b"\xc0"] * 14) == 16  # array 16 from 16 on
    assert client.result("get", "k", "raw") == b"\xdc\x00\x10" + seven + eight + b"\xc0" * 14
    watch_id, revision, _ = client.result("watch", "k", None, None)
    assert client.result("append", "k", "raw", [encode("x")]) == 17
    stored = client.result("get", "k", "raw")
    assert stored == b"\xdc\x00\x11" + seven + eight + b"\xc0" * 14 + encode("x")
    assert collect_pushes(client, 1) == [[watch_id, revision + 1, "raw", stored]]  # pushed whole
    assert decode(stored) == [7, 8, *[None] * 14, "x"]


def test_setdefault_pop_and_keys(client: Client) -> None:
    assert client.result("setdefault", "jobs", "next", encode(1)) == encode(1)
    assert client.result("setdefault", "jobs", "next", encode(2)) == encode(1)  # no change
    assert client.result("pop", "jobs", "next") == encode(1)
    assert_error(client.call("pop", "jobs", "next"), "AttributeError")
    assert client.result("snapshot", "jobs", None) == [2, {}]
    assert client.result("keys") == ["jobs"]


# ------------------------------------------------------------------ watches (10, 11)


def collect_pushes(client: Client, count: int) -> list[list[Any]]:
    """Exactly ``count`` pushes, then nothing more."""
    pushes = [client.push() for _ in range(count)]
    assert client.quiet()
    return pushes


def test_watch_sees_the_changes_of_the_real_proxy(server: ServerThread, client: Client) -> None:
    every = client.frame("watch", "live", None, None)  # every name, from now on
    only_a = client.frame("watch", "live", ["a"], None)
    client.send(every, only_a)
    every_id, revision, values = client.reply(every[0])[2]
    assert (revision, values) == (0, {})  # the namespace does not exist yet
    only_a_id, revision, values = client.reply(only_a[0])[2]
    assert (revision, values) == (0, {})
    assert only_a_id != every_id

    with Namespace(server.address, "live") as ns:
        ns.a = 1
        assert ns._update(b=(2,), c="three") == 2
        del ns.a
        ns._incr("n", 5)
        assert ns._append("log", "x", 2) == 2
        assert ns._cas("c", "three", 3.0) is True
        assert ns._pop("b") == (2,)

    pushes = collect_pushes(client, 10)
    mine = [push[1:] for push in pushes if push[0] == every_id]
    assert mine == [
        [1, "a", encode(1)],
        [2, "b", encode((2,))],  # one update: one revision, one push per name, in map order
        [2, "c", encode("three")],
        [3, "a", None],  # deleted
        [4, "n", encode(5)],
        [5, "log", encode(["x", 2])],
        [6, "c", encode(3.0)],
        [7, "b", None],  # popped
    ]
    assert [push[1:] for push in pushes if push[0] == only_a_id] == [
        [1, "a", encode(1)], [3, "a", None]]  # only its names: revisions may jump

    # Watching with since=nil now: the current values, at the current revision.
    reply = client.result("watch", "live", None, None)
    assert reply[1:] == [7, {"c": encode(3.0), "n": encode(5), "log": encode(["x", 2])}]
    assert client.result("unwatch", reply[0]) is True
    assert client.result("unwatch", reply[0]) is False  # already stopped


def test_own_changes_are_pushed_after_the_reply(client: Client) -> None:
    watch_id, _, _ = client.result("watch", "mine", None, None)
    client.send(client.frame("set", "mine", "x", encode(1)))
    reply, push = client.receive(2)  # the reply to the set first, then its push (11.4)
    assert reply == [2, OK, 1]
    assert push == [0, PUSH, watch_id, 1, "x", encode(1)]


def test_watch_since_replays_history(client: Client) -> None:
    assert client.result("set", "hist", "x", encode(1)) == 1
    assert client.result("set", "hist", "y", encode(2)) == 2
    assert client.result("del", "hist", "x") == 3
    assert client.result("update", "hist", {"x": encode(3), "y": encode(4)}) == 4

    watch_id, revision, values = client.result("watch", "hist", None, 1)
    assert (revision, values) == (4, {})  # with since: no values, the changes are pushed
    assert collect_pushes(client, 4) == [
        [watch_id, 2, "y", encode(2)],
        [watch_id, 3, "x", None],
        [watch_id, 4, "x", encode(3)],
        [watch_id, 4, "y", encode(4)],
    ]
    assert client.result("set", "hist", "z", encode(5)) == 5  # then live, without a gap
    assert collect_pushes(client, 1) == [[watch_id, 5, "z", encode(5)]]

    y_only, revision, values = client.result("watch", "hist", ["y"], 1)
    assert (revision, values) == (5, {})
    assert collect_pushes(client, 2) == [  # the first watch is still on: it sees nothing new
        [y_only, 2, "y", encode(2)], [y_only, 4, "y", encode(4)]]

    _, revision, values = client.result("watch", "hist", None, 5)  # since = current
    assert (revision, values) == (5, {})
    assert client.quiet()

    expired = client.call("watch", "hist", None, 6)  # ahead: as after a server restart
    assert_error(expired, "HistoryExpired")
    assert_error(client.call("watch", "nowhere", None, 1), "HistoryExpired")
    assert client.result("watch", "nowhere", None, 0)[1:] == [0, {}]


@pytest.fixture
def short_history_server(short_tmp: str) -> Iterator[ServerThread]:
    with ServerThread(os.path.join(short_tmp, "h.sock"), store=MemoryStore(history=3)) as running:
        yield running


def test_history_expired(short_history_server: ServerThread) -> None:
    with connect(short_history_server) as client:
        for i in range(1, 6):
            assert client.result("set", "h", "x", encode(i)) == i
        for since in (0, 1):  # revisions 2 and earlier are forgotten: 3 are kept
            assert_error(client.call("watch", "h", None, since), "HistoryExpired")
        watch_id, revision, _ = client.result("watch", "h", None, 2)
        assert revision == 5
        assert collect_pushes(client, 3) == [
            [watch_id, 3, "x", encode(3)], [watch_id, 4, "x", encode(4)],
            [watch_id, 5, "x", encode(5)]]


@pytest.fixture
def tiny_history_server(short_tmp: str) -> Iterator[ServerThread]:
    with ServerThread(os.path.join(short_tmp, "t.sock"), store=MemoryStore(history=2)) as running:
        yield running


def test_history_keeps_whole_revisions(tiny_history_server: ServerThread) -> None:
    """The history counts revisions, not names, and never replays part of one (10.2, 10.3)."""
    with connect(tiny_history_server) as client:
        values = {"a": encode(1), "b": encode(2), "c": encode(3)}
        assert client.result("update", "h", values) == 1  # three names, one revision
        assert client.result("update", "h", {"a": encode(4), "d": encode(5)}) == 2
        watch_id, revision, _ = client.result("watch", "h", None, 0)  # 2 revisions are kept
        assert revision == 2
        assert collect_pushes(client, 5) == [
            [watch_id, 1, "a", encode(1)], [watch_id, 1, "b", encode(2)],
            [watch_id, 1, "c", encode(3)], [watch_id, 2, "a", encode(4)],
            [watch_id, 2, "d", encode(5)]]
        assert client.result("set", "h", "e", encode(6)) == 3  # revision 1 is forgotten, whole
        assert collect_pushes(client, 1) == [[watch_id, 3, "e", encode(6)]]
        assert_error(client.call("watch", "h", None, 0), "HistoryExpired")
        other_id, _, _ = client.result("watch", "h", None, 1)
        assert collect_pushes(client, 3) == [
            [other_id, 2, "a", encode(4)], [other_id, 2, "d", encode(5)],
            [other_id, 3, "e", encode(6)]]


def test_tracking_invalidates_once(server: ServerThread, client: Client) -> None:
    """track: every get tracks its name; its next change is invalidated, once (11.5)."""
    assert_error(client.call("track", 1), "RemoteProtocolError")  # a flag is a bool
    assert client.result("track", True) is None
    with connect(server) as other:
        assert other.result("set", "k", "x", encode(1)) == 1
        assert decode(client.result("get", "k", "x")) == 1  # tracks x
        assert_error(client.call("get", "k", "missing"), "AttributeError")  # a miss too
        assert client.result("snapshot", "k", None)[0] == 1  # snapshot and dump track nothing
        assert set(client.result("dump", "k")) == {"x"}
        assert other.result("set", "k", "y", encode(2)) == 2  # not read with get: nothing
        assert other.result("set", "k", "x", encode(2)) == 3
        assert other.result("set", "k", "x", encode(3)) == 4  # once: x is not tracked now
        assert other.result("cas", "k", "missing", encode(0), encode(1)) is False  # no change
        assert other.result("update", "k", {"missing": encode(5), "y": encode(6)}) == 5
        assert client.receive(2) == [[0, 3, "k", "x"], [0, 3, "k", "missing"]]
        assert client.quiet()

        # Its own change too: after the replies of its batch, as every push (2).
        assert decode(client.result("get", "k", "x")) == 3
        change, ping = client.frame("set", "k", "x", encode(4)), client.frame("ping")
        client.send(change, ping)
        frames = client.receive(3)
        assert frames.index([change[0], OK, 6]) < frames.index([0, 3, "k", "x"])
        assert [ping[0], OK, None] in frames

        # Off: later gets track nothing, but what was tracked is still invalidated, once.
        assert decode(client.result("get", "k", "x")) == 4
        assert client.result("track", False) is None
        assert decode(client.result("get", "k", "y")) == 6
        assert other.result("set", "k", "y", encode(7)) == 7
        assert other.result("set", "k", "x", encode(8)) == 8
        assert client.receive() == [[0, 3, "k", "x"]]
        assert client.quiet()


def test_unwatch(server: ServerThread, client: Client) -> None:
    watch_id, _, _ = client.result("watch", "quiet", None, None)
    with connect(server) as other:
        assert other.result("unwatch", watch_id) is False  # not its watch
        assert client.result("unwatch", watch_id) is True
        assert other.result("set", "quiet", "x", encode(1)) == 1
    assert client.quiet()  # stopped: no pushes


# ------------------------------------------------------------------ locks (12)


def test_acquire_waits_and_its_reply_is_deferred(server: ServerThread) -> None:
    with connect(server) as a, connect(server) as b:
        assert a.result("acquire", "jobs", "queue", b"ta", None) is None  # free: at once
        acquire = b.frame("acquire", "jobs", "queue", b"tb", 30)
        ping = b.frame("ping")
        b.send(acquire, ping)
        assert b.receive() == [[ping[0], OK, None]]  # the later request is answered first
        assert b.quiet()  # the acquire waits
        assert a.result("set", "jobs", "next", encode(7)) == 1  # the holder works meanwhile
        assert a.result("release", "jobs", "queue", b"tb") is False  # not a's owner
        assert a.result("release", "jobs", "queue", b"ta") is True
        assert b.receive() == [[acquire[0], OK, None]]  # the deferred reply: b holds it now
        assert decode(b.result("get", "jobs", "next")) == 7
        assert_error(b.call("acquire", "jobs", "queue", b"tb", None), "ValueError")  # reentry
        assert_error(a.call("acquire", "jobs", "queue", b"ta", 0), "TimeoutError")  # held
        assert b.result("release", "jobs", "queue", b"tb") is True
        assert b.result("release", "jobs", "queue", b"tb") is False  # free now
        assert a.result("acquire", "jobs", "queue", b"ta", 0) is None


def test_waits_are_first_in_first_out_and_withdrawn(server: ServerThread) -> None:
    with connect(server) as a, connect(server) as b:
        assert a.result("acquire", "k", "lock", b"holder", None) is None
        first = b.frame("acquire", "k", "lock", b"first", None)
        second = a.frame("acquire", "k", "lock", b"second", None)  # same connection, new owner
        b.send(first)
        assert b.quiet()
        a.send(second)
        assert a.quiet()
        # Withdrawing a wait answers it with TimeoutError. That deferred reply arises while the
        # release's batch is applied, so it follows the replies to that batch, the release's
        # own included, however the server splits the write into batches (2, 12.2, 12.3).
        ping = b.frame("ping")
        withdrawn = b.frame("acquire", "k", "lock", b"x", None)
        release = b.frame("release", "k", "lock", b"x")
        b.send(ping, withdrawn, release)
        replies = b.receive(3)
        assert replies[:2] == [[ping[0], OK, None], [release[0], OK, True]]
        assert replies[2][0] == withdrawn[0]
        assert_error(replies[2], "TimeoutError")
        assert replies[2][3] == "the wait for lock 'lock' was withdrawn"
        assert a.result("release", "k", "lock", b"holder") is True
        assert b.receive() == [[first[0], OK, None]]  # first in, first served
        assert a.quiet()
        assert b.result("release", "k", "lock", b"first") is True
        assert a.reply(second[0]) == [second[0], OK, None]


def test_wait_times_out(server: ServerThread) -> None:
    with connect(server) as a, connect(server) as b:
        assert a.result("acquire", "k", "lock", b"t", None) is None
        started = time.monotonic()
        reply = b.call("acquire", "k", "lock", b"t", 0.2)  # the same token: another owner
        assert time.monotonic() - started >= 0.15
        assert_error(reply, "TimeoutError")
        assert b.result("release", "k", "lock", b"t") is False  # the wait is gone


def test_lock_passes_on_when_its_holder_disconnects(server: ServerThread) -> None:
    with connect(server) as b:
        with connect(server) as a:
            assert a.result("acquire", "k", "lock", b"a", None) is None
            waiting = b.frame("acquire", "k", "lock", b"b", None)
            b.send(waiting)
            assert b.quiet()
        assert b.receive() == [[waiting[0], OK, None]]  # a's connection closed: b holds it


def test_frames_for_another_connection_keep_the_order_they_arose_in(server: ServerThread,
                                                                   ) -> None:
    """A batch's pushes and deferred replies for another connection, in order (2, 4.4, 11.4)."""
    with connect(server) as a, connect(server) as b:
        watch_id = b.result("watch", "k", None, None)[0]
        assert a.result("acquire", "k", "lock", b"a", None) is None
        waiting = b.frame("acquire", "k", "lock", b"b", None)
        b.send(waiting)
        assert b.quiet()
        first, release, second = (a.frame("set", "k", "x", encode(1)),
                                  a.frame("release", "k", "lock", b"a"),
                                  a.frame("set", "k", "y", encode(2)))
        a.send(first, release, second)
        assert a.receive(3) == [[first[0], OK, 1], [release[0], OK, True], [second[0], OK, 2]]
        assert b.receive(3) == [
            [0, PUSH, watch_id, 1, "x", encode(1)],  # the change made before the release...
            [waiting[0], OK, None],  # ...then the lock granted by the release...
            [0, PUSH, watch_id, 2, "y", encode(2)],  # ...then the change made after it
        ]
        assert b.quiet()
        assert a.quiet()


def test_frames_for_the_own_connection_follow_the_replies(client: Client) -> None:
    """A batch's own pushes and deferred replies: after its replies, in the order they arose."""
    watch_id = client.result("watch", "k", None, None)[0]
    assert client.result("acquire", "k", "lock", b"holder", None) is None
    waiting = client.frame("acquire", "k", "lock", b"waiter", None)  # same connection, new owner
    client.send(waiting)
    assert client.quiet()
    change, release, ping = (client.frame("set", "k", "x", encode(1)),
                             client.frame("release", "k", "lock", b"holder"),
                             client.frame("ping"))
    client.send(change, release, ping)
    frames = client.receive(5)
    replies = [frame for frame in frames if frame[0] != waiting[0] and not is_push(frame)]
    assert replies == [[change[0], OK, 1], [release[0], OK, True], [ping[0], OK, None]]
    push, grant = [0, PUSH, watch_id, 1, "x", encode(1)], [waiting[0], OK, None]
    # However the server splits the write into batches, the push follows the set's reply, and
    # the grant follows the release's reply and the push, which arose before it.
    assert frames.index([change[0], OK, 1]) < frames.index(push) < frames.index(grant)
    assert frames.index([release[0], OK, True]) < frames.index(grant)
    assert client.quiet()


def test_lock_names_are_not_attributes(client: Client) -> None:
    assert client.result("acquire", "board", "x", b"t", None) is None
    assert client.result("keys") == []  # no namespace created
    assert_error(client.call("get", "board", "x"), "AttributeError")
    assert client.result("set", "board", "x", encode(1)) == 1  # a lock protects nothing


# ------------------------------------------------------------------ handshake and errors


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


def test_client_hello_with_an_error_is_refused(server: ServerThread) -> None:
    with Client(server.address) as client:
        client.send({**HELLO, "error": ["RemoteError", "from a client"]})
        (hello,) = client.receive()
        assert set(hello) == {"protocol", "error"}
        assert hello["error"][0] == "RemoteProtocolError"
        assert client.at_eof()


def test_connection_level_error(client: Client) -> None:
    client.send([0, "ping"])  # id 0 is never a request id
    (error,) = client.receive()
    assert error[:3] == [0, ERROR, "RemoteProtocolError"]
    assert client.at_eof()


def test_broken_frame_after_the_hello(server: ServerThread) -> None:
    with Client(server.address) as client:
        client.send(HELLO, [1, "ping"], "not a request", [2, "ping"])
        hello, reply, error = client.receive(3)
        assert hello["version"] == 1
        assert reply == [1, OK, None]  # what came before the broken frame is answered
        assert error[:3] == [0, ERROR, "RemoteProtocolError"]
        assert client.at_eof()  # and nothing after it


def test_malformed_bytes_in_the_same_read(server: ServerThread) -> None:
    with Client(server.address) as client:
        client.sock.sendall(pack(HELLO) + pack([1, "set", "k", "x", encode(1)]) + b"\xc1")
        hello, reply, error = client.receive(3)
        assert hello["version"] == 1  # the hello is answered...
        assert reply == [1, OK, 1]  # ...and so is the request completed before the bad byte
        assert error[:3] == [0, ERROR, "RemoteProtocolError"]
        assert client.at_eof()
    with connect(server) as other:
        assert decode(other.result("get", "k", "x")) == 1  # it was applied


def test_connection_level_error_is_the_last_frame(client: Client) -> None:
    """The breaking batch's pushes and deferred replies come before the error, never after."""
    watch_id = client.result("watch", "k", None, None)[0]
    assert client.result("acquire", "k", "lock", b"holder", None) is None
    waiting = client.frame("acquire", "k", "lock", b"waiter", None)
    client.send(waiting)
    assert client.quiet()
    change, release = (client.frame("set", "k", "x", encode(1)),
                       client.frame("release", "k", "lock", b"holder"))
    client.sock.sendall(pack(change) + pack(release) + b"\xc1")
    *frames, error = client.until_eof()
    assert error[:3] == [0, ERROR, "RemoteProtocolError"]
    push, grant = [0, PUSH, watch_id, 1, "x", encode(1)], [waiting[0], OK, None]
    assert sorted(frames, key=repr) == sorted(
        [[change[0], OK, 1], [release[0], OK, True], push, grant], key=repr)
    assert frames.index([change[0], OK, 1]) < frames.index(push) < frames.index(grant)
    assert frames.index([release[0], OK, True]) < frames.index(grant)


@pytest.mark.parametrize(
    ("request_args", "message"),
    [
        (("x",), "unknown operation 'x'"),
        (("get", "board"), "get: takes 2 arguments (key, name), not 1"),
        (("get", "board", 1), "get: names must be str, not int"),
        (("set", "board", "", encode(1)), "set: names must not be empty"),
        (("get", "board", "x" * 257), "get: name longer than 256 characters"),
        (("set", "board", "x", "1"), "set: values travel as bin"),
        (("set", "board", "x", pack(msgpack.ExtType(13, b""))),
         "set: unknown value extension code 13"),
        (("acquire", "board", "lock", b"", None), "acquire: a lock token is 1 to 64 bytes"),
        (("track", 1), "track: expected true or false"),
    ],
)
def test_error_messages_are_as_documented(client: Client, request_args: tuple[Any, ...],
                                          message: str) -> None:
    """Messages are for humans (5.3), but the ones the document quotes are the real ones."""
    reply = client.call(*request_args)
    assert_error(reply, "RemoteProtocolError")
    assert reply[3] == message
    assert f"`{message}`" in " ".join(DOC.read_text(encoding="utf-8").split())  # unwrapped


def test_goodbye_when_the_server_stops(short_tmp: str, server_backend: str) -> None:
    """Every open connection is told why it ends (7.4): the connection-level error, or the hello
    error form where no hello was accepted; then the connection closes."""
    goodbye = hex_bytes(doc_examples()["goodbye"])
    with ServerThread(os.path.join(short_tmp, "g.sock"), backend=server_backend) as server:
        with Client(server.address) as silent, Client(server.address) as partial:
            partial.sock.sendall(pack(HELLO)[:5])  # part of a hello: none accepted yet
            with connect(server) as greeted:
                # A round trip on a later connection: the server has taken the others in.
                assert greeted.result("ping") is None
                server.stop()
                assert recv_exactly(greeted.sock, len(goodbye) + 1) == goodbye  # then the end
            for client in (silent, partial):
                assert client.receive() == [{"protocol": "aionamespace",
                                             "error": ["ConnectionLost",
                                                       "the server is shutting down"]}]
                assert client.at_eof()


def test_max_connections(short_tmp: str, server_backend: str) -> None:
    """One connection too many gets the hello error form at once, unasked (3, 3.3, 8)."""
    limits = Limits(max_connections=2)
    with ServerThread(os.path.join(short_tmp, "m.sock"), backend=server_backend,
                      limits=limits) as server:
        with connect(server) as first, connect(server) as second:
            with Client(server.address) as third:  # sends nothing: the server speaks first
                assert third.receive() == [{
                    "protocol": "aionamespace",
                    "error": ["ConnectionLost", "the server is at its limit of 2 connections"]}]
                assert third.at_eof()
            assert first.result("ping") is None  # the others are unaffected
            assert second.result("ping") is None
        deadline = time.monotonic() + 5
        while True:  # once the server has seen them close, a new client is served
            with Client(server.address) as fourth:
                fourth.send(HELLO)
                (hello,) = fourth.receive()
                if "version" in hello:
                    assert fourth.result("ping") is None
                    break
            assert time.monotonic() < deadline, hello
            time.sleep(0.05)


def test_handshake_timeout(short_tmp: str, server_backend: str) -> None:
    """No hello within handshake_timeout: the hello error form, then the end (3, 3.3, 8)."""
    refusal = {"protocol": "aionamespace",
               "error": ["RemoteProtocolError", "no hello and authentication within 0.3 seconds"]}
    with ServerThread(os.path.join(short_tmp, "h.sock"), backend=server_backend,
                      limits=Limits(handshake_timeout=0.3)) as server:
        with Client(server.address) as silent, Client(server.address) as slow, \
                Client(server.address) as prompt:
            started = time.monotonic()
            slow.sock.sendall(pack(HELLO)[:-1])  # all of the hello but its last byte
            prompt.send(HELLO)
            assert silent.receive() == [refusal]
            assert time.monotonic() - started >= 0.25
            assert silent.at_eof()
            assert slow.receive() == [refusal]
            assert slow.at_eof()
            assert prompt.receive()[0]["version"] == 1
            time.sleep(0.4)  # the deadline is long past: a client that said hello is served
            assert prompt.result("ping") is None


def test_handshake_timeout_covers_the_proof(short_tmp: str, server_backend: str) -> None:
    """With an authkey, a hello without its proof in time: a connection-level error (3.4, 7.3)."""
    with ServerThread(os.path.join(short_tmp, "p.sock"), backend=server_backend, authkey=KEY,
                      limits=Limits(handshake_timeout=0.3)) as server:
        with Client(server.address) as client:
            client.send({**HELLO, "challenge": os.urandom(32)})
            hello, error = client.receive(2)
            assert hello["version"] == 1
            assert "proof" in hello
            assert error == [0, ERROR, "RemoteProtocolError",
                             "no hello and authentication within 0.3 seconds"]
            assert client.at_eof()


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
        assert client.result("set", "vault", "secret", encode((1, 2))) == 1
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
        assert error[:3] == [0, ERROR, "AuthenticationError"]
        assert client.at_eof()


def test_missing_challenge_is_refused(keyed_server: ServerThread) -> None:
    with Client(keyed_server.address) as client:
        client.send(HELLO)
        (hello,) = client.receive()
        assert set(hello) == {"protocol", "error"}
        assert hello["error"][0] == "AuthenticationError"
        assert client.at_eof()


# ------------------------------------------------------------------ limits (8)

SMALL = 100_000


@pytest.fixture(params=["unix", "tcp"])
def small_server(request: pytest.FixtureRequest, short_tmp: str) -> Iterator[ServerThread]:
    address = os.path.join(short_tmp, "s.sock") if request.param == "unix" else ("127.0.0.1", 0)
    with ServerThread(address, limits=Limits(max_frame_bytes=SMALL)) as running:
        yield running


def set_frame_of(size: int, request_id: int, name: str) -> bytes:
    """A set request frame of exactly ``size`` bytes."""
    payload = size
    while len(frame := pack([request_id, "set", "board", name, encode(b"x" * payload)])) > size:
        payload -= len(frame) - size
    assert len(frame) == size
    return frame


def test_frames_up_to_max_frame_bytes_pass(small_server: ServerThread) -> None:
    with connect(small_server) as client:
        client.sock.sendall(set_frame_of(SMALL, 1, "exact"))
        assert client.reply(1) == [1, OK, 1]
        pings = [[request_id, "ping"] for request_id in range(2, 20_002)]
        client.send(*pings)  # far more than max_frame_bytes in one write, in small frames
        assert len(b"".join(map(pack, pings))) > SMALL
        assert client.receive(len(pings)) == [[ping[0], OK, None] for ping in pings]


def test_frames_over_max_frame_bytes_drop_the_connection(small_server: ServerThread) -> None:
    with Client(small_server.address) as client:
        assert client.handshake()["max_frame_bytes"] == SMALL
        assert client.result("set", "board", "fits", encode(b"x" * 50_000)) == 1
        client.send(client.frame("set", "board", "too_big", encode(b"x" * (SMALL + 100))))
        (error,) = client.receive()
        assert error[:3] == [0, ERROR, "RemoteProtocolError"]
        assert client.at_eof()


@pytest.mark.parametrize("frame", ["one_byte_over", "many_items"])
def test_max_frame_bytes_bounds_whole_frames(small_server: ServerThread, frame: str) -> None:
    """Counted from the frame's first byte, however small its parts (8)."""
    with connect(small_server) as client:
        if frame == "one_byte_over":
            data = set_frame_of(SMALL + 1, 1, "over")
        else:  # 300 KB in one append request, made of items each far below the limit
            data = pack([1, "append", "board", "log", [encode("x" * 1000)] * 300])
        assert len(data) > SMALL
        # The server may close the connection before it has all of the frame (8).
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            client.sock.sendall(data)
        (error,) = client.receive()
        assert error == [0, ERROR, "RemoteProtocolError",
                         f"frame larger than max_frame_bytes ({SMALL})"]


def test_a_client_that_leaves_16_mib_unread_is_dropped(short_tmp: str,
                                                       server_backend: str) -> None:
    """Pushes do not pile up without a bound: past 16 MiB unread, ConnectionLost (7.3, 8)."""
    with ServerThread(os.path.join(short_tmp, "u.sock"), backend=server_backend) as server:
        with connect(server) as watcher, connect(server) as writer:
            watch_id = watcher.result("watch", "k", None, None)[0]
            assert watcher.result("acquire", "k", "lock", b"watcher", None) is None
            big = encode(b"x" * 2**20)
            for revision in range(1, 25):  # 24 MiB of pushes the watcher does not read yet
                assert writer.result("set", "k", "x", big) == revision
            waiting = writer.frame("acquire", "k", "lock", b"writer", 2)
            writer.send(waiting)
            assert writer.reply(waiting[0]) == [waiting[0], OK, None]  # dropped: the lock passed
            *pushes, last = watcher.until_eof()
            assert last == [0, ERROR, "ConnectionLost", "more than 16777216 bytes of events "
                            "went unread; watch again from the last revision seen"]
            assert 16 <= len(pushes) < 24
            assert pushes == [[0, PUSH, watch_id, revision, "x", big]
                              for revision in range(1, len(pushes) + 1)]


# ------------------------------------------------------------------ TLS (2, 14)


@pytest.fixture(scope="module")
def tls_contexts() -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """A server context with a certificate for 127.0.0.1 and localhost; a client trusting it."""
    authority = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    authority.issue_cert("127.0.0.1", "localhost").configure_cert(server_context)
    client_context = ssl.create_default_context()
    authority.configure_trust(client_context)
    return server_context, client_context


@pytest.mark.parametrize("transport", ["tcp", "unix"])
def test_tls(short_tmp: str, tls_contexts: tuple[ssl.SSLContext, ssl.SSLContext],
             transport: str, server_backend: str) -> None:
    """The whole protocol inside TLS, the handshake and HMAC authentication included."""
    server_context, client_context = tls_contexts
    address = ("127.0.0.1", 0) if transport == "tcp" else os.path.join(short_tmp, "tls.sock")
    with ServerThread(address, backend=server_backend, authkey=KEY,
                      ssl_context=server_context) as server:
        with Client(server.address, client_context) as client:
            assert isinstance(client.sock, ssl.SSLSocket)
            assert client.sock.version() in ("TLSv1.2", "TLSv1.3")
            assert len(client.handshake(KEY)["challenge"]) == 32
            assert client.result("set", "vault", "secret", encode((1, 2))) == 1
            watch_id = client.result("watch", "vault", None, None)[0]
            if transport == "tcp":  # the real proxy checks the host name it connects to
                with Namespace(server.address, "vault", authkey=KEY,
                               ssl_context=client_context) as ns:
                    assert ns.secret == (1, 2)
                    ns.answer = 42
            else:
                with connect_tls(server.address, client_context) as other:
                    assert other.result("set", "vault", "answer", encode(42)) == 2
            assert collect_pushes(client, 1) == [[watch_id, 2, "answer", encode(42)]]
        with Client(server.address) as plain:  # plain msgpack to a TLS server
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                plain.send(HELLO)
            received = b""
            with contextlib.suppress(ConnectionResetError):
                while chunk := plain.sock.recv(65536):
                    received += chunk
            assert b"aionamespace" not in received  # no hello, no frame: only the end


def connect_tls(address: str | tuple[str, int], context: ssl.SSLContext) -> Client:
    client = Client(address, context)
    try:
        client.handshake(KEY)
    except BaseException:
        client.sock.close()
        raise
    return client


# ------------------------------------------------------------------ promises once broken
# Each test states what PROTOCOL.md promises where the reference server once failed it.


def test_append_refuses_a_tuple_whatever_its_marker_header(client: Client) -> None:
    one = b"\x92\xc8\x00\x00\x02\x01"  # (1,), its marker an ext 16: decoders MUST accept it (9.4)
    assert_same(decode(one), (1,))
    assert client.result("set", "k", "t", one) == 1  # the server takes it as a tuple...
    assert_error(client.call("append", "k", "t", [encode(2)]), "TypeError")  # ...not a list
    assert client.result("get", "k", "t") == one


def test_append_refuses_a_list_nested_too_deeply(client: Client) -> None:
    deep = b"\x91" * 256 + b"\xc0"  # 256 levels: as deep as a value may be (9.4)
    assert client.result("set", "k", "deep", deep) == 1
    # 257 levels: refused like any value nested too deeply (a bad request, section 9.4)
    assert_error(client.call("append", "k", "list", [deep]), "RemoteProtocolError")
    assert client.result("snapshot", "k", []) == [1, {}]


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


def test_worked_examples_match_the_library(server: ServerThread) -> None:
    # The doc tests alone use the library's internals: they are the reference the document shows.
    from aionamespace import ConnectionLost
    from aionamespace.protocol.codec import encode_value
    from aionamespace.protocol.connection import ClientConnection, ServerConnection

    examples = {name: hex_bytes(block) for name, block in doc_examples().items()}
    empty, full = encode_value("empty"), encode_value("full")
    assert (empty, full) == (encode("empty"), encode("full"))

    reference = ClientConnection()
    assert examples["client-hello"] == reference.send_hello() == pack(HELLO)
    expected_requests = {
        "set-request": ("set", "board", "item", empty),
        "get-request": ("get", "board", "item"),
        "missing-request": ("get", "board", "missing"),
        "watch-request": ("watch", "board", ["item"], None),
    }
    for request_id, (name, (op, *args)) in enumerate(expected_requests.items(), start=1):
        assert examples[name] == reference.send_request(op, *args)[1], name
        assert examples[name] == pack([request_id, op, *args]), name
    assert examples["set-reply"] == ServerConnection.send_result(1, 1) == pack([1, OK, 1])
    assert examples["watch-reply"] == ServerConnection.send_result(4, [1, 1, {"item": empty}])
    assert examples["watch-push"] == ServerConnection.send_event(1, 2, "item", full)
    assert examples["watch-push"] == pack([0, PUSH, 1, 2, "item", full])
    greeted = ServerConnection()
    greeted.receive_data(pack(HELLO))
    goodbye = greeted.send_refusal(ConnectionLost("the server is shutting down"))
    assert examples["goodbye"] == goodbye
    assert examples["goodbye"] == pack([0, ERROR, "ConnectionLost", "the server is shutting down"])

    # Replay the client's side against a real server; its answers must be the documented bytes.
    with Client(server.address) as client:
        for sent, answered in [("client-hello", "server-hello"), ("set-request", "set-reply"),
                               ("get-request", "get-reply"),
                               ("missing-request", "missing-reply"),
                               ("watch-request", "watch-reply")]:
            client.sock.sendall(examples[sent])
            assert recv_exactly(client.sock, len(examples[answered])) == examples[answered], sent
        with connect(server) as other:  # another client sets item = "full"
            assert other.result("set", "board", "item", full) == 2
        push = examples["watch-push"]
        assert recv_exactly(client.sock, len(push)) == push
    with Client(server.address) as client:
        client.sock.sendall(examples["bad-hello"])
        assert recv_exactly(client.sock, 4096) == examples["hello-refusal"]


def test_auth_test_vector_matches_the_library() -> None:
    from aionamespace.protocol import auth as _auth

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
    ("-(2**71)", -(2**71)),
    ("(1, 'a')", (1, "a")),
    ("()", ()),
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
    ("[(1,), {2}]", [(1,), {2}]),
]


def test_value_examples_match_the_library() -> None:
    from aionamespace.protocol.codec import decode_value, encode_value

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
    match = re.search(rf"<!-- table: {name} -->\n((?: *\|.*\n)+)", text)  # maybe in a list
    assert match is not None, name
    rows = match.group(1).splitlines()[2:]
    return [[cell.strip() for cell in row.strip().strip("|").split("|")] for row in rows]


def test_operation_table_matches_the_library() -> None:
    from aionamespace.protocol.ops import DEFERRED_OPS, OPS

    rows = doc_table("operations")
    assert [row[0].strip("`") for row in rows] == list(OPS)
    for op, arguments, _result, _errors, deferred in rows:
        op = op.strip("`")
        assert tuple(re.findall(r"`([\w?]+)`", arguments)) == OPS[op], op
        assert deferred == ("**yes**" if op in DEFERRED_OPS else "no"), op
    kinds = [row[0].strip("`") for row in doc_table("argument-kinds")]
    assert sorted(kinds) == sorted({kind for op_kinds in OPS.values() for kind in op_kinds})


def test_doc_tables_list_what_the_library_has() -> None:
    from aionamespace._errors import _REMOTE_TYPES
    from aionamespace.protocol.codec import ExtCode

    assert {int(row[0]): row[1].strip("`") for row in doc_table("ext-codes")} == {
        code.value: code.name for code in ExtCode
    }
    names = [row[0].strip("`") for row in doc_table("error-types")]
    assert names[-1] == "any other name"
    assert sorted(names[:-1]) == sorted(_REMOTE_TYPES)


def test_safe_to_resend_table_matches_the_library() -> None:
    from aionamespace.protocol.ops import OPS, SAFE_TO_RESEND

    ops = [row[0].strip("`") for row in doc_table("safe-to-resend")]
    assert sorted(ops) == sorted(SAFE_TO_RESEND)
    assert ops == [op for op in OPS if op in SAFE_TO_RESEND]  # in the order of 5.2


def test_documented_limits_match_the_library() -> None:
    from aionamespace.server.dispatch import MAX_PUSH_BACKLOG_BYTES
    from aionamespace.server.stores.memory import DEFAULT_HISTORY

    text = " ".join(DOC.read_text(encoding="utf-8").split())
    limits = Limits()
    assert f"| `max_frame_bytes` | {limits.max_frame_bytes} (64 MiB) |" in text
    assert f"| `max_name_length` | {limits.max_name_length} characters |" in text
    assert f"| `max_connections` | {limits.max_connections:,} connections at once |" in text
    assert f"| `handshake_timeout` | {limits.handshake_timeout:g} seconds |" in text
    assert f"| history | {DEFAULT_HISTORY:,} revisions per namespace |" in text
    assert f"| unread frames | 16 MiB ({MAX_PUSH_BACKLOG_BYTES} bytes) |" in text
    for message in (f"the server is at its limit of {limits.max_connections} connections",
                    f"no hello and authentication within {limits.handshake_timeout} seconds",
                    f"more than {MAX_PUSH_BACKLOG_BYTES} bytes of events went unread"):
        assert message in text
