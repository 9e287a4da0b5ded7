"""Child processes that run part of a test and report back: ``run_child`` and ``Reports``.

Not fixtures, so that test modules (and spawned children, which import them by name) can use
them directly; conftest.py keeps the fixtures.
"""

from __future__ import annotations

import queue
import time
from collections.abc import Callable
from typing import Any

import pytest

CHILD_TIMEOUT_SECONDS = 60.0


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
