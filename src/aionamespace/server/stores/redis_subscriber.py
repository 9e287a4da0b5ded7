"""The Redis store's subscriber connections: one per node at most, for the shard channels of
the namespaces it follows (redis_follow.py says what it does with what they hear).

A ``_Node`` task owns the connection to one node (the one server of a standalone Redis): a
sender that (un)subscribes the node's channels as ``add`` and ``remove`` change them, and a
receiver that reads its messages as they come (a blocking read: nothing polls). When it
(re)connects it reads the node's replication state and the board's epoch first (a node that
does not continue the history seen on its shard before starts a new epoch:
redis_replication.py), then subscribes every channel again: each confirmation lets the follower
fill what went by meanwhile. A reconnect costs a few commands, not a few per channel: one
``SSUBSCRIBE`` names every channel (every channel of one slot, in a cluster, which refuses a
command across slots), and the confirmations that arrive together are told together, so that
the follower reads their revisions in one pipeline. A lost connection is made again by itself,
after a backoff from ``MIN_BACKOFF`` to ``MAX_BACKOFF`` seconds; while Redis is unreachable
only this task waits. In a cluster, each lost connection refreshes the slot map first: the
channels of a master that died and was replaced by its replica (a failover) go where their
slots went. A connection silent for ``HEARTBEAT`` seconds is pinged, and given up if the pong
does not come as soon: a host that died without closing its sockets must not leave the store
deaf. A node left without channels closes its connection until one comes.

A channel whose slot moved (MOVED to an ``SSUBSCRIBE``, or a ``sunsubscribe`` Redis sends
when a slot leaves a node) goes where the refreshed slot map says. redis-py 8.2's asyncio
``ClusterPubSub`` has ``ssubscribe`` too, but one reader polls every node in turn with a slice
of a timeout (a message waits out the slices of idle nodes), and it reconnects and resubscribes
on its own, so the store could not tell when to fill a gap: we keep our own connection per
node, made as the store's links are (redis_endpoints.py), never retrying. It is an
``asyncio.Protocol`` of its own (redis_push.py), which hands a message to the follower from
a callback (``heard_now``) when nothing waits before it: a followed write's message costs its
server a parse and a call, not a task's wake-up.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import anyio
import anyio.abc

from ..._errors import StoreUnavailable
from .redis_endpoints import Endpoint, endpoint_of
from .redis_push import PushConnection
from .redis_replication import Replication, Seen, handed_over, verdict
from .redis_wire import ReplyError

if TYPE_CHECKING:
    from .redis import RedisStore

__all__ = ["HEARTBEAT", "MAX_BACKOFF", "MIN_BACKOFF", "Subscriptions"]

logger = logging.getLogger("aionamespace.server")

MIN_BACKOFF = 0.05
MAX_BACKOFF = 2.0
#: A connection silent this long is pinged; silent as long again, it is given up and made anew.
HEARTBEAT = 15.0
#: How often an old master is asked whether it handed over (within the store's timeout).
ASK_INTERVAL = 0.05

#: Told a channel's message (channel, data), or that subscriptions are confirmed (channels).
Heard = Callable[[str, bytes], Awaitable[None]]
Confirmed = Callable[[list[str]], Awaitable[None]]
#: Told a channel's message from a callback: True if it dealt with it, else it is told to
#: ``Heard`` in order (redis_push.py). It must not raise.
HeardNow = Callable[[str, bytes], bool]


class _Idle(Exception):
    """A node's connection has no channel left: closed until one comes."""


class _Misplaced(Exception):
    """A cluster node no longer serves the slots of its channels as a master (a replica now,
    or a slot map not refreshed yet): connected again once the slot map is read again."""


class _Node:
    """The subscriber connection to one node (the one server of a standalone Redis)."""

    def __init__(self, name: str, make: Callable[[], PushConnection]) -> None:
        self.name, self.make = name, make
        self.wanted: set[str] = set()  # channels it should be subscribed to
        self.sent: set[str] = set()  # channels subscribed on the current connection
        self.leaving: set[str] = set()  # channels unsubscribed, not yet confirmed
        self.changed = anyio.Event()
        self.seen: Seen | None = None  # its history as read when it connected (a master)

    def wake(self) -> None:
        self.changed.set()


class Subscriptions:
    """The shard channels a store subscribes to, and the tasks that hold the subscriptions."""

    def __init__(
        self,
        store: RedisStore,
        cluster: bool,
        heard: Heard,
        confirmed: Confirmed,
        heard_now: HeardNow | None = None,
    ) -> None:
        self._store = store
        self._cluster = cluster
        self._heard, self._confirmed, self._heard_now = heard, confirmed, heard_now
        self._channels: set[str] = set()
        self._nodes: dict[str, _Node] = {}
        self._group: anyio.abc.TaskGroup | None = None
        self._endpoints: dict[str, Endpoint] = {}  # a node's name ("" standalone) -> where
        self._seen: dict[int, Seen] = {}  # a followed slot (-1 standalone) -> its master

    def add(self, channel: str) -> None:
        """Subscribe ``channel`` (again, if it is: its confirmation comes all the same)."""
        self._channels.add(channel)
        self._place(channel)

    def remove(self, channel: str) -> None:
        self._channels.discard(channel)
        for node in self._nodes.values():
            if channel in node.wanted:
                node.wanted.discard(channel)
                node.wake()

    async def aclose(self) -> None:
        """(Each node's task closes its connection as it ends: nothing else is held.)"""

    def _connection(self, name: str) -> PushConnection:
        """A new connection (not connected yet) to the node ``name`` ("": the standalone
        server), made as the store's client connects (redis_endpoints.py)."""
        endpoint = self._endpoints[name]
        fast = None if self._heard_now is None else self._fast
        return PushConnection(endpoint, self._store._max_reply_bytes, fast)

    def _fast(self, channel: bytes, data: bytes) -> bool:
        name = channel.decode()
        if name not in self._channels:
            return True  # (no longer followed)
        assert self._heard_now is not None
        return self._heard_now(name, data)

    def _place(self, channel: str) -> None:
        """Subscribe ``channel`` on the node that holds its slot."""
        client = self._store._client
        if self._cluster:
            found = client.get_node_from_key(channel)
            name, source = found.name, found
        else:
            name, source = "", client.connection_pool
        if name not in self._endpoints:
            self._endpoints[name] = endpoint_of(source.connection_class, source.connection_kwargs)
        node = self._nodes.get(name)
        if node is None:
            node = self._nodes[name] = _Node(name, lambda: self._connection(name))
            if self._group is not None:
                self._group.start_soon(self._serve, node)
        node.wanted.add(channel)
        node.sent.discard(channel)  # (subscribed again all the same: its confirmation fills)
        node.wake()

    async def _rehome(self, channels: set[str], refresh: bool = True) -> None:
        """The slot of these channels moved: refresh the slot map, subscribe where it went."""
        if self._cluster and refresh:
            await self._store._client.nodes_manager.initialize()
        for node in self._nodes.values():
            node.wanted -= channels
            node.sent -= channels
        for channel in channels:
            if channel in self._channels:
                self._place(channel)

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
            connection = node.make()
            node.sent, node.leaving = set(), set()
            try:
                ended = await self._connected(node, connection)
            finally:
                connection.close()
            if isinstance(ended, _Idle):
                delay = MIN_BACKOFF
                continue
            logger.info("subscriber of %s (%s) lost: %s", self._store.name, node.name, ended)
            await anyio.sleep(delay)
            delay = min(delay * 2, MAX_BACKOFF)
            await self._moved_away(node)

    async def _moved_away(self, node: _Node) -> None:
        """In a cluster, after a lost connection: the channels whose slots another node holds
        now (the node died, its replica took over) go there. The slot map is read again
        (within the store's timeout); if it cannot be, the node is tried again as it was."""
        if not self._cluster or not node.wanted:
            return
        client = self._store._client
        try:
            with anyio.fail_after(self._store._timeout):
                await client.nodes_manager.initialize()
        except (TimeoutError, *self._store._errors):
            return
        gone = {c for c in node.wanted if client.get_node_from_key(c).name != node.name}
        if gone:
            await self._rehome(gone, refresh=False)

    async def _connected(self, node: _Node, connection: PushConnection) -> BaseException:
        """Check the epoch, connect, subscribe, receive: what ended it (an error, or _Idle)."""
        ended: list[BaseException] = []
        expected = (_Idle, _Misplaced, StoreUnavailable, *self._store._errors)

        async def guarded(step: Callable[[_Node, PushConnection], Any]) -> None:
            try:
                await step(node, connection)
            except expected as exc:
                ended.append(exc)
                group.cancel_scope.cancel()

        try:
            await connection.connect(self._store._timeout)
            slots = {self._shard(channel) for channel in node.wanted}
            await self._store.check_epoch(await self._lost_data(node, connection, slots))
            self._adopt(node, slots)
        except expected as exc:
            return exc
        async with anyio.create_task_group() as group:
            group.start_soon(guarded, self._send)
            group.start_soon(guarded, self._receive)
        return ended[0] if ended else _Idle()

    async def _lost_data(self, node: _Node, connection: PushConnection, slots: set[int]) -> bool:
        """Whether Redis may have lost data under ``slots`` (those this node serves) since
        the subscriber last saw their master: the node does not continue that master's history
        (redis_replication.py). A needless new epoch costs the clients a resync; a missed one
        would replay wrong data: when unsure, it is a loss."""
        now = await self._replication(connection)
        node.seen = Seen(node.name, now.replid, now.offset) if now.master else None
        if node.seen is None:  # (a replica serves its master's shard channels too)
            if self._cluster:
                raise _Misplaced(f"{node.name} is a replica")
            return False  # (its offset trails its master's: nothing to compare)
        lost = False
        asked: dict[Seen, bool] = {}
        for seen in {self._seen[slot] for slot in slots if slot in self._seen}:
            judged = verdict(seen, node.name, now)
            if judged == "ask" and seen not in asked:
                asked[seen] = await self._handed_over(seen, now)
            if judged == "lost" or (judged == "ask" and not asked[seen]):
                logger.warning(
                    "%s: %s does not continue the replication history of %s (%s): Redis may "
                    "have lost writes; a new epoch starts",
                    self._store.name,
                    node.name or "Redis",
                    seen.node or "its master before",
                    "it took over, the old master did not hand over all"
                    if judged == "ask"
                    else "another history, or behind it",
                )
                lost = True
        return lost

    def _adopt(self, node: _Node, slots: set[int]) -> None:
        """The node's history, judged (a new epoch started if it lost data), is the one its
        ``slots`` are compared with from now on (each subscription confirmed there says so
        too: those of channels added later)."""
        if node.seen is not None:
            for slot in slots:
                self._seen[slot] = node.seen

    async def _handed_over(self, seen: Seen, new: Replication) -> bool:
        """Ask the master ``seen`` (its state polled: no event says it was demoted) whether it
        handed everything over to ``new``, within the store's timeout; unreachable: no. (Its
        connections are made as its subscriber's were: the refreshed slot map may not list
        it yet.)"""
        if seen.node not in self._endpoints:
            return False
        with anyio.move_on_after(self._store._timeout):
            while True:
                connection = PushConnection(
                    self._endpoints[seen.node], self._store._max_reply_bytes, None
                )
                try:
                    await connection.connect(self._store._timeout)
                    old = await self._replication(connection)
                except self._store._errors:
                    return False
                finally:
                    connection.close()
                answer = handed_over(seen, new, old)
                if answer is not None:
                    return answer
                await anyio.sleep(ASK_INTERVAL)
        return False

    async def _send(self, node: _Node, connection: PushConnection) -> None:
        while True:
            node.changed = anyio.Event()
            for channels in self._by_slot(node.wanted - node.sent):
                node.sent.update(channels)
                connection.send("SSUBSCRIBE", *channels)
            for channels in self._by_slot(node.sent - node.wanted):
                node.sent.difference_update(channels)
                node.leaving.update(channels)
                connection.send("SUNSUBSCRIBE", *channels)
            if not node.sent and not node.wanted:
                raise _Idle
            await node.changed.wait()

    def _by_slot(self, channels: set[str]) -> list[list[str]]:
        """``channels`` in as few commands as Redis takes: one, or one per slot in a cluster."""
        groups: dict[int, list[str]] = {}
        for channel in sorted(channels):
            groups.setdefault(self._shard(channel), []).append(channel)
        return list(groups.values())

    async def _receive(self, node: _Node, connection: PushConnection) -> None:
        pinged = False
        confirmed: list[str] = []  # subscriptions confirmed, told once no more come at once
        while True:
            push = await connection.next(0 if confirmed else HEARTBEAT)
            if push is None and confirmed:
                told, confirmed = confirmed, []
                await self._confirmed([c for c in told if c in self._channels])
                continue
            if push is None:  # silence: is the node still there? (a dead host says nothing)
                if pinged:
                    raise TimeoutError(f"no answer to a ping within {HEARTBEAT} seconds")
                connection.send("PING")
                pinged = True
                continue
            pinged = False
            if isinstance(push, ReplyError):
                text = str(push)
                if text.startswith("MOVED "):  # an SSUBSCRIBE to a node without the slot
                    slot = int(text.split()[1])
                    await self._rehome({c for c in node.sent if self._slot(c) == slot})
                    continue
                raise push
            if type(push) is not list or len(push) < 2 or push[0] == b"pong":
                continue  # (a pong: RESP2's is ["pong", ""] while subscribed, else PONG)
            kind, channel = push[0], push[1].decode()
            if kind == b"sunsubscribe":
                if channel in node.leaving:
                    node.leaving.discard(channel)
                elif channel in node.sent:  # unasked: its slot left the node
                    await self._rehome({channel})
                    if channel in node.wanted:  # the slot map says it did not: read it again
                        raise _Misplaced(f"{node.name} no longer serves {channel}")
                continue
            if channel not in self._channels:
                continue  # (no longer followed)
            if kind == b"smessage":
                await self._heard(channel, push[2])
            elif kind == b"ssubscribe":
                if node.seen is not None:
                    self._seen[self._shard(channel)] = node.seen
                confirmed.append(channel)

    async def _replication(self, connection: PushConnection) -> Replication:
        return Replication.parse(await connection.call(self._store._timeout, "INFO", "replication"))

    def _slot(self, channel: str) -> int:
        return int(self._store._client.keyslot(channel))

    def _shard(self, channel: str) -> int:
        """What ``_seen`` is keyed by: the channel's slot (-1: the one master standalone)."""
        return self._slot(channel) if self._cluster else -1
