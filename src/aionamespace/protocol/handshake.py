"""The frames a peer sends before its handshake completes: small, shallow, decoded whole.

Until a client has said hello and proved it knows the authkey, the server owes it nothing, so
its frames are held to bounds far below a request's (``Limits.max_handshake_bytes`` and
``max_handshake_depth``). ``HandshakeDecoder`` keeps the bytes of the unfinished frame (never
more than the limit) and follows its msgpack headers as they arrive, without building anything:
a frame that declares more bytes than the limit, or nests deeper, is refused from its header.
Only a whole frame within both bounds is decoded, in one call, so a peer cannot make the server
hold a partly built value (msgpack's incremental Unpacker keeps one, and allocates each array
its declared length: 5 KB of nested array headers cost ~65 MB). The bytes after the frame are
handed back untouched: the server parses what follows a hello or a proof only once the
handshake has completed, under the full limits.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import msgpack

from .._errors import RemoteProtocolError
from .limits import Limits

__all__ = ["HandshakeDecoder"]

# Per header byte: (header length, how many bytes after the first give a length, what that
# length counts): "raw" and "ext" that many bytes after the header (str, bin; an ext's header
# ends with its type byte), "array" that many elements, "map" that many pairs. The others have
# no length: the header is the whole element (a scalar, or an ext of fixed size).
_HEADERS: dict[int, tuple[int, int, str]] = {
    0xC0: (1, 0, ""),  # nil
    0xC2: (1, 0, ""),  # false
    0xC3: (1, 0, ""),  # true
    0xC4: (2, 1, "raw"),  # bin 8
    0xC5: (3, 2, "raw"),
    0xC6: (5, 4, "raw"),
    0xC7: (3, 1, "ext"),  # ext 8: length, then the type byte
    0xC8: (4, 2, "ext"),
    0xC9: (6, 4, "ext"),
    0xCA: (5, 0, ""),  # float 32
    0xCB: (9, 0, ""),
    0xCC: (2, 0, ""),  # uint 8 ... int 64
    0xCD: (3, 0, ""),
    0xCE: (5, 0, ""),
    0xCF: (9, 0, ""),
    0xD0: (2, 0, ""),
    0xD1: (3, 0, ""),
    0xD2: (5, 0, ""),
    0xD3: (9, 0, ""),
    0xD4: (3, 0, ""),  # fixext 1, 2, 4, 8, 16: type byte and data
    0xD5: (4, 0, ""),
    0xD6: (6, 0, ""),
    0xD7: (10, 0, ""),
    0xD8: (18, 0, ""),
    0xD9: (2, 1, "raw"),  # str 8
    0xDA: (3, 2, "raw"),
    0xDB: (5, 4, "raw"),
    0xDC: (3, 2, "array"),
    0xDD: (5, 4, "array"),
    0xDE: (3, 2, "map"),
    0xDF: (5, 4, "map"),
}


class HandshakeDecoder:
    """One frame at a time, at most ``max_handshake_bytes`` long (and ``max_frame_bytes``) and
    ``max_handshake_depth`` arrays and maps deep."""

    def __init__(self, limits: Limits) -> None:
        self._max_bytes = min(limits.max_handshake_bytes, limits.max_frame_bytes)
        self._max_depth = limits.max_handshake_depth
        # the limit to name when a frame is too long
        self._limit_name = (
            "max_handshake_bytes"
            if limits.max_handshake_bytes <= limits.max_frame_bytes
            else "max_frame_bytes"
        )
        self._buffer = bytearray()  # the unfinished frame's bytes
        self.rest = memoryview(b"")  # what follows the last frame ``frames`` gave, untouched
        self._scanned = 0  # how far its headers have been followed
        self._open: list[int] = []  # elements still to come in each open array or map

    def frames(self, data: bytes | memoryview) -> Iterator[Any]:
        """Each whole frame in ``data``, for as long as it is iterated; the bytes after the
        last one given are in ``rest`` (the server stops at the end of the handshake)."""
        view = memoryview(data)
        while (found := self.next_frame(view)) is not None:
            frame, view = found
            self.rest = view
            yield frame
        self.rest = memoryview(b"")  # all taken: hold on to none of the caller's bytes

    def next_frame(self, data: memoryview) -> tuple[Any, memoryview] | None:
        """The next whole frame and the bytes after it (untouched); None when ``data`` ends
        inside the frame (kept for the next call). RemoteProtocolError for a frame over a
        bound or malformed: the handshake cannot go on."""
        taken = data[: self._max_bytes - len(self._buffer)]
        self._buffer += taken
        end = self._scan()
        if end is None:
            if len(self._buffer) >= self._max_bytes:
                raise self._too_long()
            return None
        frame = bytes(self._buffer[:end])
        rest = data[len(taken) - (len(self._buffer) - end) :]
        self._buffer.clear()
        self._scanned = 0
        try:
            return msgpack.unpackb(frame, raw=False, strict_map_key=True, use_list=True), rest
        except Exception as exc:  # msgpack raises ValueError, TypeError, ...: a bad frame
            detail = str(exc) or "invalid msgpack"
            raise RemoteProtocolError(f"malformed frame: {type(exc).__name__}: {detail}") from None

    def _scan(self) -> int | None:
        """Follow headers from where the last call stopped: where the frame ends, or None."""
        buffer, at, opened = self._buffer, self._scanned, self._open
        while at < len(buffer):
            first = buffer[at]
            count = 0  # elements a container holds
            if first <= 0x7F or first >= 0xE0:  # fixint
                size = 1
            elif first <= 0x8F:  # fixmap
                size, count = 1, 2 * (first & 0x0F)
            elif first <= 0x9F:  # fixarray
                size, count = 1, first & 0x0F
            elif first <= 0xBF:  # fixstr
                size = 1 + (first & 0x1F)
            else:
                header = _HEADERS.get(first)
                if header is None:  # 0xC1, never used
                    raise RemoteProtocolError("malformed frame: FormatError: invalid msgpack")
                size, length_bytes, kind = header
                if at + size > len(buffer):
                    break  # the header itself is not all here yet
                if length_bytes:  # right after the header byte (an ext's type byte follows)
                    length = int.from_bytes(buffer[at + 1 : at + 1 + length_bytes], "big")
                    if kind == "array":
                        count = length
                    elif kind == "map":
                        count = 2 * length
                    else:
                        size += length
            if at + size > self._max_bytes:
                raise self._too_long()
            if at + size > len(buffer):
                break
            at += size
            if first in _CONTAINERS or 0x80 <= first <= 0x9F:
                if len(opened) >= self._max_depth:
                    raise RemoteProtocolError(
                        f"handshake frame nested deeper than max_handshake_depth "
                        f"({self._max_depth})"
                    )
                if count:
                    opened.append(count)
                    continue
            while opened:  # an element is complete: so may be the containers it ends
                opened[-1] -= 1
                if opened[-1]:
                    break
                opened.pop()
            if not opened:
                self._scanned = 0
                return at
        self._scanned = at
        return None

    def _too_long(self) -> RemoteProtocolError:
        return RemoteProtocolError(
            f"handshake frame larger than {self._limit_name} ({self._max_bytes})"
        )


_CONTAINERS = frozenset({0xDC, 0xDD, 0xDE, 0xDF})
