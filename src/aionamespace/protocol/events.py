"""The protocol's vocabulary, sans-IO: its constants, the events frames become, and errors.

``connection.py``'s two state machines (``ServerConnection``, ``ClientConnection``) turn bytes
into these events and back; everything here is plain data and the checks that make it from a
decoded frame. The format is specified in docs/PROTOCOL.md.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from .._errors import (
    AuthenticationError,
    ConnectionLost,
    HistoryExpired,
    LimitExceeded,
    LocalProtocolError,
    NamespaceError,
    NamespaceGone,
    ProtocolError,
    RemoteError,
    RemoteProtocolError,
    StoreUnavailable,
)

__all__ = [
    "PROTOCOL_NAME",
    "PROTOCOL_VERSION",
    "PUSH_EVENT",
    "PUSH_INVALIDATE",
    "REPLY_ERROR",
    "REPLY_OK",
    "BadRequest",
    "Hello",
    "Invalidation",
    "Refusal",
    "Reply",
    "Request",
    "ResultFrame",
    "WatchPush",
    "check_hello",
    "check_reply",
    "exception_from_reply",
    "missing_attribute",
]

PROTOCOL_NAME = "aionamespace"
PROTOCOL_VERSION = 1

REPLY_OK = 0
REPLY_ERROR = 1
PUSH_EVENT = 2  # [0, 2, watch id, revision, name, value or nil]
PUSH_INVALIDATE = 3  # [0, 3, key, name]: a value this connection read (tracked) changed


# ------------------------------------------------------------------------------ events


@dataclasses.dataclass(frozen=True, slots=True)
class Hello:
    """The peer's hello map, validated."""

    version: int
    info: Mapping[str, Any]


@dataclasses.dataclass(slots=True)
class Request:
    """A well-formed request the server should apply (not frozen: a frozen dataclass's
    ``__init__`` sets each field through ``object.__setattr__``, slow for one per request)."""

    id: int
    op: str
    args: tuple[Any, ...]


@dataclasses.dataclass(frozen=True, slots=True)
class BadRequest:
    """A request with a usable id but unusable contents: answer it with an error."""

    id: int
    message: str


@dataclasses.dataclass(frozen=True, slots=True)
class WatchPush:
    """A watch event the server pushed: ``name`` changed at ``revision`` (None: deleted)."""

    watch_id: int
    revision: int
    name: str
    value: bytes | None


@dataclasses.dataclass(frozen=True, slots=True)
class Invalidation:
    """The server says: ``name`` in namespace ``key``, which this connection read, changed."""

    key: str
    name: str


@dataclasses.dataclass(frozen=True, slots=True)
class Refusal:
    """The connection cannot go on: send ``send_refusal(error)`` and close."""

    error: Exception


#: A successful reply as ``ClientConnection.receive_frames`` hands it over: the frame itself,
#: ``[id, REPLY_OK, result]`` with ``id > 0``, checked (``ClientConnection._decode`` says which).
ResultFrame = list[Any]


@dataclasses.dataclass(slots=True)  # not frozen: one per reply, and frozen's __init__ is slow
class Reply:
    """The answer to request ``id``: a result, or the exception to raise in the caller."""

    id: int
    result: Any = None
    error: Exception | None = None


def check_hello(frame: Any, *, from_server: bool) -> Hello:
    if type(frame) is not dict or frame.get("protocol") != PROTOCOL_NAME:
        raise RemoteProtocolError("peer does not speak the aionamespace protocol")
    if "error" in frame:
        if not from_server:
            raise RemoteProtocolError("a client hello cannot carry an error")
        error = frame["error"]
        if type(error) is list and len(error) == 2 and all(type(e) is str for e in error):
            raise exception_from_reply(error[0], error[1])
        raise RemoteProtocolError("malformed error in hello")
    version = frame.get("version")
    if type(version) is not int:
        raise RemoteProtocolError("hello without a protocol version")
    return Hello(version, frame)


def check_reply(frame: Any) -> Reply | WatchPush | Invalidation:
    """A frame from a greeted server, as an event. The commonest, a ResultFrame, is recognised by
    ``ClientConnection._decode`` before this is called (this would make a Reply of it)."""
    if type(frame) is not list or len(frame) < 3 or type(frame[0]) is not int:
        raise RemoteProtocolError("a reply must be an array [id, status, ...]")
    if frame[0] == 0 and frame[1] == PUSH_INVALIDATE:
        if len(frame) == 4 and type(frame[2]) is str and type(frame[3]) is str:
            return Invalidation(frame[2], frame[3])
        raise RemoteProtocolError("malformed invalidation")
    if frame[0] == 0 and frame[1] == PUSH_EVENT:
        if (
            len(frame) == 6
            and type(frame[2]) is int
            and type(frame[3]) is int
            and type(frame[4]) is str
            and type(frame[5]) in (bytes, type(None))
        ):
            return WatchPush(frame[2], frame[3], frame[4], frame[5])
        raise RemoteProtocolError("malformed watch event")
    if frame[1] == REPLY_OK and len(frame) == 3:
        return Reply(frame[0], frame[2])
    if frame[1] == REPLY_ERROR and len(frame) == 4 and type(frame[2]) is type(frame[3]) is str:
        return Reply(frame[0], error=exception_from_reply(frame[2], frame[3]))
    raise RemoteProtocolError("malformed reply")


# ------------------------------------------------------------------------------ errors

# Error replies carry a type *name*; only these names are turned back into local types.
# Names are looked up in this table, never evaluated.
REMOTE_TYPES: dict[str, type[Exception]] = {
    cls.__name__: cls
    for cls in (
        AttributeError,
        AuthenticationError,
        ConnectionLost,
        HistoryExpired,
        KeyError,
        LimitExceeded,
        LookupError,
        OverflowError,
        TimeoutError,
        TypeError,
        ValueError,
        NamespaceError,
        NamespaceGone,
        ProtocolError,
        RemoteProtocolError,
        StoreUnavailable,
    )
}


def exception_from_reply(type_name: str, message: str) -> Exception:
    """Rebuild the exception an error reply describes (see docs/PROTOCOL.md, "Errors")."""
    cls = REMOTE_TYPES.get(type_name)
    if cls is None:
        return RemoteError(type_name, message)
    if cls is RemoteProtocolError:
        # The server says *we* sent garbage: from our side that is a local protocol error.
        return LocalProtocolError(message)
    return cls(message)


def missing_attribute(name: str) -> AttributeError:
    """The error for a name a namespace does not hold, worded like the stdlib's."""
    return AttributeError(f"'Namespace' object has no attribute {name!r}")
