"""Limits (8): max_frame_bytes bounds each frame, not each read, counted from the frame's first
byte; a client that leaves 16 MiB of pushes unread is dropped.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import pytest

from aionamespace import Limits, ServerThread
from doc_client import ERROR, OK, PUSH, Client, connect, pack
from doc_values import encode

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
        assert error == [
            0,
            ERROR,
            "RemoteProtocolError",
            f"frame larger than max_frame_bytes ({SMALL})",
        ]


def test_a_client_that_leaves_16_mib_unread_is_dropped(short_tmp: str, server_backend: str) -> None:
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
            assert last == [
                0,
                ERROR,
                "ConnectionLost",
                "more than 16777216 bytes of events "
                "went unread; watch again from the last revision seen",
            ]
            assert 16 <= len(pushes) < 24
            assert pushes == [
                [0, PUSH, watch_id, revision, "x", big] for revision in range(1, len(pushes) + 1)
            ]
