"""Other servers' revisions of the namespaces a Redis store follows, pushed to ``on_commit``
(remote.py's promise: in revision order, without gaps, each once).

**Publication.** The namespace script publishes every revision it makes on the namespace's
shard channel, ``BASE:c`` (redis_scripts.py), with ``SPUBLISH`` on a standalone Redis as on a
cluster (one code path; Redis 7.0+): in a cluster the channel's hash tag puts it in the
namespace's slot, so the script may publish it and only that shard carries the message. The
message is ``EPOCH REV FLAG [CHANGES]``: the writer's epoch, the revision, ``n`` if the call
made the namespace, and the history entry's changes when they are small (``MAX_INLINE_BYTES``)
and hold no appended list: the common write then costs a follower no fetch, and a large value
is not copied to every subscriber. A dropped namespace publishes revision 0.
redis_subscriber.py holds the subscriptions (one connection per node).

**Delivery.** Per followed key, ``told``: the last revision told to ``on_commit`` (None until
the store observes one: ``follow(key)`` without ``since`` starts at the revision the next call
on the key sees: a read's ``Call.observed``, a write's revision less one, or ``history``), and
``seen``: the newest revision known to exist. A message for ``told + 1`` with its changes is
told at once; a later one, or one without changes, makes the store fetch from ``told + 1`` on
from the history (the namespace script's ``history``: every change and each appended list
whole, redis_history.py) and tell them in order; an older one was told already. ``apply``
tells the store's own revisions of followed keys through the same gate: its own revision may
reach it first by message, and then ``apply`` skips it; a revision of another server in
between is fetched first. When a subscription is confirmed (first, or after a reconnect) the
store reads the key's revision, so what was committed before the subscription took effect is
fetched too: ``apply`` never waits for a subscription. A gap the history no longer covers:
``on_lost(key)``, and on from the namespace's current revision. One fetch per key at a time
(a lock), and every tell checks ``told + 1``, so a message and ``apply`` racing to tell a
revision tell it once.

**Lost data.** A message of another epoch, a namespace made anew (``n``) under a key followed
past its revision, a key whose revision went back, a subscriber that reconnects: the store
reads the board's epoch (``RedisStore.check_epoch``), and if it is gone or another, the board
is new: every followed key is told again from its revision 0 in the new epoch (what the
history holds; ``on_lost`` beyond it) and the server gets ``on_epoch``. A message of another
epoch than the board's (the old board's, late; or a writer's that had not seen the new board
yet) is never told from its changes, which may be the old board's under a revision the new
one reuses: it makes the store fetch from the history. So does a fetch whose reply came after
a new epoch started: it is made again. A node that does not
continue the replication history its shard had (a failover that lost writes, a restart from
an AOF) makes a new epoch when the subscriber connects to it (redis_replication.py). A key
that went back on a board that kept its epoch was dropped by another server and made again
(or lost with a whole shard: not told apart): ``on_lost(key)``. Not detected: a drop and a
re-creation up to the same revision, both while this store's subscription was down.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import anyio

from ..._errors import StoreUnavailable
from .base import Changes
from .redis_history import UnfetchedList, replay, unpack_changes
from .redis_subscriber import Subscriptions

if TYPE_CHECKING:
    from .redis import RedisStore

__all__ = ["Follower"]


class _Followed:
    """A key the store follows: its channel, the last revision told, the newest known."""

    __slots__ = ("channel", "key", "lock", "seen", "told")

    def __init__(self, key: str, channel: str, told: int | None) -> None:
        self.key, self.channel = key, channel
        self.told = told
        self.seen = told or 0
        self.lock = anyio.Lock()  # one fetch of its history at a time


class Follower:
    """The followed keys of a ``RedisStore``, and the delivery of their revisions."""

    def __init__(self, store: RedisStore, cluster: bool) -> None:
        self._store = store
        self._keys: dict[str, _Followed] = {}
        self._channels: dict[str, str] = {}  # channel -> key
        self.subscriptions = Subscriptions(
            store, cluster, self._heard, self._confirmed, self._heard_now
        )

    def __contains__(self, key: str) -> bool:
        return key in self._keys

    def follow(self, key: str, since: int | None) -> None:
        if key in self._keys:  # (told from where it is: no revision twice)
            return
        channel = self._store.base(key) + ":c"
        self._keys[key] = _Followed(key, channel, since)
        self._channels[channel] = key
        self.subscriptions.add(channel)

    def unfollow(self, key: str) -> None:
        state = self._keys.pop(key, None)
        if state is not None:
            del self._channels[state.channel]
            self.subscriptions.remove(state.channel)

    def reset(self) -> None:
        """The board is new: every key is told again from its revision 0."""
        for state in self._keys.values():
            if state.told is not None:
                state.told = 0
            state.seen = 0

    async def _heard(self, channel: str, data: bytes) -> None:
        key = self._channels.get(channel)
        if key is not None:
            await self._message(self._keys[key], data)

    def _heard_now(self, channel: str, data: bytes) -> bool:
        """``_message`` where it needs no await (the message of the epoch, of a namespace not
        dropped or made again, told or the next one with its changes): True if done here."""
        key = self._channels.get(channel)
        if key is None:
            return True
        state = self._keys[key]
        epoch, revision_text, flag, *rest = data.split(b" ", 3)
        revision, told = int(revision_text), state.told
        if epoch.decode() != self._store.epoch or revision == 0:
            return False
        if flag == b"n" and told is not None and told > revision:
            return False  # (made again, or late: _message reads the revision to say which)
        if told is None or revision <= told:
            state.seen = max(state.seen, revision)
            return True
        if revision == told + 1 and rest:
            state.seen = max(state.seen, revision)
            self.tell(state, revision, unpack_changes(rest[0]))
            return True
        return False  # (a fetch of the history: _message)

    async def _confirmed(self, channels: list[str]) -> None:
        """Subscribed: what was committed before is fetched (the keys' revisions read in one
        pipeline: one round trip per node however many keys a reconnect subscribes again)."""
        states = [self._keys[key] for c in channels if (key := self._channels.get(c)) is not None]
        if not states:
            return
        store = self._store
        async with store._guard():
            pipe = store._client.pipeline(transaction=False)
            for state in states:
                pipe.hget(store.base(state.key) + ":m", "r")
            found = await pipe.execute()
        for state, revision in zip(states, map(int, (f or 0 for f in found)), strict=True):
            state.seen = max(state.seen, revision)
            if state.told is not None and revision != state.told:
                await self.fill(state)

    async def _message(self, state: _Followed, data: bytes) -> None:
        epoch, revision_text, flag, *rest = data.split(b" ", 3)
        revision = int(revision_text)
        # (a namespace is made at revision 1; its message after a fill that told it is no news:
        # one published before the revision read at the subscription, and queued behind that
        # read, is told by the fill the read started. Made again, the namespace is now behind
        # what was told; a message that came late finds it there or further.)
        made_again = flag == b"n" and state.told is not None and state.told > revision
        if made_again and epoch.decode() == self._store.epoch:
            made_again = await self._revision(state.key) < (state.told or 0)
        if (epoch.decode() != self._store.epoch or made_again) and await self._store.check_epoch():
            made_again = False  # a new board: every key starts again from 0
        if revision == 0 or made_again:  # dropped (and made again) by another server
            if state.told:
                state.told = state.seen = 0
                self._lost(state.key)
            if revision == 0:
                return
        # A message of another epoch than the board's (published before a flush, or by a
        # writer that had not seen the new board yet) may hold the old board's changes, under
        # a revision the new board reuses: it says that something happened, the history what.
        current = epoch.decode() == self._store.epoch
        if current:
            state.seen = max(state.seen, revision)
        if state.told is None or revision <= state.told:
            return
        if revision == state.told + 1 and rest and current:
            self.tell(state, revision, unpack_changes(rest[0]))
        else:
            await self.fill(state)

    async def _revision(self, key: str) -> int:
        """The namespace's revision in Redis now (0: it has none)."""
        store = self._store
        async with store._guard():
            found = await store._client.hget(store.base(key) + ":m", "r")
        return int(found or 0)

    def tell(self, state: _Followed, revision: int, changes: Changes) -> bool:
        """Tell ``revision`` if it is the next one; False if it is not."""
        if (
            state.told is None
            or revision != state.told + 1
            or self._keys.get(state.key) is not state
        ):
            return False
        state.told = revision
        state.seen = max(state.seen, revision)
        on_commit = self._store.on_commit
        if on_commit is not None:
            on_commit(state.key, revision, changes)
        return True

    def _lost(self, key: str) -> None:
        on_lost = self._store.on_lost
        if on_lost is not None:
            on_lost(key)

    async def fill(self, state: _Followed) -> None:
        """Tell what the history holds after ``told`` (on_lost if it no longer reaches it)."""
        async with state.lock:
            while True:
                since = state.told
                if since is None or self._keys.get(state.key) is not state:
                    return
                epoch = self._store.epoch
                async with self._store._guard():  # (the script's reply, redis_scripts.py)
                    reply = await self._store._script(state.key, "history", (since,))
                if self._store.epoch != epoch:
                    continue  # a new board meanwhile (told again from its 0): not the old one's
                if reply[0] != b"expired":
                    break
                if state.told != since:
                    continue  # told meanwhile (a message): the history may reach it now
                revision = int(reply[1])
                if since > revision and await self._store.check_epoch():
                    return  # revisions went back with the board: a new epoch
                state.told = state.seen = revision
                self._lost(state.key)
                return
            # (revisions told meanwhile, by a message or apply, are in the reply too: tell
            # skips them and goes on with the rest; giving up here would leave a read that
            # waits for them to call the key lost)
            by_revision: dict[int, dict[str, Any]] = {}
            for change in replay(state.key, reply[1], reply[2]):
                by_revision.setdefault(change.revision, {})[change.name] = change.value
            for revision, changes in by_revision.items():
                self.tell(state, revision, changes)
            state.seen = max(state.seen, int(reply[3]))

    # ------------------------------------------------------------------ apply's side

    def observed(self, key: str, revision: int) -> None:
        """A read saw ``key`` at ``revision``: a key followed from "now" starts there."""
        state = self._keys.get(key)
        if state is not None and state.told is None:
            state.told = revision

    def read_now(self, key: str, revision: int) -> bool:
        """``after_read`` when it need not fetch (the key is told up to ``revision``): False,
        and a fetch due (``after_read`` does it), if not."""
        self.observed(key, revision)
        state = self._keys.get(key)
        return state is None or state.told is None or state.told >= revision

    async def after_read(self, key: str, revision: int) -> None:
        """A call of ``apply`` (or ``history``) saw ``key`` at ``revision``: a key followed
        from "now" starts there, and one told less is told up to it before the call returns:
        the server starts a watch at that revision, so a revision up to it told later would
        reach the new watch twice (server/remote_feed.py)."""
        if self.read_now(key, revision):
            return
        state = self._keys[key]
        state.seen = max(state.seen, revision)
        try:
            await self.fill(state)
        except StoreUnavailable:
            pass
        if state.told is not None and state.told < revision:  # (could not be fetched)
            state.told = state.seen = revision
            self._lost(key)

    def own_now(self, key: str, revision: int, changes: Changes) -> bool:
        """``own`` when it need not fetch (no other server's revision of the key is untold
        before this one; ``changes`` whole, as a set's or an update's): False, and nothing
        done, if it must (``own`` does it)."""
        state = self._keys.get(key)
        if state is not None and state.told is not None and revision > state.told + 1:
            return False
        followed = self._owned(key, state, revision, changes)
        if followed is not None:
            self.tell(followed, revision, changes)  # (told already if its message came first)
        return True

    def _owned(
        self, key: str, state: _Followed | None, revision: int, changes: Changes
    ) -> _Followed | None:
        """What ``own`` and ``own_now`` do first with this store's own revision: an unfollowed
        key's (``state`` None: unfollowed meanwhile) is told as any other key's, and None; a
        key followed from "now" starts before it, and its state is returned."""
        if state is None:
            if self._store.on_commit is not None:
                self._store.on_commit(key, revision, changes)
            return None
        if state.told is None:
            state.told = revision - 1
        state.seen = max(state.seen, revision)
        return state

    async def own(self, key: str, revision: int, changes: Changes) -> None:
        """This store's own revision of a followed key, after those before it."""
        state = self._owned(key, self._keys.get(key), revision, changes)
        if state is None:
            return
        whole = not any(isinstance(value, UnfetchedList) for value in changes.values())
        while state.told is not None and state.told < revision:
            if revision == state.told + 1 and whole:
                self.tell(state, revision, changes)
                return
            before = state.told  # another server wrote in between: theirs first
            try:
                await self.fill(state)
            except StoreUnavailable:
                break
            if state.told == before:
                break
        if state.told is not None and state.told < revision:  # the history would not say
            state.told = state.seen = revision
            self._lost(key)
