"""Server behaviour on bad input and limits: answer what came first, refuse, keep serving."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator

import msgpack
import pytest

from aionamespace import Limits, Namespace, ServerThread
from aionamespace.protocol.connection import PROTOCOL_NAME

HELLO = msgpack.packb({"protocol": PROTOCOL_NAME, "version": 1})


@pytest.fixture
def any_backend_server(server_backend: str, short_tmp: str) -> Iterator[ServerThread]:
    with ServerThread(
        os.path.join(short_tmp, "s.sock"),
        backend=server_backend,
        limits=Limits(max_frame_bytes=4096),
    ) as running:
        yield running


def _exchange(server: ServerThread, data: bytes) -> list[object]:
    """Send ``data`` in one write and read every frame until the server closes or goes quiet."""
    sock = socket.socket(socket.AF_UNIX)
    sock.connect(server.address)
    sock.settimeout(5)
    with sock:
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)
        unpacker = msgpack.Unpacker(raw=False)
        while chunk := sock.recv(65536):
            unpacker.feed(chunk)
        return list(unpacker)


def _still_serving(server: ServerThread) -> None:
    ns = Namespace(server.address, "health")
    ns.ok = True
    assert ns.ok is True
    ns._close()


def test_a_client_hello_carrying_an_error_is_refused(any_backend_server: ServerThread) -> None:
    evil = msgpack.packb({"protocol": PROTOCOL_NAME, "version": 1, "error": ["ValueError", "x"]})
    frames = _exchange(any_backend_server, evil)
    assert frames == [
        {
            "protocol": PROTOCOL_NAME,
            "error": ["RemoteProtocolError", "a client hello cannot carry an error"],
        }
    ]
    _still_serving(any_backend_server)


def test_the_frame_limit_bounds_frames_not_reads(any_backend_server: ServerThread) -> None:
    pings = b"".join(msgpack.packb([i, "ping"]) for i in range(1, 2001))  # ~14 KB, > 4096
    frames = _exchange(any_backend_server, HELLO + pings)
    assert len(frames) == 2001
    assert [frame[0] for frame in frames[1:]] == list(range(1, 2001))  # type: ignore[index]


def test_one_frame_over_the_limit_is_refused(any_backend_server: ServerThread) -> None:
    big = msgpack.packb([1, "get", "k", "n" * 5000])
    frames = _exchange(any_backend_server, HELLO + big)
    assert frames[1][:3] == [0, 1, "RemoteProtocolError"]  # type: ignore[index]
    assert "max_frame_bytes" in frames[1][3]  # type: ignore[index]
    _still_serving(any_backend_server)


def test_requests_before_garbage_in_the_same_read_are_answered(
    any_backend_server: ServerThread,
) -> None:
    good = msgpack.packb([1, "ping"]) + msgpack.packb([2, "ping"])
    frames = _exchange(any_backend_server, HELLO + good + b"\xc1\xc1\xc1")  # 0xc1: never used
    assert frames[1:3] == [[1, 0, None], [2, 0, None]]
    assert frames[3][:3] == [0, 1, "RemoteProtocolError"]  # type: ignore[index]
    _still_serving(any_backend_server)


def test_a_timestamp_extension_is_not_stored(any_backend_server: ServerThread) -> None:
    stamp = msgpack.packb(msgpack.Timestamp(1, 0))
    frames = _exchange(
        any_backend_server, HELLO + msgpack.packb([1, "set", "k", "t", stamp], use_bin_type=True)
    )
    assert frames[1][:3] == [1, 1, "RemoteProtocolError"]  # type: ignore[index]
    assert "timestamp" in frames[1][3]  # type: ignore[index]
