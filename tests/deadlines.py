"""How long a test waits before a hang becomes a failure, and polling within that bound.

``NO_HANG_SECONDS`` turns a hang into a failure instead of a stuck suite; ``wait_until`` and
``async_wait_until`` poll a condition that no event announces, for at most that long;
``wait_while_rising`` waits for a count to reach a target for as long as it keeps rising (on a
busy machine slow progress is still progress; only a stall is a hang). The
reliability script imports this module too (it puts ``tests/`` on its path), so it needs
nothing but aionamespace's own dependencies: no pytest here.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import anyio

__all__ = [
    "NO_HANG_SECONDS",
    "POLL_SECONDS",
    "async_wait_until",
    "wait_until",
    "wait_while_rising",
]

NO_HANG_SECONDS = 10.0  # the bound that turns a hang into a failure instead of a stuck suite
POLL_SECONDS = 0.005


def wait_until(condition: Callable[[], bool], what: str, seconds: float = NO_HANG_SECONDS) -> None:
    """Poll ``condition`` for at most ``seconds``; TimeoutError naming ``what``."""
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting until {what}")
        time.sleep(POLL_SECONDS)


def wait_while_rising(
    count: Callable[[], int], target: int, what: str, seconds: float = NO_HANG_SECONDS
) -> None:
    """Poll ``count()`` until it reaches ``target``; TimeoutError naming ``what`` only if it
    stays where it is for ``seconds`` (the bound is on a stall, not on the whole wait)."""
    last = count()
    deadline = time.monotonic() + seconds
    while last < target:
        time.sleep(POLL_SECONDS)
        now = count()
        if now > last:
            last, deadline = now, time.monotonic() + seconds
        elif time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting until {what} (stuck at {now} of {target})")


async def async_wait_until(
    condition: Callable[[], bool], what: str, seconds: float = NO_HANG_SECONDS
) -> None:
    """``wait_until`` for async code (the proxy state polled is not announced by any event)."""
    with anyio.move_on_after(seconds):
        while not condition():  # noqa: ASYNC110 - proxy state that no event announces
            await anyio.sleep(POLL_SECONDS)
        return
    raise TimeoutError(f"timed out waiting until {what}")
