"""Attacks by peers that never authenticate (issue 12, items 5 and 14): what they make the
server hold, and whether they can keep the real clients out.
"""

from __future__ import annotations

import collections
import contextlib
import socket
import threading
import time
from typing import Any

import msgpack

from aionamespace import Limits, Namespace, Retry
from aionamespace.protocol.auth import new_challenge

from . import Attack, Row
from .harness import KIB, MIB, NO_HANG, ServerProcess, call, mib, ms, raw_connect, served

KEY = b"attacks-authkey"
LIMITS = Limits()
#: A connection's own cost (its socket, its shell and protocol state: on trio a task and a
#: stream each), beside the frame bytes it may make the server hold, and RSS's granularity.
CONNECTION_ALLOWANCE = 32 * KIB
LEFT_BOUND = 2 * MIB  # what a second round of peers may leave on top of the first, once gone


def _hello_of(size: int) -> bytes:
    """A valid client hello of exactly ``size`` bytes (padded by a key the server ignores)."""
    padding = size
    while (
        len(frame := msgpack.packb({"protocol": "aionamespace", "version": 1, "p": "x" * padding}))
        != size
    ):
        padding -= len(frame) - size
    return frame


def _one_round(server: ServerProcess, peers: int, data: bytes) -> tuple[float, bool]:
    """RSS growth per peer while ``peers`` connections have sent ``data`` and wait (within
    the handshake timeout), and whether the server still served meanwhile."""
    before = server.rss()
    with contextlib.ExitStack() as stack:
        for _ in range(peers):
            sock = stack.enter_context(socket.socket(socket.AF_UNIX))
            sock.connect(server.path)  # blocking: waits for room in the accept queue
            sock.settimeout(NO_HANG)
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                for start in range(0, len(data), MIB):  # the server may refuse it part way
                    sock.sendall(data[start : start + MIB])
        sock, frames = raw_connect(server.path, KEY)
        with sock:
            serving = call(sock, frames, 1, "ping") == [1, 0, None]
        during = (server.rss() - before) / peers
    sock, frames = raw_connect(server.path, KEY)  # the server has seen them go
    with sock:
        serving = serving and call(sock, frames, 1, "ping") == [1, 0, None]
    return during, serving


def _peers_cost(server: ServerProcess, peers: int, data: bytes) -> tuple[float, int, bool]:
    """The growth per peer of a first round of ``peers`` peers, and what a second round
    left on top of the first once gone (memory held for good would grow with each round;
    what the first round leaves, the allocator keeps for the next)."""
    during, serving = _one_round(server, peers, data)
    time.sleep(0.2)
    after_first = server.rss()
    _, serving_again = _one_round(server, peers, data)
    time.sleep(0.2)
    return during, server.rss() - after_first, serving and serving_again


def before_authentication(backend: str, scale: float) -> list[Row]:
    peers = max(8, int(200 * scale))
    handshake = LIMITS.max_handshake_bytes
    kinds: list[tuple[str, int, bytes, int]] = [
        ("connect, send nothing", peers, b"", 0),
        ("5 KB of nested array headers as the hello", peers, b"\xdc\xff\xff" * 1700, handshake),
        ("5 KB of nested map headers as the hello", peers, b"\xde\xff\xff" * 1700, handshake),
        (
            "the first 60 MiB of a 64 MiB hello",
            peers,
            b"\xc6\x04\x00\x00\x00" + b"x" * (60 * MIB),
            handshake,
        ),
        ("4 KiB of bytes that are not msgpack", peers, bytes(range(256)) * 16, handshake),
        (
            "a hello one byte short of `max_handshake_bytes`",
            peers,
            _hello_of(handshake)[:-1],
            handshake,
        ),
        (
            "a hello, then a wrong proof and 1 MiB of requests behind it",
            peers,
            _hello_of(200)
            + msgpack.packb({"proof": bytes(32)})
            + msgpack.packb([1, "set", "k", "x", b"x" * MIB]),
            handshake,
        ),
    ]
    rows = []
    for variant, count, data, frame_bytes in kinds:
        with served(backend, authkey=KEY) as server:  # each kind on a fresh server
            during, left, serving = _peers_cost(server, count, data)
            bound = frame_bytes + CONNECTION_ALLOWANCE
            rows.append(
                Row(
                    f"{count} peers: {variant}",
                    "server RSS growth per peer while they wait; a second round's, once gone",
                    f"{during / KIB:,.1f} KiB; {mib(left)}",
                    f"< {bound / KIB:,.0f} KiB (frame + {CONNECTION_ALLOWANCE // KIB} KiB per "
                    f"connection); < {mib(LEFT_BOUND)}; still serving: {serving}",
                    during < bound and left < LEFT_BOUND and serving,
                )
            )
    return rows


# ---------------------------------------------------------------------------- item 14

REAL_CLIENTS = 25
FIRST_OP_BOUND = 5.0  # seconds for a real client to connect, authenticate and append
HALF_OPEN_HELLO = msgpack.packb(
    {"protocol": "aionamespace", "version": 1, "challenge": new_challenge()}
)


class Flood:
    """Half-open connections, opened as fast as the server takes them: in turn one that says
    nothing and one that says hello and never proves it knows the key (waiting for the
    server's hello to that one, so the kernel's accept queue never fills: the server's slots
    are what is attacked). Keeps the newest ``held`` open."""

    def __init__(self, path: str, held: int) -> None:
        self.path, self.held_at_most = path, held
        self.opened = 0
        self.held: collections.deque[socket.socket] = collections.deque()
        self.ready = threading.Event()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _connect(self) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(self.path)  # blocking: waits for room in the accept queue
        sock.settimeout(NO_HANG)
        self.held.append(sock)
        return sock

    def _run(self) -> None:
        while not self.stop.is_set():
            self._connect()
            greeted = self._connect()
            with contextlib.suppress(OSError):
                greeted.sendall(HALF_OPEN_HELLO)
                greeted.recv(65536)  # the server's hello, or why it dropped us
            self.opened += 2
            while len(self.held) > self.held_at_most:
                self.held.popleft().close()
            if self.opened >= self.held_at_most:
                self.ready.set()

    def __enter__(self) -> Flood:
        self.thread.start()
        if not self.ready.wait(NO_HANG * 3):
            raise RuntimeError(f"the flood opened only {self.opened}")
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop.set()
        self.thread.join(NO_HANG)
        for sock in self.held:
            sock.close()


def _real_clients(path: str) -> tuple[int, float, list[str]]:
    served_at_first: list[float] = []
    failed: list[str] = []

    def real_client(number: int) -> None:
        started = time.monotonic()
        try:
            with Namespace(path, "board", authkey=KEY, retry=Retry(attempts=1)) as ns:
                ns._append("served", number)
            served_at_first.append(time.monotonic() - started)
        except Exception as exc:  # counted: the figure is how many got through
            failed.append(repr(exc)[:120])

    clients = [threading.Thread(target=real_client, args=(n,)) for n in range(REAL_CLIENTS)]
    for client in clients:
        client.start()
    for client in clients:
        client.join(NO_HANG * 3)
    return len(served_at_first), max(served_at_first, default=float("nan")), failed


def handshake_slots(backend: str, scale: float) -> list[Row]:
    small = 100
    cases: list[tuple[str, dict[str, Any] | None, int]] = [
        (f"`max_connections={small}`", {"max_connections": small}, 4 * small),
        (
            f"default limits (`max_handshakes={LIMITS.max_handshakes:,}`)",
            None,
            max(50, int(1.5 * LIMITS.max_handshakes * scale)),
        ),
    ]
    rows = []
    for limits_name, limits, held in cases:
        with (
            served(backend, authkey=KEY, limits=limits) as server,
            Flood(server.path, held) as flood,
        ):
            opened_before = flood.opened
            count, slowest, failed = _real_clients(server.path)
            meanwhile = flood.opened - opened_before
            with Namespace(server.path, "board", authkey=KEY) as ns:
                recorded = sorted(ns.served) == list(range(REAL_CLIENTS))
        rows.append(
            Row(
                f"{limits_name}, a flood of half-open peers with an authkey ({held:,} held "
                f"open, {meanwhile:,} more opened while the real clients came); "
                f"{REAL_CLIENTS} real clients",
                "real clients served at their first attempt; the slowest's connect and `_append`",
                f"{count}/{REAL_CLIENTS}; {ms(slowest)}"
                + (f"; failed: {failed[:2]}" if failed else ""),
                f"{REAL_CLIENTS}/{REAL_CLIENTS} (before: 2/25); < {FIRST_OP_BOUND:g} s",
                count == REAL_CLIENTS and slowest < FIRST_OP_BOUND and recorded,
            )
        )
    return rows


ATTACKS = [
    Attack(
        "5",
        "Memory before authentication",
        "Peers of a server with an authkey send, as their hello, what the issue sent: 5 KB of "
        "nested array (or map) headers (~65 MB per connection, before), the start of a 64 MiB "
        "hello (buffered up to the frame limit, before), junk, a hello one byte short of "
        "`max_handshake_bytes` (the most a peer may make the server hold), or a hello and a "
        "wrong proof with a 1 MiB request behind it; each kind on its own, all its peers "
        "connected at once, within the handshake timeout. Measured: the server's RSS growth per "
        "peer while they wait (the first row, peers that send nothing, is a connection's own "
        "cost), and what is left once they are gone. Before the handshake completes, a frame "
        "may be `max_handshake_bytes` (4 KiB) long and nest `max_handshake_depth` (4) levels.",
        before_authentication,
    ),
    Attack(
        "14",
        "Half-open peers took every connection slot",
        "A flood of connections that never finish their handshake (in turn silent ones and "
        "ones that say hello but never prove they know the authkey), kept up while 25 real "
        "clients (sync proxies with the authkey, no retries) connect and `_append`: first "
        "against `max_connections=100` (the issue's attack: before, 2 of 25 got through), "
        "then against the default limits with 1,500 half-open peers held open, past "
        "`max_handshakes`. At either bound the oldest half-open peer is dropped to make room.",
        handshake_slots,
    ),
]
