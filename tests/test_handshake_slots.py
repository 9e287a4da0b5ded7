"""Peers that never finish their handshake cannot take the slots of those that do.

``Limits.max_handshakes`` bounds the connections still in their handshake; at it (and at
``max_connections`` while some peer is still in its handshake) the newcomer is let in and the
oldest half-open peer is dropped, told why. On real servers (asyncio and trio), with an
authkey: a flood of half-open connections well past both bounds, kept up while 25 real clients
connect, and every one of the 25 is served at its first attempt.
"""

from __future__ import annotations

import collections
import contextlib
import os
import socket
import threading
from collections.abc import Iterator
from typing import Any

import msgpack
import pytest

from aionamespace import Limits, Namespace, Retry, ServerThread
from aionamespace.protocol.auth import new_challenge
from aionamespace.protocol.connection import PROTOCOL_NAME, ClientConnection
from deadlines import NO_HANG_SECONDS

pytestmark = pytest.mark.usefixtures("collect_garbage")

KEY = b"handshake slots key"
HELLO = msgpack.packb({"protocol": PROTOCOL_NAME, "version": 1, "challenge": new_challenge()})
REAL_CLIENTS = 25
FLOOD = 1_000  # half-open connections opened before the real clients come
FLOOD_HELD = 400  # the most the flooder keeps open at once (it closes its oldest beyond)
EVICTED = "connections in their handshake, and this one, still in its handshake, had waited longest"


def connect(path: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(NO_HANG_SECONDS)
    sock.connect(path)
    return sock


def first_frame(sock: socket.socket) -> Any:
    """The first frame the server sent, or None if it closed without one."""
    unpacker = msgpack.Unpacker(raw=False)
    while True:
        try:
            data = sock.recv(65536)
        except (ConnectionResetError, BrokenPipeError):
            return None
        if not data:
            return None
        unpacker.feed(data)
        for frame in unpacker:
            return frame


def is_closed(sock: socket.socket) -> bool:
    """Whether the server has closed ``sock`` (what it sent before is left unread)."""
    sock.setblocking(False)
    try:
        return sock.recv(1, socket.MSG_PEEK) == b""
    except BlockingIOError:
        return False
    except ConnectionResetError:
        return True
    finally:
        sock.setblocking(True)
        sock.settimeout(NO_HANG_SECONDS)


@contextlib.contextmanager
def serving(short_tmp: str, backend: str, limits: Limits) -> Iterator[str]:
    path = os.path.join(short_tmp, "s.sock")
    with ServerThread(path, backend=backend, authkey=KEY, limits=limits):
        yield path


class Flood:
    """Half-open connections, opened as fast as the server takes them: in turn one that says
    nothing and one that says hello and never proves it knows the key (the flooder waits for
    the server's hello to that one, so it never fills the kernel's accept queue: what is under
    test is the server's slots). Keeps the newest ``FLOOD_HELD`` open."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.opened = 0
        self.held: collections.deque[socket.socket] = collections.deque()
        self.first_batch = threading.Event()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run)

    def _run(self) -> None:
        while not self.stop.is_set():
            silent, greeted = connect(self.path), connect(self.path)
            self.held.extend((silent, greeted))
            with contextlib.suppress(OSError):  # (a server may refuse before the hello)
                greeted.sendall(HELLO)
            first_frame(greeted)  # the server's hello, or why it dropped us: it took both
            self.opened += 2
            while len(self.held) > FLOOD_HELD:
                self.held.popleft().close()
            if self.opened >= FLOOD:
                self.first_batch.set()

    def __enter__(self) -> Flood:
        self.thread.start()
        assert self.first_batch.wait(NO_HANG_SECONDS * 3), f"only {self.opened} opened"
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop.set()
        self.thread.join(NO_HANG_SECONDS)
        for sock in self.held:
            sock.close()


@pytest.mark.parametrize(
    "limits",
    [
        Limits(max_connections=100),  # max_handshakes (1,000) above it: the oldest goes anyway
        Limits(max_connections=100, max_handshakes=32),
    ],
    ids=["at-max_connections", "at-max_handshakes"],
)
def test_real_clients_are_served_through_a_flood_of_half_open_connections(
    short_tmp: str, server_backend: str, limits: Limits
) -> None:
    with serving(short_tmp, server_backend, limits) as path, Flood(path) as flood:
        served: list[int] = []
        failed: list[BaseException] = []

        def real_client(number: int) -> None:
            try:
                with Namespace(path, "board", authkey=KEY, retry=Retry(attempts=1)) as ns:
                    ns._append("served", number)
                served.append(number)
            except BaseException as exc:
                failed.append(exc)

        clients = [threading.Thread(target=real_client, args=(n,)) for n in range(REAL_CLIENTS)]
        for client in clients:
            client.start()
        for client in clients:
            client.join(NO_HANG_SECONDS * 3)
        opened_meanwhile = flood.opened
        with Namespace(path, "board", authkey=KEY, retry=Retry(attempts=1)) as ns:
            assert sorted(ns.served) == list(range(REAL_CLIENTS))
    assert failed == []
    assert len(served) == REAL_CLIENTS
    assert opened_meanwhile > FLOOD  # the flood went on while they connected


@pytest.mark.parametrize("hello", [False, True], ids=["silent", "hello-without-proof"])
def test_the_oldest_half_open_peer_makes_room_for_a_newcomer(
    short_tmp: str, server_backend: str, hello: bool
) -> None:
    limits = Limits(max_handshakes=2)
    with serving(short_tmp, server_backend, limits) as path:
        with Namespace(path, "board", authkey=KEY, retry=Retry(attempts=1)) as done:
            done.x = 1  # past its handshake: it takes no handshake slot
            oldest, middle = connect(path), connect(path)
            if hello:
                for sock in (oldest, middle):
                    sock.sendall(HELLO)
                    assert first_frame(sock)["version"] == 1  # greeted, still no proof
            with oldest, middle:
                with connect(path) as newest:
                    frame = first_frame(oldest)
                    if hello:  # greeted already: a connection-level error
                        assert frame[:3] == [0, 1, "ConnectionLost"]
                        assert EVICTED in frame[3]
                    else:  # not greeted: the hello error form
                        assert frame["error"][0] == "ConnectionLost"
                        assert EVICTED in frame["error"][1]
                        assert "limit of 2 connections" in frame["error"][1]
                    assert first_frame(oldest) is None  # and closed
                    assert not is_closed(middle)
                    assert not is_closed(newest)
                    assert done.x == 1


def authenticated(path: str) -> socket.socket:
    """A raw connection past its handshake (hello, the server's proof checked, our proof)."""
    client = ClientConnection(authkey=KEY)
    sock = connect(path)
    sock.sendall(client.start())
    while not client.greeted:
        data = sock.recv(65536)
        assert data, "refused"
        client.receive_data(data)
    request_id, ping = client.send_request("ping")
    sock.sendall(client.handshake_reply() + ping)
    assert [reply.id for reply in client.receive_data(sock.recv(65536))] == [request_id]
    return sock


def test_a_server_full_of_authenticated_connections_refuses_the_newcomer(
    short_tmp: str, server_backend: str
) -> None:
    limits = Limits(max_connections=2, max_handshakes=2)
    with serving(short_tmp, server_backend, limits) as path:
        with authenticated(path), authenticated(path):
            with connect(path) as late:
                frame = first_frame(late)
            assert frame["error"] == [
                "ConnectionLost",
                "the server is at its limit of 2 connections",
            ]
        again = Namespace(path, "board", authkey=KEY, retry=Retry(attempts=3))
        with again:  # (the server notices the two closes asynchronously: retried)
            again._ping()


def test_at_max_connections_the_oldest_half_open_peer_makes_room(
    short_tmp: str, server_backend: str
) -> None:
    limits = Limits(max_connections=2, max_handshakes=10)
    with serving(short_tmp, server_backend, limits) as path:
        with authenticated(path) as done, connect(path) as half_open:
            with connect(path) as newest:
                frame = first_frame(half_open)
                assert frame["error"] == [
                    "ConnectionLost",
                    "the server is at its limit of 2 connections, and this one, still in its "
                    "handshake, had waited longest",
                ]
                assert not is_closed(newest)
                assert not is_closed(done)
