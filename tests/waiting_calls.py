"""Whether a proxy's call is waiting on the server: a state that no event announces.

``blocked_reading`` looks at a sync proxy's thread (its stack, from ``sys._current_frames``);
``request_waiting`` at an async proxy's table of requests awaiting replies. Both read the
proxies' internals, so a change there that they no longer match fails the tests using them (and
the reliability script, which imports this module too: no pytest here).
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable
from typing import Any

__all__ = ["blocked_reading", "request_waiting"]


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
        return len(table.waiters) >= count and not table.outbox and state.transport.link is not None

    return check
