"""Frames, sans-IO: msgpack values in a byte stream, and the bounds on them.

``FrameDecoder`` turns bytes into frames and enforces ``max_frame_bytes``. A client receives the
reply to a get of a large value (``[id, 0, bin 32]``, PROTOCOL.md) past the decoder instead:
``large_reply`` recognises its header, and ``LargeValue`` takes the value's bytes into a buffer
of its exact size, which a socket can ``recv_into`` directly. Through msgpack's Unpacker the
same bytes would be copied twice more (into its buffer, then out as a new ``bytes``).
"""

from __future__ import annotations

import struct
import threading
from collections.abc import Callable
from typing import Any

import msgpack

from .._errors import RemoteProtocolError

__all__ = [
    "BYTES_HEAD_BYTES",
    "LARGE_VALUE_BYTES",
    "MAX_IDLE_UNPACKERS",
    "NO_FRAME",
    "POOLED_BUFFER_BYTES",
    "FrameDecoder",
    "LargeValue",
    "bytes_head_coming",
    "bytes_reply_head",
    "bytes_reply_size",
    "coalesce",
    "frame_packer",
    "get_head",
    "large_reply",
    "large_reply_header",
    "new_packer",
    "pack_frame",
    "pack_get_head32",
]

#: Replies carrying a value at least this long take the LargeValue path. msgpack encodes a bin
#: of this size or more as bin 32, so one header shape covers them all.
LARGE_VALUE_BYTES = 64 * 1024


#: ``FrameDecoder.lone_frame``'s "not one whole frame" (None is a frame: msgpack's nil).
NO_FRAME: Any = object()


class FrameDecoder:
    """Incremental frame parser: ``feed(bytes)`` returns every frame completed so far.

    ``max_frame_bytes`` bounds one frame, not a read: bytes are fed to msgpack no faster than
    the unfinished frame leaves room for, so any number of small pipelined frames pass while
    one frame over the limit is refused before it is buffered whole. Once the stream breaks,
    ``error`` holds why: ``feed`` still returns the frames completed before the bad bytes
    (they deserve their answers) and raises only when there are none.
    """

    def __init__(self, max_frame_bytes: int) -> None:
        self._max = max_frame_bytes
        # An Unpacker costs ~42 KiB (msgpack's parse stack), so one is borrowed only while a
        # frame is unfinished: 10,000 idle connections would otherwise hold 420 MB.
        self._unpacker: msgpack.Unpacker | None = None
        self._outgrown = False  # the borrowed Unpacker may have grown its buffer: not pooled
        self._fed = 0  # bytes given to msgpack so far (its tell() counts from its first use)
        self._frame_start = 0  # where the unfinished frame begins (msgpack's tell() moves on
        #                        past the complete elements of an unfinished array)
        self.error: RemoteProtocolError | None = None

    @property
    def idle(self) -> bool:
        """No unfinished frame: the next byte fed starts a new one."""
        return self._unpacker is None and self.error is None

    def lone_frame(self, data: bytes | memoryview) -> Any:
        """``data`` decoded, if it is exactly one whole frame and none is unfinished (a sync
        client's usual read: one call into msgpack); else ``NO_FRAME``, and nothing was
        consumed: ``feed`` it."""
        if self._unpacker is None and self.error is None and len(data) <= self._max:
            try:
                return msgpack.unpackb(data, raw=False, strict_map_key=True, use_list=True)
            except Exception:  # several frames, part of one, or garbage: feed() says which
                pass
        return NO_FRAME

    def feed(self, data: bytes | memoryview) -> list[Any]:
        if self.error is not None:
            raise self.error
        frames: list[Any] = []
        unpacker = self._unpacker
        if unpacker is None and len(data) <= self._max:
            # One whole frame (a sync client's reply, its request at the server) is decoded
            # in one call, not through the Unpacker's borrow, feed, iterate and give back.
            try:
                return [msgpack.unpackb(data, raw=False, strict_map_key=True, use_list=True)]
            except msgpack.ExtraData as extra:  # several frames: the first, then the rest
                frames.append(extra.unpacked)
                data = extra.extra
            except Exception:  # part of a frame, or bad bytes: the Unpacker says which
                pass
        view = memoryview(data)
        if unpacker is None:
            unpacker = self._unpacker = _borrow_unpacker(self._max)
            self._fed = self._frame_start = unpacker.tell()
            self._outgrown = False
        try:
            while True:
                room = self._max - (self._fed - self._frame_start)
                if room <= 0:
                    raise RemoteProtocolError(f"frame larger than max_frame_bytes ({self._max})")
                piece, view = view[:room], view[room:]
                unpacker.feed(piece)
                self._fed += len(piece)
                if self._fed - self._frame_start > POOLED_BUFFER_BYTES:
                    self._outgrown = True  # its buffer may hold that much: never shrinks
                for frame in unpacker:
                    frames.append(frame)
                    self._frame_start = unpacker.tell()
                if not view:
                    if self._fed == self._frame_start:  # nothing unfinished: give it back
                        self._unpacker = None
                        if not self._outgrown:
                            _give_back(self._max, unpacker)
                    return frames
        except RemoteProtocolError as exc:
            self.error = exc
        except Exception as exc:  # msgpack raises ValueError, TypeError, StackError, ...
            detail = str(exc) or "invalid msgpack"
            self.error = RemoteProtocolError(f"malformed frame: {type(exc).__name__}: {detail}")
        if not frames:
            raise self.error
        return frames


#: Unpackers holding no bytes, by frame limit, for the next decoder that has some. msgpack
#: never shrinks an Unpacker's buffer, so one that held more than POOLED_BUFFER_BYTES of a
#: frame is let go, not pooled (eight 40 MiB sets left 380 MB held here), and at most
#: MAX_IDLE_UNPACKERS wait per limit: the pool holds a few MiB at most, however busy it was.
_IDLE_UNPACKERS: dict[int, list[msgpack.Unpacker]] = {}

#: The buffer an Unpacker starts with: a frame longer than this may make it grow.
POOLED_BUFFER_BYTES = 256 * 1024
MAX_IDLE_UNPACKERS = 16


def _borrow_unpacker(max_frame_bytes: int) -> msgpack.Unpacker:
    try:
        return _IDLE_UNPACKERS.get(max_frame_bytes, []).pop()
    except IndexError:
        return msgpack.Unpacker(
            max_buffer_size=max_frame_bytes,
            read_size=min(max_frame_bytes, POOLED_BUFFER_BYTES),
            raw=False,
            strict_map_key=True,
            use_list=True,
        )


def _give_back(max_frame_bytes: int, unpacker: msgpack.Unpacker) -> None:
    idle = _IDLE_UNPACKERS.setdefault(max_frame_bytes, [])
    if len(idle) < MAX_IDLE_UNPACKERS:
        idle.append(unpacker)


_packers = threading.local()


def new_packer() -> msgpack.Packer:
    """A Packer of frames, as ``pack_frame`` uses; not thread-safe."""
    return msgpack.Packer(use_bin_type=True)


def frame_packer() -> msgpack.Packer:
    """This thread's Packer of frames, for a caller packing many frames that cannot fail
    (ints, strs, bytes, None): one that may fails through ``pack_frame``, which resets it."""
    packer = getattr(_packers, "packer", None)
    if packer is None:
        packer = _packers.packer = new_packer()
    return packer


def pack_frame(frame: Any) -> bytes:
    # One Packer per thread, reused (msgpack.packb makes one per call).
    packer = getattr(_packers, "packer", None)
    if packer is None:
        packer = _packers.packer = new_packer()
    try:
        packed: bytes = packer.pack(frame)
    except BaseException:
        packer.reset()  # a failed pack may leave half a frame in the packer's buffer
        raise
    return packed


_ID_FORMATS = {
    0xCC: struct.Struct(">B"),
    0xCD: struct.Struct(">H"),
    0xCE: struct.Struct(">I"),
    0xCF: struct.Struct(">Q"),
}
_BIN32 = struct.Struct(">BI")


_GET_HEAD8 = struct.Struct(">BBB").pack
_GET_HEAD16 = struct.Struct(">BBH").pack
_GET_HEAD32 = struct.Struct(">BBI").pack
_GET_HEAD64 = struct.Struct(">BBQ").pack


#: ``get_head`` of an id from 0x10000 to 0xFFFFFFFF (``pack_get_head32(0x94, 0xCE, id)``):
#: every id of a connection past its first 65,535 requests, packed without a call to it.
pack_get_head32 = _GET_HEAD32


def get_head(request_id: int) -> bytes:
    """The first bytes of a get request, ``[request_id, "get", key, name]``, as a Packer
    writes them (an array of 4, then the id in its shortest form): a client sends this and
    the rest of the frame, packed once per key and name (``ClientConnection.send_get``)."""
    if request_id < 0x10000:
        if request_id < 0x80:
            return bytes((0x94, request_id))
        if request_id < 0x100:
            return _GET_HEAD8(0x94, 0xCC, request_id)
        return _GET_HEAD16(0x94, 0xCD, request_id)
    if request_id < 0x100000000:
        return _GET_HEAD32(0x94, 0xCE, request_id)
    return _GET_HEAD64(0x94, 0xCF, request_id)


def large_reply_header(request_id: int, size: int) -> bytes:
    """The bytes of ``[request_id, 0, bin 32 of size]`` before the value's own: a server writes
    them and then the stored value as it is, instead of copying the value into a frame."""
    packed_id: bytes = msgpack.packb(request_id)
    return b"\x93" + packed_id + b"\x00" + _BIN32.pack(0xC6, size)


def coalesce(buffers: list[bytes]) -> list[bytes]:
    """Join runs of small buffers into one write each; large values stay apart, uncopied."""
    joined: list[bytes] = []
    run: list[bytes] = []
    for buffer in buffers:
        if len(buffer) < LARGE_VALUE_BYTES:
            run.append(buffer)
            continue
        if run:
            joined.append(b"".join(run))
            run = []
        joined.append(buffer)
    if run:
        joined.append(b"".join(run))
    return joined


class LargeValue:
    """The value of a reply ``[id, 0, bin 32]``, received into a buffer of its own size: a new
    bytearray, or ``buffer`` (that many bytes, which the value overwrites)."""

    __slots__ = ("buffer", "filled", "request_id")

    def __init__(
        self, request_id: int, size: int, buffer: bytearray | memoryview | None = None
    ) -> None:
        self.request_id = request_id
        self.buffer = bytearray(size) if buffer is None else buffer
        self.filled = 0

    def unfilled(self) -> memoryview:
        """Where the value's next bytes go (``recv_into`` it, then ``filled_by``)."""
        return memoryview(self.buffer)[self.filled :]

    def filled_by(self, nbytes: int) -> bool:
        """``nbytes`` more were written into ``unfilled()``; True once the value is whole."""
        self.filled += nbytes
        return self.filled == len(self.buffer)


def large_reply(
    data: memoryview,
    max_frame_bytes: int,
    buffer: Callable[[int], bytearray | memoryview] = bytearray,
) -> tuple[LargeValue, int] | None:
    """If ``data`` starts a reply ``[id, 0, bin 32]`` of LARGE_VALUE_BYTES or more: the value to
    fill and the header's length. None for anything else (the FrameDecoder's business),
    including a header not whole yet: that reply just takes the slower path. The value is received
    into ``buffer(size)``.
    """
    if len(data) < 8 or data[0] != 0x93:  # fixarray of 3
        return None
    marker = data[1]
    if marker <= 0x7F:
        request_id, at = marker, 2
    else:
        id_format = _ID_FORMATS.get(marker)
        if id_format is None:
            return None
        at = 2 + id_format.size
        if len(data) < at + 6:
            return None
        (request_id,) = id_format.unpack_from(data, 2)
    if len(data) < at + 6 or data[at] != 0x00:  # status 0: a result
        return None
    kind, size = _BIN32.unpack_from(data, at + 1)
    if kind != 0xC6 or size < LARGE_VALUE_BYTES:
        return None
    header = at + 6
    if header + size > max_frame_bytes:
        raise RemoteProtocolError(f"frame larger than max_frame_bytes ({max_frame_bytes})")
    return LargeValue(request_id, size, buffer(size)), header


#: What follows a reply's id in the head of a reply carrying bytes of LARGE_VALUE_BYTES or
#: more: the status (0), the bin 32 of the value, and the value's own bin 32 (encode_value).
BYTES_HEAD_BYTES = 1 + _BIN32.size + _BIN32.size


def bytes_reply_head(request_id: int) -> int:
    """The length of the head ``bytes_reply_size`` reads, for the reply to ``request_id``."""
    return len(get_head(request_id)) + BYTES_HEAD_BYTES  # (an array's byte, then the id)


def bytes_head_coming(start: bytes | memoryview, request_id: int) -> bool:
    """Whether ``start``, shorter than ``bytes_reply_head(request_id)``, is how the head of a
    reply carrying large bytes begins, and so sure to be followed by the rest of that head:
    up to its value's bin 32 marker, the frame is at least that long; then its length must
    be LARGE_VALUE_BYTES or more (a reply may come in pieces: wait for the rest of a head)."""
    marker = b"\x93" + msgpack.packb(request_id) + b"\x00\xc6"
    if start[: len(marker)] != marker[: len(start)]:
        return False
    if len(start) < len(marker) + _BIN32.size - 1:
        return True
    (size,) = struct.unpack_from(">I", start, len(marker))
    return bool(size >= LARGE_VALUE_BYTES + _BIN32.size)


def bytes_reply_size(head: bytes | memoryview, request_id: int, max_frame_bytes: int) -> int:
    """If ``head`` is the whole head of the reply to ``request_id`` carrying ``bytes`` of
    LARGE_VALUE_BYTES or more (``[id, 0, bin 32 of (bin 32 of the bytes)]``, as msgpack packs
    it, ``BYTES_HEAD_BYTES`` after the id): how many bytes of the value follow, which are
    the value itself. 0 for any other reply, or a head cut short."""
    packed_id: bytes = msgpack.packb(request_id)
    at = 1 + len(packed_id)
    if len(head) != at + BYTES_HEAD_BYTES or head[0] != 0x93 or head[1:at] != packed_id:
        return 0
    if head[at] != 0x00:  # status 0: a result
        return 0
    kind, size = _BIN32.unpack_from(head, at + 1)
    inner_kind, inner_size = _BIN32.unpack_from(head, at + 1 + _BIN32.size)
    if kind != 0xC6 or inner_kind != 0xC6 or inner_size != size - _BIN32.size:
        return 0
    if inner_size < LARGE_VALUE_BYTES:
        return 0
    if at + 1 + _BIN32.size + size > max_frame_bytes:
        raise RemoteProtocolError(f"frame larger than max_frame_bytes ({max_frame_bytes})")
    return int(inner_size)
