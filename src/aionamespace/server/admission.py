"""What every connection of a server is held to, whatever shell carries it.

``Connections`` admits at most ``Limits.max_connections`` at once (more are refused at the
hello), gives each ``Limits.handshake_timeout`` seconds to say hello and authenticate, applies
what a connection sent through the ``Dispatcher`` while its backlog (what waits to be sent to
it) stays under ``Limits.max_reply_backlog_bytes`` (a peer that does not read is not read
from), drops a connection whose serving failed (``failed``: a MemoryError takes one connection
down, never the server), and on shutdown tells every client why the connection ends.

Connections still in their handshake are held to a smaller bound of their own,
``Limits.max_handshakes``, so that peers who never authenticate cannot take the slots of those
who do. At that bound a newcomer is let in and the oldest half-open peer is dropped: refusing
the newcomer would let a flood lock every real client out, while a real client finishes its
handshake within a few loop iterations of connecting, long before ``max_handshakes`` newer
peers push it out. The same happens at ``max_connections`` while a peer is still in its
handshake; only a server full of authenticated connections refuses the newcomer.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

import anyio

from .._errors import ConnectionLost, RemoteProtocolError
from ..protocol.connection import Request, ServerConnection
from ..protocol.limits import Limits
from ..protocol.ops import READ_OPS
from .dispatch import Dispatcher
from .durability import Durability
from .timers import CallLater

if TYPE_CHECKING:
    from .shells import Connection

__all__ = ["FAREWELL_SECONDS", "CallLater", "Connections"]

logger = logging.getLogger("aionamespace.server")

FAREWELL_SECONDS = 1.0  # a connection being dropped gets this long to take our last words


class Connections:
    """Every open connection of one server."""

    def __init__(
        self,
        limits: Limits,
        dispatcher: Dispatcher,
        call_later: CallLater,
        new_protocol: Callable[[], ServerConnection],
        durability: Durability | None = None,
    ) -> None:
        self.limits = limits
        #: What a durable store's changes wait for before anything after them is sent.
        self.durability = durability if durability is not None else Durability(dispatcher.store)
        self.dispatcher = dispatcher
        self.new_protocol = new_protocol
        self.call_later = call_later
        self.open: set[Connection] = set()
        #: Connections still in their handshake, oldest first -> what cancels their deadline.
        self.handshaking: dict[Connection, Callable[[], None]] = {}
        self.budget = limits.max_reply_backlog_bytes
        self.accepted = 0  # connections admitted since the server started
        self.closing = False
        self._all_closed: anyio.Event | None = None

    def admit(self, connection: Connection) -> bool:
        """Take a new connection in, or refuse it (shutting down, or full of authenticated
        connections); at a bound with peers still in their handshake, the oldest of those is
        dropped instead (see the module's docstring)."""
        limits = self.limits
        if self.closing:
            self._refuse(connection, ConnectionLost("the server is shutting down"))
            return False
        if (
            len(self.handshaking) >= limits.max_handshakes
            or len(self.open) >= limits.max_connections
        ):
            if not self.handshaking:
                reason = f"the server is at its limit of {limits.max_connections} connections"
                self._refuse(connection, ConnectionLost(reason))
                return False
            if len(self.handshaking) >= limits.max_handshakes:
                reason = f"its limit of {limits.max_handshakes} connections in their handshake"
            else:
                reason = f"its limit of {limits.max_connections} connections"
            oldest = next(iter(self.handshaking))
            self.handshaking.pop(oldest)()
            self._refuse(
                oldest,
                ConnectionLost(
                    f"the server is at {reason}, and this one, still in its handshake, had "
                    "waited longest"
                ),
            )
        self.open.add(connection)
        self.accepted += 1
        self.handshaking[connection] = self.call_later(
            limits.handshake_timeout, lambda: self._deadline(connection)
        )
        return True

    def received(self, connection: Connection, data: bytes | memoryview) -> bool:
        """Parse what a connection sent and apply it: see ``apply``."""
        events = connection.protocol.receive_data(data)
        if self.handshaking and connection in self.handshaking and connection.protocol.ready:
            self.handshaking.pop(connection)()  # its deadline; the slot goes to the next
        if len(events) == 1 and not connection.pending:
            request = events[0]
            if (
                type(request) is Request
                and request.op in READ_OPS
                and connection.backlog() <= self.budget
            ):
                # A read alone in its read (a sync client's): answered without building a
                # batch (a get went from 28 Python calls in the server to 25). A read commits
                # nothing, so it pushes nothing that a batch would have to gather.
                dispatcher = self.dispatcher
                dispatcher.requests += 1
                answer = dispatcher.answer(connection, request.id, request.op, request.args)
                if isinstance(answer, tuple):
                    for piece in answer:
                        connection.write(piece)
                else:
                    connection.write(answer)
                return True
        connection.pending.extend(events)
        return self.apply(connection)

    def apply(self, connection: Connection) -> bool:
        """Apply a connection's parsed requests while its backlog stays under its budget
        (``Limits.max_reply_backlog_bytes``), answering in one write per batch. False: some
        wait for the peer to read (the shell stops reading it until then), so what it costs
        us stays bounded: the budget, and one reply made as it is sent."""
        pending = connection.pending
        budget = self.budget
        durability = self.durability
        durability.batching = True  # what it changes is committed at its end, if it can be
        try:
            while pending and not connection.closed:
                if connection.backlog() > budget:
                    return False
                answers, applied = self.dispatcher.respond_some(connection, pending, budget)
                del pending[:applied]
                durability.settle(connection)  # (a small commit: done now, the answers go at once)
                if len(answers) == 1:
                    connection.write(answers[0])
                else:
                    connection.write_all(answers)
        finally:
            durability.batch_ended()
        protocol = connection.protocol
        if protocol.refused:
            pending.clear()
            connection.close()
        return True

    def failed(self, connection: Connection, error: Exception) -> None:
        """Serving ``connection`` raised (a MemoryError, or a bug): drop it, releasing its
        locks and watches, and serve everyone else on."""
        logger.error("dropping a connection that could not be served", exc_info=error)
        connection.pending.clear()
        try:
            reason = f"the server could not serve this connection ({type(error).__name__})"
            connection.write(connection.protocol.send_refusal(ConnectionLost(reason)))
        except MemoryError:
            pass  # it is dropped all the same, without a last word
        connection.drop()

    def gone(self, connection: Connection) -> None:
        self.open.discard(connection)
        cancel_deadline = self.handshaking.pop(connection, None)
        if cancel_deadline is not None:
            cancel_deadline()
        self.dispatcher.connection_lost(connection)
        if self._all_closed is not None and not self.open:
            self._all_closed.set()

    async def goodbye(self) -> None:
        """Shutting down: tell every client why and close; wait (bounded) until all are gone."""
        self.closing = True
        self._all_closed = anyio.Event()
        for connection in list(self.open):
            connection.write(
                connection.protocol.send_refusal(ConnectionLost("the server is shutting down"))
            )
            connection.close()
        if self.open:
            with anyio.move_on_after(FAREWELL_SECONDS):
                await self._all_closed.wait()
        for connection in list(self.open):  # its farewell did not go in time, or waits behind
            connection.abort()  # a commit that failed: the socket is closed all the same

    def _deadline(self, connection: Connection) -> None:
        if self.handshaking.pop(connection, None) is not None:
            self._refuse(
                connection,
                RemoteProtocolError(
                    f"no hello and authentication within {self.limits.handshake_timeout} seconds"
                ),
            )

    @staticmethod
    def _refuse(connection: Connection, error: Exception) -> None:
        """Tell the peer why (a hello error form, or a connection-level error) and close."""
        connection.write(connection.protocol.send_refusal(error))
        connection.close()
