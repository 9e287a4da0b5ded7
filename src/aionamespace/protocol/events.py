"""The protocol's vocabulary, sans-IO: its constants, its limits, and the events frames become.

``_protocol.py``'s two state machines (``ServerConnection``, ``ClientConnection``) turn bytes
into these events and back; everything here is plain data and the checks that make it from a
decoded frame. The format is specified in docs/PROTOCOL.md.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from .._errors import RemoteProtocolError, exception_from_reply

__all__ = [
    "PROTOCOL_NAME",
    "PROTOCOL_VERSION",
    "PUSH_EVENT",
    "PUSH_INVALIDATE",
    "REPLY_ERROR",
    "REPLY_OK",
    "Answer",
    "BadRequest",
    "Hello",
    "Invalidate",
    "Limits",
    "Push",
    "Refusal",
    "Reply",
    "Request",
    "check_hello",
    "check_reply",
]

PROTOCOL_NAME = "aionamespace"
PROTOCOL_VERSION = 1

REPLY_OK = 0
REPLY_ERROR = 1
PUSH_EVENT = 2  # [0, 2, watch id, revision, name, value or nil]
PUSH_INVALIDATE = 3  # [0, 3, key, name]: a value this connection read (tracked) changed



@dataclasses.dataclass(frozen=True)
class Limits:
    """Bounds both ends enforce; each is a constructor argument, never a buried constant.

    ``max_frame_bytes`` and ``max_name_length`` apply on both sides, and so does
    ``handshake_timeout``: the seconds a new connection has to say hello and authenticate (a
    proxy whose server has not greeted it by then raises ConnectionLost). The server alone uses
    ``max_connections`` (more are refused at the hello); the async proxy alone uses
    ``max_queued_writes`` (``ns.x = v`` raises WriteQueueFull beyond that many writes not yet
    acknowledged).
    """

    max_frame_bytes: int = 64 * 1024 * 1024
    max_name_length: int = 256
    max_connections: int = 10_000
    handshake_timeout: float = 10.0
    max_queued_writes: int = 100_000

    def check_name(self, name: object) -> str | None:
        """Why ``name`` cannot name an attribute or a namespace, or None if it can."""
        if type(name) is not str:
            return f"names must be str, not {type(name).__name__}"
        if not name:
            return "names must not be empty"
        if len(name) > self.max_name_length:
            return f"name longer than {self.max_name_length} characters"
        return None


# ------------------------------------------------------------------------------ events


@dataclasses.dataclass(frozen=True, slots=True)
class Hello:
    """The peer's hello map, validated."""

    version: int
    info: Mapping[str, Any]


@dataclasses.dataclass(slots=True)
class Request:
    """A well-formed request the server should apply (not frozen: a frozen dataclass's
    ``__init__`` sets each field through ``object.__setattr__``, a tenth of a pipelined get)."""

    id: int
    op: str
    args: tuple[Any, ...]


@dataclasses.dataclass(frozen=True, slots=True)
class BadRequest:
    """A request with a usable id but unusable contents: answer it with an error."""

    id: int
    message: str


@dataclasses.dataclass(frozen=True, slots=True)
class Push:
    """A watch event the server pushed: ``name`` changed at ``revision`` (None: deleted)."""

    watch_id: int
    revision: int
    name: str
    value: bytes | None


@dataclasses.dataclass(frozen=True, slots=True)
class Invalidate:
    """The server says: ``name`` in namespace ``key``, which this connection read, changed."""

    key: str
    name: str


@dataclasses.dataclass(frozen=True, slots=True)
class Refusal:
    """The connection cannot go on: send ``send_refusal(error)`` and close."""

    error: Exception


#: A successful reply as ``ClientConnection.receive_frames`` hands it over: the frame itself,
#: ``[id, REPLY_OK, result]`` with ``id > 0``, checked (``ClientConnection._decode`` says which).
Answer = list[Any]


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


def check_reply(frame: Any) -> Reply | Push | Invalidate:
    """A frame from a greeted server, as an event. The commonest, an Answer, is recognised by
    ``ClientConnection._decode`` before this is called (this would make a Reply of it)."""
    if type(frame) is not list or len(frame) < 3 or type(frame[0]) is not int:
        raise RemoteProtocolError("a reply must be an array [id, status, ...]")
    if frame[0] == 0 and frame[1] == PUSH_INVALIDATE:
        if len(frame) == 4 and type(frame[2]) is str and type(frame[3]) is str:
            return Invalidate(frame[2], frame[3])
        raise RemoteProtocolError("malformed invalidation")
    if frame[0] == 0 and frame[1] == PUSH_EVENT:
        if (len(frame) == 6 and type(frame[2]) is int and type(frame[3]) is int
                and type(frame[4]) is str and type(frame[5]) in (bytes, type(None))):
            return Push(frame[2], frame[3], frame[4], frame[5])
        raise RemoteProtocolError("malformed watch event")
    if frame[1] == REPLY_OK and len(frame) == 3:
        return Reply(frame[0], frame[2])
    if frame[1] == REPLY_ERROR and len(frame) == 4 and type(frame[2]) is type(frame[3]) is str:
        return Reply(frame[0], error=exception_from_reply(frame[2], frame[3]))
    raise RemoteProtocolError("malformed reply")
