"""A ``Retry`` that reports its failures: how a test knows a call has already failed against a
server that is down, without watching the clock.

``restart_retry`` is the policy of the restart tests: enough attempts to span a restart.
"""

from __future__ import annotations

import dataclasses
import threading

from aionamespace import ConnectionLost, Retry


@dataclasses.dataclass(frozen=True)
class ReportingRetry(Retry):
    """A ``Retry`` that records every ConnectionLost it is asked about: how a test knows a
    call has already failed (the server is really down) without watching the clock."""

    failed: threading.Event = dataclasses.field(default_factory=threading.Event, compare=False)
    errors: list[tuple[str, bool]] = dataclasses.field(default_factory=list, compare=False)

    def delay(self, op: str, failures: int, error: ConnectionLost) -> float | None:
        self.errors.append((op, error.request_sent))  # not the error: it holds a traceback
        self.failed.set()
        return super().delay(op, failures, error)


def restart_retry() -> ReportingRetry:
    """The retry policy of these tests: 50 attempts, 0.02 s doubling up to 0.1 s (~4.8 s)."""
    return ReportingRetry(attempts=50, backoff=0.02, max_backoff=0.1)
