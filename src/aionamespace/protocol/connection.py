"""The wire protocol, sans-IO: bytes in, events out, bytes out.

Nothing here touches a socket or an event loop, so the server, the sync proxy and the async
proxy share it as thin I/O shells, and it is tested (and fuzzed) without any of them. The
format is specified in docs/PROTOCOL.md; in short, a connection carries a stream of msgpack
values ("frames"), each one self-delimiting:

* the client opens with a hello map, the server answers with its own hello map;
* then the client sends requests ``[id, op, *args]`` and the server answers every request with
  ``[id, 0, result]`` or ``[id, 1, error_type, message]``, in the order of the requests except
  for a deferred reply (an ``acquire`` answered when the lock is handed over); ids match them;
* between replies come *pushes*, frames the server sends unasked (watch events, invalidations);
* attribute values travel as msgpack ``bin`` holding the value encoded by ``codec``, so the
  server stores and forwards them without re-encoding.

Like h11, the parser's promise is: whatever bytes arrive, it either yields events or raises
``RemoteProtocolError``, never anything else. The events and the wire constants are
``events.py``'s, the bounds ``limits.py``'s, framing (and large values) ``frames.py``'s.
"""

from __future__ import annotations

from typing import Any

from .._errors import AuthenticationError, LocalProtocolError, RemoteProtocolError
from . import auth as _auth
from .addresses import Address, format_address, parse_address
from .events import (
    PROTOCOL_NAME,
    PROTOCOL_VERSION,
    REPLY_OK,
    BadRequest,
    Hello,
    Invalidation,
    Refusal,
    Reply,
    Request,
    ResultFrame,
    WatchPush,
    check_hello,
    check_reply,
)
from .frames import (
    NO_FRAME,
    FrameDecoder,
    LargeValue,
    get_head,
    large_reply,
    new_packer,
    pack_frame,
    pack_get_head32,
)
from .limits import Limits
from .ops import MAX_EPOCH_LENGTH, OPS, check_each_name, check_names, valid_names
from .server_connection import ServerConnection

__all__ = [
    "NO_FRAME",
    "OPS",
    "PROTOCOL_NAME",
    "PROTOCOL_VERSION",
    "Address",
    "BadRequest",
    "ClientConnection",
    "FrameDecoder",
    "Hello",
    "Invalidation",
    "Limits",
    "Refusal",
    "Reply",
    "Request",
    "ResultFrame",
    "ServerConnection",
    "WatchPush",
    "format_address",
    "parse_address",
]

#: The most (key, name) pairs a connection keeps the packed get of (``send_get``); past it,
#: it forgets them all and starts over.
MAX_GET_TAILS = 1024


class ClientConnection:
    """One connection as a proxy sees it: request ids, the handshake, reply parsing.

    The handshake is a state of this object, whatever moves the bytes::

        send(client.start())                    # our hello
        while not client.greeted:               # the server's hello: checked, its proof
            client.receive_data(receive())      #   verified (or the reason it refused, raised)
        send(client.handshake_reply())          # our proof, and with ``track`` the request
                                                #   that turns client tracking on
    A request may follow at once: the server takes frames in order. The reply to the ``track``
    request has an id no caller waits for, so it is dropped like any such reply.
    """

    def __init__(
        self, limits: Limits | None = None, authkey: bytes | None = None, *, track: bool = False
    ) -> None:
        self.limits = limits or Limits()
        self.track = track
        self._decoder = FrameDecoder(self.limits.max_frame_bytes)
        self._authkey = authkey
        self._challenge = b""
        self._proof = b""
        self._next_id = 1
        self._large: LargeValue | None = None  # a large value being received
        # A large value up to this size is received into one buffer kept for it (``_reused``)
        # rather than a new one: 0 unless the caller decodes each reply before it reads on
        # (``reuse_large_buffer``).
        self._reuse_up_to = 0
        self._reused = bytearray()
        self._reused_free = False  # no result received into it may still be unread
        self._valid_names = valid_names(self.limits)  # see send_get
        # send_get's and send_set's own packer: pack_frame looks its packer up in a
        # thread-local on every call. Their frames cannot fail to pack (an int, checked strs
        # and bytes), and a connection is used by one thread at a time.
        self._pack = new_packer().pack
        self._get_tails: dict[tuple[str, str], bytes] = {}  # see send_get
        # The largest frame we send, and the largest we take: ours until the server says its
        # own in its hello, then the server's (kept across reconnects: requests queued before
        # a connection are checked against it). The server bounds what it stores: a proxy
        # that could not read back what it accepted would be of no use.
        self.send_limit = self.receive_limit = self.limits.max_frame_bytes
        self.greeted = False
        self.epoch: str | None = None  # of the server, as its hello said (None: it did not)
        # Whether the server announced snapshot_packed: then a snapshot is sent as one.
        self.packs_snapshots = False

    def reset(self) -> None:
        """Start over on a new connection; request ids keep counting up."""
        self._decoder = FrameDecoder(self.receive_limit)
        self._large = None
        self._proof = b""
        self.greeted = False
        self.packs_snapshots = False  # until this server's hello says (it may be another)

    def start(self) -> bytes:
        """A new connection's first bytes: ``reset()``, then our hello."""
        self.reset()
        return self.send_hello()

    def send_hello(self) -> bytes:
        hello: dict[str, Any] = {"protocol": PROTOCOL_NAME, "version": PROTOCOL_VERSION}
        if self._authkey is not None:
            self._challenge = hello["challenge"] = _auth.new_challenge()
        return pack_frame(hello)

    def handshake_reply(self) -> bytes:
        """What to send once greeted: our proof of the authkey (nothing without a key), and
        with ``track`` the request turning client tracking on."""
        if not self.track:
            return self._proof
        return self._proof + self.send_request("track", True)[1]

    def _check_server_hello(self, frame: Any) -> Hello:
        hello = check_hello(frame, from_server=True)
        if hello.version != PROTOCOL_VERSION:
            raise RemoteProtocolError(
                f"the server speaks protocol version {hello.version}, we speak {PROTOCOL_VERSION}"
            )
        if self._authkey is not None:
            server_challenge = hello.info.get("challenge")
            if not isinstance(server_challenge, bytes) or not _auth.is_challenge(server_challenge):
                raise AuthenticationError("the server does not use an authkey, but we have one")
            expected = _auth.server_proof(self._authkey, self._challenge, server_challenge)
            if not _auth.proof_matches(expected, hello.info.get("proof")):
                raise AuthenticationError(
                    "authentication failed: the server does not know our authkey"
                )
            self._proof = pack_frame(
                {"proof": _auth.client_proof(self._authkey, self._challenge, server_challenge)}
            )
        announced = hello.info.get("max_frame_bytes")
        if type(announced) is int and announced > 0:  # the server's bound is the connection's
            self.send_limit = announced
            if announced > self.receive_limit and self._decoder.idle:
                self.receive_limit = announced  # it sends nothing more before our proof
                self._decoder = FrameDecoder(announced)
        epoch = hello.info.get("epoch")
        self.epoch = epoch if type(epoch) is str and 0 < len(epoch) <= MAX_EPOCH_LENGTH else None
        ops = hello.info.get("ops")
        self.packs_snapshots = type(ops) is list and "snapshot_packed" in ops
        self.greeted = True
        return hello

    def send_request(self, op: str, *args: Any) -> tuple[int, bytes]:
        """Allocate an id and encode ``[id, op, *args]``; a ``snapshot`` goes as
        ``snapshot_packed`` to a server that announced it (whose result a reader of a snapshot's
        takes too: see ``client/calls.py``)."""
        if op == "snapshot" and self.packs_snapshots:
            op = "snapshot_packed"
        if op not in OPS:
            raise LocalProtocolError(f"unknown operation {op!r}")
        if len(args) != len(OPS[op]):
            raise LocalProtocolError(f"{op} takes {len(OPS[op])} arguments, got {len(args)}")
        problem = check_names(self.limits, op, args)
        if problem is not None:
            raise ValueError(problem)
        request_id = self._next_id
        self._next_id += 1
        frame = pack_frame([request_id, op, *args])
        if len(frame) > self.send_limit:
            whose = "" if self.send_limit == self.limits.max_frame_bytes else "the server's "
            raise ValueError(
                f"{op} request is {len(frame)} bytes, over {whose}max_frame_bytes "
                f"({self.send_limit})"
            )
        return request_id, frame

    def send_get(self, key: str, name: str) -> tuple[int, bytes]:
        """``send_request("get", key, name)``, for the commonest request: the frame's bytes
        after the id are packed (and the names checked) once per key and name, then kept
        (up to MAX_GET_TAILS pairs); each get packs only its id."""
        tail = self._get_tails.get((key, name))
        if tail is None:
            tail = self._get_tail(key, name)
        request_id = self._next_id
        self._next_id = request_id + 1
        if 0xFFFF < request_id <= 0xFFFFFFFF:  # (a busy connection's: get_head without a call)
            return request_id, pack_get_head32(0x94, 0xCE, request_id) + tail
        return request_id, get_head(request_id) + tail

    def _get_tail(self, key: str, name: str) -> bytes:
        self._check_pair(key, name)
        tails = self._get_tails
        if len(tails) >= MAX_GET_TAILS:
            tails.clear()
        packed: bytes = self._pack(["get", key, name])
        tail = tails[key, name] = packed[1:]  # (without that array's header, of 3)
        return tail

    def send_set(self, key: str, name: str, value: bytes) -> tuple[int, bytes]:
        """``send_request("set", key, name, value)`` (``value`` encoded), for the commonest
        write, with names checked as ``send_get`` checks them."""
        self._check_pair(key, name)
        request_id = self._next_id
        frame = self._pack([request_id, "set", key, name, value])
        if len(frame) > self.send_limit:
            whose = "" if self.send_limit == self.limits.max_frame_bytes else "the server's "
            raise ValueError(
                f"set request is {len(frame)} bytes, over {whose}max_frame_bytes "
                f"({self.send_limit})"
            )
        self._next_id = request_id + 1
        return request_id, frame

    def _check_pair(self, key: str, name: str) -> None:
        """ValueError if ``key`` or ``name`` is not a valid name; names found valid before
        (``ops.valid_names``) are not checked again."""
        valid = self._valid_names
        if key not in valid or name not in valid:
            problem = check_each_name(self.limits, (key, name))
            if problem is not None:
                raise ValueError(problem)

    def receive_data(
        self,
        data: bytes | memoryview,
    ) -> list[Hello | Reply | WatchPush | Invalidation]:
        """Parse bytes into events, in order; RemoteProtocolError if the server sent garbage."""
        return [
            Reply(event[0], event[2]) if isinstance(event, list) else event
            for event in self.receive_frames(data)
        ]

    def receive_frames(
        self,
        data: bytes | memoryview,
    ) -> list[ResultFrame | Hello | Reply | WatchPush | Invalidation]:
        """``receive_data``, except that a successful reply is left as the frame it came in:
        a ``ResultFrame``, ``[id, REPLY_OK, result]``, checked. The async proxy takes its
        pipelined replies so, without building a Reply object for each."""
        events: list[ResultFrame | Hello | Reply | WatchPush | Invalidation] = []
        view = memoryview(data)
        # The results of earlier calls have been read, as reuse_large_buffer's caller vows;
        # one being received may end among these events, unread: then not this time.
        self._reused_free = self._large is None
        while view:
            if self._large is not None:  # copy the value's share in, as a recv_into would
                target = self._large.unfilled()
                count = min(len(view), len(target))
                target[:count], view = view[:count], view[count:]
                events.extend(self.large_received(count))
                continue
            if self.greeted and self._decoder.idle:
                found = large_reply(view, self.receive_limit, self._large_buffer)
                if found is not None:
                    self._large, header = found
                    view = view[header:]
                    continue
            self._decode(view, events)
            break
        return events

    def lone_result(self, request_id: int, data: bytes | memoryview) -> Any:
        """The result in ``data`` if it is exactly the successful reply to ``request_id`` and
        nothing else (a sync client's usual read, decoded in one call); else ``NO_FRAME``,
        and nothing was consumed: pass ``data`` to ``receive_data``."""
        if self._large is None and self.greeted:
            frame = self._decoder.lone_frame(data)
            if (
                type(frame) is list
                and len(frame) == 3
                and frame[0] == request_id
                and type(frame[0]) is int
                and frame[1] == REPLY_OK
            ):
                return frame[2]
        return NO_FRAME

    @property
    def between_frames(self) -> bool:
        """Whether the next byte received starts a frame (none is half-received)."""
        return self.greeted and self._large is None and self._decoder.idle

    def reuse_large_buffer(self, up_to: int) -> None:
        """Receive each large value of up to ``up_to`` bytes into one buffer, kept for that: a
        new buffer of a large value is paged in by the kernel on first write, which costs more
        than the copy. The caller guarantees that a reply's result is read (copied out) before
        the next bytes are received; a result so received is a memoryview of that buffer.
        (Of two large values in one ``receive_data``, the second gets a buffer of its own.)"""
        self._reuse_up_to = up_to

    def _large_buffer(self, size: int) -> bytearray | memoryview:
        if size > self._reuse_up_to or not self._reused_free:
            return bytearray(size)
        self._reused_free = False
        if len(self._reused) < size:
            self._reused = bytearray(size)
        return memoryview(self._reused)[:size]

    def large_value(self) -> memoryview | None:
        """Where the rest of a large value being received goes, if one is: ``recv_into`` it
        and call ``large_received``, so its bytes are copied by the kernel alone."""
        return self._large.unfilled() if self._large is not None else None

    def large_received(self, nbytes: int) -> list[Hello | Reply | WatchPush | Invalidation]:
        """``nbytes`` were written into ``large_value()``: the reply, once the value is whole."""
        large = self._large
        assert large is not None
        if not large.filled_by(nbytes):
            return []
        self._large = None
        return [Reply(large.request_id, large.buffer)]

    def _decode(
        self, data: memoryview, events: list[ResultFrame | Hello | Reply | WatchPush | Invalidation]
    ) -> None:
        greeted = self.greeted
        for frame in self._decoder.feed(data):
            if (
                greeted
                and type(frame) is list
                and len(frame) == 3
                and frame[1] == REPLY_OK
                and type(frame[0]) is int
                and frame[0] > 0
            ):
                events.append(frame)  # a ResultFrame: the commonest frame, checked here
            elif not greeted:
                events.append(self._check_server_hello(frame))
                greeted = self.greeted
            else:
                events.append(check_reply(frame))
        if self._decoder.error is not None:  # the server sent garbage: this connection is done
            raise self._decoder.error
