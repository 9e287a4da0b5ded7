"""Other servers' revisions of the namespaces a Redis store follows, pushed to ``on_commit``.

**Publication.** The namespace script publishes every revision it makes on the namespace's
shard channel, ``BASE:c`` (redis_scripts.py): ``SPUBLISH``, on a standalone Redis as on a
cluster, where the channel's hash tag puts it in the namespace's slot, so the script may
publish it (Redis 7.0+, as sharded pub/sub). The message is ``EPOCH REV FLAG [CHANGES]``: the
writer's epoch, the revision, ``n`` if the call made the namespace, and the history entry's
changes when they are small (``MAX_INLINE_BYTES``) and carry no appended list: then a
follower needs no fetch. A dropped namespace publishes revision 0.

**Subscriptions.** One subscriber connection per node at most, owned by a ``_Node`` task
that ``run`` starts: a sender that (un)subscribes the node's channels as ``follow`` and
``unfollow`` change them, and a receiver that reads its messages as they come (a blocking
read: nothing polls). A channel whose slot moved (MOVED, or a ``sunsubscribe`` Redis sends
when a slot leaves a node) goes where the refreshed slot map says. redis-py 8.2's asyncio
``ClusterPubSub`` has ``ssubscribe`` too, but one reader polls every node in turn with a slice
of a timeout (a message waits out the slices of idle nodes), and it reconnects and
resubscribes on its own, so we could not tell when to fill a gap: we keep our own connection
per node, made like the cluster client's, never retrying.

**Delivery.** Per followed key, ``told``: the last revision told to ``on_commit`` (None until
the store observes one: ``follow(key)`` without ``since`` starts at the revision the next
read or write of the key sees, ``Call.observed``), and ``seen``: the newest revision known to
exist. A message for ``told + 1`` with its changes is told at once; a later one, or one
without changes, makes the store fetch ``told + 1`` onward from the history (the namespace
script's ``history``, redis_history.py) and tell them in order; an older one was told already
(``apply`` tells the store's own revisions: those first reach it here or there, whichever is
first; the other skips them). When a subscription is confirmed (first, or after a reconnect)
the store reads the key's revision: what was committed before the subscription took effect is
fetched too. A gap the history no longer covers: ``on_lost(key)``, and on from the current
revision.

**Losing the connection.** The node's task reconnects by itself, with a backoff from
``MIN_BACKOFF`` to ``MAX_BACKOFF`` seconds, checks the board's epoch, subscribes again, and
each confirmation fills its key's gap. While Redis is unreachable only this task waits; the
store's calls fail with StoreUnavailable as they would anyway.

**Lost data.** A message of another epoch, a namespace made anew under a key followed past
revision 0, or a key whose revision went back: the store reads the board's epoch, and if it is
gone or another, the board is new (``RedisStore.check_epoch``): every key starts again from
revision 0 and the server gets ``on_epoch``. A key whose revisions went back on a board that
kept its epoch was dropped and made again: ``on_lost(key)``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import anyio
import anyio.abc
import msgpack

from ..._errors import StoreUnavailable
from .base import Changes
from .redis_client import subscriber
from .redis_history import UnfetchedList, replay

if TYPE_CHECKING:
    from .redis import RedisStore

__all__ = ["Follower"]

logger = logging.getLogger("aionamespace.server")

MIN_BACKOFF = 0.05
MAX_BACKOFF = 2.0


class _Followed:
    """A key the store follows: its channel, the last revision told, the newest known."""

    __slots__ = ("channel", "key", "lock", "seen", "told")

    def __init__(self, key: str, channel: str, told: int | None) -> None:
        self.key, self.channel = key, channel
        self.told = told
        self.seen = told or 0
        self.lock = anyio.Lock()  # one fetch of its history at a time


class _Idle(Exception):
    """A node's connection has no channel left: closed until one comes."""


class _Node:
    """The subscriber connection to one node (the one server of a standalone Redis)."""

    def __init__(self, name: str, make: Callable[[], Any]) -> None:
        self.name, self.make = name, make
        self.wanted: set[str] = set()  # channels it should be subscribed to
        self.sent: set[str] = set()  # channels subscribed on the current connection
        self.leaving: set[str] = set()  # channels unsubscribed, not yet confirmed
        self.changed = anyio.Event()

    def wake(self) -> None:
        self.changed.set()


class Follower:
    """The followed keys of a ``RedisStore`` and the tasks that deliver their revisions."""

    def __init__(self, store: RedisStore, cluster: bool) -> None:
        self._store = store
        self._cluster = cluster
        self._keys: dict[str, _Followed] = {}
        self._channels: dict[str, str] = {}  # channel -> key
        self._nodes: dict[str, _Node] = {}
        self._group: anyio.abc.TaskGroup | None = None
        self._pools: dict[str, Any] = {}  # a cluster node's name -> its subscribers' pool
        self._replids: dict[str, bytes] = {}  # a node's name -> its replication id, last seen
        self._promoted: set[str] = set()  # nodes whose replica took over (keys may go back)

    def __contains__(self, key: str) -> bool:
        return key in self._keys

    # ------------------------------------------------------------------ following

    def follow(self, key: str, since: int | None) -> None:
        if key in self._keys:  # (told from where it is: no revision twice)
            return
        channel = self._store.base(key) + ":c"
        self._keys[key] = _Followed(key, channel, since)
        self._channels[channel] = key
        self._place(channel)

    def unfollow(self, key: str) -> None:
        state = self._keys.pop(key, None)
        if state is None:
            return
        del self._channels[state.channel]
        for node in self._nodes.values():
            if state.channel in node.wanted:
                node.wanted.discard(state.channel)
                node.wake()

    def _place(self, channel: str) -> None:
        """Subscribe ``channel`` on the node that holds its slot."""
        if self._cluster:
            found = self._store._client.get_node_from_key(channel)
            name = found.name
        else:
            found, name = None, ""
        node = self._nodes.get(name)
        if node is None:
            client = self._store._client
            node = self._nodes[name] = _Node(name, lambda: subscriber(client, found, self._pools))
            if self._group is not None:
                self._group.start_soon(self._serve, node)
        node.wanted.add(channel)
        node.sent.discard(channel)  # (subscribed again all the same: its confirmation fills)
        node.wake()

    async def _rehome(self, channels: set[str]) -> None:
        """The slot of these channels moved: refresh the slot map, subscribe where it went."""
        if self._cluster:
            await self._store._client.nodes_manager.initialize()
        for node in self._nodes.values():
            node.wanted -= channels
            node.sent -= channels
        for channel in channels:
            if channel in self._channels:
                self._place(channel)

    def reset(self) -> None:
        """The board is new: every key starts again from revision 0."""
        for state in self._keys.values():
            if state.told is not None:
                state.told = 0
            state.seen = 0
        self._promoted.clear()

    async def aclose(self) -> None:
        for pool in self._pools.values():
            await pool.aclose()

    # ------------------------------------------------------------------ the tasks

    async def run(self) -> None:
        """Serve every node's subscriber connection until cancelled."""
        async with anyio.create_task_group() as group:
            self._group = group
            try:
                for node in list(self._nodes.values()):
                    group.start_soon(self._serve, node)
                await anyio.sleep_forever()
            finally:
                self._group = None

    async def _serve(self, node: _Node) -> None:
        """One node's connection: (re)made while it has channels, with a bounded backoff."""
        delay = MIN_BACKOFF
        while True:
            if not node.wanted:
                node.changed = anyio.Event()
                if not node.wanted:
                    await node.changed.wait()
                continue
            pubsub = node.make()
            node.sent, node.leaving = set(), set()
            try:
                ended = await self._connected(node, pubsub)
            finally:
                with anyio.CancelScope(shield=True):
                    try:
                        await pubsub.aclose()
                    except Exception:  # (a broken connection closes as it can)
                        pass
            if isinstance(ended, _Idle):
                delay = MIN_BACKOFF
                continue
            logger.info("subscriber of %s (%s) lost: %s", self._store.name, node.name, ended)
            await anyio.sleep(delay)
            delay = min(delay * 2, MAX_BACKOFF)

    async def _connected(self, node: _Node, pubsub: Any) -> BaseException:
        """Check the epoch, connect, subscribe, receive: what ended it (an error, or _Idle)."""
        ended: list[BaseException] = []
        expected = (_Idle, StoreUnavailable, *self._store._errors)

        async def guarded(step: Callable[[_Node, Any], Any]) -> None:
            try:
                await step(node, pubsub)
            except expected as exc:
                ended.append(exc)
                group.cancel_scope.cancel()

        try:
            await pubsub.connect()
            await self._store.check_epoch(await self._lost_data(node, pubsub.connection))
        except expected as exc:
            return exc
        async with anyio.create_task_group() as group:
            group.start_soon(guarded, self._send)
            group.start_soon(guarded, self._receive)
        return ended[0] if ended else _Idle()

    async def _lost_data(self, node: _Node, connection: Any) -> bool:
        """Whether the node lost data since this store last connected to it: its replication
        id changed, and the new one does not continue the old (``master_replid2``: a replica
        that took over continues its master's history, though maybe not all of it: a key seen
        to go back on it is data lost too, ``fill``). A restart that loads an RDB file keeps
        the id; one from an AOF does not, and counts as a loss: a needless new epoch costs the
        clients a resync, a missed one would replay wrong data."""
        await connection.send_command("INFO", "replication")
        info = dict(
            line.split(b":", 1)
            for line in (await connection.read_response()).splitlines()
            if b":" in line
        )
        replid, last = info.get(b"master_replid"), self._replids.get(node.name)
        if replid is None:
            return False
        self._replids[node.name] = replid
        if last is None or replid == last:
            return False
        if info.get(b"master_replid2") == last:
            self._promoted.add(node.name)
            return False
        return True

    async def _send(self, node: _Node, pubsub: Any) -> None:
        while True:
            node.changed = anyio.Event()
            for channel in sorted(node.wanted - node.sent):
                node.sent.add(channel)
                await pubsub.ssubscribe(channel)
            for channel in sorted(node.sent - node.wanted):
                node.sent.discard(channel)
                node.leaving.add(channel)
                await pubsub.sunsubscribe(channel)
            if not node.sent and not node.wanted:
                raise _Idle
            await node.changed.wait()

    async def _receive(self, node: _Node, pubsub: Any) -> None:
        moved = self._store._moved
        while True:
            try:
                message = await pubsub.get_message(timeout=None)
            except moved as exc:  # an ssubscribe to a node that no longer holds the slot
                slot = exc.slot_id
                await self._rehome({c for c in node.sent if self._slot(c) == slot})
                continue
            if message is None:
                continue
            kind, channel = message["type"], message["channel"].decode()
            if kind == "sunsubscribe":
                if channel in node.leaving:
                    node.leaving.discard(channel)
                elif channel in node.sent:  # unasked: its slot left the node
                    await self._rehome({channel})
                continue
            key = self._channels.get(channel)
            if key is None:
                continue
            if kind == "smessage":
                await self._message(self._keys[key], message["data"])
            elif kind == "ssubscribe":
                await self._confirmed(self._keys[key])

    def _slot(self, channel: str) -> int:
        return int(self._store._client.keyslot(channel))

    # ------------------------------------------------------------------ delivery

    async def _confirmed(self, state: _Followed) -> None:
        """Subscribed: what was committed before is fetched (read the key's revision)."""
        revision = await self._store.revision(state.key)
        state.seen = max(state.seen, revision)
        if state.told is not None and revision != state.told:
            await self.fill(state)

    async def _message(self, state: _Followed, data: bytes) -> None:
        epoch, revision_text, flag, *rest = data.split(b" ", 3)
        revision = int(revision_text)
        # (a namespace is made at revision 1; its message after a fill that told it is no news)
        made_again = flag == b"n" and state.told is not None and state.told > revision
        if (epoch.decode() != self._store.epoch or made_again) and await self._store.check_epoch():
            made_again = False  # a new board: every key starts again from 0
        if revision == 0 or made_again:  # dropped (and made again) by another server
            if state.told:
                state.told = state.seen = 0
                self._lost(state.key)
            if revision == 0:
                return
        state.seen = max(state.seen, revision)
        if state.told is None or revision <= state.told:
            return
        if revision == state.told + 1 and rest:
            flat = msgpack.unpackb(rest[0], raw=True, use_list=True)
            changes: Changes = {
                flat[i + 1].decode(): flat[i + 2] if flat[i] == b"s" else None
                for i in range(0, len(flat), 3)
            }
            self.tell(state, revision, changes)
        else:
            await self.fill(state)

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
            since = state.told
            if since is None or self._keys.get(state.key) is not state:
                return
            reply = await self._store.raw_history(state.key, since)
            if state.told != since:
                return  # told meanwhile (a message, apply): whoever comes next goes on
            if reply[0] == b"expired":
                revision = int(reply[1])
                promoted = any(
                    state.channel in self._nodes[name].wanted
                    for name in self._promoted
                    if name in self._nodes
                )
                if since > revision and await self._store.check_epoch(renew=promoted):
                    return  # revisions went back with the board: a new epoch
                state.told = state.seen = revision
                self._lost(state.key)
                return
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

    async def after_read(self, key: str, revision: int) -> None:
        """A call of ``apply`` saw ``key`` at ``revision``: a key followed from "now" starts
        there; revisions before it that messages announced are told first."""
        self.observed(key, revision)
        state = self._keys[key]
        if state.told is not None and state.seen > state.told:
            try:
                await self.fill(state)
            except StoreUnavailable:
                pass  # (the subscriber fills it when it is back)

    async def own(self, key: str, revision: int, changes: Changes) -> None:
        """This store's own revision of a followed key, after those before it."""
        state = self._keys[key]
        if state.told is None:
            state.told = revision - 1
        state.seen = max(state.seen, revision)
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
