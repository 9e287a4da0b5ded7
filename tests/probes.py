"""What the tests share with benchmarks/reliability.py: a CLI server process, and probes for
states that no event announces.

A server started by ``python -m aionamespace serve``; a sync proxy blocked reading its reply, a
condition polled with a bound, the frames a raw socket reads. The reliability script imports
this module too (it puts ``tests/`` on its path), so it needs nothing but aionamespace's own
dependencies: no pytest here.
"""

from __future__ import annotations

import selectors
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import anyio
import msgpack

__all__ = ["NO_HANG_SECONDS", "ServeProcess", "async_wait_until", "blocked_reading", "read_frames",
           "request_waiting", "wait_until"]

NO_HANG_SECONDS = 10.0  # the bound that turns a hang into a failure instead of a stuck suite
POLL_SECONDS = 0.005


class ServeProcess:
    """``python -m aionamespace serve --unix PATH`` in a subprocess, ready once it says so."""

    def __init__(self, path: str, backend: str = "asyncio", *options: str) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "aionamespace", "serve", "--unix", path,
             "--backend", backend, *options],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        assert self.process.stdout is not None
        with selectors.DefaultSelector() as selector:
            selector.register(self.process.stdout, selectors.EVENT_READ)
            ready = selector.select(NO_HANG_SECONDS)
        line = self.process.stdout.readline().decode() if ready else ""
        if "serving on" not in line:
            self.kill()
            # Not pytest.fail: servers are also started from helper threads.
            raise RuntimeError(f"the server did not start: {line!r}")

    def memory(self) -> dict[str, int]:
        """VmRSS and VmHWM (peak RSS) of the server process, in bytes (Linux)."""
        sizes = {}
        with open(f"/proc/{self.process.pid}/status") as status:
            for line in status:
                field, _, value = line.partition(":")
                if field in ("VmRSS", "VmHWM"):
                    sizes[field] = int(value.split()[0]) * 1024
        return sizes

    def kill(self) -> float:
        """SIGKILL and reap it; return when it was killed."""
        killed_at = time.monotonic()
        self.close()
        return killed_at

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=NO_HANG_SECONDS)
        assert self.process.stdout is not None
        self.process.stdout.close()


def blocked_reading(thread: threading.Thread, function: str) -> bool:
    """Whether a sync proxy's ``thread`` is blocked reading its socket inside ``function``: in
    a call whose request is sent (SocketTransport.call reads its reply itself), or in
    SocketTransport.receive (a watch's next event, a reply read the long way)."""
    frame = sys._current_frames().get(thread.ident or -1)
    names = set()
    reading = False
    while frame is not None:
        names.add(frame.f_code.co_name)
        if frame.f_code.co_name == "call" and frame.f_locals.get("sent") is True:
            reading = True
        frame = frame.f_back
    return (reading or "receive" in names) and function in names


def request_waiting(ns: Any, count: int = 1) -> Callable[[], bool]:
    """Whether an AsyncNamespace has ``count`` tasks waiting for replies to requests already
    sent (on any transport: every request's waiter is found by its id)."""
    state = ns._aionamespace

    def check() -> bool:
        table = state.table
        return (len(table.waiters) >= count and not table.outbox
                and state.transport.link is not None)

    return check


def wait_until(condition: Callable[[], bool], what: str,
               seconds: float = NO_HANG_SECONDS) -> None:
    """Poll ``condition`` for at most ``seconds``; TimeoutError naming ``what``."""
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting until {what}")
        time.sleep(POLL_SECONDS)


async def async_wait_until(condition: Callable[[], bool], what: str,
                           seconds: float = NO_HANG_SECONDS) -> None:
    """``wait_until`` for async code (the proxy state polled is not announced by any event)."""
    with anyio.move_on_after(seconds):
        while not condition():  # noqa: ASYNC110 - proxy state that no event announces
            await anyio.sleep(POLL_SECONDS)
        return
    raise TimeoutError(f"timed out waiting until {what}")


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
