"""A server that dies right after receiving a request: what a client sees of a crash between
taking a request and answering it.

``FakeServer`` greets, reads one request, records it, sends its ``last_words`` (nothing, by
default) and closes without answering; ``fake_server`` runs one for the length of a ``with``.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
from collections.abc import Callable, Iterator
from typing import Any

import msgpack

from aionamespace.protocol.connection import PROTOCOL_NAME, PROTOCOL_VERSION
from deadlines import NO_HANG_SECONDS


class FakeServer(threading.Thread):
    """A raw socket server that greets, reads one request, and closes without answering: what
    a client sees of a server that dies right after receiving its request. ``last_words``
    makes the bytes it sends (given the request) before closing."""

    def __init__(
        self, path: str, last_words: Callable[[list[Any]], bytes] = lambda request: b""
    ) -> None:
        super().__init__(name="fake-server")
        self.last_words = last_words
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(path)
        self.listener.listen(16)
        self.listener.settimeout(0.02)  # accept() polls the stop flag (bounded loop)
        self.path = path
        self.requests: list[list[Any]] = []
        self.connections = 0
        self.stopping = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            while not self.stopping.is_set():
                try:
                    conn, _ = self.listener.accept()
                except TimeoutError:
                    continue
                with conn:
                    self.connections += 1
                    self._serve_one(conn)
        except BaseException as exc:  # reported by stop()
            self.error = exc

    def _serve_one(self, conn: socket.socket) -> None:
        conn.settimeout(NO_HANG_SECONDS)
        unpacker = msgpack.Unpacker(raw=False)
        frames = self._read(conn, unpacker)  # the client's hello
        if not frames:
            return
        conn.sendall(
            msgpack.packb(
                {
                    "protocol": PROTOCOL_NAME,
                    "version": PROTOCOL_VERSION,
                    "max_frame_bytes": 64 * 1024 * 1024,
                }
            )
        )
        requests = frames[1:] or self._read(conn, unpacker)
        if requests:
            self.requests.append(requests[0])
            conn.sendall(self.last_words(requests[0]))
        # Then close: the request arrived, its reply never will.

    @staticmethod
    def _read(conn: socket.socket, unpacker: msgpack.Unpacker) -> list[Any]:
        """Read until at least one whole frame has arrived ([] at EOF)."""
        while True:
            data = conn.recv(65536)
            if not data:
                return []
            unpacker.feed(data)
            frames = list(unpacker)
            if frames:
                return frames

    def stop(self) -> None:
        self.stopping.set()
        self.join(NO_HANG_SECONDS)
        self.listener.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
        if self.error is not None:
            raise self.error


@contextlib.contextmanager
def fake_server(
    path: str,
    last_words: Callable[[list[Any]], bytes] = lambda request: b"",
) -> Iterator[FakeServer]:
    fake = FakeServer(path, last_words)
    fake.start()
    try:
        yield fake
    finally:
        fake.stop()
