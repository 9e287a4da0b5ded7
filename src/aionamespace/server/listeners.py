"""Listening sockets: a Unix path (mode 0600, never stealing a live server's) or TCP.

``make_listening_socket`` binds the socket a ``Server`` serves on; on trio (and any anyio
backend), TLS goes through ``TLSListener``, whose failed handshakes are the client's problem.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import socket
import stat

import anyio
import anyio.abc
from anyio.streams.tls import TLSListener as _AnyioTLSListener

from ..protocol.addresses import Address

__all__ = ["TLSListener", "make_listening_socket"]

logger = logging.getLogger("aionamespace.server")


class TLSListener(_AnyioTLSListener):
    """anyio's TLS listener, but a client failing its TLS handshake is logged at debug level:
    it is the client's problem, not the server's (asyncio's transports do the same)."""

    @staticmethod
    async def handle_handshake_error(
        exc: BaseException,
        stream: anyio.abc.AnyByteStream,
    ) -> None:
        await anyio.aclose_forcefully(stream)
        if not isinstance(exc, Exception) or isinstance(exc, anyio.get_cancelled_exc_class()):
            raise exc
        logger.debug("TLS handshake failed: %r", exc)


#: Connections the kernel queues for the server to accept (capped by net.core.somaxconn): a
#: burst of connects from many processes (a pool starting) waits there rather than being
#: refused while the loop is busy.
LISTEN_BACKLOG = 4096


def make_listening_socket(
    address: Address,
    backlog: int = LISTEN_BACKLOG,
) -> tuple[socket.socket, Address]:
    """A bound, listening socket; Unix sockets get mode 0600 and replace a stale socket file."""
    if isinstance(address, tuple):
        host, port = address
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.create_server((host, port), family=family, backlog=backlog)
        _keepalive(sock)  # accepted sockets inherit it (Linux, BSDs)
        return sock, (host, sock.getsockname()[1])
    _remove_stale_socket(address)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(address)
        os.chmod(address, 0o600)
        sock.listen(backlog)
    except BaseException:
        sock.close()
        raise
    return sock, address


def _keepalive(sock: socket.socket) -> None:
    """TCP keepalive: a client that vanished from the network (no reset) is dropped by the
    kernel after about a minute idle, and its locks pass on (the client side's twin is in
    client/liveness.py: first probe after 30 s, then every 10 s, 3 unanswered)."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for option, value in (("TCP_KEEPIDLE", 30), ("TCP_KEEPINTVL", 10), ("TCP_KEEPCNT", 3)):
        number = getattr(socket, option, None)
        if number is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, number, value)


def _remove_stale_socket(path: str) -> None:
    """Unlink a socket file left by a server that died; refuse one a live server listens on."""
    try:
        if not stat.S_ISSOCK(os.stat(path).st_mode):
            return  # not a socket: let bind() fail with EADDRINUSE rather than delete a file
    except FileNotFoundError:
        return
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(path)
        except (ConnectionRefusedError, FileNotFoundError):
            os.unlink(path)  # nobody listens: stale
            return
    raise OSError(errno.EADDRINUSE, f"a server is already listening on {path}")
