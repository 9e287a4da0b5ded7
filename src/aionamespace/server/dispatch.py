"""Applying requests: the store, watches and locks, for any number of connections.

The server's I/O shells hand each connection's parsed events to ``Dispatcher.respond`` and
write back the bytes it returns, in one write. Everything here is synchronous, so a batch is
applied atomically, in order. Two things reach a connection *outside* its own replies, through
``Peer.write``:

* watch pushes: every change a store commits is pushed to the connections watching that
  namespace, gathered per connection during a batch and written once at its end;
* deferred replies: an ``acquire`` that has to wait is answered when the lock is handed over.

Every request naming an anonymous namespace (a key starting with ``#``) goes through
``anonymous.AnonymousNamespaces`` the first time its connection names it; named keys pay a look
at their first character.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import Any, Protocol

from .._errors import (
    ConnectionLost,
    HistoryExpired,
    LimitExceeded,
    NamespaceGone,
    ProtocolError,
    RemoteProtocolError,
)
from ..protocol.connection import BadRequest, Hello, Refusal, Request, ServerConnection
from ..protocol.frames import coalesce
from ..protocol.limits import Limits
from .anonymous import ANONYMOUS, AnonymousNamespaces
from .locks import LockTable
from .stores import Changes, Store
from .timers import CallLater

__all__ = ["Dispatcher", "Peer"]

logger = logging.getLogger("aionamespace.server")

#: A connection with more unsent bytes than this gets no more pushes: it is dropped instead.
MAX_PUSH_BACKLOG_BYTES = 16 * 1024 * 1024

# Exceptions an op may raise on purpose; they go back to the caller as an error reply.
_CALLER_ERRORS = (
    AttributeError,
    KeyError,
    TypeError,
    ValueError,
    OverflowError,
    TimeoutError,
    ProtocolError,
    HistoryExpired,
    NamespaceGone,
    LimitExceeded,
)


class Peer(Protocol):
    """What the dispatcher needs of a connection."""

    protocol: ServerConnection

    def write(self, data: bytes) -> None:
        """Queue bytes for this connection without blocking."""

    def backlog(self) -> int:
        """Bytes queued for this connection and not yet sent."""

    def close(self) -> None:
        """Close after sending what is queued."""

    def drop(self) -> None:
        """Close now, whatever is still queued (a peer that does not read)."""


#: One request's answer: a frame, or a large value's header and its bytes (written as they are).
ReplyData = bytes | tuple[bytes, bytes]

_NO_WATCHES: dict[int, Any] = {}


class _Watch:
    __slots__ = ("id", "names", "peer")

    def __init__(self, watch_id: int, peer: Peer, names: frozenset[str] | None) -> None:
        self.id, self.peer, self.names = watch_id, peer, names


class Dispatcher:
    """The op layer between the protocol and the store, shared by all connections."""

    def __init__(self, store: Store, call_later: CallLater, limits: Limits | None = None) -> None:
        self.store = store
        self.limits = limits = limits or Limits()
        store.on_commit = self._committed
        store.max_namespaces = limits.max_namespaces
        self.locks = LockTable(call_later)
        self.anonymous = AnonymousNamespaces(store, call_later, limits.anonymous_grace)
        self._anonymous_used = self.anonymous.used  # (read on every request naming one)
        self._watches: dict[str, dict[int, _Watch]] = {}  # namespace key -> watch id -> watch
        self._peer_watches: dict[Peer, dict[int, str]] = {}  # peer -> watch id -> key
        self._last_watch_id = 0
        self._pushes: dict[Peer, list[bytes]] = {}
        self._in_batch = False
        self._store_ops: dict[str, Callable[..., Any]] = {
            "ping": lambda: None,
            "keys": store.keys,
            "open": store.open,
            "set": store.set,
            "del": store.delete,
            "dump": lambda key: store.snapshot(key, None)[1],
            "snapshot": lambda key, names: list(store.snapshot(key, names)),
            "update": store.update,
            "setdefault": store.setdefault,
            "pop": store.pop,
            "incr": store.incr,
            "append": store.append,
            "cas": store.cas,
        }
        self._tracking: set[Peer] = set()  # connections with a client cache
        self._tracked: dict[tuple[str, str], set[Peer]] = {}  # (key, name) -> who cached it
        self._peer_tracked: dict[Peer, set[tuple[str, str]]] = {}  # the same, per connection
        self._peer_ops: dict[str, Callable[..., ReplyData]] = {
            "get": self._get,
            "track": self._track,
            "watch": self._watch,
            "unwatch": self._unwatch,
            "acquire": self._acquire,
            "release": self._release,
        }

    def respond(
        self,
        peer: Peer,
        events: list[Hello | Request | BadRequest | Refusal],
    ) -> list[bytes]:
        """Apply a batch of events in order; return the answers (and pushes) to write."""
        return self.respond_some(peer, events, math.inf)[0]

    def respond_some(
        self, peer: Peer, events: list[Hello | Request | BadRequest | Refusal], budget: float
    ) -> tuple[list[bytes], int]:
        """Apply events in order until the answers pass ``budget`` bytes: (answers, applied).

        The answers come as few buffers as possible: one, unless a large value stands apart
        (it is written as the store holds it, never copied into a frame). The events applied
        form one batch: frames for other connections (watch events, deferred replies)
        arising during it are gathered and written once each at its end, in the order they
        arose. A connection that does not read its answers is applied a budget at a time, so
        the memory it costs the server stays bounded.
        """
        out: list[bytes] = []
        size = applied = 0
        large = False
        self._in_batch = True
        try:
            for event in events:
                answer = self._apply(peer, event)
                applied += 1
                if isinstance(answer, tuple):
                    out.extend(answer)
                    size += len(answer[0]) + len(answer[1])
                    large = True
                else:
                    out.append(answer)
                    size += len(answer)
                if size > budget:
                    break
        finally:
            self._in_batch = False
        if self._pushes:
            pushes, self._pushes = self._pushes, {}
            for other, frames in pushes.items():
                if other is peer:
                    # after the answers, but before a refusal: that is always the last frame
                    refused = applied and type(events[applied - 1]) is Refusal
                    at = len(out) - 1 if refused else len(out)
                    out[at:at] = frames
                else:
                    self._write(other, b"".join(frames))
        return (coalesce(out) if large else [b"".join(out)]), applied

    def _send(self, peer: Peer, frame: bytes) -> None:
        """A frame for ``peer`` outside its own answers: queued during a batch, else written."""
        if self._in_batch:
            self._pushes.setdefault(peer, []).append(frame)
        else:
            self._write(peer, frame)

    def _write(self, peer: Peer, data: bytes) -> None:
        if peer.backlog() > MAX_PUSH_BACKLOG_BYTES:
            # A watcher that does not read cannot make us hold its events forever.
            peer.write(
                peer.protocol.send_refusal(
                    ConnectionLost(
                        f"more than {MAX_PUSH_BACKLOG_BYTES} bytes of events went unread; "
                        "watch again from the last revision seen"
                    )
                )
            )
            peer.drop()  # at once: a close would wait for the unread bytes to drain
            return
        peer.write(data)

    def connection_lost(self, peer: Peer) -> None:
        """Forget a connection's watches and cache; release its locks (to the next waiter)."""
        for watch_id, key in self._peer_watches.pop(peer, {}).items():
            self._remove_watch(key, watch_id)
        self._tracking.discard(peer)
        for item in self._peer_tracked.pop(peer, ()):
            readers = self._tracked.get(item)
            if readers is not None:
                readers.discard(peer)
                if not readers:
                    del self._tracked[item]
        self._pushes.pop(peer, None)
        self.locks.drop_connection(peer)
        self.anonymous.connection_lost(peer)

    def answer(self, peer: Peer, request_id: int, op: str, args: tuple[Any, ...]) -> ReplyData:
        """Apply one valid request: its reply, or its error reply. Outside ``respond`` (a lone
        read, see ``Connections.received``) only for an op that pushes nothing."""
        try:
            if args:
                key = args[0]
                if type(key) is str and key[0] == ANONYMOUS:
                    used = self._anonymous_used.get(peer)
                    if used is None or key not in used:
                        self.anonymous.first_use(peer, op, key)
            store_op = self._store_ops.get(op)
            if store_op is not None:
                return peer.protocol.send_result(request_id, store_op(*args))
            return self._peer_ops[op](peer, request_id, *args)
        except _CALLER_ERRORS as exc:
            return peer.protocol.send_error(request_id, exc)
        except Exception as exc:  # a bug in a store must not take the server down
            logger.exception("internal error applying %s", op)
            return peer.protocol.send_error(request_id, exc)

    def _apply(self, peer: Peer, event: Hello | Request | BadRequest | Refusal) -> ReplyData:
        if type(event) is Request:
            return self.answer(peer, event.id, event.op, event.args)
        protocol = peer.protocol
        if type(event) is Hello:
            return protocol.send_hello()
        if type(event) is BadRequest:
            return protocol.send_error(event.id, RemoteProtocolError(event.message))
        assert type(event) is Refusal
        return protocol.send_refusal(event.error)

    # ------------------------------------------------------------------ watches

    def _committed(self, key: str, revision: int, changes: Changes) -> None:
        if not self._tracked and not self._watches:
            return  # nobody to tell: the common case, kept cheap
        for name, value in changes.items():
            if self._tracked:
                item = (key, name)
                readers = self._tracked.pop(item, None)
                if readers:
                    frame = ServerConnection.send_invalidation(key, name)
                    for reader in readers:  # invalidated once: a reader that gets again re-tracks
                        self._peer_tracked[reader].discard(item)
                        self._pushes.setdefault(reader, []).append(frame)
            for watch in self._watches.get(key, _NO_WATCHES).values():
                if watch.names is None or name in watch.names:
                    self._pushes.setdefault(watch.peer, []).append(
                        ServerConnection.send_event(watch.id, revision, name, value)
                    )

    def _watch(
        self, peer: Peer, request_id: int, key: str, names: list[str] | None, since: int | None
    ) -> bytes:
        selected = frozenset(names) if names is not None else None
        revision, values = self.store.snapshot(key, names)
        replay = [] if since is None else self.store.history(key, since)  # may raise
        self._last_watch_id += 1
        watch = _Watch(self._last_watch_id, peer, selected)
        self._watches.setdefault(key, {})[watch.id] = watch
        self._peer_watches.setdefault(peer, {})[watch.id] = key
        frames = [
            ServerConnection.send_event(watch.id, c.revision, c.name, c.value)
            for c in replay
            if selected is None or c.name in selected
        ]
        if frames:  # sent after the reply, which tells the client the watch id
            self._pushes.setdefault(peer, []).extend(frames)
        return peer.protocol.send_result(
            request_id, [watch.id, revision, values if since is None else {}]
        )

    def _unwatch(self, peer: Peer, request_id: int, watch_id: int) -> bytes:
        key = self._peer_watches.get(peer, {}).pop(watch_id, None)
        if key is not None:
            self._remove_watch(key, watch_id)
        return peer.protocol.send_result(request_id, key is not None)

    def _remove_watch(self, key: str, watch_id: int) -> None:
        watches = self._watches.get(key)
        if watches is not None:
            watches.pop(watch_id, None)
            if not watches:
                del self._watches[key]

    # ------------------------------------------------------------------ client caches

    def _get(self, peer: Peer, request_id: int, key: str, name: str) -> ReplyData:
        if peer in self._tracking:  # tracked even when missing: the cache keeps that too
            self._tracked.setdefault((key, name), set()).add(peer)
            self._peer_tracked.setdefault(peer, set()).add((key, name))
        return peer.protocol.send_value(request_id, self.store.get(key, name))

    def _track(self, peer: Peer, request_id: int, on: bool) -> bytes:
        """Like Redis client tracking: invalidate (once) every value this connection gets."""
        if on:
            self._tracking.add(peer)
        else:
            self._tracking.discard(peer)
        return peer.protocol.send_result(request_id, None)

    # ------------------------------------------------------------------ locks

    def _acquire(
        self, peer: Peer, request_id: int, key: str, name: str, token: bytes, timeout: float | None
    ) -> bytes:
        protocol = peer.protocol

        def grant(error: BaseException | None) -> None:
            if error is None:
                self._send(peer, protocol.send_result(request_id, None))
            else:
                self._send(peer, protocol.send_error(request_id, error))

        if self.locks.acquire(key, name, (peer, token), timeout, grant):
            return protocol.send_result(request_id, None)
        return b""  # answered later, by grant()

    def _release(self, peer: Peer, request_id: int, key: str, name: str, token: bytes) -> bytes:
        return peer.protocol.send_result(request_id, self.locks.release(key, name, (peer, token)))
