"""The exception tree of aionamespace.

Every error the library raises on purpose is one of these, or a builtin exception with its
usual meaning (``AttributeError`` for a missing name, ``TypeError`` for a value that cannot be
shared, ``ValueError`` for a bad argument)::

    NamespaceError
    ├── ConnectionLost            (also a ConnectionError) the server is gone or unreachable
    ├── AuthenticationError       a wrong or missing authkey, on either side
    ├── HistoryExpired            a watch asked for changes older than the history kept
    ├── WriteQueueFull            too many async writes await acknowledgement: await _flush()
    ├── ProtocolError             the bytes on the wire do not follow docs/PROTOCOL.md
    │   ├── LocalProtocolError    we were about to send something the protocol forbids
    │   └── RemoteProtocolError   the peer sent something the protocol forbids
    └── RemoteError               the server failed with an error that has no local twin

Socket and anyio exceptions never reach the caller: the I/O shells translate them at one
point (``map_connection_errors`` below) into ``ConnectionLost``, keeping the original as
``__cause__``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import anyio

__all__ = [
    "AuthenticationError",
    "ConnectionLost",
    "HistoryExpired",
    "LocalProtocolError",
    "NamespaceError",
    "ProtocolError",
    "RemoteError",
    "RemoteProtocolError",
    "WriteQueueFull",
    "connection_lost",
    "exception_from_reply",
    "map_connection_errors",
]


class NamespaceError(Exception):
    """Base class of every aionamespace-specific error."""


class ConnectionLost(NamespaceError, ConnectionError):
    """The server cannot be reached, or the connection to it broke.

    ``request_sent`` tells whether the failed request had left for the server: if it had, a
    write may or may not have been applied, and it is never retried.
    """

    request_sent: bool = False


class WriteQueueFull(NamespaceError):
    """An async proxy holds ``Limits.max_queued_writes`` unacknowledged writes already."""


class AuthenticationError(NamespaceError):
    """The peer does not know the authkey (or one side has a key and the other has none)."""


class HistoryExpired(NamespaceError):
    """A watch's ``since`` revision is older than the server's history (or from before a
    restart): resync with ``_snapshot()`` and watch from the revision it returns."""


class ProtocolError(NamespaceError):
    """Bytes that do not follow the aionamespace protocol."""


class LocalProtocolError(ProtocolError):
    """We were asked to send something the protocol cannot carry (our bug or the caller's)."""


class RemoteProtocolError(ProtocolError):
    """The peer sent malformed or unexpected data."""


class RemoteError(NamespaceError):
    """The server failed with an error that has no builtin counterpart.

    ``remote_type`` holds the exception type name the server reported.
    """

    def __init__(self, remote_type: str, message: str) -> None:
        super().__init__(f"{remote_type}: {message}")
        self.remote_type = remote_type


# Error replies carry a type *name*; only these names are turned back into local types.
# Names are looked up in this table, never evaluated.
_REMOTE_TYPES: dict[str, type[Exception]] = {
    cls.__name__: cls
    for cls in (
        AttributeError,
        AuthenticationError,
        ConnectionLost,
        HistoryExpired,
        KeyError,
        LookupError,
        OverflowError,
        TimeoutError,
        TypeError,
        ValueError,
        NamespaceError,
        ProtocolError,
        RemoteProtocolError,
    )
}


def exception_from_reply(type_name: str, message: str) -> Exception:
    """Rebuild the exception an error reply describes (see docs/PROTOCOL.md, "Errors")."""
    cls = _REMOTE_TYPES.get(type_name)
    if cls is None:
        return RemoteError(type_name, message)
    if cls is RemoteProtocolError:
        # The server says *we* sent garbage: from our side that is a local protocol error.
        return LocalProtocolError(message)
    return cls(message)


#: What a socket or an anyio stream raises when the connection breaks (or the peer left).
TRANSPORT_ERRORS = (
    OSError,
    EOFError,
    anyio.EndOfStream,
    anyio.BrokenResourceError,
    anyio.ClosedResourceError,
)


@contextlib.contextmanager
def map_connection_errors(address: object, *, connecting: bool = False,
                          handshake_timeout: float | None = None) -> Iterator[None]:
    """Translate socket and anyio failures into ``ConnectionLost`` naming the address.

    A TimeoutError passes through (a timeout the caller asked for is not a lost connection),
    except while connecting with a ``handshake_timeout``: a server that does not greet us in
    that time is as good as none.
    """
    try:
        yield
    except Exception as exc:
        lost = connection_lost(exc, address, connecting=connecting,
                               handshake_timeout=handshake_timeout)
        if lost is None:
            raise
        raise lost from exc


def connection_lost(exc: BaseException, address: object, *, connecting: bool = False,
                    handshake_timeout: float | None = None) -> ConnectionLost | None:
    """The ``ConnectionLost`` that ``exc`` stands for (``map_connection_errors``), or None if
    it should pass as it is (for a hot path that cannot afford a context manager)."""
    if isinstance(exc, TimeoutError):
        if handshake_timeout is None:
            return None
        return ConnectionLost(
            f"cannot connect to the aionamespace server at {address!r}: no handshake within "
            f"{handshake_timeout} seconds")
    if isinstance(exc, ConnectionLost) or not isinstance(exc, TRANSPORT_ERRORS):
        return None
    detail = str(exc) or type(exc).__name__
    what = "cannot connect to" if connecting else "lost the connection to"
    return ConnectionLost(f"{what} the aionamespace server at {address!r}: {detail}")
