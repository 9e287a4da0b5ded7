"""A sync get of large ``bytes``, received by the kernel straight into the ``bytes`` returned.

A large value otherwise reaches the caller through two copies besides the kernel's: into the
transport's buffer (``ClientConnection.large_value``), then out of it into the ``bytes`` that
decoding makes. Here, when the previous get of the same name on this transport returned such
bytes, the first read takes only the reply's head (``frames.bytes_reply_head``); if that is
the head of a reply carrying bytes, the value is read with ``recv(size, MSG_WAITALL)``, which
allocates the ``bytes`` and has the kernel copy the value into it: no copy of ours. Any other
reply leaves what was read to the usual path (the head is a prefix of it), and the guess is
dropped. Only plain sockets (``recv`` flags) and only between frames (nothing half-read).
"""

from __future__ import annotations

import socket
from typing import Any

from .._errors import ConnectionLost
from ..protocol.frames import (
    LARGE_VALUE_BYTES,
    bytes_head_coming,
    bytes_reply_head,
    bytes_reply_size,
)

__all__ = ["LargeGets", "receive_exactly"]

_WAITALL = getattr(socket, "MSG_WAITALL", 0)


class LargeGets:
    """The get (its ``(key, name)``) whose last reply on a transport was large bytes."""

    __slots__ = ("address", "args", "enabled")

    def __init__(self, enabled: bool, address: Any) -> None:
        self.enabled = enabled and _WAITALL != 0
        self.address = address  # (the server's, for a ConnectionLost)
        self.args: tuple[Any, ...] | None = None

    def head(self, args: tuple[Any, ...], request_id: int, between_frames: bool) -> int:
        """How much of the reply to read first: the head of a large bytes reply when the last
        get of ``args`` returned one and no frame is half-read; 0 for the usual read."""
        if args == self.args and between_frames:
            return bytes_reply_head(request_id)
        return 0

    def receive(
        self, sock: socket.socket, head: memoryview, received: int, request_id: int, limit: int
    ) -> tuple[bytes | None, int]:
        """``received`` bytes of ``head`` were read: the value and -1 if they begin a reply
        carrying large bytes (the rest of its head is read first, then the value); else None
        and how many bytes of ``head`` hold the start of another reply, to be read as usual."""
        while received < len(head) and bytes_head_coming(head[:received], request_id):
            more = sock.recv_into(head[received:])
            if not more:
                return None, received  # (the usual path finds the connection closed)
            received += more
        size = bytes_reply_size(head[:received], request_id, limit)
        return (receive_exactly(sock, size, self.address), -1) if size else (None, received)

    def learn(self, args: tuple[Any, ...], value: Any) -> None:
        """A get of ``args`` returned ``value`` through the usual path."""
        large = self.enabled and type(value) is bytes and len(value) >= LARGE_VALUE_BYTES
        self.args = args if large else None


def receive_exactly(sock: socket.socket, size: int, address: Any) -> bytes:
    """``size`` bytes from ``sock`` as one new ``bytes``, written there by the kernel (pieces
    joined only if a read was cut short: a signal, or the call timeout of one read)."""
    data = sock.recv(size, _WAITALL)
    if len(data) == size:
        return data
    pieces, got = [data], len(data)
    while data and got < size:
        data = sock.recv(size - got, _WAITALL)
        pieces.append(data)
        got += len(data)
    if got < size:
        raise ConnectionLost(f"the aionamespace server at {address!r} closed the connection")
    return b"".join(pieces)
