"""The ``info`` operation's figures: what a server holds and serves, as an operator asks.

Nothing here runs on the hot path. The only figure counted as requests are served is the
number of requests (``Dispatcher.requests``: one addition per batch, or per read answered
alone); everything else is read from the tables that already exist when ``info`` asks, so its
cost grows with what the server holds (one pass over the names and locks), and only then. A
rate over the last seconds comes from ``RequestRate``, sampled once a second by a timer.

The figures are a map from a name (str) to an int, a float, a str, nil or a map of the same:
docs/PROTOCOL.md, section 5.3, lists them.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import os
import time
from typing import TYPE_CHECKING, Any

from ..protocol.events import PROTOCOL_VERSION
from .anonymous import ANONYMOUS
from .stores import RedisStore, SQLiteStore, StoreUsage

if TYPE_CHECKING:
    from .admission import Connections
    from .dispatch import Dispatcher

__all__ = ["RATE_SECONDS", "RequestRate", "dispatcher_figures", "server_figures"]

#: What the store holds, as ``info`` tells it: its usage, and how many keys are anonymous.
StoreFigures = tuple[StoreUsage, int]

#: The window of the recent request rate, in seconds (sampled once a second).
RATE_SECONDS = 10


class RequestRate:
    """Requests per second over the last ``RATE_SECONDS``: ``sample`` is called once a second
    with the number served so far."""

    def __init__(self) -> None:
        self._samples: collections.deque[tuple[float, int]] = collections.deque(
            maxlen=RATE_SECONDS + 1
        )

    def sample(self, requests: int) -> None:
        self._samples.append((time.monotonic(), requests))

    def recent(self, requests: int) -> float | None:
        """The rate from the oldest sample kept to now (None before the first sample)."""
        if not self._samples:
            return None
        then, before = self._samples[0]
        elapsed = time.monotonic() - then
        return (requests - before) / elapsed if elapsed > 0 else None


def anonymous_count(keys: list[str]) -> int:
    return sum(1 for key in keys if key[:1] == ANONYMOUS)


def store_location(store: object) -> dict[str, str | None]:
    """Where the store keeps the board: a Redis store's URL (its password never shown:
    redis_urls.py's ``redacted``, as every message names it) and key prefix; a data file's
    absolute path; nil for the server's memory."""
    if isinstance(store, RedisStore):
        return {"store_location": store.name, "store_prefix": store.prefix}
    if isinstance(store, SQLiteStore):
        return {"store_location": os.path.abspath(store.path), "store_prefix": None}
    return {"store_location": None, "store_prefix": None}


def dispatcher_figures(
    dispatcher: Dispatcher, store_figures: StoreFigures | None = None
) -> dict[str, Any]:
    """What the dispatcher knows: the store, locks, watches, caches, requests and limits
    (``store_figures``: what a store the server awaits answered; else read here)."""
    from .. import __version__  # (the package imports this module: not at its top)

    if store_figures is None:
        store = dispatcher.store
        store_figures = store.usage(), anonymous_count(store.keys())
    usage, anonymous = store_figures
    held, waiting = dispatcher.locks.counts()
    watches, tracking, tracked = dispatcher.counts()
    return {
        "version": __version__,
        "protocol": PROTOCOL_VERSION,
        "store": type(dispatcher.store).__name__,
        **store_location(dispatcher.store),
        "namespaces": usage.namespaces,
        "named_namespaces": usage.namespaces - anonymous,
        "anonymous_namespaces": anonymous,
        "names": usage.names,
        "value_bytes": usage.value_bytes,
        "history_revisions": usage.history_revisions,
        "history_bytes": usage.history_bytes,
        "largest_history_revisions": usage.largest_history_revisions,
        "largest_history_bytes": usage.largest_history_bytes,
        "locks_held": held,
        "lock_waits": waiting,
        "watches": watches,
        "tracking_connections": tracking,
        "tracked_names": tracked,
        "requests": dispatcher.requests,
        "limits": dataclasses.asdict(dispatcher.limits),
    }


def server_figures(
    dispatcher: Dispatcher,
    connections: Connections | None,
    started: float,
    rate: RequestRate,
    store_figures: StoreFigures | None = None,
) -> dict[str, Any]:
    """Every figure: the dispatcher's, and the server's own (``started``: its monotonic time)."""
    figures = dispatcher_figures(dispatcher, store_figures)
    epoch = dispatcher.store.epoch  # (read now: a store the server awaits may start a new one)
    uptime = time.monotonic() - started
    open_connections = connections.open if connections is not None else ()
    handshaking = len(connections.handshaking) if connections is not None else 0
    backend, loop = _event_loop()
    figures.update(
        epoch=epoch,
        uptime=uptime,
        backend=backend,
        loop=loop,
        connections=len(open_connections),
        authenticated_connections=sum(1 for c in open_connections if c.protocol.ready),
        handshaking_connections=handshaking,
        connections_accepted=connections.accepted if connections is not None else 0,
        requests_per_second=dispatcher.requests / uptime if uptime > 0 else None,
        recent_requests_per_second=rate.recent(dispatcher.requests),
    )
    return figures


def _event_loop() -> tuple[str, str]:
    """(backend, loop): "asyncio" and its loop's kind, or "trio" and "trio"."""
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return "trio", "trio"
    kind = type(loop)
    if kind.__module__.partition(".")[0] == "uvloop":
        return "asyncio", "uvloop"
    selector = getattr(loop, "_selector", None)
    spin = getattr(selector, "_spin_seconds", None)
    if spin:
        return "asyncio", f"asyncio, busy polling {spin * 1e6:g} us"
    return "asyncio", "asyncio"
