"""The exception tree of aionamespace.

Every error the library raises on purpose is one of these, or a builtin exception with its
usual meaning (``AttributeError`` for a missing name, ``TypeError`` for a value that cannot be
shared, ``ValueError`` for a bad argument)::

    NamespaceError
    ├── ConnectionLost            (also a ConnectionError and an EOFError) the server is gone
    │   ├── LockLost              the connection holding a lock broke: the server freed it
    │   └── ServerTimeout         (also a TimeoutError) the server stopped answering
    ├── AuthenticationError       a wrong or missing authkey, on either side
    ├── HistoryExpired            a watch asked for changes older than the history kept
    ├── NamespaceGone             an anonymous namespace that was freed (or never created)
    ├── LimitExceeded             a bound of the server's Limits was reached (max_namespaces)
    ├── WriteQueueFull            too many async writes await acknowledgement: await _flush()
    ├── DataFileError             a server's data file (or Redis board) cannot be used
    ├── StoreUnavailable          the server's store (Redis) did not answer: outcome unknown
    ├── ProtocolError             the bytes on the wire do not follow docs/PROTOCOL.md
    │   ├── LocalProtocolError    we were about to send something the protocol forbids
    │   └── RemoteProtocolError   the peer sent something the protocol forbids
    └── RemoteError               the server failed with an error that has no local twin

Socket and anyio exceptions never reach the caller: a client transport translates them where
they happen (``client/transport.py``) into ``ConnectionLost``, keeping the original as
``__cause__``. The server's error replies name one of these (or a builtin) and are rebuilt by
``protocol/events.py``; this module holds the tree and nothing else.
"""

from __future__ import annotations

__all__ = [
    "AuthenticationError",
    "ConnectionLost",
    "DataFileError",
    "HistoryExpired",
    "LimitExceeded",
    "LocalProtocolError",
    "LockLost",
    "NamespaceError",
    "NamespaceGone",
    "ProtocolError",
    "RemoteError",
    "RemoteProtocolError",
    "ServerTimeout",
    "StoreUnavailable",
    "WriteQueueFull",
]


class NamespaceError(Exception):
    """Base class of every aionamespace-specific error."""


class ConnectionLost(NamespaceError, ConnectionError, EOFError):
    """The server cannot be reached, or the connection to it broke.

    Also an ``EOFError``, which the stdlib's manager proxies raise when their manager dies,
    so that handlers ported from them (``except EOFError``) still catch it (README, Errors).

    ``request_sent`` tells whether the failed request had left for the server: if it had, a
    write may or may not have been applied, and it is never retried.
    """

    request_sent: bool = False


class ServerTimeout(ConnectionLost, TimeoutError):
    """The server sent nothing for ``Limits.call_timeout`` seconds while a call waited for it:
    it is frozen (stopped, swapped out, or cut off by the network without a reset). The
    connection is closed, since its state is unknown: ``request_sent`` says, as for any
    ``ConnectionLost``, whether a write may have been applied. It is a ``ConnectionLost``
    (the proxy cannot use that server any more than a dead one) and a ``TimeoutError`` (what
    a caller bounding a call in time expects); it is never retried.
    """


class LockLost(ConnectionLost):
    """A lock this thread (or task) held is no longer held: the connection that held it broke,
    so the server released it, and another process may have taken it since.

    Raised, at the latest, by the lock's ``release()`` (``__exit__``); meanwhile every call of
    the holding thread (sync proxy: its connection to that server) or task (async proxy) raises
    it instead of reconnecting, so nothing runs as if the lock were still held. A
    ``ConnectionLost``, since a lost connection is its only cause: handlers of lost connections
    see it too. Never retried (``Retry``).
    """


class WriteQueueFull(NamespaceError):
    """An async proxy holds ``Limits.max_queued_writes`` unacknowledged writes already."""


class AuthenticationError(NamespaceError):
    """The peer does not know the authkey (or one side has a key and the other has none)."""


class HistoryExpired(NamespaceError):
    """A watch's ``since`` revision is older than the server's history (or from before a
    restart): resync with ``_snapshot()`` and watch from the revision it returns."""


class NamespaceGone(NamespaceError):
    """The anonymous namespace a proxy points to is not on the server: no connection used it
    for ``Limits.anonymous_grace`` seconds and the server freed it, or it was never created
    (an ``AsyncNamespace`` creates its own with its first queued write). Never raised for a
    named namespace, which the server never frees."""


class LimitExceeded(NamespaceError):
    """The request would take the server past one of its bounds (``Limits.max_namespaces``):
    nothing was changed, and the message names the bound."""


class DataFileError(NamespaceError):
    """A server's data file (``--data``) cannot be used: another server has it open, it is not
    an aionamespace data file, its format is newer than this version's, or SQLite cannot read
    it; or the board a Redis store finds under its prefix has a layout of another version.
    Raised where the server starts; the file (the board) is left as it was."""


class StoreUnavailable(NamespaceError):
    """The server's store (a Redis or Valkey it shares with other servers) could not be reached,
    refused, or did not answer in time. The message names the store. As with a lost reply, a
    write that failed so may or may not have taken effect; the server reconnects by itself."""


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
