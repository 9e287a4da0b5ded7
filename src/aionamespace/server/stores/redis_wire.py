"""RESP2, the Redis wire, without I/O: commands packed into bytes, replies parsed from bytes.

The Redis store's hot calls (redis_link.py) go through this rather than redis-py, whose
pipeline packs each argument one ``encode`` at a time and whose pure-Python parser reads a
reply line by line through a stream (docs/SCALING.md has the profile). Here a command is one
``%``-format per argument, and the constant head of a script call (``*N``, ``EVALSHA``, the
sha, the key count) is packed once and kept (``ScriptCall``).

Replies are read by ``hiredis.Reader`` when hiredis is installed (``aionamespace[hiredis]``)
and otherwise by ``RespReader``, which behaves as hiredis's does: ``feed(data)``, then
``gets()`` gives each whole reply in turn, ``False`` when the next is not whole yet. An error
reply is a ``ReplyError`` instance (given, not raised: one failed command must not cost the
others their replies); bytes that are not RESP2 raise ``RespError``, whatever they are (fed
whole or a byte at a time: tests/test_redis_wire.py). Both are the store's own: it turns them
into ``StoreUnavailable`` (redis.py).

Bounds. ``RespReader`` refuses a bulk string longer than ``max_bulk_bytes`` (Redis's own
``proto-max-bulk-len``, 512 MiB, by default), an array nested deeper than ``max_depth``, and a
status, error or integer line longer than ``MAX_LINE_BYTES``; what an unfinished reply may
hold in memory is bounded by its reader's caller (redis_link.py's ``max_reply_bytes``), for
hiredis's reader as for this one. It parses an unfinished reply again from its start when
more bytes come: cheap for the replies of a batch (small, or a few large strings), and the
price of being short.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from itertools import chain, repeat
from typing import Any, NamedTuple

__all__ = [
    "MAX_LINE_BYTES",
    "Packed",
    "ReplyError",
    "RespError",
    "RespReader",
    "ScriptCall",
    "hiredis_available",
    "multi",
    "new_reader",
    "pack",
    "pack_args",
    "pack_pairs",
]

#: The longest status, error or integer line RespReader accepts.
MAX_LINE_BYTES = 64 * 1024
#: Redis's default proto-max-bulk-len: the longest string Redis itself accepts.
MAX_BULK_BYTES = 512 * 1024 * 1024
#: Arrays in arrays: the store's replies nest three deep at most.
MAX_DEPTH = 8


class ReplyError(Exception):
    """An error reply of Redis (``-ERR ...``, ``-NOSCRIPT ...``, ``-MOVED ...``): its text."""


class RespError(Exception):
    """Bytes from Redis that are not a RESP2 reply (or past a reader's bounds)."""


def _arg(value: Any) -> bytes:
    if isinstance(value, bytes):
        return b"$%d\r\n%b\r\n" % (len(value), value)
    if isinstance(value, str):
        value = value.encode()
        return b"$%d\r\n%b\r\n" % (len(value), value)
    if isinstance(value, int) and not isinstance(value, bool):
        text = b"%d" % value
        return b"$%d\r\n%b\r\n" % (len(text), text)
    raise TypeError(f"a Redis command's argument is bytes, str or int, not {type(value).__name__}")


def _args(values: Sequence[Any]) -> bytes:
    """Arguments packed. Many of them are a snapshot's names (ASCII str, mostly: packed as
    one str, encoded once) or an update's names and values (str, bytes: packed in pairs)."""
    if len(values) > 8:
        kinds = set(map(type, values))
        if kinds == {str} and all(map(str.isascii, values)):
            return "".join([f"${len(v)}\r\n{v}\r\n" for v in values]).encode()
        if kinds == {str, bytes} and len(values) % 2 == 0:
            names, data = values[::2], values[1::2]
            if set(map(type, names)) == {str} and set(map(type, data)) == {bytes}:
                return pack_pairs([n.encode() for n in names], data)
    packed = []
    for value in values:
        kind = type(value)
        if kind is str:
            value = value.encode()
            packed.append(b"$%d\r\n%b\r\n" % (len(value), value))
        elif kind is bytes:
            packed.append(b"$%d\r\n%b\r\n" % (len(value), value))
        else:
            packed.append(_arg(value))
    return b"".join(packed)


def pack(*args: Any) -> bytes:
    """One command (its name and arguments: bytes, str or int) as RESP2 bytes."""
    return b"*%d\r\n%b" % (len(args), _args(args))


class ScriptCall:
    """``EVALSHA sha 1 KEY ARG...`` packed with its constant head kept (one per arity)."""

    __slots__ = ("_heads", "_sha")

    def __init__(self, sha: str) -> None:
        self._sha = sha.encode()
        self._heads: dict[int, bytes] = {}

    def pack(self, key: bytes, args: Sequence[Any], packed: bytes = b"", count: int = 0) -> bytes:
        """The call of ``key`` with ``packed`` (``count`` arguments packed already, by
        ``pack_args``) and then ``args``."""
        count += len(args)
        head = self._heads.get(count)
        if head is None:
            head = self._heads[count] = b"*%d\r\n%b" % (
                count + 4,
                _arg(b"EVALSHA") + _arg(self._sha) + _arg(b"1"),
            )
        return b"%b$%d\r\n%b\r\n%b%b" % (
            head,
            len(key),
            key,
            packed,
            _args(args),
        )


_MULTI, _EXEC = b"*1\r\n$5\r\nMULTI\r\n", b"*1\r\n$4\r\nEXEC\r\n"


def multi(*commands: bytes) -> bytes:
    """Packed commands in ``MULTI`` ... ``EXEC``: their replies, ``+OK``, a ``+QUEUED`` each,
    then ``EXEC``'s array of theirs."""
    return b"%b%b%b" % (_MULTI, b"".join(commands), _EXEC)


class Packed(NamedTuple):
    """A call's arguments packed already (``arguments`` of them): what ``Call.request`` may give
    instead of a sequence, when it packs them faster than ``_args`` would."""

    data: bytes
    arguments: int  # how many


def pack_pairs(names: Sequence[bytes], data: Sequence[bytes]) -> bytes:
    """Arguments name, value, name, value, ... packed: their pieces joined in C (no Python
    step per pair), unless a string has ``_SHORT`` bytes or more (then a format each)."""
    if len(names) != len(data):
        raise ValueError("as many names as values")
    pieces = zip(
        map(_HEADS.__getitem__, map(len, names)),
        names,
        map(_HEADS_AFTER.__getitem__, map(len, data)),
        data,
        repeat(b"\r\n"),
    )
    try:
        return b"".join(chain.from_iterable(pieces))
    except IndexError:  # (a string of _SHORT bytes or more)
        return b"".join(
            [
                b"$%d\r\n%b\r\n$%d\r\n%b\r\n" % (len(n), n, len(v), v)
                for n, v in zip(names, data, strict=True)
            ]
        )


#: A bulk string's header by length (and after the string before it, its CRLF first).
_SHORT = 1024
_HEADS = [b"$%d\r\n" % length for length in range(_SHORT)]
_HEADS_AFTER = [b"\r\n" + head for head in _HEADS]


def pack_args(*args: Any) -> bytes:
    """Arguments packed once, for ``ScriptCall.pack``'s ``packed``."""
    return _args(args)


class _Incomplete(Exception):
    """(The reply is not whole yet: wait for more bytes.)"""


class RespReader:
    """A RESP2 reply parser with hiredis.Reader's ``feed`` and ``gets`` (module docstring)."""

    __slots__ = ("_buffer", "_max_bulk", "_max_depth", "_position")

    def __init__(self, max_bulk_bytes: int = MAX_BULK_BYTES, max_depth: int = MAX_DEPTH) -> None:
        self._buffer = bytearray()
        self._position = 0
        self._max_bulk, self._max_depth = max_bulk_bytes, max_depth

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        self._buffer += data

    def len(self) -> int:
        """Bytes fed and not yet parsed into a reply."""
        return len(self._buffer) - self._position

    def gets(self) -> Any:
        """The next whole reply (an error reply as a ReplyError), or False."""
        if self._position >= len(self._buffer):
            return False
        try:
            reply, self._position = self._parse(self._position, 0)
        except _Incomplete:
            return False
        if self._position > 65536 and self._position * 2 > len(self._buffer):
            del self._buffer[: self._position]
            self._position = 0
        return reply

    def _line(self, at: int) -> tuple[bytes, int]:
        end = self._buffer.find(b"\r\n", at, at + MAX_LINE_BYTES + 2)
        if end < 0:
            if len(self._buffer) - at > MAX_LINE_BYTES + 1:
                raise RespError(f"a reply line longer than {MAX_LINE_BYTES} bytes")
            raise _Incomplete
        return bytes(self._buffer[at:end]), end + 2

    def _number(self, at: int) -> tuple[int, int]:
        line, end = self._line(at)
        digits = line[1:] if line[:1] == b"-" else line
        if not digits.isdigit() or len(digits) > 19:
            raise RespError(f"not a RESP integer: {line[:40]!r}")
        return int(line), end

    def _parse(self, at: int, depth: int) -> tuple[Any, int]:
        buffer = self._buffer
        if at >= len(buffer):
            raise _Incomplete
        kind = buffer[at]
        if kind == 36:  # $ bulk string
            length, start = self._number(at + 1)
            if length < 0:
                if length != -1:
                    raise RespError(f"a bulk string of length {length}")
                return None, start
            if length > self._max_bulk:
                raise RespError(f"a bulk string of {length} bytes (at most {self._max_bulk})")
            end = start + length
            if len(buffer) < end + 2:
                raise _Incomplete
            if buffer[end : end + 2] != b"\r\n":
                raise RespError("a bulk string not followed by CRLF")
            return bytes(buffer[start:end]), end + 2
        if kind == 42:  # * array
            length, at = self._number(at + 1)
            if length < 0:
                if length != -1:
                    raise RespError(f"an array of length {length}")
                return None, at
            if depth >= self._max_depth:
                raise RespError(f"arrays nested deeper than {self._max_depth}")
            items = []
            size = len(buffer)
            for _ in range(length):
                # A bulk string of a few digits' length is read here (most items of a
                # snapshot's reply): no call per item. Anything else by _parse.
                if at < size and buffer[at] == 36:
                    end = buffer.find(b"\r\n", at + 1, at + 8)
                    if end > at + 1 and buffer[at + 1 : end].isdigit():
                        start = end + 2
                        stop = start + int(buffer[at + 1 : end])
                        if stop + 2 <= size and buffer[stop : stop + 2] == b"\r\n":
                            items.append(bytes(buffer[start:stop]))
                            at = stop + 2
                            continue
                item, at = self._parse(at, depth + 1)
                items.append(item)
            return items, at
        if kind == 58:  # : integer
            return self._number(at + 1)
        if kind == 43 or kind == 45:  # + status, - error
            line, end = self._line(at + 1)
            if kind == 43:
                return line, end
            return ReplyError(line.decode(errors="replace")), end
        raise RespError(f"not a RESP2 reply type: {bytes([kind])!r}")


def _hiredis() -> Any:
    """The hiredis module, or None (an optional extra: imported by name, so that a type
    checker without it installed is not asked for its stubs)."""
    try:
        return importlib.import_module("hiredis")
    except ImportError:
        return None


def hiredis_available() -> bool:
    return _hiredis() is not None


def new_reader(use_hiredis: bool = True) -> Any:
    """A reply reader: hiredis's when installed (and ``use_hiredis``), else ``RespReader``."""
    hiredis = _hiredis() if use_hiredis else None
    if hiredis is not None:
        return hiredis.Reader(protocolError=RespError, replyError=ReplyError)
    return RespReader()
