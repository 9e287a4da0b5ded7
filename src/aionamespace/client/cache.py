"""The client cache (opt-in, ``cache=True``): reads served locally until the server says no.

Like Redis client tracking: a caching client reads through a connection in *tracking* mode;
the server remembers every name it read there and, when one changes, pushes an invalidation
(once: reading it again tracks it again). The cache keeps the answers until then, including
"no such attribute".

Everything that changes the cache happens in stream order on the one thread that reads the
tracking connection: a reply fills the cache, and an invalidation sent after it empties it
again, so a stale value can never be left behind. The caller's own writes ``forget`` the names
they touch first, and a generation count per name keeps a reply to a read made *before* that
forget from filling the cache after it (read-your-writes).

How stale can a cached read be? A change becomes visible once the invalidation has crossed the
socket and been applied by the reader thread; benchmarks/compare.py measures that window.
"""

from __future__ import annotations

import os
import threading
from typing import Any

from .._errors import ConnectionLost
from ..protocol.codec import decode_value
from ..protocol.connection import Invalidate, Reply
from ..server.stores.memory import missing_attribute
from .proxy import Target

__all__ = ["ABSENT", "CACHES", "SPECIAL_ENTRIES", "CacheConnection", "CacheTable", "entry_value"]

#: Decoded values of these types are immutable: the cache may hand out the same object.
_IMMUTABLE = frozenset({type(None), bool, int, float, str, bytes, complex})
class _Missing:
    """The cached answer "no such attribute"."""


_MISSING = _Missing()
ABSENT = object()  # not in the cache


class _Blob:
    """A cached value of a mutable type: decoded afresh for each read (values are copies)."""

    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data = data


#: Cache entries that are not the value itself (everything else is: an immutable value).
SPECIAL_ENTRIES = frozenset({_Blob, _Missing})


def entry_value(entry: Any, name: str) -> Any:
    """What a cache entry means: a value, a fresh copy of one, or AttributeError."""
    if type(entry) is _Blob:
        return decode_value(entry.data)
    if entry is _MISSING:
        raise missing_attribute(name)
    return entry


class _Pending:
    __slots__ = ("done", "error", "result")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.result: Any = None
        self.error: BaseException | None = None


class CacheTable:
    """What a cache holds, and the rules for changing it: shared by both proxies.

    ``expect`` notes a read on its way (with the name's generation), ``answered`` turns its
    reply into an entry and keeps it unless our own write came since, ``invalidate`` applies
    the server's word, ``forget`` our own writes'.
    """

    def __init__(self) -> None:
        self.values: dict[tuple[str, str], Any] = {}  # what reads serve, see entry_value
        self._generations: dict[tuple[str, str], int] = {}
        self._expected: dict[int, tuple[tuple[str, str], int]] = {}  # request id -> item, gen

    def expect(self, request_id: int, item: tuple[str, str]) -> None:
        self._expected[request_id] = (item, self._generations.get(item, 0))

    def answered(self, request_id: int, result: Any, error: BaseException | None) -> Any:
        """The entry a reply to an expected read makes (None for other replies)."""
        expected = self._expected.pop(request_id, None)
        if expected is None:
            return None
        if isinstance(error, AttributeError):
            entry: Any = _MISSING
        elif error is not None or type(result) not in (bytes, bytearray):
            return None
        else:
            value = decode_value(result)
            entry = value if type(value) in _IMMUTABLE else _Blob(result)
        item, generation = expected
        if self._generations.get(item, 0) == generation:
            self.values[item] = entry  # else our own write came since: don't keep it
        return entry

    def invalidate(self, key: str, name: str) -> None:
        self.values.pop((key, name), None)

    def forget(self, key: str, names: tuple[str, ...]) -> None:
        for name in names:
            item = (key, name)
            self._generations[item] = self._generations.get(item, 0) + 1
            self.values.pop(item, None)

    def clear(self) -> None:
        """The connection is gone: nothing cached can be trusted any more."""
        self.values.clear()
        self._expected.clear()


class CacheConnection:
    """One tracking connection per process and server, shared by the process's threads."""

    def __init__(self, target: Target) -> None:
        from .blocking import SyncConnection  # the handshake and blocking socket

        self.pid = os.getpid()
        self.forks = CACHES.forks  # stale in a forked child, which then opens its own
        self._connection = SyncConnection(target)
        try:
            self._connection.call("track", True)
        except BaseException:
            self._connection.close()
            raise
        self.alive = True
        self.table = CacheTable()
        self.values = self.table.values  # what reads serve (the proxy's hot path reads it)
        self._pending: dict[int, _Pending] = {}
        self._lock = threading.Lock()  # sending, and the pending table
        self._reader = threading.Thread(target=self._read_forever, daemon=True,
                                        name="aionamespace cache reader")
        self._reader.start()

    @property
    def usable(self) -> bool:
        return self.alive and self.forks == CACHES.forks

    def get(self, key: str, name: str) -> Any:
        """The value of ``name``: from the cache, or read (and cached) through the server."""
        item = (key, name)
        entry = self.values.get(item, ABSENT)
        if entry is ABSENT:
            entry = self._read(item)
        return entry_value(entry, name)

    def forget(self, key: str, names: tuple[str, ...]) -> None:
        """Our own write is about to change these: drop them, and any read still in flight."""
        self.table.forget(key, names)

    def _read(self, item: tuple[str, str]) -> Any:
        pending = _Pending()
        protocol = self._connection.protocol
        with self._lock:
            if not self.alive:
                raise ConnectionLost("the cache's connection to the server was lost")
            request_id, frame = protocol.send_request("get", *item)
            self._pending[request_id] = pending
            self.table.expect(request_id, item)
            sock = self._connection.sock
            assert sock is not None
            try:
                sock.sendall(frame)
            except OSError as exc:
                self._pending.pop(request_id, None)
                raise ConnectionLost(f"lost the cache's connection to the server: {exc}") from exc
        pending.done.wait()
        if pending.error is not None:
            raise pending.error
        return pending.result

    def _read_forever(self) -> None:
        """The reader thread: replies fill the cache, invalidations empty it, in stream order."""
        connection = self._connection
        error: BaseException = ConnectionLost("the server closed the cache's connection")
        try:
            while True:
                for event in connection.receive_events():
                    if type(event) is Invalidate:
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
            connection.close()

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
        self._connection.close()  # the reader thread then ends


class _Caches:
    """The cache connection of this process for each server (a forked child opens its own)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_server: dict[tuple[Any, ...], CacheConnection] = {}
        self.forks = 0  # counts forks into this process: connections from before are not ours

    def connection(self, target: Target) -> CacheConnection:
        cache = self._by_server.get(target.server)
        if cache is None or not cache.usable:
            with self._lock:
                cache = self._by_server.get(target.server)
                if cache is None or not cache.usable:
                    cache = self._by_server[target.server] = CacheConnection(target)
        return cache

    def existing(self, target: Target) -> CacheConnection | None:
        cache = self._by_server.get(target.server)
        return cache if cache is not None and cache.usable else None

    def after_fork(self) -> None:
        self._lock = threading.Lock()
        self._by_server = {}
        self.forks += 1


CACHES = _Caches()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=CACHES.after_fork)
