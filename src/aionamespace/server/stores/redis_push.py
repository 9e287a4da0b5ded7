"""A Redis store's subscriber connection to one node, as an ``asyncio.Protocol`` of its own.

redis-py's pub/sub read costs, per message, a task woken through an asyncio stream, a timeout
scope, a parse through several layers and a dict: a server that follows a namespace paid more
for the message of each of its own writes than for the write (docs/SCALING.md, the sixth
pass). Here, as on the store's links (redis_link.py), what the node sends is parsed in
``data_received`` (hiredis's reader when installed), and a shard message goes to ``fast``
from a callback (``_flush``): it answers whether it dealt with the message. What it declines,
and everything else (a subscription's confirmation, an unsubscription, a pong, an error reply
such as a ``MOVED``), waits in order for the subscriber's task, which takes it with ``next``.

**Order.** ``fast`` is given a message only while the task waits in ``next`` with nothing
before it: while the task deals with one (``busy``), or something waits, what comes waits
behind it. So every message is dealt with in the order the node sent it, as one reader task
would. ``_flush`` runs in the loop's turn after the read (``call_soon``), after the other
callbacks of the read's turn: the reply to the server's own write, which Redis sends with
the message of its revision, is read first and tells that revision with the changes at hand,
and the message is then known news, not decoded again.

**Commands.** The handshake (``AUTH``, ``SELECT``: RESP2, redis_endpoints.py) and ``call`` (one
command and its reply: the replication state read before subscribing) are answered in order;
after it subscribed, the connection only writes (``send``: ``SSUBSCRIBE``, ``SUNSUBSCRIBE``,
``PING``), and what comes back is pushes. **Bounds.** The bytes of a push not yet whole may
reach ``max_reply_bytes``, past which the connection is closed (as a link's); one that failed,
or that the node closed, raises its ``ConnectionError`` from ``next`` and ``call``.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Callable
from typing import Any

from .redis_endpoints import Endpoint
from .redis_wire import ReplyError, RespError, new_reader, pack

__all__ = ["Fast", "PushConnection"]

#: Given a shard message (channel, data) from a callback (``_flush``): True if it dealt with
#: it, False to have the subscriber's task take it (``next``). It must not raise.
Fast = Callable[[bytes, bytes], bool]


class PushConnection(asyncio.Protocol):
    """One subscriber connection to one node (module docstring)."""

    def __init__(self, endpoint: Endpoint, max_reply_bytes: int, fast: Fast | None) -> None:
        self.endpoint, self.name = endpoint, endpoint.name
        self.fast = fast
        self.busy = True  # the task is not waiting in next(): fast is not given messages
        self.transport: asyncio.Transport | None = None
        self._reader = new_reader()
        self._max_reply_bytes = max_reply_bytes
        self._unfinished = 0
        self._calls: collections.deque[asyncio.Future[Any]] = collections.deque()
        self._pushes: collections.deque[Any] = collections.deque()
        self._soon: list[Any] = []  # pushes read, not handled yet (_flush)
        self._loop = asyncio.get_running_loop()
        self._waiter: asyncio.Future[None] | None = None
        self._heard = False  # bytes came while next() waited
        self._error: Exception | None = None

    async def connect(self, timeout: float) -> None:
        """Connect and authenticate within ``timeout`` seconds (or the endpoint's connect
        timeout, if shorter)."""
        endpoint = self.endpoint
        if endpoint.connect_timeout is not None:
            timeout = min(timeout, endpoint.connect_timeout)
        try:
            await asyncio.wait_for(endpoint.open(self._loop, self), timeout)
        except asyncio.TimeoutError:  # (not the builtin one before Python 3.11)
            late = TimeoutError(f"could not connect to {self.name} within {timeout} seconds")
            raise late from None
        for command in endpoint.handshake():
            reply = await self._call(command, timeout)
            if isinstance(reply, ReplyError):
                error = ConnectionError(f"{self.name} refused the handshake: {reply}")
                self.close(error)
                raise error

    async def call(self, timeout: float, *args: Any) -> Any:
        """Send one command (before subscribing) and return its reply; an error reply raises
        its ReplyError. Unanswered within ``timeout`` seconds: the connection is closed."""
        reply = await self._call(pack(*args), timeout)
        if isinstance(reply, ReplyError):
            raise reply
        return reply

    async def _call(self, command: bytes, timeout: float) -> Any:
        future: asyncio.Future[Any] = self._loop.create_future()
        self._write(command)
        self._calls.append(future)
        try:
            return await asyncio.wait_for(future, timeout)
        except asyncio.TimeoutError:  # (not the builtin one before Python 3.11)
            late = TimeoutError(f"{self.name} did not answer within {timeout} seconds")
            self.close(late)
            raise late from None

    def send(self, *args: Any) -> None:
        """Write one command whose answer is a push (``SSUBSCRIBE``, ``PING``, ...)."""
        self._write(pack(*args))

    def _write(self, data: bytes) -> None:
        if self._error is not None:
            raise self._error
        if self.transport is None:
            raise ConnectionError(f"the subscriber connection to {self.name} is not open")
        self.transport.write(data)

    async def next(self, timeout: float) -> Any:
        """The next push the task must deal with, in order (a list, or a ReplyError); None if
        nothing at all came (not even a message ``fast`` dealt with) for ``timeout`` seconds.
        From its return until the task calls it again, the task is ``busy``."""
        while True:
            if self._pushes:
                return self._pushes.popleft()
            if self._error is not None:
                raise self._error
            if timeout <= 0:
                return None
            self._heard = False
            waiter = self._waiter = self._loop.create_future()
            self.busy = False
            try:
                await asyncio.wait_for(waiter, timeout)
            except asyncio.TimeoutError:
                if not self._heard:
                    return None
            finally:
                self.busy = True
                self._waiter = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        reader, soon = self._reader, self._soon
        reader.feed(data)
        whole = False
        try:
            while True:
                reply = reader.gets()
                if reply is False:
                    break
                whole = True
                if self._calls:
                    call = self._calls.popleft()
                    if not call.done():
                        call.set_result(reply)
                    continue
                if not soon:
                    self._loop.call_soon(self._flush)
                soon.append(reply)
        except RespError as exc:
            self.close(ConnectionError(f"{self.name} sent what is not RESP2: {exc}"))
            return
        self._heard = True
        self._unfinished = len(data) if whole else self._unfinished + len(data)
        if self._unfinished > self._max_reply_bytes:
            error = f"{self.name} sent a push of more than {self._max_reply_bytes} bytes"
            self.close(ConnectionError(error))

    def _flush(self) -> None:
        """The pushes read this iteration, after the other connections' callbacks of the same
        iteration: the reply to this server's own write, read with the message of its
        revision, tells it first (its changes at hand, not decoded from the message)."""
        soon, self._soon = self._soon, []
        if self._error is not None:
            return  # (closed: a new connection's confirmations fill what went by)
        pushes, fast = self._pushes, self.fast
        try:
            for reply in soon:
                if (
                    not pushes
                    and not self.busy
                    and fast is not None
                    and type(reply) is list
                    and len(reply) == 3
                    and reply[0] == b"smessage"
                    and fast(reply[1], reply[2])
                ):
                    continue
                pushes.append(reply)
        except Exception as exc:  # (fast raised: a bug; the task raises it)
            self.close(exc)
            return
        if pushes:
            self._wake()

    def connection_lost(self, exc: Exception | None) -> None:
        lost = ConnectionError(f"the subscriber connection to {self.name} was lost")
        lost.__cause__ = exc
        self.close(lost)

    def close(self, error: Exception | None = None) -> None:
        """Close the connection: ``next`` and the calls waiting raise ``error``."""
        if self._error is None:
            self._error = error or ConnectionError(
                f"the subscriber connection to {self.name} was closed"
            )
        transport, self.transport = self.transport, None
        calls, self._calls = self._calls, collections.deque()
        for call in calls:
            if not call.done():
                call.set_exception(self._error)
                call.exception()  # (a cancelled caller never reads it)
        self._wake()
        if transport is not None:
            transport.abort()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
