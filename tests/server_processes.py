"""Servers in processes of their own, to kill: ``serve`` started from the command line, and a
``Manager``'s server.

``ServeProcess`` is ``python -m aionamespace serve --unix PATH``, ready once it says so;
``kill_server`` SIGKILLs the server process a ``Manager`` spawned. The reliability script
imports this module too (it puts ``tests/`` on its path), so it needs nothing but
aionamespace's own dependencies: no pytest here.
"""

from __future__ import annotations

import selectors
import subprocess
import sys
import time

from aionamespace import Manager
from aionamespace.protocol.addresses import Address, parse_address
from deadlines import NO_HANG_SECONDS

__all__ = ["ServeProcess", "kill_server"]


class ServeProcess:
    """``python -m aionamespace serve --unix PATH`` (or ``--tcp HOST:PORT``, given a ``(host,
    port)`` pair; port 0 picks one: see ``address``) in a subprocess, ready once it says so."""

    def __init__(self, path: Address, backend: str = "asyncio", *options: str) -> None:
        where = ["--unix", path] if isinstance(path, str) else ["--tcp", f"{path[0]}:{path[1]}"]
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "aionamespace",
                "serve",
                *where,
                "--backend",
                backend,
                *options,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        assert self.process.stdout is not None
        with selectors.DefaultSelector() as selector:
            selector.register(self.process.stdout, selectors.EVENT_READ)
            ready = selector.select(NO_HANG_SECONDS)
        line = self.process.stdout.readline().decode() if ready else ""
        if "serving on" not in line:
            self.kill()
            # Not pytest.fail: servers are also started from helper threads.
            raise RuntimeError(f"the server did not start: {line!r}")
        self.address: Address = parse_address(line.split("serving on ")[1].split(" (")[0])

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


def kill_server(manager: Manager) -> float:
    """SIGKILL a manager's server process, reap it, and return when it was killed."""
    process = manager._process
    assert process is not None
    killed_at = time.monotonic()
    process.kill()
    process.wait(timeout=NO_HANG_SECONDS)
    return killed_at
