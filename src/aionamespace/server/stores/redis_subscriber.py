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
node, made like the cluster client's, never retrying (redis_client.py's ``subscriber``).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import anyio
import anyio.abc

from ..._errors import StoreUnavailable
from .redis_client import subscriber
from .redis_replication import Replication, Seen, handed_over, verdict

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


class _Idle(Exception):
    """A node's connection has no channel left: closed until one comes."""


class _Misplaced(Exception):
    """A cluster node no longer serves the slots of its channels as a master (a replica now,
    or a slot map not refreshed yet): connected again once the slot map is read again."""


class _Node:
    """The subscriber connection to one node (the one server of a standalone Redis)."""

    def __init__(self, name: str, make: Callable[[], Any]) -> None:
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
        self, store: RedisStore, cluster: bool, heard: Heard, confirmed: Confirmed
    ) -> None:
        self._store = store
        self._cluster = cluster
        self._heard, self._confirmed = heard, confirmed
        self._channels: set[str] = set()
        self._nodes: dict[str, _Node] = {}
        self._group: anyio.abc.TaskGroup | None = None
        self._pools: dict[str, Any] = {}  # a node's name ("" standalone) -> its pool
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
        for pool in self._pools.values():
            await pool.aclose()

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

    async def _connected(self, node: _Node, pubsub: Any) -> BaseException:
        """Check the epoch, connect, subscribe, receive: what ended it (an error, or _Idle)."""
        ended: list[BaseException] = []
        expected = (_Idle, _Misplaced, StoreUnavailable, *self._store._errors)

        async def guarded(step: Callable[[_Node, Any], Any]) -> None:
            try:
                await step(node, pubsub)
            except expected as exc:
                ended.append(exc)
                group.cancel_scope.cancel()

        try:
            await pubsub.connect()
            # (redis-py makes a pubsub's connection again when a read fails, before it raises,
            # and subscribes every channel there: this task makes its own instead, and checks
            # the node first, so that would be one SSUBSCRIBE of every channel for nothing)
            pubsub.connection.deregister_connect_callback(pubsub.on_connect)
            slots = {self._shard(channel) for channel in node.wanted}
            await self._store.check_epoch(await self._lost_data(node, pubsub.connection, slots))
            self._adopt(node, slots)
        except expected as exc:
            return exc
        async with anyio.create_task_group() as group:
            group.start_soon(guarded, self._send)
            group.start_soon(guarded, self._receive)
        return ended[0] if ended else _Idle()

    async def _lost_data(self, node: _Node, connection: Any, slots: set[int]) -> bool:
        """Whether Redis may have lost data under ``slots`` (those this node serves) since
        the subscriber last saw their master: the node does not continue that master's history
        (redis_replication.py). A needless new epoch costs the clients a resync; a missed one
        would replay wrong data: when unsure, it is a loss."""
        now = await _replication(connection)
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
        connections are made from the pool of the subscriptions it confirmed: the refreshed
        slot map may not list it yet.)"""
        pool = self._pools.get(seen.node)
        if pool is None:
            return False
        with anyio.move_on_after(self._store._timeout):
            while True:
                connection = pool.make_connection()
                try:
                    await connection.connect()
                    old = await _replication(connection)
                except self._store._errors:
                    return False
                finally:
                    with anyio.CancelScope(shield=True):
                        await connection.disconnect()
                answer = handed_over(seen, new, old)
                if answer is not None:
                    return answer
                await anyio.sleep(ASK_INTERVAL)
        return False

    async def _send(self, node: _Node, pubsub: Any) -> None:
        while True:
            node.changed = anyio.Event()
            for channels in self._by_slot(node.wanted - node.sent):
                node.sent.update(channels)
                await pubsub.ssubscribe(*channels)
            for channels in self._by_slot(node.sent - node.wanted):
                node.sent.difference_update(channels)
                node.leaving.update(channels)
                await pubsub.sunsubscribe(*channels)
            if not node.sent and not node.wanted:
                raise _Idle
            await node.changed.wait()

    def _by_slot(self, channels: set[str]) -> list[list[str]]:
        """``channels`` in as few commands as Redis takes: one, or one per slot in a cluster."""
        groups: dict[int, list[str]] = {}
        for channel in sorted(channels):
            groups.setdefault(self._shard(channel), []).append(channel)
        return list(groups.values())

    async def _receive(self, node: _Node, pubsub: Any) -> None:
        moved = self._store._moved
        pinged = False
        confirmed: list[str] = []  # subscriptions confirmed, told once no more come at once
        while True:
            try:
                message = await pubsub.get_message(timeout=0 if confirmed else HEARTBEAT)
            except moved as exc:  # an ssubscribe to a node that no longer holds the slot
                slot = exc.slot_id
                await self._rehome({c for c in node.sent if self._slot(c) == slot})
                continue
            if message is None and confirmed:
                told, confirmed = confirmed, []
                await self._confirmed([c for c in told if c in self._channels])
                continue
            if message is None:  # silence: is the node still there? (a dead host says nothing)
                if pinged:
                    raise TimeoutError(f"no answer to a ping within {HEARTBEAT} seconds")
                await pubsub.ping()
                pinged = True
                continue
            pinged = False
            kind = message["type"]
            if kind == "pong":
                continue
            channel = message["channel"].decode()
            if kind == "sunsubscribe":
                if channel in node.leaving:
                    node.leaving.discard(channel)
                elif channel in node.sent:  # unasked: its slot left the node
                    await self._rehome({channel})
                    if channel in node.wanted:  # the slot map says it did not: read it again
                        raise _Misplaced(f"{node.name} no longer serves {channel}")
                continue
            if channel not in self._channels:
                continue  # (no longer followed)
            if kind == "smessage":
                await self._heard(channel, message["data"])
            elif kind == "ssubscribe":
                if node.seen is not None:
                    self._seen[self._shard(channel)] = node.seen
                confirmed.append(channel)

    def _slot(self, channel: str) -> int:
        return int(self._store._client.keyslot(channel))

    def _shard(self, channel: str) -> int:
        """What ``_seen`` is keyed by: the channel's slot (-1: the one master standalone)."""
        return self._slot(channel) if self._cluster else -1


async def _replication(connection: Any) -> Replication:
    await connection.send_command("INFO", "replication")
    return Replication.parse(await connection.read_response())
