"""Helpers several test files share: a CLI server process, child processes, their reports.

Not fixtures, so that test modules (and spawned children, which import them by name) can use
them directly; conftest.py keeps the fixtures.
"""

from __future__ import annotations

import queue
import selectors
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import pytest

from aionamespace import Manager

NO_HANG_SECONDS = 10.0  # the bound that turns a hang into a failure instead of a stuck suite
CHILD_TIMEOUT_SECONDS = 60.0


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


def kill_server(manager: Manager) -> float:
    """SIGKILL a manager's server process, reap it, and return when it was killed."""
    process = manager._process
    assert process is not None
    killed_at = time.monotonic()
    process.kill()
    process.wait(timeout=NO_HANG_SECONDS)
    return killed_at


def run_child(context: Any, target: Callable[..., None], *args: Any) -> int:
    """Start a child, join it (bounded), return its exit code."""
    process = context.Process(target=target, args=args)
    process.start()
    process.join(CHILD_TIMEOUT_SECONDS)
    try:
        if process.is_alive():
            process.kill()
            process.join()
            pytest.fail(f"{target.__name__} did not finish in {CHILD_TIMEOUT_SECONDS}s")
        return int(process.exitcode)
    finally:
        process.close()


class Reports:
    """A multiprocessing queue for children's reports, closed properly at the end."""

    def __init__(self, context: Any) -> None:
        self.queue = context.Queue()

    def get(self, sender: Any = None) -> Any:
        """The next report; fails at once if ``sender`` (a Process) died without sending one."""
        deadline = time.monotonic() + CHILD_TIMEOUT_SECONDS
        while True:
            try:
                return self.queue.get(timeout=0.05)
            except queue.Empty:
                if sender is not None and not sender.is_alive() and self.queue.empty():
                    pytest.fail(f"the child exited with {sender.exitcode} without reporting")
                if time.monotonic() > deadline:
                    pytest.fail(f"no report in {CHILD_TIMEOUT_SECONDS}s")

    def close(self) -> None:
        self.queue.close()
        self.queue.join_thread()
