"""The server's frames as pieces: headers made fresh, stored values referenced, never copied.

A frame the server sends is written as *pieces*, bytes objects written one after the other. A
value travels inside a frame as msgpack ``bin`` holding the bytes the store keeps (PROTOCOL.md
9.1); when it is large (LARGE_VALUE_BYTES or more) it is a piece of its own, the very object the
store holds, after a header made fresh. So:

* a watch push is ``event_head`` (made once per watch) then ``event_tail`` (made once per
  change, shared by every watch the change is pushed to): a change written to 2,000 watchers
  costs 2,000 small heads, not 2,000 copies of its value;
* a reply or a watch replay larger than the connection's reply budget
  (``Limits.max_reply_backlog_bytes``) is not made at once: it is a ``Producer``, which packs
  its next piece only when the connection is ready to send it, from the snapshot or history it
  was made from. A client that does not read such a reply pins that snapshot's references and
  one piece, never a copy of the values.

``Output`` is what the server hands a connection to send: a piece, or a Producer.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Protocol

import msgpack

from .events import PUSH_EVENT, REPLY_OK
from .frames import LARGE_VALUE_BYTES, pack_frame

__all__ = [
    "CHUNK_BYTES",
    "Output",
    "Producer",
    "event_head",
    "event_tail",
    "list_reply",
    "packed_values_reply",
    "replay",
    "unfold",
    "values_reply",
]

#: A Producer packs names, small values and headers into pieces of about this size.
CHUNK_BYTES = 64 * 1024

#: What an estimate allows for the msgpack header of an item (an int, a str, a bin): at most 9.
_ITEM_OVERHEAD = 9
_EVENT_OVERHEAD = 3 * _ITEM_OVERHEAD + 3  # the array header, 0, 2, the watch id, the revision
_BIN32 = struct.Struct(">BI")


class Producer:
    """Frames made piece by piece as they are sent: ``next()`` returns the next piece, or None
    once every piece was made. ``remaining`` is about how many bytes are still to come (an
    estimate made up front; never below 0, and 0 once done)."""

    __slots__ = ("_pieces", "remaining")

    def __init__(self, pieces: Iterator[bytes], size: int) -> None:
        self._pieces = pieces
        self.remaining = size

    def next(self) -> bytes | None:
        piece = next(self._pieces, None)
        self.remaining = 0 if piece is None else max(0, self.remaining - len(piece))
        return piece


Output = bytes | Producer


def unfold(output: Output) -> Iterator[bytes]:
    """Every piece of ``output``, made now (for a peer that takes everything at once)."""
    if isinstance(output, Producer):
        while (piece := output.next()) is not None:
            yield piece
    else:
        yield output


class LazyValue(Protocol):
    """An encoded value made only when needed (a store's appended list, kept as its items):
    ``len()`` is its encoding's length, known without making it."""

    def __len__(self) -> int: ...

    def materialise(self) -> bytes:
        """The value's encoding (a store may keep it, so several readers share one copy)."""
        ...


class Change(Protocol):
    """What a replay needs of a change (the store's ``Change`` has it)."""

    @property
    def revision(self) -> int: ...
    @property
    def name(self) -> str: ...
    @property
    def value(self) -> bytes | LazyValue | None: ...


def materialised(value: bytes | LazyValue | None) -> bytes | None:
    """The encoding of a change's value (None for a deletion)."""
    if value is None or isinstance(value, bytes):
        return value
    return value.materialise()


# ------------------------------------------------------------------------------ pushes


def event_head(watch_id: int) -> bytes:
    """The first bytes of every push of watch ``watch_id``: ``[0, 2, watch_id,`` (the array
    header says six items; ``event_tail`` is the other three)."""
    return b"\x96" + pack_frame([0, PUSH_EVENT, watch_id])[1:]


def event_tail(revision: int, name: str, value: bytes | None) -> tuple[bytes, ...]:
    """The end of a push of ``name`` changed at ``revision``: one piece, or a header and the
    value itself when it is large."""
    if value is not None and len(value) >= LARGE_VALUE_BYTES:
        return pack_frame([revision, name])[1:] + _BIN32.pack(0xC6, len(value)), value
    return (pack_frame([revision, name, value])[1:],)


def replay(
    watch_id: int, changes: Sequence[Change], names: frozenset[str] | None, budget: int
) -> Output | None:
    """The pushes of watch ``watch_id`` for ``changes`` (those of ``names``, or all): one piece,
    a Producer if they are larger than ``budget``, or None if there are none."""
    if names is not None:
        changes = [change for change in changes if change.name in names]
    if not changes:
        return None
    size = sum(len(c.name) + len(c.value or b"") + _EVENT_OVERHEAD for c in changes)
    if size <= budget:
        return b"".join(
            [
                pack_frame([0, PUSH_EVENT, watch_id, c.revision, c.name, materialised(c.value)])
                for c in changes
            ]
        )
    return Producer(_replay_pieces(watch_id, changes), size)


def _replay_pieces(watch_id: int, changes: Sequence[Change]) -> Iterator[bytes]:
    head = event_head(watch_id)
    packer = msgpack.Packer(use_bin_type=True, autoreset=False)
    pack, buffer = packer.pack, packer.getbuffer
    for change in changes:
        value = materialised(change.value)  # one version at a time, as it is written
        if value is not None and len(value) >= LARGE_VALUE_BYTES:
            tail, value = event_tail(change.revision, change.name, value)
            yield _cut(packer) + head + tail
            yield value
            continue
        packer.pack_array_header(6)  # [0, 2, watch_id, revision, name, value]
        pack(0)
        pack(PUSH_EVENT)
        pack(watch_id)
        pack(change.revision)
        pack(change.name)
        pack(value)
        if len(buffer()) >= CHUNK_BYTES:
            yield _cut(packer)
    if len(buffer()):
        yield _cut(packer)


# ------------------------------------------------------------------------------ replies


def values_reply(
    request_id: int, head: Sequence[Any], values: Mapping[str, bytes], budget: int
) -> Output:
    """The reply ``[request_id, 0, values]`` (a ``dump``'s: ``head`` empty) or ``[request_id, 0,
    [*head, values]]`` (a ``snapshot``'s or a ``watch``'s): a frame, or a Producer if it is
    larger than ``budget``."""
    size = sum(map(len, values.values())) + sum(map(len, values)) + 2 * _ITEM_OVERHEAD * len(values)
    if size <= budget:
        return pack_frame([request_id, REPLY_OK, [*head, values] if head else values])
    packer = msgpack.Packer(use_bin_type=True)
    prefix = b"\x93" + packer.pack(request_id) + packer.pack(REPLY_OK)
    if head:
        prefix += packer.pack_array_header(len(head) + 1) + b"".join(map(packer.pack, head))
    prefix += packer.pack_map_header(len(values))
    return Producer(_values_pieces(prefix, values), len(prefix) + size)


def packed_values_reply(
    request_id: int,
    revision: int,
    asked: Sequence[str] | None,
    values: Mapping[str, bytes] | list[bytes],
    budget: int,
) -> Output:
    """The reply to ``snapshot_packed``: ``[request_id, 0, [revision, names, bin]]``, the bin
    holding the values as one msgpack array (the stored bytes joined behind an array header),
    ``names`` nil when they are the names ``asked``, in order (each there, none twice). A
    reader decodes them in one call, with no object per value in between. Values adding up to
    LARGE_VALUE_BYTES or more are not copied into one bin: the reply is ``snapshot``'s.
    ``values`` as a list: those of ``asked``, in order, each held and none asked twice (a
    store's ``snapshot_in_order``), so no dict of them is made unless they are that large."""
    names: list[str] | None
    if isinstance(values, list):
        names, blobs = None, values
    elif asked is not None and len(values) == len(asked):  # (values: those of asked held)
        names, blobs = None, list(map(values.__getitem__, asked))
    else:
        names, blobs = list(values), list(values.values())
    size = sum(map(len, blobs))
    if size >= LARGE_VALUE_BYTES or size > budget:
        if isinstance(values, list):
            values = dict(zip(asked or (), values, strict=True))
        return values_reply(request_id, (revision,), values, budget)
    packed = _ARRAY_HEADER(len(blobs)) + b"".join(blobs)
    return pack_frame([request_id, REPLY_OK, [revision, names, packed]])


_ARRAY_HEADER = msgpack.Packer().pack_array_header


def _values_pieces(prefix: bytes, values: Mapping[str, bytes]) -> Iterator[bytes]:
    packer = msgpack.Packer(use_bin_type=True, autoreset=False)
    pack, buffer = packer.pack, packer.getbuffer
    for name, value in values.items():
        pack(name)
        if len(value) >= LARGE_VALUE_BYTES:
            yield prefix + _cut(packer) + _BIN32.pack(0xC6, len(value))
            prefix = b""
            yield value
            continue
        pack(value)
        if len(buffer()) >= CHUNK_BYTES:
            yield prefix + _cut(packer)
            prefix = b""
    if prefix or len(buffer()):
        yield prefix + _cut(packer)


def list_reply(request_id: int, items: list[str], budget: int) -> Output:
    """The reply ``[request_id, 0, items]`` (``keys``): a frame, or a Producer if it is larger
    than ``budget``."""
    size = sum(map(len, items)) + _ITEM_OVERHEAD * len(items)
    if size <= budget:
        return pack_frame([request_id, REPLY_OK, items])
    packer = msgpack.Packer(use_bin_type=True)
    prefix = b"\x93" + packer.pack(request_id) + packer.pack(REPLY_OK)
    return Producer(_list_pieces(prefix + packer.pack_array_header(len(items)), items), size)


def _list_pieces(prefix: bytes, items: list[str]) -> Iterator[bytes]:
    packer = msgpack.Packer(use_bin_type=True, autoreset=False)
    pack, buffer = packer.pack, packer.getbuffer
    for item in items:
        pack(item)
        if len(buffer()) >= CHUNK_BYTES:
            yield prefix + _cut(packer)
            prefix = b""
    if prefix or len(buffer()):
        yield prefix + _cut(packer)


def _cut(packer: msgpack.Packer) -> bytes:
    """What ``packer`` holds, which it then forgets."""
    piece: bytes = packer.bytes()
    packer.reset()
    return piece
