"""The Redis store's own connections for its hot calls: a batch's script calls and epoch read.

redis-py's pipeline costs, per batch, a pipeline object, a connection taken from a pool and
given back, and per command a packing one argument at a time and a parse line by line through
an asyncio stream: most of a server's CPU per operation (docs/SCALING.md). A ``Link`` is one
connection to one Redis node, as an ``asyncio.Protocol``: a batch is written as one buffer
(redis_wire.py packs it) with one ``transport.write``, and its replies are parsed in
``data_received`` (hiredis's reader when installed) and handed over as one list through one
Future, or to a callback called from ``data_received`` (``Link.submit_then``: a caller that
answers without a task). Several batches may be in flight on a link at once: Redis answers in
order, so the replies go to the batches in the order they were written.

**Failures.** Nothing is ever sent twice here: a lost connection fails every batch in flight
on it (``ConnectionError``, whose outcome is unknown: a script may have run), and the next
batch connects again. A batch not answered within its ``timeout`` closes its link with
``TimeoutError``: each batch notes its deadline, and one timer per connection (cheaper than a
cancel scope, or a timer made and cancelled per batch) wakes at the earliest deadline of the
batches in flight, and again at the next one while some are; so does a batch whose waiter is
cancelled, as redis-py drops a connection so interrupted: the replies still owed on it would
otherwise hold up every later batch. Bytes that are not RESP2 close the link too. A link also
closes when its event loop's run ends (``asyncio.run`` cancels the task each connection
keeps), so that a store over a redis-py client its caller closes leaves no socket behind.

**Bounds.** What Redis sends is parsed as it comes; the bytes of a reply not yet whole may
reach ``max_reply_bytes`` (by default the largest frame the server may send,
``Limits.max_frame_bytes``, 64 MiB), past which the link is closed and its batches fail: a
broken or hostile Redis cannot make the server hold more than that (and the replies already
whole of the batches in flight, which the batches' sizes bound).

**Where.** ``Links`` keeps one link per node: the standalone server's, or each cluster
primary's, the command going to the node that owns its key's slot in the map redis-py's
``RedisCluster`` keeps (read again after a ``MOVED``, and before the next batch once a node
failed: a failover moves its slots to a node at another address). A link connects as the
redis-py client it was made from does: its socket path or host and port, TLS with that
client's SSL context, ``AUTH`` and ``SELECT`` (RESP2, no ``HELLO``): redis_endpoints.py.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Callable, Sequence
from typing import Any

from ..busypoll import selector_of
from .redis_endpoints import Endpoint, endpoint_of
from .redis_wire import RespError, new_reader

__all__ = ["DEFAULT_MAX_REPLY_BYTES", "Endpoint", "Link", "Links", "Then", "endpoint_of"]

DEFAULT_MAX_REPLY_BYTES = 64 * 1024 * 1024


#: Told a batch's replies, or the exception that failed it; it must not raise.
Then = Callable[[list[Any] | Exception], None]


class _Batch:
    __slots__ = ("count", "deadline", "future", "replies", "then")

    def __init__(
        self,
        count: int,
        future: asyncio.Future[list[Any]] | None,
        deadline: float | None,
        then: Then | None = None,
    ) -> None:
        self.count, self.future, self.deadline, self.then = count, future, deadline, then
        self.replies: list[Any] = []

    def fail(self, error: Exception) -> None:
        if self.then is not None:
            self.then(error)
        elif self.future is not None and not self.future.done():
            self.future.set_exception(error)
            self.future.exception()  # (a cancelled waiter never reads it)


class _Connection(asyncio.Protocol):
    """One connection of a link: the batches in flight on it, its replies' reader."""

    def __init__(self, link: Link) -> None:
        self.link, self.name = link, link.endpoint.name
        self.transport: asyncio.Transport | None = None
        self.waiting: collections.deque[_Batch] = collections.deque()
        self._reader = new_reader()
        self._max_reply_bytes = link.max_reply_bytes
        self._unfinished = 0  # bytes received since the last whole reply (a bound on the next)
        self.closed: asyncio.Future[None] = link.loop.create_future()
        self.keeper: asyncio.Task[None] | None = None
        self._watchdog: asyncio.TimerHandle | None = None  # at the earliest deadline, if any

    async def keep(self) -> None:
        """Close the connection when its loop's run ends (the run cancels this task)."""
        try:
            await self.closed
        finally:
            self.close(ConnectionError(f"the connection to {self.name} was closed"))

    def submit(
        self, payload: bytes, count: int, timeout: float | None = None
    ) -> asyncio.Future[list[Any]]:
        future: asyncio.Future[list[Any]] = self.link.loop.create_future()
        self.write(payload, _Batch(count, future, None), timeout)
        return future

    def write(self, payload: bytes, batch: _Batch, timeout: float | None) -> None:
        """Write a batch, its replies due to ``batch`` (its deadline set from ``timeout``)."""
        assert self.transport is not None
        loop = self.link.loop
        deadline = None
        if timeout is not None:
            deadline = loop.time() + timeout
            watchdog = self._watchdog
            if watchdog is None:
                self._watchdog = loop.call_at(deadline, self._expire)
            elif deadline < watchdog.when():  # (a shorter timeout than those in flight)
                watchdog.cancel()
                self._watchdog = loop.call_at(deadline, self._expire)
        batch.deadline = deadline
        self.waiting.append(batch)
        poller = self.link.poller
        if poller is not None:
            poller.replies_due += 1
        self.transport.write(payload)

    def _expire(self) -> None:
        """The watchdog's wake-up: close the connection if a batch in flight is past its
        deadline, else wake again at the earliest one (none: sleep until a batch comes)."""
        self._watchdog = None
        deadlines = [batch.deadline for batch in self.waiting if batch.deadline is not None]
        if not deadlines:
            return
        earliest = min(deadlines)
        if earliest <= self.link.loop.time():
            self.close(TimeoutError())
        else:
            self._watchdog = self.link.loop.call_at(earliest, self._expire)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        reader, waiting = self._reader, self.waiting
        reader.feed(data)
        whole = False
        try:
            while True:
                reply = reader.gets()
                if reply is False:
                    break
                whole = True
                if not waiting:
                    raise RespError("a reply that no command asked for")
                batch = waiting[0]
                batch.replies.append(reply)
                if len(batch.replies) == batch.count:
                    waiting.popleft()
                    if self.link.poller is not None:
                        self.link.poller.replies_due -= 1
                    if batch.then is not None:
                        batch.then(batch.replies)
                    elif batch.future is not None and not batch.future.done():
                        batch.future.set_result(batch.replies)
        except RespError as exc:
            self.close(ConnectionError(f"{self.name} sent what is not RESP2: {exc}"))
            return
        # What is left unparsed began in this chunk if a reply ended in it.
        self._unfinished = len(data) if whole else self._unfinished + len(data)
        if self._unfinished > self._max_reply_bytes:
            self.close(
                ConnectionError(
                    f"{self.name} sent a reply of more than {self._max_reply_bytes} bytes"
                )
            )

    def connection_lost(self, exc: Exception | None) -> None:
        lost = ConnectionError(f"the connection to {self.name} was lost")
        lost.__cause__ = exc
        self.close(lost)

    def close(self, error: Exception) -> None:
        """Close the connection; every batch in flight on it fails with ``error``."""
        if self.link.connection is self:
            self.link.connection = None
        transport, self.transport = self.transport, None
        if not self.closed.done():
            self.closed.set_result(None)
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        waiting, self.waiting = self.waiting, collections.deque()
        if self.link.poller is not None:
            self.link.poller.replies_due -= len(waiting)
        for batch in waiting:
            batch.fail(error)
        if transport is not None:
            transport.abort()


class Link:
    """One pipelined connection to one Redis node, made again when lost (module docstring)."""

    def __init__(self, endpoint: Endpoint, max_reply_bytes: int = DEFAULT_MAX_REPLY_BYTES) -> None:
        self.endpoint = endpoint
        self.max_reply_bytes = max_reply_bytes
        self.connection: _Connection | None = None
        self.loop = asyncio.get_running_loop()
        #: The loop's busy-polling selector, told of the replies due (server/busypoll.py).
        self.poller = selector_of(self.loop)
        self._connecting: asyncio.Future[None] | None = None

    async def call(self, payload: bytes, count: int, timeout: float | None = None) -> list[Any]:
        """Send ``count`` packed commands; their replies (an error reply as a ReplyError).
        ``timeout``: past it, the connection is closed (TimeoutError) and with it every batch
        in flight on it, all late alike."""
        connection = self.connection
        if connection is None:
            connection = await self.connect(timeout)
        return await self.wait(connection.submit(payload, count, timeout))

    def submit(
        self, payload: bytes, count: int, timeout: float | None = None
    ) -> asyncio.Future[list[Any]]:
        """Write a batch on the connected link: the future of its replies (past ``timeout``
        unanswered, the connection is closed: ``call``)."""
        assert self.connection is not None
        return self.connection.submit(payload, count, timeout)

    def submit_then(self, payload: bytes, count: int, timeout: float | None, then: Then) -> bool:
        """Write a batch if the link is connected, its replies (or what failed it) told to
        ``then`` from the callback that reads them: False, and nothing written, if not."""
        connection = self.connection
        if connection is None or connection.transport is None:
            return False
        connection.write(payload, _Batch(count, None, None, then), timeout)
        return True

    async def wait(self, future: asyncio.Future[list[Any]]) -> list[Any]:
        try:
            return await future
        except asyncio.CancelledError:
            self.close(ConnectionError(f"a call to {self.endpoint.name} was interrupted"))
            raise

    def close(self, error: Exception) -> None:
        """Close the connection, if any: every batch in flight fails with ``error``."""
        if self.connection is not None:
            self.connection.close(error)

    async def connect(self, timeout: float | None = None) -> _Connection:
        """Connect (and authenticate), unless connected; one attempt for every caller, given
        up after ``timeout`` (the first caller's: connecting and the handshake)."""
        if self.connection is None:
            if self._connecting is None:
                self._connecting = asyncio.ensure_future(asyncio.wait_for(self._connect(), timeout))
                self._connecting.add_done_callback(self._tried)
            await asyncio.shield(self._connecting)
        if self.connection is None:  # (lost as soon as made)
            raise ConnectionError(f"the connection to {self.endpoint.name} was lost")
        return self.connection

    def _tried(self, attempt: asyncio.Future[None]) -> None:
        self._connecting = None
        if not attempt.cancelled():
            attempt.exception()  # (seen: each caller got it)

    async def _connect(self) -> None:
        endpoint, loop = self.endpoint, self.loop
        connection = _Connection(self)
        await asyncio.wait_for(endpoint.open(loop, connection), endpoint.connect_timeout)
        handshake = endpoint.handshake()
        if handshake:
            try:
                replies = await connection.submit(b"".join(handshake), len(handshake))
            except BaseException:
                connection.close(ConnectionError(f"the handshake with {endpoint.name} failed"))
                raise
            for reply in replies:
                if isinstance(reply, Exception):
                    error = ConnectionError(f"{endpoint.name} refused the handshake: {reply}")
                    connection.close(error)
                    raise error
        if connection.transport is not None:  # (not lost meanwhile)
            self.connection = connection
            connection.keeper = loop.create_task(connection.keep())


class Links:
    """The store's links, one per node, and where a command goes (module docstring)."""

    def __init__(
        self, client: Any, cluster: bool, max_reply_bytes: int = DEFAULT_MAX_REPLY_BYTES
    ) -> None:
        self._client, self._cluster = client, cluster
        self._max_reply_bytes = max_reply_bytes
        self._links: dict[str, Link] = {}
        self._slots: dict[bytes, int] = {}
        self._stale = False  # a node failed: read the slot map again before the next batch
        if cluster:
            from redis.crc import key_slot

            self._key_slot = key_slot

    def link_for(self, key: bytes) -> Link:
        """The link to the node that holds ``key``."""
        if not self._cluster:
            link = self._links.get("")
            if link is None:
                pool = self._client.connection_pool
                endpoint = endpoint_of(pool.connection_class, pool.connection_kwargs)
                link = self._links[""] = Link(endpoint, self._max_reply_bytes)
            return link
        slot = self._slots.get(key)
        if slot is None:
            if len(self._slots) >= 100_000:
                self._slots.clear()
            slot = self._slots[key] = self._key_slot(key)
        try:
            node = self._client.nodes_manager.slots_cache[slot][0]
        except (KeyError, IndexError):
            raise ConnectionError(f"no node of the cluster holds slot {slot}") from None
        link = self._links.get(node.name)
        if link is None:
            endpoint = endpoint_of(node.connection_class, node.connection_kwargs)
            link = self._links[node.name] = Link(endpoint, self._max_reply_bytes)
        return link

    def submit_then(self, payload: bytes, count: int, timeout: float | None, then: Then) -> bool:
        """``Link.submit_then`` on a standalone server's connected link (False: a cluster,
        whose commands go to their nodes, or not connected; nothing written)."""
        if self._cluster:
            return False
        return self.link_for(b"").submit_then(payload, count, timeout, then)

    async def execute(
        self, commands: Sequence[tuple[bytes, bytes, int]], timeout: float | None = None
    ) -> list[Any]:
        """Send (key, packed commands, how many) triples, each to its key's node, every
        node's in one write and in their order: the replies in order (an error reply as a
        ReplyError; of a triple of several commands, the list of theirs). A lost connection
        (or one silent past ``timeout``) raises ConnectionError (TimeoutError) on a
        standalone server; in a cluster, it is the reply of each triple sent on it."""
        if not self._cluster:
            payload = b"".join([command for _, command, _ in commands])
            total = sum([count for _, _, count in commands])
            flat = await self.link_for(b"").call(payload, total, timeout)
            return flat if total == len(commands) else _grouped(flat, commands)
        if self._stale:  # (a failover moves slots to a node at another address)
            self._stale = False
            await asyncio.wait_for(self.refresh(), timeout)
        groups: dict[Link, tuple[list[int], list[tuple[bytes, bytes, int]]]] = {}
        for at, triple in enumerate(commands):
            link = self.link_for(triple[0])
            group = groups.get(link)
            if group is None:
                group = groups[link] = ([], [])
            group[0].append(at)
            group[1].append(triple)
        replies: list[Any] = [None] * len(commands)
        sent = []
        for link, (places, triples) in groups.items():
            try:
                if link.connection is None:
                    await link.connect(timeout)
                payload = b"".join([command for _, command, _ in triples])
                total = sum([count for _, _, count in triples])
                future = link.submit(payload, total, timeout)
                sent.append((link, places, triples, future))
            except OSError as exc:  # (ConnectionError, TimeoutError: that node's commands)
                self._stale = True
                for at in places:
                    replies[at] = exc
        try:
            for _link, places, triples, future in sent:
                try:
                    answers: list[Any] = await future
                    if len(answers) != len(triples):
                        answers = _grouped(answers, triples)
                except OSError as exc:
                    self._stale = True
                    answers = [exc] * len(places)
                for at, answer in zip(places, answers, strict=True):
                    replies[at] = answer
        except asyncio.CancelledError:
            for link, _, _, future in sent:
                if not future.done():
                    link.close(ConnectionError(f"a call to {link.endpoint.name} was interrupted"))
            raise
        return replies

    async def refresh(self) -> None:
        """Read the cluster's slot map again (after a MOVED reply)."""
        await self._client.nodes_manager.initialize()

    def close(self) -> None:
        for link in self._links.values():
            link.close(ConnectionError("the store is closed"))
        self._links.clear()


def _grouped(replies: list[Any], commands: Sequence[tuple[bytes, bytes, int]]) -> list[Any]:
    """The replies of each triple: one reply, or the list of a triple of several commands'."""
    out, at = [], 0
    for _, _, count in commands:
        out.append(replies[at] if count == 1 else replies[at : at + count])
        at += count
    return out
