"""A client on a raw Unix socket, below any proxy: frames packed and sent by hand, and the frames
the server sends, as they arrive.

``connect_raw`` opens a connection past the hello; ``exchange`` sends requests in one write and
returns what comes back; ``read_frames`` reads the next frames, or all of them until the server
closes; ``GOODBYE`` is the last frame every connection gets when the server stops. The
reliability script imports this module too (it puts ``tests/`` on its path), so it needs
nothing but aionamespace's own dependencies: no pytest here.
"""

from __future__ import annotations

import socket
from typing import Any

import msgpack

from aionamespace.protocol.connection import PROTOCOL_NAME, PROTOCOL_VERSION
from deadlines import NO_HANG_SECONDS

__all__ = ["GOODBYE", "connect_raw", "exchange", "hello_frame", "pack", "read_frames"]

GOODBYE = [0, 1, "ConnectionLost", "the server is shutting down"]


def pack(frame: Any) -> bytes:
    packed: bytes = msgpack.packb(frame)
    return packed


def hello_frame() -> bytes:
    return pack({"protocol": PROTOCOL_NAME, "version": PROTOCOL_VERSION})


def connect_raw(path: str) -> tuple[socket.socket, msgpack.Unpacker]:
    """A raw client past the hello."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(path)
    sock.settimeout(NO_HANG_SECONDS)
    sock.sendall(hello_frame())
    unpacker = msgpack.Unpacker(raw=False)
    assert read_frames(sock, unpacker, until_eof=False)[0]["version"] == 1
    return sock, unpacker


def exchange(
    sock: socket.socket,
    unpacker: msgpack.Unpacker,
    *requests: list[Any],
) -> list[Any]:
    """Send requests in one write; return the frames of the next read(s) until one arrives."""
    sock.sendall(b"".join(msgpack.packb(request) for request in requests))
    return read_frames(sock, unpacker, until_eof=False)


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
