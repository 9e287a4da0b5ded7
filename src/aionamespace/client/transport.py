"""The seam between a proxy and the wire, and how the wire's failures read to a caller.

A proxy never touches a socket. It hands a transport a *call* (an ``Operation`` of
``calls.py`` and its arguments) and gets the answer back, or asks for a watch's next event;
how bytes move is the transport's business: a blocking socket (``blocking.py``), asyncio's
protocol callbacks or an anyio stream (``asyncio_transport.py``, ``stream_transport.py``), or
a server in this very process with no socket at all (``loopback.py``).

Whatever a transport's socket, stream or loop raises when the connection breaks becomes
``ConnectionLost`` here, naming the server's address and keeping the original as
``__cause__``: callers never see a raw OSError or an anyio exception.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Protocol

import anyio

from .._errors import ConnectionLost, LockLost, ServerTimeout

if TYPE_CHECKING:
    from ..protocol.events import Hello, Invalidation, Reply, WatchPush
    from .calls import Operation
    from .leases import Lease
    from .pipelined import AsyncState, PipelinedTransport

__all__ = ["TRANSPORT_ERRORS", "InProcess", "Transport", "connection_lost", "map_connection_errors"]


class Transport(Protocol):
    """A sync transport: one connection to a server, used by one thread at a time.

    ``call`` is the whole of a proxy's request path: the operation's answer, read by the
    operation (or the error the server sent, raised; or ``ConnectionLost``, whose
    ``request_sent`` says whether the request may have reached the server). ``send`` and
    ``receive`` split a call in two for a caller that reads in a thread of its own (the client
    cache); ``next_push`` waits for a watch's next event.
    """

    closed: bool
    busy: bool  # a call is between its send and its reply (a signal handler re-enters it)
    leases: dict[bytes, Lease]  # the locks held on this connection, by token

    @property
    def epoch(self) -> str | None:
        """The epoch of the server (its hello's), None if it did not say."""

    def call(self, operation: Operation, args: tuple[Any, ...]) -> Any: ...

    def send(self, operation: Operation, args: tuple[Any, ...]) -> int: ...

    def receive(self) -> list[Hello | Reply | WatchPush | Invalidation]: ...

    def next_push(self, timeout: float | None = None) -> WatchPush: ...

    def close(self) -> None: ...

    def nested(self) -> Transport: ...

    def lease_lost(self) -> LockLost: ...


class InProcess(Protocol):
    """A server in this very process, given where an address goes: the transports reach it
    through in-memory ends instead of sockets (``loopback.LoopbackServer``)."""

    def socket(self, timeout: float | None = None) -> Any:
        """What ``SocketTransport`` uses of a socket, connected to this server."""

    def async_transport(self, state: AsyncState) -> PipelinedTransport: ...


#: What a socket or an anyio stream raises when the connection breaks (or the peer left).
TRANSPORT_ERRORS = (
    OSError,
    EOFError,
    anyio.EndOfStream,
    anyio.BrokenResourceError,
    anyio.ClosedResourceError,
)


@contextlib.contextmanager
def map_connection_errors(
    address: object, *, connecting: bool = False, handshake_timeout: float | None = None
) -> Iterator[None]:
    """Translate socket and anyio failures into ``ConnectionLost`` naming the address.

    A TimeoutError passes through (a timeout the caller asked for is not a lost connection),
    except while connecting with a ``handshake_timeout``: a server that does not greet us in
    that time is as good as none (``ServerTimeout``, a ConnectionLost that is not retried).
    """
    try:
        yield
    except Exception as exc:
        lost = connection_lost(
            exc, address, connecting=connecting, handshake_timeout=handshake_timeout
        )
        if lost is None:
            raise
        raise lost from exc


def connection_lost(
    exc: BaseException,
    address: object,
    *,
    connecting: bool = False,
    handshake_timeout: float | None = None,
) -> ConnectionLost | None:
    """The ``ConnectionLost`` that ``exc`` stands for (``map_connection_errors``), or None if
    it should pass as it is (for a hot path that cannot afford a context manager)."""
    if isinstance(exc, TimeoutError):
        if handshake_timeout is None:
            return None
        return ServerTimeout(  # a server that accepts but never answers: frozen
            f"cannot connect to the aionamespace server at {address!r}: no handshake within "
            f"{handshake_timeout} seconds"
        )
    if isinstance(exc, ConnectionLost) or not isinstance(exc, TRANSPORT_ERRORS):
        return None
    detail = str(exc) or type(exc).__name__
    what = "cannot connect to" if connecting else "lost the connection to"
    return ConnectionLost(f"{what} the aionamespace server at {address!r}: {detail}")
