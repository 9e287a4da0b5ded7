"""The server's side of a connection, sans-IO: a client's bytes in, events out, bytes out.

``connection.py`` describes the protocol and holds the client's side; this is the other state
machine: the hello (and, with an authkey, the proof) as states, then requests checked one by
one, and the frames the server sends.
"""

from __future__ import annotations

from typing import Any

from .._errors import AuthenticationError, RemoteProtocolError
from . import auth as _auth
from .codec import SCALAR_LENGTHS
from .events import (
    PROTOCOL_NAME,
    PROTOCOL_VERSION,
    PUSH_EVENT,
    PUSH_INVALIDATE,
    REPLY_ERROR,
    REPLY_OK,
    BadRequest,
    Hello,
    Refusal,
    Request,
    check_hello,
)
from .frames import (
    LARGE_VALUE_BYTES,
    FrameDecoder,
    large_reply_header,
    pack_frame,
)
from .handshake import HandshakeDecoder
from .limits import Limits
from .ops import ANNOUNCED_OPS, OPS, check_args, valid_names

__all__ = ["ServerConnection"]


class ServerConnection:
    """One connection as the server sees it."""

    def __init__(
        self, limits: Limits | None = None, authkey: bytes | None = None, epoch: str | None = None
    ) -> None:
        self.limits = limits or Limits()
        self.epoch = epoch  # the server's, announced in its hello
        self._decoder = FrameDecoder(self.limits.max_frame_bytes)
        self._handshake: HandshakeDecoder | None = HandshakeDecoder(self.limits)  # until ready
        self._authkey = authkey
        self.epoch = epoch  # of the server's store: announced in the hello
        self._challenges = (b"", b"")  # (client's, ours)
        self.greeted = False
        self.authenticated = authkey is None
        self.refused = False
        self._valid_names = valid_names(self.limits)  # see _check_request

    def receive_data(
        self,
        data: bytes | memoryview,
    ) -> list[Hello | Request | BadRequest | Refusal]:
        """Parse bytes into events, in order.

        Malformed input (RemoteProtocolError) or a failed authentication (AuthenticationError)
        ends the list with a ``Refusal``: answer what came before it, send the refusal, close.
        Nothing after it is parsed, nor after the hello and proof until the handshake completes,
        so a request pipelined behind a bad proof never runs.
        """
        events: list[Hello | Request | BadRequest | Refusal] = []
        if self.refused:
            return events
        try:
            handshake = self._handshake
            if handshake is not None:
                for frame in handshake.frames(data):
                    if self.greeted:
                        self._check_client_proof(frame)
                    else:
                        events.append(self._check_client_hello(frame))
                    if self.authenticated:
                        break
                if not (self.greeted and self.authenticated):
                    return events
                self._handshake, data = None, handshake.rest  # it meets the full limits
                if not data:
                    return events
            check, append, valid = self._check_request, events.append, self._valid_names
            lengths = SCALAR_LENGTHS
            for frame in self._decoder.feed(data):
                # The commonest requests, checked here (not by a call per frame: async proxies
                # pipeline gets by the dozen): a get of names seen valid before, and a set of
                # such names to a whole int, float, None or bool (check_value's first test).
                if type(frame) is list and 4 <= len(frame) <= 5:
                    request_id, op, key, name = frame[0], frame[1], frame[2], frame[3]
                    if (
                        type(request_id) is int
                        and request_id > 0
                        and type(key) is str
                        and type(name) is str
                        and key in valid
                        and name in valid
                    ):
                        if len(frame) == 4:
                            if op == "get":
                                append(Request(request_id, op, (key, name)))
                                continue
                        elif op == "set":
                            value = frame[4]
                            if type(value) is bytes and value and len(value) == lengths[value[0]]:
                                append(Request(request_id, op, (key, name, value)))
                                continue
                append(check(frame))
            if self._decoder.error is not None:
                raise self._decoder.error
        except Exception as exc:  # never let a peer's bytes raise anything unexpected here
            if not isinstance(exc, (RemoteProtocolError, AuthenticationError)):
                exc = RemoteProtocolError(f"unusable frame: {exc!r}")
            self.refused, self._handshake = True, None  # nothing more will be parsed
            events.append(Refusal(exc.with_traceback(None)))  # (a cycle through this frame)
        return events

    @property
    def ready(self) -> bool:
        """Greeted and authenticated: requests may flow."""
        return self.greeted and self.authenticated

    def _check_client_hello(self, frame: Any) -> Hello:
        hello = check_hello(frame, from_server=False)
        if hello.version != PROTOCOL_VERSION:
            raise RemoteProtocolError(
                f"unsupported protocol version {hello.version}; "
                f"this server speaks {PROTOCOL_VERSION}"
            )
        if self._authkey is not None:
            challenge = hello.info.get("challenge")
            if not isinstance(challenge, bytes) or not _auth.is_challenge(challenge):
                raise AuthenticationError("this server requires an authkey; none was given")
            self._challenges = (challenge, _auth.new_challenge())
        self.greeted = True
        return hello

    def _check_client_proof(self, frame: Any) -> None:
        assert self._authkey is not None
        expected = _auth.client_proof(self._authkey, *self._challenges)
        if type(frame) is not dict or not _auth.proof_matches(expected, frame.get("proof")):
            raise AuthenticationError("authentication failed: wrong authkey")
        self.authenticated = True

    def _check_request(self, frame: Any) -> Request | BadRequest:
        """Any request but a get, or a set to a whole scalar, of names seen valid before
        (``receive_data`` checks those)."""
        if type(frame) is not list or len(frame) < 2 or type(frame[0]) is not int:
            raise RemoteProtocolError("a request must be an array [id, op, *args]")
        request_id, op = frame[0], frame[1]
        if request_id <= 0:
            raise RemoteProtocolError("request ids must be positive")
        args = tuple(frame[2:])
        if type(op) is not str or op not in OPS:
            return BadRequest(request_id, f"unknown operation {op!r}")
        problem = check_args(self.limits, op, args)
        if problem is not None:
            return BadRequest(request_id, f"{op}: {problem}")
        return Request(request_id, op, args)

    def send_hello(self) -> bytes:
        hello: dict[str, Any] = {
            "protocol": PROTOCOL_NAME,
            "version": PROTOCOL_VERSION,
            "max_frame_bytes": self.limits.max_frame_bytes,
        }
        if self.epoch is not None:
            hello["epoch"] = self.epoch
        hello["ops"] = list(ANNOUNCED_OPS)
        if self._authkey is not None:
            hello["challenge"] = self._challenges[1]
            hello["proof"] = _auth.server_proof(self._authkey, *self._challenges)
        return pack_frame(hello)

    def send_refusal(self, error: Exception) -> bytes:
        """The last frame before the server drops this connection: why it does.

        Before the hello it is an error hello; after it, a reply with id 0.
        """
        if not self.greeted:
            return pack_frame(
                {"protocol": PROTOCOL_NAME, "error": [type(error).__name__, str(error)]}
            )
        return self.send_error(0, error)

    @staticmethod
    def send_event(watch_id: int, revision: int, name: str, value: bytes | None) -> bytes:
        """A watch push: ``name`` changed at ``revision`` (value None: deleted)."""
        return pack_frame([0, PUSH_EVENT, watch_id, revision, name, value])

    @staticmethod
    def send_invalidation(key: str, name: str) -> bytes:
        """A cache invalidation: ``name`` in ``key``, which this connection read, changed."""
        return pack_frame([0, PUSH_INVALIDATE, key, name])

    @staticmethod
    def send_result(request_id: int, result: Any) -> bytes:
        return pack_frame([request_id, REPLY_OK, result])

    @staticmethod
    def send_value(request_id: int, value: bytes | None) -> bytes | tuple[bytes, bytes]:
        """The reply to a get: a large value as (header, the value's bytes), written one after
        the other so the value itself is never copied into a frame."""
        if value is not None and len(value) >= LARGE_VALUE_BYTES:
            return large_reply_header(request_id, len(value)), value
        return pack_frame([request_id, REPLY_OK, value])

    @staticmethod
    def send_error(request_id: int, error: BaseException) -> bytes:
        message = str(error.args[0]) if isinstance(error, KeyError) and error.args else str(error)
        return pack_frame([request_id, REPLY_ERROR, type(error).__name__, message])


# ------------------------------------------------------------------------------ client side
