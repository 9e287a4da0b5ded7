"""What a store the server awaits tells it: revisions, lost keys, new epochs (stores/remote.py).

A ``RemoteStore`` calls ``on_commit`` for the revisions of the server's own batches (during
``apply``) and for other servers' revisions of the keys the server ``follow``\\ s, at any
time outside a batch. ``FeedDispatcher`` is the ``Dispatcher`` those calls feed: the same
watch pushes and cache invalidations (``Dispatcher._committed``), delivered at once to an idle
connection and, to one whose batch is in the store, after that batch's replies (``_held``), so
that each connection still sees its pushes in revision order and after its own replies. (What
a shared store cannot give, PROTOCOL.md 11.4 says: a push may follow the reply to a read that
already saw its change.)

**Following.** The server follows a key while it has a watch or a tracked name (a client
cache's) of it, or while one of them is *starting*: a watch's or a tracked read's store call
is in flight. Such a start records the revisions of its key that arrive meanwhile
(``Arrivals``): the read returns the revision it read at, and what arrived after it is pushed
to the new watch, or invalidates the name just read, so that nothing falls between the read
and the watch or the tracking. (The server follows before it sends the read, and a store
delivers every revision after the one that read sees, or, for a watch that resumes, after its
``since``: ``follow(key, since)``, stores/remote.py.)

**Losses.** ``on_lost(key)``: revisions of the key went by undelivered. Each tracked name of
it is invalidated, each connection watching it is ended with ``ConnectionLost`` (the
connection-level error of PROTOCOL.md 7.3: it resumes with ``since`` and gets the missed
changes or ``HistoryExpired``), and a watch starting on it gets ``HistoryExpired``.
``on_epoch(epoch)``: the store's board lost data and is a new board. The hello of every new
connection says so (``Server.epoch`` is the store's); the connections that watch, cache or
start either are ended with ``ConnectionLost``, as if the server had restarted, so that their
clients reconnect to the new epoch: caches emptied, watches resumed from another epoch's
revision refused with ``HistoryExpired``.
"""

from __future__ import annotations

import logging
from typing import Any

from .._errors import ConnectionLost, HistoryExpired, StoreUnavailable
from ..protocol.connection import ServerConnection
from ..protocol.events import missing_attribute
from ..protocol.pieces import Output, materialised, replay, values_reply
from .anonymous import ANONYMOUS
from .dispatch import _CALLER_ERRORS, Dispatcher, ReplyData
from .peer import Peer
from .stores import Change, Changes
from .stores.remote import RemoteStore
from .watches import NO_WATCHES

__all__ = ["EXPECTED_ERRORS", "Arrivals", "FeedDispatcher", "Gone", "missed"]

logger = logging.getLogger("aionamespace.server")

#: Errors a request may end with on purpose: its error reply, nothing logged. ConnectionLost:
#: its connection went while it was in the store (a new epoch ended it), so its answer is moot.
EXPECTED_ERRORS = (*_CALLER_ERRORS, StoreUnavailable, ConnectionLost)


class Arrivals:
    """The revisions of one key delivered while reads that start watches or trackings of it
    are in the store (``starts`` of them), their values made bytes; ``lost``: some never
    will be (``on_lost``, a new epoch)."""

    __slots__ = ("lost", "revisions", "starts")

    def __init__(self) -> None:
        self.revisions: list[tuple[int, dict[str, bytes | None]]] = []
        self.starts = 0
        self.lost = False

    def after(self, key: str, revision: int) -> list[Change]:
        """The changes of the revisions after ``revision``, in order."""
        return [
            Change(key, committed, name, value)
            for committed, changes in self.revisions
            if committed > revision
            for name, value in changes.items()
        ]

    def changed_after(self, revision: int, name: str) -> bool:
        return self.lost or any(
            committed > revision and name in changes for committed, changes in self.revisions
        )


class Gone(Exception):
    """The connection went away while its batch was in the store."""


class _Section:
    """``with``: a step of ``peer``'s batch that does not await (``FeedDispatcher._section``;
    a class, not a generator: it runs several times per request)."""

    __slots__ = ("dispatcher", "peer")

    def __init__(self, dispatcher: FeedDispatcher, peer: Peer) -> None:
        self.dispatcher, self.peer = dispatcher, peer

    def __enter__(self) -> None:
        dispatcher = self.dispatcher
        dispatcher._in_batch, dispatcher._batch_peer = True, self.peer

    def __exit__(self, *exc_info: object) -> None:
        dispatcher = self.dispatcher
        dispatcher._in_batch, dispatcher._batch_peer, dispatcher._own_pushes = False, None, 0
        dispatcher._deliver()


class FeedDispatcher(Dispatcher):
    """A ``Dispatcher`` fed by a ``RemoteStore``'s hooks (see the module's docstring)."""

    remote: RemoteStore

    def _feed_from(self, store: RemoteStore) -> None:
        self.remote = store
        #: Connections with a batch in the store -> frames for them, sent after its replies.
        self._held: dict[Peer, list[Output]] = {}
        self._following: set[str] = set()
        self._key_tracked: dict[str, set[str]] = {}  # key -> its names some cache tracks
        self._arrivals: dict[str, Arrivals] = {}  # key -> revisions arriving as starts run
        store.on_commit = self._remote_committed
        store.on_lost = self._lost
        store.on_epoch = self._new_epoch

    # ------------------------------------------------------------------ delivering

    def _write(self, peer: Peer, frames: list[Output]) -> None:
        held = self._held.get(peer)
        if held is not None:  # after the replies of the batch it has in the store
            held.extend(frames)
            return
        super()._write(peer, frames)

    def _deliver(self) -> None:
        """Send what was gathered for each connection (held, for one with a batch in the
        store); frames that arise meanwhile (a lock handed over) follow, in order."""
        while self._pushes:
            pushes, self._pushes = self._pushes, {}
            for peer, frames in pushes.items():
                try:
                    self._write(peer, frames)
                except MemoryError:  # its pushes are lost: it must not go on as if they were not
                    peer.drop()

    def _section(self, peer: Peer) -> _Section:
        """A step that does not await: what it gives rise to is sent at its end."""
        return _Section(self, peer)

    def _alive(self, peer: Peer) -> bool:
        return peer in self._held

    def _admit(self, peer: Peer, op: str, key: str) -> str | None:
        """The anonymous namespaces' rule (``Dispatcher.answer``); ``key`` if this request is
        the ``open`` that creates it (undone if it fails)."""
        if key[:1] != ANONYMOUS or key in self._anonymous_used.get(peer, ()):
            return None
        held = self.anonymous.holds(key)
        self.anonymous.first_use(peer, op, key)
        return None if held else key

    # ------------------------------------------------------------------ following

    def _follow(self, key: str, since: int | None = None) -> None:
        if key not in self._following:
            self._following.add(key)
            self.remote.follow(key, since)

    def _maybe_unfollow(self, key: str) -> None:
        """Stop following ``key`` once nothing of this server needs its revisions."""
        if (
            key in self._following
            and key not in self._watches
            and not self._key_tracked.get(key)
            and key not in self._arrivals
        ):
            self._following.discard(key)
            self.remote.unfollow(key)

    def _start(self, key: str, since: int | None = None) -> Arrivals:
        """A read that starts a watch or a tracking of ``key`` goes to the store."""
        arrivals = self._arrivals.get(key)
        if arrivals is None:
            arrivals = self._arrivals[key] = Arrivals()
        arrivals.starts += 1
        self._follow(key, since)
        return arrivals

    def _started(self, key: str, arrivals: Arrivals) -> None:
        """That read is back (call ``_maybe_unfollow`` once what it starts is in the tables)."""
        arrivals.starts -= 1
        if not arrivals.starts and self._arrivals.get(key) is arrivals:
            del self._arrivals[key]

    def _track_read(self, peer: Peer, key: str, name: str) -> None:
        """``peer``'s cache holds ``name`` of ``key``: invalidate it at its next change."""
        item = (key, name)
        self._tracked.setdefault(item, set()).add(peer)
        self._peer_tracked.setdefault(peer, set()).add(item)
        self._key_tracked.setdefault(key, set()).add(name)

    # ------------------------------------------------------------------ starts

    def _tracked_read(
        self, peer: Peer, request_id: int, key: str, name: str, arrivals: Arrivals, result: Any
    ) -> ReplyData:
        """A tracked ``get``, read with its revision: tracked from then on, or invalidated at
        once if a change of the name arrived after that revision while the read was out."""
        self._started(key, arrivals)
        if isinstance(result, BaseException):
            self._maybe_unfollow(key)
            return self._error(peer, request_id, result)
        revision, values = result
        if arrivals.changed_after(revision, name):
            frame = ServerConnection.send_invalidation(key, name)
            self._pushes.setdefault(peer, []).append(frame)  # after the reply
        else:
            self._track_read(peer, key, name)
        self._maybe_unfollow(key)
        value = values.get(name)
        if value is None:
            return peer.protocol.send_error(request_id, missing_attribute(name))
        return peer.protocol.send_value(request_id, value)

    def _watch_started(
        self,
        peer: Peer,
        request_id: int,
        key: str,
        names: list[str] | None,
        arrivals: Arrivals,
        result: Any,
    ) -> ReplyData:
        """A watch from now: its snapshot is back; what arrived after it is pushed."""
        self._started(key, arrivals)
        if not isinstance(result, BaseException) and arrivals.lost:
            result = missed(key)
        if isinstance(result, BaseException):
            self._maybe_unfollow(key)
            return self._error(peer, request_id, result)
        revision, values = result
        return self._begin_watch(peer, request_id, key, names, revision, values, [], arrivals)

    def _begin_watch(
        self,
        peer: Peer,
        request_id: int,
        key: str,
        names: list[str] | None,
        revision: int,
        values: dict[str, bytes],
        replayed: list[Any],
        arrivals: Arrivals,
    ) -> ReplyData:
        selected = frozenset(names) if names is not None else None
        watch = self.watches.add(peer, key, selected)
        budget = peer.protocol.limits.max_reply_backlog_bytes
        changes = replayed + arrivals.after(key, revision)
        pushes = replay(watch.id, changes, selected, budget) if changes else None
        if pushes is not None:  # after the reply, which tells the client the watch id
            self._pushes.setdefault(peer, []).append(pushes)
        return values_reply(request_id, (watch.id, revision), values, budget)

    async def _watch_since(
        self,
        peer: Peer,
        request_id: int,
        key: str,
        names: list[str] | None,
        resume: int | list[Any],
    ) -> ReplyData:
        """A watch that resumes: the history since, then what arrived after it."""
        with self._section(peer):
            try:
                self._admit(peer, "watch", key)
                since = self._since_of(resume)
            except EXPECTED_ERRORS as exc:
                return peer.protocol.send_error(request_id, exc)
            arrivals = self._start(key, since)
        try:
            changes: Any = await self.remote.history(key, since)
        except MemoryError:
            raise
        except Exception as exc:
            changes = exc
        with self._section(peer):
            self._started(key, arrivals)
            if not isinstance(changes, BaseException) and arrivals.lost:
                changes = missed(key)
            if isinstance(changes, BaseException) or not self._alive(peer):
                self._maybe_unfollow(key)
                if not self._alive(peer):
                    raise Gone
                return self._error(peer, request_id, changes)
            revision = changes[-1].revision if changes else since
            return self._begin_watch(peer, request_id, key, names, revision, {}, changes, arrivals)

    def _since_of(self, resume: int | list[Any]) -> int:
        if not isinstance(resume, list):
            return resume
        epoch, since = resume
        if epoch != self.remote.epoch:
            raise HistoryExpired(
                f"revision {since} counts in another lifetime of this board (epoch "
                f"{epoch}; the server's is {self.remote.epoch}): resync with _snapshot() "
                "and watch from its revision"
            )
        return int(since)

    def _error(self, peer: Peer, request_id: int, error: BaseException) -> bytes:
        if not isinstance(error, EXPECTED_ERRORS):
            logger.error("internal error applying a request", exc_info=error)
        return peer.protocol.send_error(request_id, error)

    # ------------------------------------------------------------------ the store's hooks

    def _remote_committed(self, key: str, revision: int, changes: Changes) -> None:
        arrivals = self._arrivals.get(key)
        if arrivals is not None:
            arrivals.revisions.append(
                (revision, {name: materialised(value) for name, value in changes.items()})
            )
        if not self._tracked and not self._watches:
            return
        try:
            self._committed(key, revision, changes)
        except MemoryError:  # (those who missed a push were dropped)
            logger.error("out of memory pushing revision %d of %r", revision, key)
        tracked = self._key_tracked.get(key)
        if tracked:
            for name in tracked.intersection(changes):  # (in C: a change holds many names)
                if (key, name) not in self._tracked:  # invalidated: no longer tracked
                    tracked.discard(name)
            if not tracked:
                del self._key_tracked[key]
                self._maybe_unfollow(key)
        self._deliver()

    def _lost(self, key: str) -> None:
        arrivals = self._arrivals.get(key)
        if arrivals is not None:
            arrivals.lost = True
        for name in self._key_tracked.pop(key, ()):
            frame = ServerConnection.send_invalidation(key, name)
            for reader in self._tracked.pop((key, name), ()):
                self._peer_tracked[reader].discard((key, name))
                self._pushes.setdefault(reader, []).append(frame)
        self._deliver()
        watchers = {watch.peer for watch in self._watches.get(key, NO_WATCHES).values()}
        self._end(
            watchers,
            ConnectionLost(
                f"this server missed changes of {key!r} that its store no longer holds; "
                "watch again from the last revision seen"
            ),
        )
        self._maybe_unfollow(key)

    def _new_epoch(self, epoch: str) -> None:
        logger.warning("the store lost data: a new epoch, %s", epoch)
        for arrivals in self._arrivals.values():
            arrivals.lost = True
        ended = set(self._tracking) | set(self._peer_tracked)
        for watches in self._watches.values():
            ended.update(watch.peer for watch in watches.values())
        self._end(
            ended,
            ConnectionLost(
                f"the board's store lost data and starts a new epoch ({epoch}): reconnect, "
                "resync with _snapshot() and watch from its revision"
            ),
        )

    def _end(self, peers: set[Any], error: Exception) -> None:
        """End these connections with ``error`` as their last frame."""
        for peer in peers:
            self._held.pop(peer, None)  # what waited for its batch is moot
            try:
                peer.write(peer.protocol.send_refusal(error))
            except MemoryError:
                pass  # dropped all the same, without a last word
            peer.drop()

    def connection_lost(self, peer: Peer) -> None:
        self._held.pop(peer, None)  # (its batch in the store sees it gone, and stops)
        items = list(self._peer_tracked.get(peer, ()))
        keys = self.watches.keys_of(peer)
        super().connection_lost(peer)
        for key, name in items:
            if (key, name) not in self._tracked:
                tracked = self._key_tracked.get(key)
                if tracked is not None:
                    tracked.discard(name)
                    if not tracked:
                        del self._key_tracked[key]
            keys.add(key)
        for key in keys:
            self._maybe_unfollow(key)


def missed(key: str) -> HistoryExpired:
    return HistoryExpired(
        f"changes of {key!r} went by while the watch started and the store no longer holds "
        "them: resync with _snapshot() and watch from its revision"
    )
