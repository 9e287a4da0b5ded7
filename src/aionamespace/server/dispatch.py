"""Applying requests: the store, watches and locks, for any number of connections.

The server's I/O shells hand each connection's parsed events to ``Dispatcher.respond`` and
write back the bytes it returns, in one write. Everything here is synchronous, so a batch is
applied atomically, in order. Two things reach a connection *outside* its own replies, through
``Peer.write``:

* watch pushes: every change a store commits is pushed to the connections watching that
  namespace, gathered per connection during a batch and written once at its end;
* deferred replies: an ``acquire`` that has to wait is answered when the lock is handed over.

What it hands a connection is *output* (protocol/pieces.py): frames whose stored values are
referenced, never copied, and, for a reply or watch replay larger than the connection's reply
budget (``Limits.max_reply_backlog_bytes``), a Producer that makes it as it is sent. Pushes
cannot wait for a peer that does not read: past ``Limits.max_push_backlog_bytes`` of backlog,
the peer is dropped instead.

A request naming an anonymous namespace goes through ``anonymous.py`` the first time its
connection names it; ``exports.py`` serves the board's consistent copies (``export``).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
from collections.abc import Callable
from typing import Any

from .._errors import (
    ConnectionLost,
    HistoryExpired,
    LimitExceeded,
    NamespaceGone,
    ProtocolError,
    RemoteProtocolError,
)
from ..protocol.connection import BadRequest, Hello, Refusal, Request
from ..protocol.limits import Limits
from ..protocol.pieces import (
    Output,
    Producer,
    event_tail,
    list_reply,
    packed_values_reply,
    replay,
    values_reply,
)
from .anonymous import ANONYMOUS, AnonymousNamespaces
from .exports import Exports
from .info import dispatcher_figures
from .invalidations import cached_among, invalidate
from .locks import Locks, LockTable
from .outbox import apart
from .peer import Peer
from .plain_gets import plain_gets
from .stores import Changes, Store, materialised
from .timers import CallLater
from .watches import NO_WATCHES, WatchTable

__all__ = ["Dispatcher", "Peer"]

logger = logging.getLogger("aionamespace.server")

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


#: One request's answer: a frame, a large value's header and its bytes (written as they are),
#: or a reply larger than the reply budget, made as it is sent.
ReplyData = bytes | tuple[bytes, bytes] | Producer


class Dispatcher:
    """The op layer between the protocol and the store, shared by all connections."""

    def __init__(self, store: Store, call_later: CallLater, limits: Limits | None = None) -> None:
        self.store = store
        self.limits = limits = limits or Limits()
        store.on_commit = self._committed
        store.max_namespaces = limits.max_namespaces
        self.locks: Locks = LockTable(call_later)
        self.anonymous = self._anonymous_namespaces(call_later, limits.anonymous_grace)
        self._anonymous_used = self.anonymous.used  # (read on every request naming one)
        self.watches = WatchTable()
        self._watches = self.watches.by_key  # (read on every commit)
        self._pushes: dict[Peer, list[Output]] = {}
        self._in_batch = False
        self._batch_peer: Peer | None = None  # whose batch is being applied
        self._own_pushes = 0  # bytes the request being applied queued for its own connection
        self._store_ops = self._store_operations(store)
        self._tracking: set[Peer] = set()  # connections with a client cache
        self._tracked: dict[tuple[str, str], set[Peer]] = {}  # (key, name) -> who cached it
        self._peer_tracked: dict[Peer, set[tuple[str, str]]] = {}  # the same, per connection
        self.exports = Exports(store)
        self._in_order = getattr(store, "snapshot_in_order", None)  # optional (stores/base.py)
        self._peer_ops: dict[str, Callable[..., ReplyData]] = {
            "get": self._get,
            "keys": self._keys,
            "dump": self._dump,
            "snapshot": self._snapshot,
            "snapshot_packed": self._snapshot_packed,
            "track": self._track,
            "watch": self._watch,
            "unwatch": self._unwatch,
            "acquire": self._acquire,
            "release": self._release,
            "info": self._info,
            "export": self.exports.begin,
            "export_read": self.exports.read,
        }
        self.requests = 0  # served: counted per batch (and per read answered alone)
        #: The ``info`` operation's figures; a Server adds its own (server/info.py).
        self.describe: Callable[..., dict[str, Any]] = functools.partial(dispatcher_figures, self)

    def _store_operations(self, store: Store) -> dict[str, Callable[..., Any]]:
        """The ops ``answer`` hands to the store as they are (a store the server awaits: none)."""
        return {
            "ping": lambda: None,
            "open": store.open,
            "set": store.set,
            "del": store.delete,
            "update": store.update,
            "setdefault": store.setdefault,
            "pop": store.pop,
            "incr": store.incr,
            "append": store.append,
            "cas": store.cas,
        }

    def _anonymous_namespaces(self, call_later: CallLater, grace: float) -> AnonymousNamespaces:
        return AnonymousNamespaces.of_store(self.store, call_later, grace)

    def respond(
        self,
        peer: Peer,
        events: list[Hello | Request | BadRequest | Refusal],
    ) -> list[Output]:
        """Apply a batch of events in order; return the answers (and pushes) to write."""
        return self.respond_some(peer, events, math.inf)[0]

    def respond_some(
        self, peer: Peer, events: list[Hello | Request | BadRequest | Refusal], budget: float
    ) -> tuple[list[Output], int]:
        """Apply events in order until the answers pass ``budget`` bytes: (answers, applied).

        The answers come as one buffer, unless some stand apart: a large value (written as the
        store holds it, never copied into a frame), a reply made as it is sent, or answers too
        many to join. The events applied form one batch: frames for other connections (watch
        events, deferred replies) arising during it are gathered and written once each at its
        end, in the order they arose. A connection that does not read its answers is applied a
        budget at a time (a watch's replay counts with its reply), so the memory it costs the
        server stays bounded.
        """
        out: list[Output] = []
        size = applied = 0
        large = False
        self._in_batch, self._batch_peer = True, peer
        self._own_pushes = 0
        plain_run = plain_gets(self.store.get, self._tracking, peer)  # (plain_gets.py)
        try:
            while applied < len(events):
                applied, size = plain_run(events, applied, out, size, budget)
                if applied == len(events) or size > budget:
                    break
                answer = self._apply(peer, events[applied])
                applied += 1
                if type(answer) is bytes:
                    out.append(answer)
                    size += len(answer)
                elif type(answer) is tuple:
                    out.extend(answer)
                    size += len(answer[0]) + len(answer[1])
                    large = True
                else:
                    assert isinstance(answer, Producer)
                    out.append(answer)
                    size += answer.remaining
                    large = True
                if self._own_pushes:  # its watch replays, its pushes of its own changes
                    size += self._own_pushes
                    self._own_pushes = 0
                if size > budget:
                    break
        finally:
            self.requests += applied
            try:
                if self._pushes:
                    large = self._flush(peer, out, type(events[applied - 1]) is Refusal) or large
            finally:
                self._in_batch, self._batch_peer = False, None
        return (out if large else [b"".join(out)]), applied  # type: ignore[arg-type]  # (bytes)

    def _flush(self, peer: Peer, out: list[Output], refused: bool) -> bool:
        """Write the frames a batch gave rise to for other connections; put those for ``peer``
        into its answers ``out`` (after the replies, before the refusal of a batch that ends
        so: it is always the last frame). True if those are not to be joined into one buffer.

        Still within the batch: frames that arise meanwhile (a lock handed over because a write
        here dropped its holder) are gathered in turn and written after, in the order they arose.
        """
        large = False
        while self._pushes:
            pushes, self._pushes = self._pushes, {}
            for other, frames in pushes.items():
                if other is peer:
                    at = len(out) - 1 if refused else len(out)
                    out[at:at] = frames
                    large = large or apart(frames)
                    continue
                try:
                    self._write(other, frames)
                except MemoryError:  # its pushes are lost: it must not go on as if they were not
                    other.drop()
        return large

    def _send(self, peer: Peer, frame: bytes) -> None:
        """A frame for ``peer`` outside its own answers: queued during a batch, else written."""
        if self._in_batch:
            self._pushes.setdefault(peer, []).append(frame)
        else:
            self._write(peer, [frame])

    def _write(self, peer: Peer, frames: list[Output]) -> None:
        bound = peer.protocol.limits.max_push_backlog_bytes
        if peer.backlog() > bound:
            # A watcher that does not read cannot make us hold its events forever.
            peer.write(
                peer.protocol.send_refusal(
                    ConnectionLost(
                        f"more than {bound} bytes of events went unread; "
                        "watch again from the last revision seen"
                    )
                )
            )
            peer.drop()  # at once: a close would wait for the unread bytes to drain
            return
        if len(frames) == 1:
            peer.write(frames[0])
        else:
            peer.write_all(frames)

    def connection_lost(self, peer: Peer) -> None:
        """Forget a connection's watches and cache; release its locks (to the next waiter)."""
        self.watches.connection_lost(peer)
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
        self.exports.connection_lost(peer)

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
        except MemoryError:
            raise  # the connection is dropped (Connections.failed), the server serves on
        except Exception as exc:  # a bug in a store must not take the server down
            logger.exception("internal error applying %s", op)
            return peer.protocol.send_error(request_id, exc)

    def _apply(self, peer: Peer, event: Hello | Request | BadRequest | Refusal) -> ReplyData:
        if type(event) is Request:
            return self.answer(peer, event.id, event.op, event.args)
        protocol = peer.protocol
        self.requests -= 1  # (respond_some counts every event: this one is no request)
        if type(event) is Hello:
            return protocol.send_hello()
        if type(event) is BadRequest:
            self.requests += 1  # answered: a request all the same
            return protocol.send_error(event.id, RemoteProtocolError(event.message))
        assert type(event) is Refusal
        return protocol.send_refusal(event.error)

    # ------------------------------------------------------------------ watches

    def _committed(self, key: str, revision: int, changes: Changes) -> None:
        if not self._tracked and not self._watches:
            return  # nobody to tell: the common case, kept cheap
        try:
            self._push(key, revision, changes)
        except MemoryError:
            # Some pushes of this committed revision may never have been queued: whoever may
            # have missed one must not go on as if it had not (a gap in a watch, a stale
            # cache). Dropped, it resumes (PROTOCOL.md 11.3).
            missed = {watch.peer for watch in self._watches.get(key, NO_WATCHES).values()}
            for name in changes:
                missed.update(self._tracked.get((key, name), ()))
            reason = ConnectionLost(
                "the server ran out of memory; watch again from the last revision seen"
            )
            for peer in missed:
                with contextlib.suppress(MemoryError):
                    peer.write(peer.protocol.send_refusal(reason))
                peer.drop()
            raise

    def _push(self, key: str, revision: int, changes: Changes) -> None:
        if key not in self._watches:  # caches to invalidate only (invalidations.py)
            for name in cached_among(self._tracked, key, changes):
                invalidate(self._tracked, self._peer_tracked, self._pushes, key, name)
            return
        for name, value in changes.items():
            if self._tracked:
                invalidate(self._tracked, self._peer_tracked, self._pushes, key, name)
            tail: tuple[bytes, ...] | None = None  # made once, shared by every watch
            for watch in self._watches.get(key, NO_WATCHES).values():
                if watch.names is None or name in watch.names:
                    if tail is None:  # (an appended list is encoded here: once per revision)
                        tail = event_tail(revision, name, materialised(value))
                    frames = self._pushes.setdefault(watch.peer, [])
                    frames.append(watch.head)
                    frames.extend(tail)
                    if watch.peer is self._batch_peer:  # counts against its reply budget
                        self._own_pushes += len(watch.head) + sum(map(len, tail))

    def _watch(
        self,
        peer: Peer,
        request_id: int,
        key: str,
        names: list[str] | None,
        resume: int | list[Any] | None,
    ) -> ReplyData:
        since: int | None
        if isinstance(resume, list):  # [epoch, revision]: a revision of that epoch only
            epoch, since = resume
            if epoch != self.store.epoch:
                raise HistoryExpired(
                    f"revision {since} counts in another lifetime of this board (epoch "
                    f"{epoch}; the server's is {self.store.epoch}): resync with _snapshot() "
                    "and watch from its revision"
                )
        else:
            since = resume
        selected = frozenset(names) if names is not None else None
        revision, values = self.store.snapshot(key, names if since is None else ())
        changes = [] if since is None else self.store.history(key, since)  # may raise
        watch = self.watches.add(peer, key, selected)
        budget = peer.protocol.limits.max_reply_backlog_bytes
        replayed = replay(watch.id, changes, selected, budget) if changes else None
        if replayed is not None:  # sent after the reply, which tells the client the watch id
            self._pushes.setdefault(peer, []).append(replayed)
            self._own_pushes += (
                replayed.remaining if isinstance(replayed, Producer) else len(replayed)
            )
        return values_reply(request_id, (watch.id, revision), values, budget)

    def _unwatch(self, peer: Peer, request_id: int, watch_id: int) -> bytes:
        return peer.protocol.send_result(request_id, self.watches.remove(peer, watch_id))

    def counts(self) -> tuple[int, int, int]:
        """(watches, connections tracking, names tracked): figures of ``info``."""
        return self.watches.count(), len(self._tracking), len(self._tracked)

    def _info(self, peer: Peer, request_id: int) -> bytes:
        return peer.protocol.send_result(request_id, self.describe())

    # ------------------------------------------------------------------ replies of any size

    def _keys(self, peer: Peer, request_id: int) -> ReplyData:
        budget = peer.protocol.limits.max_reply_backlog_bytes
        return list_reply(request_id, self.store.keys(), budget)

    def _dump(self, peer: Peer, request_id: int, key: str) -> ReplyData:
        budget = peer.protocol.limits.max_reply_backlog_bytes
        return values_reply(request_id, (), self.store.snapshot(key, None)[1], budget)

    def _snapshot(
        self, peer: Peer, request_id: int, key: str, names: list[str] | None
    ) -> ReplyData:
        revision, values = self.store.snapshot(key, names)
        budget = peer.protocol.limits.max_reply_backlog_bytes
        return values_reply(request_id, (revision,), values, budget)

    def _snapshot_packed(
        self, peer: Peer, request_id: int, key: str, names: list[str] | None
    ) -> ReplyData:
        found = self._in_order(key, names) if names and self._in_order else None
        revision, values = found or self.store.snapshot(key, names)
        budget = peer.protocol.limits.max_reply_backlog_bytes
        return packed_values_reply(request_id, revision, names, values, budget)

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
