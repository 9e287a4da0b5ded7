"""Every field of ``Limits`` at its bound, on real servers (asyncio and trio) over real sockets.

* ``max_connections``: the next client is refused with ConnectionLost naming the limit, the
  admitted ones keep working, and a slot that frees up is given to the next client;
* ``handshake_timeout``: a client that does not say hello (or does not authenticate) in time
  gets the refusal frame and a closed connection, and nobody else notices;
* ``max_frame_bytes``: an oversized frame ends that connection only;
* ``max_name_length``: empty and long names fail with ValueError at the call site, and as an
  error reply (not a closed connection) when sent raw;
* ``max_queued_writes``: the write past the bound raises WriteQueueFull and loses nothing;
* a client that asks for large values and never reads the answers costs the server bounded
  memory (RSS of a ``python -m aionamespace serve`` subprocess, read from /proc).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import select
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import msgpack
import pytest

import aionamespace.client.asyncio_transport
import aionamespace.client.blocking
import aionamespace.client.stream_transport
from aionamespace import (
    AsyncNamespace,
    ConnectionLost,
    Limits,
    LocalProtocolError,
    Namespace,
    NamespaceError,
    Retry,
    ServerThread,
    WriteQueueFull,
)
from aionamespace.protocol.auth import new_challenge
from aionamespace.protocol.codec import encode_value
from aionamespace.protocol.connection import PROTOCOL_NAME, Address
from server_processes import ServeProcess

NO_RETRY = Retry(attempts=1)
NO_HANG_SECONDS = 10.0
HELLO = msgpack.packb({"protocol": PROTOCOL_NAME, "version": 1})
KEY = b"limits key"


pytestmark = pytest.mark.usefixtures("collect_garbage")


@pytest.fixture
def server(
    request: pytest.FixtureRequest,
    short_tmp: str,
    server_backend: str,
) -> Iterator[ServerThread]:
    """A server on this test's backend, with the options the test passes indirectly."""
    options: dict[str, Any] = dict(getattr(request, "param", {}))
    address: Address = (
        ("127.0.0.1", 0)
        if options.pop("transport", "unix") == "tcp"
        else os.path.join(short_tmp, "s.sock")
    )
    with ServerThread(address, backend=server_backend, **options) as running:
        yield running


def with_server(
    transports: tuple[str, ...] = ("unix",),
    **options: Any,
) -> pytest.MarkDecorator:
    """Run the test against a ``server`` started with ``options``, on each transport."""
    words = []
    for name, value in options.items():
        if isinstance(value, Limits):  # only the fields the test changes
            words += [
                f"{field.name}={getattr(value, field.name)}"
                for field in dataclasses.fields(value)
                if getattr(value, field.name) != field.default
            ]
        else:
            words.append(name)
    return pytest.mark.parametrize(
        "server",
        [{"transport": transport, **options} for transport in transports],
        indirect=True,
        ids=[",".join([transport, *words]) for transport in transports],
    )


# ---------------------------------------------------------------------------- raw clients


def raw_connect(address: Address) -> socket.socket:
    if isinstance(address, tuple):
        sock = socket.create_connection(address)
    else:
        sock = socket.socket(socket.AF_UNIX)
        try:
            sock.connect(address)
        except BaseException:
            sock.close()
            raise
    sock.settimeout(NO_HANG_SECONDS)
    return sock


class FrameReader:
    """Frames from a raw socket, one at a time; ``None`` once the server has closed."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.unpacker = msgpack.Unpacker(raw=False)

    def next(self) -> Any:
        while True:
            try:
                return next(self.unpacker)
            except StopIteration:
                pass
            try:
                chunk = self.sock.recv(65536)
            except ConnectionResetError:
                chunk = b""
            if not chunk:
                return None
            self.unpacker.feed(chunk)

    def rest(self) -> list[Any]:
        """Every frame until the server closes the connection."""
        frames = []
        while (frame := self.next()) is not None:
            frames.append(frame)
        return frames


def greeted(address: Address) -> tuple[socket.socket, FrameReader]:
    """A raw connection that said hello and got the server's hello back."""
    sock = raw_connect(address)
    try:
        sock.sendall(HELLO)
        reader = FrameReader(sock)
        hello = reader.next()
        if hello is None or "error" in hello:
            raise ConnectionLost(f"refused: {hello!r}")
    except BaseException:
        sock.close()
        raise
    return sock, reader


def request(sock: socket.socket, reader: FrameReader, frame: list[Any]) -> Any:
    sock.sendall(msgpack.packb(frame, use_bin_type=True))
    return reader.next()


def poll(attempt: Callable[[], Any], what: str, seconds: float = NO_HANG_SECONDS) -> Any:
    """Call ``attempt`` until it stops raising ConnectionLost (bounded)."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            return attempt()
        except ConnectionLost:
            if time.monotonic() > deadline:
                pytest.fail(f"{what} did not happen within {seconds} s")
            time.sleep(0.01)  # polling interval, bounded by the deadline


# ---------------------------------------------------------------------------- max_connections


def wait_until_the_server_closes(sock: socket.socket) -> None:
    """Block until the peer has closed (POLLRDHUP), leaving unread data where it is."""
    poller = select.poll()
    poller.register(sock, select.POLLRDHUP)
    if not poller.poll(NO_HANG_SECONDS * 1000):
        raise AssertionError("the server never closed the connection")


@pytest.fixture
def hello_after_the_refusal(monkeypatch: pytest.MonkeyPatch) -> None:
    """From here on, proxies say hello only once the server has closed the connection.

    The server refuses at accept time and closes at once, so a proxy's hello leaves before or
    after that close depending on scheduling. This pins the slow case, deterministically: the
    refusal frame is then already waiting in the client's receive buffer.
    """
    open_socket = aionamespace.client.blocking.open_socket
    open_stream = aionamespace.client.stream_transport.open_stream

    def slow_socket(*args: Any) -> socket.socket:
        sock = open_socket(*args)
        wait_until_the_server_closes(sock)
        return sock

    async def slow_stream(*args: Any) -> anyio.abc.ByteStream:
        stream = await open_stream(*args)
        sock = stream.extra(anyio.abc.SocketAttribute.raw_socket)
        await anyio.to_thread.run_sync(wait_until_the_server_closes, sock)
        return stream

    connect = aionamespace.client.asyncio_transport._connect

    async def slow_connect(*args: Any) -> socket.socket:  # asyncio's AsyncNamespace
        sock = await connect(*args)
        await anyio.to_thread.run_sync(wait_until_the_server_closes, sock)
        return sock

    monkeypatch.setattr(aionamespace.client.blocking, "open_socket", slow_socket)
    monkeypatch.setattr(aionamespace.client.stream_transport, "open_stream", slow_stream)
    monkeypatch.setattr(aionamespace.client.asyncio_transport, "_connect", slow_connect)


@pytest.mark.anyio
@with_server(limits=Limits(max_connections=3), transports=("unix", "tcp"))
async def test_the_connection_past_the_limit_is_refused_until_one_closes(
    server: ServerThread,
) -> None:
    admitted = [AsyncNamespace(server.address, "shared", retry=NO_RETRY) for _ in range(3)]
    late = AsyncNamespace(server.address, "shared", retry=NO_RETRY)
    try:
        with anyio.fail_after(NO_HANG_SECONDS):
            for ns in admitted:
                await ns._incr("count")
            for _ in range(5):
                with pytest.raises(ConnectionLost):
                    await late.count
            with pytest.raises(ConnectionLost):
                await late._update(count=0)  # a write is refused the same way, and not applied
            for ns in admitted:  # the first three keep working
                await ns._incr("count")
            assert await admitted[0].count == 6
            await admitted[0]._close()
            deadline = anyio.current_time() + NO_HANG_SECONDS
            while True:  # the server notices the close asynchronously: poll, bounded
                try:
                    await late._ping()
                    break
                except ConnectionLost:
                    assert anyio.current_time() < deadline, "the freed slot was never given"
                    await anyio.sleep(0.01)
            assert await late.count == 6
            with pytest.raises(ConnectionLost):  # full again
                await admitted[0]._ping()
            for ns in (*admitted[1:], late):
                await ns._incr("count")
    finally:
        with anyio.CancelScope(shield=True):
            for ns in (*admitted, late):
                await ns._close()
    with Namespace(server.address, "shared", retry=NO_RETRY) as check:
        assert poll(lambda: check.count, "admission after the others closed") == 9


@pytest.mark.anyio
@with_server(limits=Limits(max_connections=1), transports=("unix", "tcp"))
async def test_the_async_client_past_the_limit_is_told_the_limit(
    server: ServerThread, hello_after_the_refusal: None
) -> None:
    holder, _ = greeted(server.address)
    with holder, anyio.fail_after(NO_HANG_SECONDS):
        late = AsyncNamespace(server.address, "n", retry=NO_RETRY)
        with pytest.raises(ConnectionLost, match="at its limit of 1 connections"):
            await late._ping()
        await late._close()


@with_server(limits=Limits(max_connections=1), transports=("unix", "tcp"))
def test_the_sync_client_past_the_limit_is_told_the_limit(
    server: ServerThread, hello_after_the_refusal: None
) -> None:
    holder, _ = greeted(server.address)
    with (
        holder,
        Namespace(server.address, "n", retry=NO_RETRY) as late,
        pytest.raises(ConnectionLost, match="at its limit of 1 connections"),
    ):
        late._ping()


@with_server(limits=Limits(max_connections=2), transports=("unix", "tcp"))
def test_a_sync_client_is_admitted_once_a_slot_frees_up(server: ServerThread) -> None:
    holders = [greeted(server.address) for _ in range(2)]
    try:
        with Namespace(server.address, "n", retry=NO_RETRY) as ns:
            for _ in range(5):
                with pytest.raises(ConnectionLost):
                    ns.x = 1
            for sock, reader in holders:
                assert request(sock, reader, [7, "ping"]) == [7, 0, None]
            holders.pop()[0].close()
            poll(lambda: setattr(ns, "x", 1), "admission after a close")
            assert ns.x == 1
    finally:
        for sock, _ in holders:
            sock.close()


@with_server(limits=Limits(max_connections=1), transports=("unix", "tcp"))
def test_the_refusal_frame_stays_readable_after_the_server_closes(server: ServerThread) -> None:
    """What the server does, seen from a raw socket: the refusal frame at once, then close.
    A client that speaks after the close (its send may fail) can still read why."""
    holder, _ = greeted(server.address)
    with holder, raw_connect(server.address) as refused:
        wait_until_the_server_closes(refused)
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            refused.sendall(HELLO)  # EPIPE on a Unix socket
        assert FrameReader(refused).rest() == [
            {
                "protocol": PROTOCOL_NAME,
                "error": ["ConnectionLost", "the server is at its limit of 1 connections"],
            }
        ]


# ---------------------------------------------------------------------------- handshake_timeout


def read_until_closed(sock: socket.socket, since: float) -> tuple[list[Any], float]:
    """Every frame until the server closes, and how long after ``since`` that was."""
    frames = FrameReader(sock).rest()
    return frames, time.monotonic() - since


@pytest.mark.parametrize("opening", [b"", HELLO[:3]], ids=["silent", "half-a-hello"])
@with_server(limits=Limits(handshake_timeout=0.3))
def test_a_client_that_never_says_hello_is_dropped(server: ServerThread, opening: bytes) -> None:
    early, early_reader = greeted(server.address)  # greeted before the silent one connected
    connected_at = time.monotonic()  # the server's clock starts later, when it accepts
    with early, raw_connect(server.address) as silent:
        silent.sendall(opening)
        with Namespace(server.address, "n") as ns:  # others are served meanwhile
            ns.x = 1
            assert ns.x == 1
        frames, elapsed = read_until_closed(silent, connected_at)
        assert frames == [
            {
                "protocol": PROTOCOL_NAME,
                "error": ["RemoteProtocolError", "no hello and authentication within 0.3 seconds"],
            }
        ]
        assert 0.29 <= elapsed < 1.5
        # Its deadline passed long before the silent one's: a greeted client is never dropped.
        assert request(early, early_reader, [1, "ping"]) == [1, 0, None]
    with Namespace(server.address, "n") as ns:
        assert ns.x == 1


@with_server(authkey=KEY, limits=Limits(handshake_timeout=0.3))
def test_a_client_that_says_hello_but_never_authenticates_is_dropped(server: ServerThread) -> None:
    start = time.monotonic()
    with raw_connect(server.address) as sock:
        sock.sendall(
            msgpack.packb({"protocol": PROTOCOL_NAME, "version": 1, "challenge": new_challenge()})
        )
        reader = FrameReader(sock)
        hello = reader.next()
        assert hello["protocol"] == PROTOCOL_NAME
        assert "proof" in hello  # which it never answers
        frames = reader.rest()
        elapsed = time.monotonic() - start
    assert frames == [
        [0, 1, "RemoteProtocolError", "no hello and authentication within 0.3 seconds"]
    ]
    assert 0.29 <= elapsed < 1.5
    with Namespace(server.address, "n", authkey=KEY) as ns:
        ns.x = 1
        assert ns.x == 1


@pytest.mark.anyio
@with_server(limits=Limits(handshake_timeout=0.2))
async def test_the_handshake_deadline_does_not_hit_async_clients(server: ServerThread) -> None:
    ns = AsyncNamespace(server.address, "n", retry=NO_RETRY)
    with anyio.fail_after(NO_HANG_SECONDS):
        await ns._ping()
        with raw_connect(server.address) as silent:  # outlive a deadline, observed, no sleep
            frames = await anyio.to_thread.run_sync(FrameReader(silent).rest)
        assert frames[0]["error"][0] == "RemoteProtocolError"
        ns.x = 1
        await ns._flush()
        assert await ns.x == 1
        await ns._close()


# ---------------------------------------------------------------------------- max_frame_bytes


@with_server(limits=Limits(max_frame_bytes=4096))
def test_an_oversized_frame_ends_only_its_own_connection(server: ServerThread) -> None:
    bystander, bystander_reader = greeted(server.address)
    with bystander:
        with raw_connect(server.address) as sock:
            sock.sendall(HELLO + msgpack.packb([1, "set", "k", "big", encode_value(b"x" * 5000)]))
            frames = FrameReader(sock).rest()
        assert frames[1:] == [
            [0, 1, "RemoteProtocolError", "frame larger than max_frame_bytes (4096)"]
        ]
        with Namespace(server.address, "k") as ns:  # knows the limit from the server's hello
            with pytest.raises(ValueError, match=r"over the server's max_frame_bytes \(4096\)"):
                ns.big = b"x" * 5000  # never sent
            ns.small = 1  # the same connection goes on
            assert ns.small == 1
            with pytest.raises(AttributeError):
                _ = ns.big
        with Namespace(server.address, "k", limits=Limits(max_frame_bytes=4096)) as knowing:
            with pytest.raises(ValueError, match="over max_frame_bytes"):  # never sent
                knowing.big = b"x" * 5000
            assert knowing.small == 1
        assert request(bystander, bystander_reader, [1, "get", "k", "small"]) == [
            1,
            0,
            encode_value(1),
        ]


@pytest.mark.anyio
@with_server(limits=Limits(max_frame_bytes=4096))
async def test_an_oversized_async_write_is_reported_by_flush(server: ServerThread) -> None:
    ns = AsyncNamespace(server.address, "k", retry=NO_RETRY)
    with anyio.fail_after(NO_HANG_SECONDS):
        ns.big = b"x" * 5000  # queued before any connection: the server's limit is not known
        with pytest.raises(NamespaceError, match=r"max_frame_bytes \(4096\)"):
            await ns._flush()  # the server refused it, and closed that connection
        with pytest.raises(ValueError, match=r"over the server's max_frame_bytes \(4096\)"):
            await ns._update(big=b"x" * 5000)  # now it is known: refused before sending
        ns.small = 2
        await ns._flush()
        assert await ns._snapshot() == {"small": 2}
        await ns._close()


# ---------------------------------------------------------------------------- names


LONG = "n" * 257


def test_bad_names_raise_value_error_at_the_call_site(server: ServerThread) -> None:
    for key in ("", LONG):
        with pytest.raises(ValueError, match="invalid namespace name"):
            Namespace(server.address, key)
    with Namespace(server.address, "n") as ns:
        for name in ("", LONG):
            with pytest.raises(ValueError, match=r"empty|longer than 256"):
                setattr(ns, name, 1)
            with pytest.raises(ValueError, match=r"empty|longer than 256"):
                getattr(ns, name)
            with pytest.raises(ValueError, match=r"empty|longer than 256"):
                delattr(ns, name)
            with pytest.raises(ValueError, match=r"empty|longer than 256"):
                ns._update(**{name: 1})
            with pytest.raises(ValueError, match=r"empty|longer than 256"):
                ns._incr(name)
            with pytest.raises(ValueError, match=r"empty|longer than 256"):
                ns._snapshot(name)
        ns.ok = "n" * 256  # at the bound: fine
        setattr(ns, "m" * 256, 1)
        assert ns._snapshot() == {"ok": "n" * 256, "m" * 256: 1}


@pytest.mark.anyio
async def test_bad_names_raise_value_error_at_the_async_call_site(server: ServerThread) -> None:
    ns = AsyncNamespace(server.address, "n")
    with anyio.fail_after(NO_HANG_SECONDS):
        for name in ("", LONG):
            with pytest.raises(ValueError, match=r"empty|longer than 256"):
                setattr(ns, name, 1)  # not even queued
            with pytest.raises(ValueError, match=r"empty|longer than 256"):
                await getattr(ns, name)
            with pytest.raises(ValueError, match=r"empty|longer than 256"):
                await ns._update(**{name: 1})
        await ns._flush()
        assert await ns._snapshot() == {}
        await ns._close()


def test_bad_names_sent_raw_get_error_replies_and_the_connection_goes_on(
    server: ServerThread,
) -> None:
    one = encode_value(1)
    cases = [
        ([1, "set", "k", "", one], "set: names must not be empty"),
        ([2, "get", "", "x"], "get: names must not be empty"),
        ([3, "set", "k", LONG, one], "set: name longer than 256 characters"),
        ([4, "open", LONG, {}], "open: name longer than 256 characters"),
        ([5, "update", "k", {"": one}], "update: names must not be empty"),
        ([6, "snapshot", "k", ["ok", LONG]], "snapshot: name longer than 256 characters"),
        ([7, "set", "k", 5, one], "set: names must be str, not int"),
    ]
    sock, reader = greeted(server.address)
    with sock:
        for frame, message in cases:
            assert request(sock, reader, frame) == [frame[0], 1, "RemoteProtocolError", message]
        assert request(sock, reader, [8, "ping"]) == [8, 0, None]
        assert request(sock, reader, [9, "keys"]) == [9, 0, []]  # nothing was created


@with_server(limits=Limits(max_name_length=8))
def test_a_name_the_server_finds_too_long_is_an_error_reply(server: ServerThread) -> None:
    with Namespace(server.address, "k", limits=Limits(max_name_length=100)) as ns:
        with pytest.raises(LocalProtocolError, match="name longer than 8 characters"):
            ns.abcdefghi = 1
        ns.abcdefgh = 1  # same connection, still fine
        assert ns._snapshot() == {"abcdefgh": 1}


# ---------------------------------------------------------------------------- max_queued_writes


@pytest.mark.anyio
async def test_the_write_past_max_queued_writes_raises_and_nothing_is_lost(
    server: ServerThread,
) -> None:
    ns = AsyncNamespace(server.address, "q", limits=Limits(max_queued_writes=100))
    with anyio.fail_after(NO_HANG_SECONDS):
        for i in range(100):
            setattr(ns, f"v{i}", i)
        with pytest.raises(WriteQueueFull, match=r"100 writes .*await ns._flush\(\)"):
            ns.v100 = 100
        with pytest.raises(WriteQueueFull):
            del ns.v0
        assert await ns.v99 == 99  # a read is no write: it passes, after the queued writes
        await ns._flush()
        snapshot = await ns._snapshot()
        assert snapshot == {f"v{i}": i for i in range(100)}  # the refused ones never went
        assert snapshot.revision == 100
        for i in range(100, 200):  # room again, for another hundred
            setattr(ns, f"v{i}", i)
        with pytest.raises(WriteQueueFull):
            ns.v200 = 200
        await ns._close()  # flushes
    with Namespace(server.address, "q") as check:
        final = check._snapshot()
    assert final == {f"v{i}": i for i in range(200)}
    assert final.revision == 200


# ---------------------------------------------------------------------------- slow readers


MIB = 1024 * 1024
BLAST_REQUESTS = 2000
RSS_GROWTH_LIMIT = 64 * MIB


@pytest.mark.slow
@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="needs Linux /proc")
def test_a_client_that_never_reads_costs_the_server_bounded_memory(
    short_tmp: str, server_backend: str
) -> None:
    path = os.path.join(short_tmp, "ns.sock")
    server = ServeProcess(path, server_backend)
    try:
        with Namespace(path, "big") as ns:
            ns.value = os.urandom(MIB)
            assert len(ns.value) == MIB  # one answer of it went out already
        before = server.memory()
        blast = b"".join(
            msgpack.packb([i, "get", "big", "value"]) for i in range(1, BLAST_REQUESTS + 1)
        )
        greedy, _ = greeted(path)
        with greedy:
            greedy.settimeout(1.0)
            try:  # the server may stop reading us: then part of the blast stays unsent
                greedy.sendall(blast)
            except TimeoutError:
                pass
            answer_delay = ping_delay(path)  # others are served meanwhile
            peak_rss = before["VmRSS"]
            deadline = time.monotonic() + 1.0
            while time.monotonic() < deadline:  # sample while the greedy client is connected
                peak_rss = max(peak_rss, server.memory()["VmRSS"])
                time.sleep(0.02)  # sampling interval of a bounded loop
            after = server.memory()
        growth = {"VmRSS": peak_rss - before["VmRSS"], "VmHWM": after["VmHWM"] - before["VmHWM"]}
        report = (
            f"{BLAST_REQUESTS} unread gets of a 1 MiB value grew the {server_backend} "
            f"server by {growth['VmRSS'] / MIB:.0f} MiB RSS "
            f"(peak {growth['VmHWM'] / MIB:.0f} MiB)"
        )
        assert growth["VmRSS"] < RSS_GROWTH_LIMIT, report
        assert growth["VmHWM"] < RSS_GROWTH_LIMIT, report
        assert answer_delay is not None, (
            f"another client got no answer within {NO_HANG_SECONDS} s of the blast"
        )
        with Namespace(path, "big") as ns:  # and it still serves
            assert len(ns.value) == MIB
    finally:
        server.kill()


def ping_delay(address: Address) -> float | None:
    """Seconds a new client waits for its hello and a ping (None: over NO_HANG_SECONDS)."""
    start = time.monotonic()
    try:
        sock, reader = greeted(address)
        with sock:
            assert request(sock, reader, [1, "ping"]) == [1, 0, None]
            reply = request(sock, reader, [2, "get", "big", "value"])
            assert reply[:2] == [2, 0]
    except TimeoutError:
        return None
    return time.monotonic() - start


@with_server(limits=Limits(max_frame_bytes=4096), transports=("unix",))
def test_a_sync_proxy_keeps_to_the_limit_the_server_announced(server: ServerThread) -> None:
    with Namespace(server.address, "announced") as ns:
        ns.small = 1
        with pytest.raises(ValueError, match=r"over the server's max_frame_bytes \(4096\)"):
            ns.big = b"x" * 10_000  # refused here: the connection is not thrown away
        assert ns.small == 1
        assert not hasattr(ns, "big")


@pytest.mark.anyio
@with_server(limits=Limits(max_frame_bytes=4096), transports=("unix",))
async def test_an_async_proxy_keeps_to_the_limit_the_server_announced(server: ServerThread) -> None:
    async with AsyncNamespace(server.address, "announced") as ns:
        await ns._ping()  # greeted: the limit is known
        with pytest.raises(ValueError, match=r"over the server's max_frame_bytes \(4096\)"):
            ns.big = b"x" * 10_000
        ns.small = 2
        await ns._flush()  # nothing failed: the refused write was never queued
        assert await ns.small == 2


def test_every_limit_is_in_the_readmes_table() -> None:
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
    table = readme.partition("## Limits and failures")[2].partition("\n\n**")[0]
    rows = [
        line.split("|")[1].strip().strip("`")
        for line in table.splitlines()
        if line.startswith("| `")
    ]
    assert rows == [field.name for field in dataclasses.fields(Limits)]
