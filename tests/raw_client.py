"""A client on a raw socket, below any proxy: the frames the server sends, as they arrive.

The reliability script imports this module too (it puts ``tests/`` on its path), so it needs
nothing but aionamespace's own dependencies: no pytest here.
"""

from __future__ import annotations

import socket
from typing import Any

import msgpack

__all__ = ["read_frames"]


def read_frames(sock: socket.socket, unpacker: msgpack.Unpacker, until_eof: bool) -> list[Any]:
    """The frames of the next read(s) until one is complete, or (``until_eof``) all of them."""
    frames: list[Any] = []
    while True:
        data = sock.recv(65536)
        if not data:
            return frames
        unpacker.feed(data)
        frames.extend(unpacker)
        if frames and not until_eof:
            return frames
