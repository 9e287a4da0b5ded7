"""The sync proxy's client cache: one tracking connection per process and server.

A reader thread reads the connection: replies fill the cache, the server's invalidations
empty it, in stream order (``cache.CacheTable`` says how). Reads from any thread of the
process send their request under a lock and wait for the reader to hand them the answer.
"""

from __future__ import annotations

import os
import threading
from typing import Any

from .._errors import ConnectionLost
from ..protocol.connection import Invalidation, Reply
from .blocking import POOL, open_transport
from .cache import ABSENT, CacheTable, entry_value
from .calls import GET
from .proxy import Target

__all__ = ["CACHES", "CacheConnection"]


class _Pending:
    __slots__ = ("done", "error", "result")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.result: Any = None
        self.error: BaseException | None = None


class CacheConnection:
    """One tracking connection per process and server, shared by the process's threads."""

    def __init__(self, target: Target) -> None:
        self.pid = os.getpid()
        self.forks = CACHES.forks  # stale in a forked child, which then opens its own
        self._target = target
        self._transport = open_transport(target, track=True)
        self.alive = True
        self.table = CacheTable()
        self._pending: dict[int, _Pending] = {}
        # Sending, the pending table, the cache table. Re-entrant: a signal handler may read
        # or write on the thread that holds it (then ``_registering`` says so).
        self._lock = threading.RLock()
        self._registering = False  # a read is being sent and registered, under the lock
        self._reader = threading.Thread(
            target=self._read_forever, daemon=True, name="aionamespace cache reader"
        )
        self._reader.start()

    @property
    def usable(self) -> bool:
        return self.alive and self.forks == CACHES.forks

    def namespace(self, key: str) -> dict[str, Any]:
        """The dict of ``key``'s entries, which a proxy reads until it finds nothing there
        (``CacheTable``): under the lock, so that it is the one the reader thread fills."""
        with self._lock:
            return self.table.namespace(key)

    def get(self, key: str, name: str) -> Any:
        """The value of ``name``: from the cache, or read (and cached) through the server."""
        item = (key, name)
        entry = self.table.entry(key, name)
        if entry is ABSENT:
            entry = self._read(item)
            if entry is ABSENT:  # a signal handler interrupted a read here: read uncached
                return POOL.transport(self._target).call(GET, item)
        return entry_value(entry, name)

    def forget(self, key: str, names: tuple[str, ...]) -> None:
        """Our own write changes these (or was just acknowledged): drop them, and outdate the
        reads of them in flight. Under the reader's lock: a reply being kept at this moment
        is either kept before (and dropped here) or checked after (and not kept)."""
        with self._lock:
            self.table.forget(key, names)

    def _read(self, item: tuple[str, str]) -> Any:
        """The entry a read through the server makes; ABSENT if a signal handler called this
        while its thread was registering a read: it holds the lock, so the reader thread could
        not hand over any reply until the handler returned (and half a frame may be sent)."""
        pending = _Pending()
        with self._lock:  # the reader thread finds the pending read registered before its reply
            if self._registering:
                return ABSENT
            if not self.alive:
                raise ConnectionLost("the cache's connection to the server was lost")
            self._registering = True
            try:
                request_id = self._transport.send(GET, item)
                self._pending[request_id] = pending
                self.table.expect(request_id, item)
            finally:
                self._registering = False
        pending.done.wait()
        if pending.error is not None:
            raise pending.error
        return pending.result

    def _read_forever(self) -> None:
        """The reader thread: replies fill the cache, invalidations empty it, in stream order."""
        transport = self._transport
        error: BaseException = ConnectionLost("the server closed the cache's connection")
        try:
            while True:
                for event in transport.receive():
                    if type(event) is Invalidation:
                        self.table.invalidate(event.key, event.name)
                    elif type(event) is Reply:
                        self._answer(event)
        except Exception as exc:  # every way out fails the waiters
            error = exc if isinstance(exc, ConnectionLost) else ConnectionLost(str(exc))
        finally:
            with self._lock:
                self.alive = False
                self.table.clear()
                pending, self._pending = self._pending, {}
            for waiter in pending.values():
                waiter.error = error
                waiter.done.set()
            transport.close()

    def _answer(self, reply: Reply) -> None:
        with self._lock:
            pending = self._pending.pop(reply.id, None)
            entry = self.table.answered(reply.id, reply.result, reply.error)
        if pending is None:
            return
        if entry is None:
            pending.error = reply.error or ConnectionLost("unexpected reply to a cached read")
        pending.result = entry
        pending.done.set()

    def close(self) -> None:
        self._transport.close()  # the reader thread then ends


class _Caches:
    """The cache connection of this process for each server (a forked child opens its own)."""

    def __init__(self) -> None:
        self._lock = threading.RLock()  # (a signal handler may need a connection meanwhile)
        self._by_server: dict[tuple[Any, ...], CacheConnection] = {}
        self.forks = 0  # counts forks into this process: connections from before are not ours

    def connection(self, target: Target) -> CacheConnection:
        cache = self._by_server.get(target.server)
        if cache is None or not cache.usable:
            with self._lock:
                cache = self._by_server.get(target.server)
                if cache is None or not cache.usable:
                    cache = CacheConnection(target)
                    made = self._by_server.get(target.server)
                    if made is not None and made.usable:  # by a signal handler, meanwhile
                        cache.close()
                        return made
                    self._by_server[target.server] = cache
        return cache

    def existing(self, target: Target) -> CacheConnection | None:
        cache = self._by_server.get(target.server)
        return cache if cache is not None and cache.usable else None

    def after_fork(self) -> None:
        """In a forked child: the parent's connections are not ours. Their tables are emptied
        (in the child's copy of memory), so that a proxy holding a namespace's dict from
        before the fork reads nothing there and opens the child's own connection."""
        for cache in self._by_server.values():
            cache.table.clear()
        self._lock = threading.RLock()
        self._by_server = {}
        self.forks += 1


CACHES = _Caches()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=CACHES.after_fork)
