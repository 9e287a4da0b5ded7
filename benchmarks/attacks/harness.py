"""What every attack needs: a real server process to attack, and instruments to read it.

``ServerProcess`` is ``python -m aionamespace serve --unix PATH --backend B`` (optionally with
``AIONAMESPACE_AUTHKEY``), or, when an attack needs other ``Limits`` than the defaults (which
``serve`` cannot be given), the same ``Server`` run by ``limited_server.py`` in a process of its
own. Its memory (VmRSS, VmHWM from /proc/PID/status) and CPU time (utime + stime from
/proc/PID/stat) are read, never estimated. ``Sampler`` follows its RSS while an attack runs;
``Innocent`` is a client doing gets meanwhile, noting how long each took.
"""

from __future__ import annotations

import contextlib
import json
import os
import selectors
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgpack

MIB = 1024 * 1024
KIB = 1024
NO_HANG = 30.0  # any single wait longer than this is a failure, not a hang
HELLO = msgpack.packb({"protocol": "aionamespace", "version": 1})
LIMITED_SERVER = Path(__file__).resolve().parent / "limited_server.py"


class ServerProcess:
    """A server in a process of its own, on a Unix socket, ready once it says so."""

    def __init__(
        self,
        path: str,
        backend: str,
        authkey: bytes | None = None,
        limits: dict[str, Any] | None = None,
    ) -> None:
        self.path = path
        env = dict(os.environ)
        env.pop("AIONAMESPACE_AUTHKEY", None)
        if limits is None:
            command = ["-m", "aionamespace", "serve", "--unix", path, "--backend", backend]
            if authkey is not None:
                env["AIONAMESPACE_AUTHKEY"] = authkey.decode()
        else:
            key = authkey.decode() if authkey is not None else ""
            command = [str(LIMITED_SERVER), path, backend, json.dumps(limits), key]
        self.process = subprocess.Popen(
            [sys.executable, *command],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env=env,
        )
        assert self.process.stdout is not None
        with selectors.DefaultSelector() as selector:
            selector.register(self.process.stdout, selectors.EVENT_READ)
            ready = selector.select(NO_HANG)
        line = self.process.stdout.readline().decode() if ready else ""
        if "serving on" not in line:
            self.close()
            raise RuntimeError(f"the server did not start: {line!r}")

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def status(self) -> dict[str, int]:
        """VmRSS and VmHWM (peak RSS) of the server process, in bytes."""
        sizes = {}
        with open(f"/proc/{self.pid}/status") as status:
            for line in status:
                field, _, value = line.partition(":")
                if field in ("VmRSS", "VmHWM"):
                    sizes[field] = int(value.split()[0]) * 1024
        return sizes

    def rss(self) -> int:
        return self.status()["VmRSS"]

    def cpu_seconds(self) -> float:
        """User and system CPU time of the server so far (/proc/PID/stat)."""
        with open(f"/proc/{self.pid}/stat") as stat:
            fields = stat.read().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=NO_HANG)
        if self.process.stdout is not None:
            self.process.stdout.close()


@contextlib.contextmanager
def served(
    backend: str, authkey: bytes | None = None, limits: dict[str, Any] | None = None
) -> Iterator[ServerProcess]:
    """A fresh server process in a private directory, killed at the end."""
    tmp = tempfile.mkdtemp(prefix="ans-atk-")
    server: ServerProcess | None = None
    try:
        server = ServerProcess(os.path.join(tmp, "s.sock"), backend, authkey, limits)
        yield server
    finally:
        if server is not None:
            server.close()
        shutil.rmtree(tmp, ignore_errors=True)


class Sampler:
    """The server's RSS, sampled every 20 ms in a thread while in use: its peak growth over
    the RSS at entry, and the growth of its VmHWM (the kernel's own peak, which catches what
    a sample misses)."""

    def __init__(self, server: ServerProcess) -> None:
        self.server = server
        self.before = server.status()
        self.peak = self.before["VmRSS"]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(OSError):
                self.peak = max(self.peak, self.server.rss())
            self._stop.wait(0.02)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join(NO_HANG)

    def growth(self) -> int:
        """Peak growth so far: the larger of the sampled RSS and the kernel's VmHWM."""
        now = self.server.status()
        self.peak = max(self.peak, now["VmRSS"])
        return max(self.peak - self.before["VmRSS"], now["VmHWM"] - self.before["VmHWM"])


def raw_connect(path: str, authkey: bytes | None = None) -> tuple[socket.socket, Any]:
    """A raw client past its handshake (hello, and the proof with an authkey)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(path)  # blocking: waits for room in the accept queue
    sock.settimeout(NO_HANG)
    unpacker = msgpack.Unpacker(raw=False, strict_map_key=False)
    if authkey is None:
        sock.sendall(HELLO)
        hello = next_frame(sock, unpacker)
        if "error" in hello:
            raise RuntimeError(f"refused: {hello['error']}")
        return sock, unpacker
    from aionamespace.protocol.connection import ClientConnection

    client = ClientConnection(authkey=authkey)
    sock.sendall(client.start())
    while not client.greeted:
        data = sock.recv(65536)
        if not data:
            raise RuntimeError("refused before the hello")
        client.receive_data(data)
    sock.sendall(client.handshake_reply())
    return sock, unpacker


def next_frame(sock: socket.socket, unpacker: Any) -> Any:
    """The next frame the server sends (ConnectionError if it closes first)."""
    while True:
        for frame in unpacker:
            return frame
        data = sock.recv(1 << 20)
        if not data:
            raise ConnectionError("the server closed the connection")
        unpacker.feed(data)


def call(sock: socket.socket, unpacker: Any, *request: Any) -> Any:
    """Send one request; its reply frame (pushes before it are skipped)."""
    sock.sendall(msgpack.packb(list(request)))
    while True:
        frame = next_frame(sock, unpacker)
        if frame[0] == request[0]:
            return frame


def blast(sock: socket.socket, data: bytes, seconds: float = 1.0) -> int:
    """Send as much of ``data`` as the server reads within ``seconds`` (it stops reading a
    client that does not read); how many bytes went."""
    sock.settimeout(seconds)
    sent = 0
    try:
        while sent < len(data):
            sent += sock.send(data[sent : sent + MIB])
    except (TimeoutError, BlockingIOError):
        pass
    finally:
        sock.settimeout(NO_HANG)
    return sent


class Innocent:
    """A client with nothing to do with the attack: gets of a small value in a loop, in a
    thread, noting each round trip. ``stall`` is the slowest one seen."""

    def __init__(self, path: str, authkey: bytes | None = None) -> None:
        self.sock, self.unpacker = raw_connect(path, authkey)
        assert call(self.sock, self.unpacker, 1, "set", "innocent", "x", b"\x01")[1] == 0
        self.latencies: list[float] = []
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        request_id = 1
        try:
            while not self._stop.is_set():
                request_id += 1
                started = time.perf_counter()
                reply = call(self.sock, self.unpacker, request_id, "get", "innocent", "x")
                self.latencies.append(time.perf_counter() - started)
                if reply != [request_id, 0, b"\x01"]:
                    self.errors.append(repr(reply))
                    return
                time.sleep(0.001)
        except OSError as exc:
            self.errors.append(repr(exc))

    def __enter__(self) -> Innocent:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join(NO_HANG)
        self.sock.close()

    def wait_for_gets(self, count: int = 5) -> None:
        """Until ``count`` more gets were answered (so a stall in progress is seen whole)."""
        target = len(self.latencies) + count
        deadline = time.monotonic() + NO_HANG
        while len(self.latencies) < target and not self.errors:
            if time.monotonic() > deadline:
                self.errors.append(f"no get answered for {NO_HANG} s")
                return
            time.sleep(0.005)

    @property
    def stall(self) -> float:
        return max(self.latencies, default=float("nan"))


def mib(size: float) -> str:
    return f"{size / MIB:,.1f} MiB"


def ms(seconds: float) -> str:
    return f"{seconds * 1000:,.1f} ms"
