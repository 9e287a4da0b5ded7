"""Telling a server that left or froze from one that is merely slow, at no cost to a fast call.

Two questions, asked only off the hot path:

* **Did the server leave while the connection sat idle?** A server that restarted closed it
  (an end of stream, a reset, or its goodbye frame waits in the socket), and a request written
  to it is lost although it never reached any server. Before sending on a connection unused
  for ``IDLE_CHECK_SECONDS``, a transport looks (one non-blocking read); if the server left, the
  request has not left either: ``ConnectionLost`` with ``request_sent`` false, which the
  proxies' ``Retry`` sends again on a new connection. A busy connection is never checked.
* **Is a silent server frozen?** A server that sends nothing for ``Limits.call_timeout``
  seconds while a call waits is taken for frozen (SIGSTOP, swapped out, a network partition
  without a reset): ``ServerTimeout``, and the connection is closed. A call that may wait for
  any time (``WAITS``: a lock wait; and a watch's wait for its next event) is not cut: after
  ``call_timeout`` of silence the transport sends a ``ping`` on the same connection, and an
  answer shows the server alive, so the wait goes on; no answer within ``call_timeout`` is a
  ``ServerTimeout``.

The sync transport arms nothing per call: a plain socket carries the timeout in the kernel
(``SO_RCVTIMEO``, ``SO_SNDTIMEO``, set once per connection), so a blocking ``recv`` simply
fails with ``EAGAIN`` after that long without a byte. TCP sockets also get keepalive, so that
a peer that vanished from the network is noticed by the kernel even when nobody calls.
"""

from __future__ import annotations

import socket
import ssl
import struct
import sys
from typing import Any

from .._errors import ConnectionLost, ServerTimeout
from ..protocol.limits import Limits

__all__ = [
    "CALL_TIMEOUTS",
    "IDLE_CHECK_SECONDS",
    "WAITS",
    "enable_keepalive",
    "handshake_timeout",
    "left_while_idle",
    "peek",
    "server_timeout",
    "set_call_timeout",
]

#: A connection unused for this long is checked before a request is sent on it (one
#: non-blocking read): a busy client never pays for it.
IDLE_CHECK_SECONDS = 0.001

#: Operations whose reply may take any time (the server defers it): a silent server is asked
#: whether it is alive (``ping``) rather than taken for frozen.
WAITS = frozenset({"acquire"})

#: What a socket raises when its timeout expires: a plain one with ``SO_RCVTIMEO`` fails with
#: EAGAIN (BlockingIOError), one timed by Python (TLS, a loopback end) with TimeoutError.
CALL_TIMEOUTS = (TimeoutError, BlockingIOError)

#: TCP keepalive on every client socket (and the server's): the first probe after this many
#: idle seconds, then one every ``KEEPALIVE_INTERVAL``; after ``KEEPALIVE_PROBES`` unanswered,
#: the kernel resets the connection.
KEEPALIVE_IDLE = 30
KEEPALIVE_INTERVAL = 10
KEEPALIVE_PROBES = 3


def enable_keepalive(sock: socket.socket) -> None:
    """Turn TCP keepalive on, with the timings above where the platform lets us set them."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for option, value in (
        ("TCP_KEEPIDLE", KEEPALIVE_IDLE),
        ("TCP_KEEPINTVL", KEEPALIVE_INTERVAL),
        ("TCP_KEEPCNT", KEEPALIVE_PROBES),
    ):
        number = getattr(socket, option, None)
        if number is not None:
            try:
                sock.setsockopt(socket.IPPROTO_TCP, number, value)
            except OSError:  # pragma: no cover - a platform that refuses one
                pass


def handshake_timeout(limits: Limits) -> float:
    """How long a proxy waits for its server's greeting: ``handshake_timeout``, or less, if
    ``call_timeout`` is shorter (a server silent that long is taken for frozen)."""
    if limits.call_timeout is None:
        return limits.handshake_timeout
    return min(limits.handshake_timeout, limits.call_timeout)


def set_call_timeout(sock: Any, timeout: float) -> bool:
    """Bound every blocking send and receive on ``sock`` by ``timeout`` seconds: in the
    kernel for a plain socket (no system call per operation); else (TLS, whose reads would
    retry an EAGAIN for ever, or a loopback end) by Python's ``settimeout``. Whether it was
    Python's (the socket then keeps that timeout, which a caller restores after changing)."""
    if type(sock) is socket.socket and sys.platform != "win32":
        seconds = int(timeout)
        interval = struct.pack("@ll", seconds, int((timeout - seconds) * 1_000_000))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, interval)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, interval)
        return False
    sock.settimeout(timeout)
    return True


def server_timeout(address: object, timeout: float | None, request_sent: bool) -> ServerTimeout:
    """The error for a server that sent nothing for ``timeout`` seconds while a call waited."""
    error = ServerTimeout(
        f"the aionamespace server at {address!r} sent nothing for {timeout} seconds while a "
        "call waited for it (Limits.call_timeout): it is frozen or cut off; the connection "
        "was closed"
    )
    error.request_sent = request_sent
    return error


def left_while_idle(address: object, why: str) -> ConnectionLost:
    """The error for a request not sent: the server had left the idle connection."""
    error = ConnectionLost(
        f"the aionamespace server at {address!r} had closed the connection while it was idle "
        f"({why}); the request was not sent"
    )
    error.request_sent = False
    return error


def peek(sock: Any, buffer: memoryview, timeout: float | None) -> int | str | None:
    """One non-blocking read on an idle connection: how many bytes came (the server said
    something: its goodbye?), why the connection is over (a ``str``), or None: nothing."""
    try:
        if type(sock) is socket.socket:
            received: int = sock.recv_into(buffer, 0, socket.MSG_DONTWAIT)
        else:  # TLS: no flags; Python's non-blocking mode instead
            sock.settimeout(0.0)
            try:
                received = sock.recv_into(buffer)
            finally:
                sock.settimeout(timeout)
    except (BlockingIOError, ssl.SSLWantReadError):
        return None
    except OSError as exc:
        return str(exc) or type(exc).__name__
    return received or "it closed the connection"
