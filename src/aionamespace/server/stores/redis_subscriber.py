"""The Redis store's subscriber connections: one per node at most, for the shard channels of
the namespaces it follows (redis_follow.py says what it does with what they hear).

A ``_Node`` task owns the connection to one node (the one server of a standalone Redis): a
sender that (un)subscribes the node's channels as ``add`` and ``remove`` change them, and a
receiver that reads its messages as they come (a blocking read: nothing polls). When it
(re)connects it reads the node's replication id and the board's epoch first, then subscribes
every channel again: each confirmation lets the follower fill what went by meanwhile. A lost
connection is made again by itself, after a backoff from ``MIN_BACKOFF`` to ``MAX_BACKOFF``
seconds; while Redis is unreachable only this task waits. A connection silent for
``HEARTBEAT`` seconds is pinged, and given up if the pong does not come as soon: a host that
died without closing its sockets must not leave the store deaf. A node left without channels
closes its connection until one comes.

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

if TYPE_CHECKING:
    from .redis import RedisStore

__all__ = ["HEARTBEAT", "MAX_BACKOFF", "MIN_BACKOFF", "Subscriptions"]

logger = logging.getLogger("aionamespace.server")

MIN_BACKOFF = 0.05
MAX_BACKOFF = 2.0
#: A connection silent this long is pinged; silent as long again, it is given up and made anew.
HEARTBEAT = 15.0

#: Told a channel's message (channel, data), or that a subscription to it is confirmed.
Heard = Callable[[str, bytes], Awaitable[None]]
Confirmed = Callable[[str], Awaitable[None]]


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
        self._replids: dict[str, bytes] = {}  # a node's name -> its replication id, last seen
        self._promoted: set[str] = set()  # nodes whose replica took over (keys may go back)

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

    def promoted(self, channel: str) -> bool:
        """Whether ``channel``'s node is a replica that took over (a key of it that goes back
        lost data)."""
        return any(
            channel in self._nodes[name].wanted for name in self._promoted if name in self._nodes
        )

    def forget_promotions(self) -> None:
        self._promoted.clear()

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
        pinged = False
        while True:
            try:
                message = await pubsub.get_message(timeout=HEARTBEAT)
            except moved as exc:  # an ssubscribe to a node that no longer holds the slot
                slot = exc.slot_id
                await self._rehome({c for c in node.sent if self._slot(c) == slot})
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
                continue
            if channel not in self._channels:
                continue  # (no longer followed)
            if kind == "smessage":
                await self._heard(channel, message["data"])
            elif kind == "ssubscribe":
                await self._confirmed(channel)

    def _slot(self, channel: str) -> int:
        return int(self._store._client.keyslot(channel))
