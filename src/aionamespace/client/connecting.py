"""Opening a proxy's socket, and connecting a Unix socket whose server's listen backlog is full.

``open_socket`` is the sync proxy's: TCP (``TCP_NODELAY``, keepalive) or Unix, TLS if asked.
A Unix connect is never "in progress", as a TCP one is: it is done at once, or, when the
server has not accepted the connects queued before it and its listen backlog is full, it fails
with EAGAIN (``BlockingIOError``). A blocking socket waits in the kernel for room; one with a
timeout (the sync proxy's, bounded by the handshake's deadline) or a non-blocking one (the
async proxy's) does not, and ``loop.sock_connect`` takes EAGAIN for a connect in progress: it
returns once the socket is writable, which an unconnected Unix socket is at once, and the first
read failed with ENOTCONN ("[Errno 107] Transport endpoint is not connected"). So both proxies
try again, with a short backoff, while the server accepts: a burst of connects (a pool of
processes starting at once) waits for room instead of failing. The caller's deadline bounds it.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import time
from collections.abc import Callable, Iterator
from typing import Any

from ..protocol.addresses import Address
from ..protocol.connection import ClientConnection
from .liveness import enable_keepalive

__all__ = ["connect_unix", "connect_unix_async", "handshake", "open_socket"]

#: The first wait before trying a refused connect again; it doubles up to the second.
RETRY_SECONDS = 0.001
MAX_RETRY_SECONDS = 0.05


def _retry_delays() -> Iterator[float]:
    """The waits between connects the full backlog refused: doubling, up to the most."""
    delay = RETRY_SECONDS
    while True:
        yield delay
        delay = min(2 * delay, MAX_RETRY_SECONDS)


def connect_unix(sock: socket.socket, path: str, timeout: float | None) -> None:
    """``sock.connect(path)``, tried again while the backlog is full, for up to ``timeout``
    seconds (``TimeoutError`` then)."""
    deadline = None if timeout is None else time.monotonic() + timeout
    for delay in _retry_delays():
        try:
            sock.connect(path)
            return
        except BlockingIOError:
            if deadline is not None and time.monotonic() + delay > deadline:
                raise TimeoutError(
                    f"the server's listen backlog stayed full for {timeout} s"
                ) from None
            time.sleep(delay)


async def connect_unix_async(sock: socket.socket, path: str) -> None:
    """``connect_unix`` for a non-blocking socket on asyncio (the caller's deadline bounds
    it)."""
    for delay in _retry_delays():
        try:
            sock.connect(path)
            return
        except BlockingIOError:
            await asyncio.sleep(delay)


def open_socket(
    address: Address, ssl_context: ssl.SSLContext | None = None, timeout: float | None = None
) -> socket.socket:
    """A connected socket (TCP_NODELAY for TCP: every frame is a whole message), with
    ``timeout`` on its operations until the caller lifts it (the handshake's bound)."""
    if isinstance(address, tuple):
        sock = socket.create_connection(address, timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        enable_keepalive(sock)
    else:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        try:
            connect_unix(sock, address, timeout)
        except BaseException:
            sock.close()
            raise
    if ssl_context is None:
        return sock
    hostname = address[0] if isinstance(address, tuple) else None
    try:
        return ssl_context.wrap_socket(sock, server_hostname=hostname)
    except BaseException:
        sock.close()
        raise


def handshake(
    sock: Any, protocol: ClientConnection, buffer: memoryview, events: Callable[[int], Any]
) -> None:
    """``protocol``'s handshake over the blocking socket ``sock`` just opened: what is read
    goes into ``buffer``, and ``events(received)`` takes it (ConnectionLost on 0)."""
    try:
        sock.sendall(protocol.start())
    except OSError:
        _read_refusal(sock, protocol, buffer)  # a server refusing us at once may have said why
        raise
    while not protocol.greeted:
        events(sock.recv_into(buffer))
    reply = protocol.handshake_reply()
    if reply:
        sock.sendall(reply)


def _read_refusal(sock: Any, protocol: ClientConnection, buffer: memoryview) -> None:
    """Raise the reason a refusing server sent before closing, if it is there to read."""
    sock.settimeout(1.0)
    try:
        received = sock.recv_into(buffer)
    except OSError:
        return  # nothing readable: the caller raises its own error
    finally:
        sock.settimeout(None)
    protocol.receive_data(buffer[:received])  # a refusal raises its reason
