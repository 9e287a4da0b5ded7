"""redis-server processes for the tests (redis_rig.py builds servers and clusters of them).

``find_binary`` finds the binary, or skips the caller with a message saying how to get one
(a failure under ``AIONAMESPACE_REQUIRE_REDIS=1``, which CI sets). ``RedisProcess`` starts one
and knows when it is ready: a thread reads its log, so nothing polls or sleeps. It runs under
``setpriv --pdeathsig KILL`` when it can (Linux, started from the main thread): if the test
process is SIGKILLed, its servers die with it instead of outliving it. ``free_ports`` picks
ports for a cluster's nodes.
"""

from __future__ import annotations

import collections
import os
import random
import shutil
import signal
import socket
import subprocess
import threading

import pytest

from deadlines import NO_HANG_SECONDS

__all__ = [
    "REQUIRE_VARIABLE",
    "SERVER_VARIABLE",
    "RedisProcess",
    "StartFailed",
    "find_binary",
    "free_ports",
]

#: Set to 1 (CI does) to make a missing redis-server a failure instead of a skip.
REQUIRE_VARIABLE = "AIONAMESPACE_REQUIRE_REDIS"
#: The redis-server (or valkey-server) binary to use instead of the one on PATH.
SERVER_VARIABLE = "AIONAMESPACE_REDIS_SERVER"
HOW_TO_GET_ONE = (
    "no redis-server on PATH: the Redis tests start their own. Install one "
    "(`apt-get install redis-server`, or `brew install redis`), put a redis-server (or "
    f"valkey-server) on PATH, or name one in ${SERVER_VARIABLE}"
)
_SETPRIV = shutil.which("setpriv")


class StartFailed(RuntimeError):
    """redis-server exited, or never said it was ready; the message holds what it printed."""

    def __init__(self, message: str, output: list[str]) -> None:
        super().__init__(message + "; it printed:\n" + "\n".join(output[-20:]))
        self.output = output

    @property
    def port_taken(self) -> bool:
        return any("in use" in line for line in self.output)


def find_binary() -> str:
    """The redis-server to start, or a skip (a failure under ``AIONAMESPACE_REQUIRE_REDIS=1``)."""
    found = (
        os.environ.get(SERVER_VARIABLE)
        or shutil.which("redis-server")
        or shutil.which("valkey-server")
    )
    if found:
        return found
    if os.environ.get(REQUIRE_VARIABLE) == "1":
        pytest.fail(f"{HOW_TO_GET_ONE} ({REQUIRE_VARIABLE}=1 makes this a failure)", pytrace=False)
    pytest.skip(HOW_TO_GET_ONE)


class RedisProcess:
    """One redis-server process; a thread reads its log and announces that it is ready."""

    def __init__(self, binary: str, config: str, directory: str) -> None:
        command = [binary, config]
        if _SETPRIV and threading.current_thread() is threading.main_thread():
            # The signal fires when the thread that forked ends: only the main thread's end
            # is the process's.
            command = [_SETPRIV, "--pdeathsig", "KILL", "--", *command]
        self.output: collections.deque[str] = collections.deque(maxlen=200)
        self._ready = threading.Event()
        self._said_ready = False
        self.popen = subprocess.Popen(
            command,
            cwd=directory,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        self._reader = threading.Thread(target=self._read, name="redis-server log", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.popen.stdout is not None
        for raw in self.popen.stdout:
            line = raw.decode(errors="replace").rstrip()
            self.output.append(line)
            if "ready to accept connections" in line.lower():
                self._said_ready = True
                self._ready.set()
        self._ready.set()  # end of output: it exited

    def wait_ready(self, what: str) -> None:
        """Return once it says it is ready; StartFailed if it exits (or stays silent) first."""
        self._ready.wait(NO_HANG_SECONDS)
        if not self._said_ready:
            self.end(signal.SIGKILL)
            raise StartFailed(f"{what} did not start", list(self.output))

    def end(self, how: signal.Signals) -> None:
        """Send ``how`` (SIGTERM: shut down; SIGKILL) unless it exited, then reap it."""
        if self.popen.poll() is None:
            self.popen.send_signal(how)
        try:
            self.popen.wait(NO_HANG_SECONDS)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait()
        self._reader.join(NO_HANG_SECONDS)
        assert self.popen.stdout is not None
        self.popen.stdout.close()


def free_ports(count: int) -> list[int]:
    """``count`` distinct TCP ports on loopback that nothing listens on now, below the
    kernel's ephemeral range (where connect() picks ports, so nothing takes them unasked)."""
    low = 10_000
    with open("/proc/sys/net/ipv4/ip_local_port_range") as file:
        high = int(file.read().split()[0]) - 1
    found: list[int] = []
    while len(found) < count:
        port = random.randint(low, high)
        if port in found:
            continue
        with socket.socket() as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as redis binds
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
        found.append(port)
    return found
