"""The goodbye is a connection's last frame (docs/PROTOCOL.md 7.3): no lock is granted behind it
during the shutdown, a client slow to read still gets the answer being sent and then the
goodbye, and a proxy ignores whatever a server might send after it.
"""

from __future__ import annotations

import fcntl
import socket
import struct
import termios
import threading
import time
from typing import Any

import anyio
import msgpack
import pytest

from aionamespace import AsyncNamespace, ConnectionLost, Namespace, Retry, ServerThread
from deadlines import NO_HANG_SECONDS, wait_until
from fake_server import fake_server
from raw_client import GOODBYE, connect_raw, exchange, pack, read_frames

pytestmark = pytest.mark.usefixtures("collect_garbage")


def test_nothing_follows_the_goodbye(socket_path: str, server_backend: str) -> None:
    """The goodbye is a connection's last frame (docs/PROTOCOL.md 7.3), even for a client
    waiting for a lock whose holder's connection closes during the same shutdown: the lock is
    not granted behind the goodbye. (Which connection the server drops first varies from run
    to run -- trio shuffles its scheduling on purpose -- so each round has ten waiters and the
    test runs five rounds.)"""
    waiters_per_round, rounds = 10, 5
    late: list[list[Any]] = []
    for _ in range(rounds):
        with ServerThread(socket_path, backend=server_backend) as server:
            holder = connect_raw(socket_path)
            clients = [connect_raw(socket_path) for _ in range(waiters_per_round)]
            try:
                assert exchange(*holder, [1, "acquire", "k", "L", b"holder", None]) == [
                    [1, 0, None]
                ]
                for index, client in enumerate(clients):  # in line, each one confirmed
                    token = f"waiter{index}".encode()
                    assert exchange(
                        *client, [1, "acquire", "k", "L", token, None], [2, "ping"]
                    ) == [[2, 0, None]]
                server.stop()
                for sock, unpacker in [holder, *clients]:
                    frames = read_frames(sock, unpacker, until_eof=True)
                    if frames != [GOODBYE]:
                        late.append(frames)
            finally:
                for sock, _ in [holder, *clients]:
                    sock.close()
    assert not late, f"{len(late)} connections got frames around the goodbye: {late[:3]}"


def readable_bytes(sock: socket.socket) -> int:
    count: int = struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.FIONREAD, b"\0" * 4))[0]
    return count


def test_a_client_slow_to_read_still_gets_the_goodbye(
    socket_path: str, server_backend: str
) -> None:
    """The stop gives every connection FAREWELL_SECONDS (1 s) to take its last words. A client
    that reads, but slowly (64 KiB every 10 ms: a 2 MB answer in about 0.3 s), gets the answer
    the server was sending when it stopped, then the goodbye."""
    value = "x" * 2_000_000  # more than the socket buffers hold: the server's send blocks
    with ServerThread(socket_path, backend=server_backend) as server:
        with Namespace(socket_path, "k") as ns:
            ns.big = value
        sock, unpacker = connect_raw(socket_path)
        with sock:
            sock.sendall(msgpack.packb([1, "get", "k", "big"]))
            wait_until(lambda: readable_bytes(sock) > 0, "the answer is being sent")
            stopping = threading.Thread(target=server.stop)
            stopping.start()
            frames: list[Any] = []
            deadline = time.monotonic() + NO_HANG_SECONDS
            while time.monotonic() < deadline:  # a slow reader, bounded
                data = sock.recv(65536)
                if not data:
                    break
                unpacker.feed(data)
                frames.extend(unpacker)
                time.sleep(0.01)
            stopping.join(NO_HANG_SECONDS)
    assert [frame[:2] for frame in frames] == [[1, 0], [0, 1]], (
        f"got {[frame[:2] for frame in frames]}: the answer or the goodbye was cut off"
    )
    assert frames[1] == GOODBYE


def goodbye_then_grant(request: list[Any]) -> bytes:
    """A server that breaks the protocol: the goodbye, then an answer to the request."""
    return pack(GOODBYE) + pack([request[0], 0, None])


def test_sync_proxy_ignores_a_reply_behind_the_goodbye(socket_path: str) -> None:
    ns = Namespace(socket_path, "board", retry=Retry(attempts=1))
    with fake_server(socket_path, goodbye_then_grant):
        with pytest.raises(ConnectionLost, match="shutting down"):
            ns._ping()
    ns._close()


@pytest.mark.anyio
async def test_async_proxy_ignores_a_reply_behind_the_goodbye(socket_path: str) -> None:
    ns = AsyncNamespace(socket_path, "board", retry=Retry(attempts=1))
    with fake_server(socket_path, goodbye_then_grant):
        with (
            anyio.fail_after(NO_HANG_SECONDS),
            pytest.raises(ConnectionLost, match="shutting down"),
        ):
            await ns._ping()
        await ns._close()
