"""A burst of connects: many processes starting at once connect while the server is busy.

The kernel queues connects the server has not accepted yet, up to its listen backlog. The
server asks for LISTEN_BACKLOG (asyncio used to listen again with its own 100), and an async
proxy whose Unix connect finds the backlog full (EAGAIN) tries again until its deadline: before,
``loop.sock_connect`` took EAGAIN for a connect in progress and handed back an unconnected
socket, and the proxy failed with "[Errno 107] Transport endpoint is not connected" (1,000
connects from 8 processes lost about 5% of them so).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import signal
import socket
import time

import msgpack
import pytest

from aionamespace.client import asyncio_transport
from aionamespace.client.blocking import open_socket
from aionamespace.protocol.events import PROTOCOL_VERSION
from deadlines import NO_HANG_SECONDS
from raw_client import hello_frame, read_frames
from server_processes import ServeProcess

#: More than asyncio's default backlog (100), well under LISTEN_BACKLOG (and somaxconn).
BURST = 300


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_a_busy_server_queues_a_burst_of_connects(backend: str, short_tmp: str) -> None:
    """The server is stopped (SIGSTOP: as busy as can be) while BURST clients connect: the
    kernel queues every connect, none is refused; resumed, the server greets them all."""
    server = ServeProcess(os.path.join(short_tmp, "s"), backend)
    sockets: list[socket.socket] = []
    try:
        os.kill(server.process.pid, signal.SIGSTOP)
        try:
            for _ in range(BURST):
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                sockets.append(sock)
                sock.setblocking(False)
                sock.connect(str(server.address))  # BlockingIOError: the backlog is full
        finally:
            os.kill(server.process.pid, signal.SIGCONT)
        for sock in sockets:
            sock.settimeout(NO_HANG_SECONDS)
            sock.sendall(hello_frame())
            (hello,) = read_frames(sock, msgpack.Unpacker(raw=False), until_eof=False)
            assert hello["version"] == PROTOCOL_VERSION
    finally:
        for sock in sockets:
            sock.close()
        server.close()


def test_an_async_proxy_connects_once_a_full_backlog_has_room(short_tmp: str) -> None:
    """A listener that accepts nothing yet, with a backlog of one: connects past it find the
    backlog full. Each still ends connected once the listener accepts, not with ENOTCONN."""
    path = os.path.join(short_tmp, "backlog")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(1)
    listener.setblocking(False)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        connecting = [asyncio.create_task(asyncio_transport._connect(loop, path)) for _ in range(6)]
        accepted = []
        while len(accepted) < len(connecting):
            sock, _ = await asyncio.wait_for(loop.sock_accept(listener), NO_HANG_SECONDS)
            accepted.append(sock)
        connected = await asyncio.wait_for(asyncio.gather(*connecting), NO_HANG_SECONDS)
        for sock in connected:
            assert sock.getpeername() == path  # connected (ENOTCONN before)
            sock.close()
        for sock in accepted:
            sock.close()

    try:
        asyncio.run(main())
    finally:
        listener.close()


def test_a_sync_proxy_connects_once_a_full_backlog_has_room(short_tmp: str) -> None:
    """The sync proxy's socket has a timeout (the handshake's bound), so a connect past a
    full backlog fails at once with EAGAIN rather than waiting in the kernel: it is tried
    again until the listener accepts (BlockingIOError before)."""
    path = os.path.join(short_tmp, "backlog")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(1)
    listener.settimeout(NO_HANG_SECONDS)
    accepted: list[socket.socket] = []
    try:
        with concurrent.futures.ThreadPoolExecutor(6) as pool:
            connecting = [pool.submit(open_socket, path, None, NO_HANG_SECONDS) for _ in range(6)]
            accepted.extend(listener.accept()[0] for _ in connecting)
            for future in connecting:
                sock = future.result(timeout=NO_HANG_SECONDS)
                assert sock.getpeername() == path
                sock.close()
    finally:
        for sock in accepted:
            sock.close()
        listener.close()


def test_a_backlog_that_stays_full_fails_the_sync_connect_within_its_timeout(
    short_tmp: str,
) -> None:
    path = os.path.join(short_tmp, "full")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(0)
    queued = []
    try:
        while True:  # fill the backlog (nothing is ever accepted)
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.setblocking(False)
            queued.append(sock)
            sock.connect(path)
    except BlockingIOError:
        pass
    try:
        began = time.monotonic()
        with pytest.raises(TimeoutError, match="listen backlog stayed full"):
            open_socket(path, None, 0.2)
        assert time.monotonic() - began < NO_HANG_SECONDS
    finally:
        for sock in queued:
            sock.close()
        listener.close()
