"""How long a test waits before a hang becomes a failure, and polling within that bound.

``NO_HANG_SECONDS`` turns a hang into a failure instead of a stuck suite; ``wait_until`` and
``async_wait_until`` poll a condition that no event announces, for at most that long. The
reliability script imports this module too (it puts ``tests/`` on its path), so it needs
nothing but aionamespace's own dependencies: no pytest here.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import anyio

__all__ = ["NO_HANG_SECONDS", "POLL_SECONDS", "async_wait_until", "wait_until"]

NO_HANG_SECONDS = 10.0  # the bound that turns a hang into a failure instead of a stuck suite
POLL_SECONDS = 0.005


def wait_until(condition: Callable[[], bool], what: str, seconds: float = NO_HANG_SECONDS) -> None:
    """Poll ``condition`` for at most ``seconds``; TimeoutError naming ``what``."""
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting until {what}")
        time.sleep(POLL_SECONDS)


async def async_wait_until(
    condition: Callable[[], bool], what: str, seconds: float = NO_HANG_SECONDS
) -> None:
    """``wait_until`` for async code (the proxy state polled is not announced by any event)."""
    with anyio.move_on_after(seconds):
        while not condition():  # noqa: ASYNC110 - proxy state that no event announces
            await anyio.sleep(POLL_SECONDS)
        return
    raise TimeoutError(f"timed out waiting until {what}")
