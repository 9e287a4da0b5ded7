"""A client written from docs/PROTOCOL.md alone: plain ``socket``, ``ssl`` and ``msgpack``.

Nothing here comes from aionamespace's protocol, ops or codec modules (``ServerThread`` only
says where a test's server listens): if this client can talk to a real server, the document is
precise enough to write a client from. ``Client`` is one connection (frames out; frames in, kept
until a test takes them by request id or kind); ``connect`` opens one past the hello.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import os
import socket
import ssl
from collections.abc import Callable
from types import TracebackType
from typing import Any

import msgpack

from aionamespace import ServerThread

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

    def __init__(
        self, address: str | tuple[str, int], ssl_context: ssl.SSLContext | None = None
    ) -> None:
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

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
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


def collect_pushes(client: Client, count: int) -> list[list[Any]]:
    """Exactly ``count`` pushes, then nothing more."""
    pushes = [client.push() for _ in range(count)]
    assert client.quiet()
    return pushes


KEY = b"doc key"  # the authkey of the servers that require one


def recv_exactly(sock: socket.socket, count: int) -> bytes:
    data = b""
    while len(data) < count:
        chunk = sock.recv(count - len(data))
        if not chunk:
            break
        data += chunk
    return data
