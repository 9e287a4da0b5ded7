"""A namespace's history as the Redis store replays it, and the lists its changes carry.

The namespace script's ``history`` reply holds the revisions after ``since`` (stream entries,
each ``[id, [b"c", msgpack [op, name, value, ...]]]``, an update's ``["u", name, value, ...]``)
and, once per list they append to, the list's elements as of the last of those appends: its
current string, or the one a later revision of the window retired (redis_scripts.py). Each
append replays as a ``ListVersion``, a prefix of those bytes made into an encoding only when
asked (base.py: materialised when someone needs it), so a replay of many appends to one list
holds the list once.
"""

from __future__ import annotations

from collections.abc import Mapping
from itertools import chain, repeat
from typing import Any

import msgpack

from ...protocol.lists import array_header
from .base import Change, Value

__all__ = ["UPDATE", "ListVersion", "UnfetchedList", "pack_update", "replay", "unpack_changes"]

#: The op of an update's history entry: the names and values that follow it are all sets.
UPDATE = b"u"


class ListVersion:
    """An appended list as revision N left it: ``count`` items, the first ``size`` bytes of
    ``elements`` (shared by every version of the list in one replay)."""

    __slots__ = ("count", "elements", "size")

    def __init__(self, elements: bytes, count: int, size: int) -> None:
        self.elements, self.count, self.size = elements, count, size

    def __len__(self) -> int:
        return len(array_header(self.count)) + self.size

    def materialise(self) -> bytes:
        with memoryview(self.elements) as elements:
            return b"".join((array_header(self.count), elements[: self.size]))

    def __repr__(self) -> str:
        return f"<ListVersion of {self.count} items, {self.size} bytes>"


class UnfetchedList:
    """An append's list when the store did not fetch it: the namespace is not followed
    (``RemoteStore.follow``), so nobody watches it and the server reads no value of it. Its
    length is known; its encoding is not, and asking for it is a bug of the caller."""

    __slots__ = ("count", "key", "size")

    def __init__(self, key: str, count: int, size: int) -> None:
        self.key, self.count, self.size = key, count, size

    def __len__(self) -> int:
        return len(array_header(self.count)) + self.size

    def materialise(self) -> bytes:
        raise RuntimeError(
            f"the list appended to in {self.key!r} was not fetched: follow() the namespace to "
            "be told its appended lists whole"
        )


def replay(key: str, entries: list[Any], bodies: list[Any]) -> list[Change]:
    """The changes of a ``history`` reply, in order, each with its value as of its revision."""
    elements = {
        (bodies[i], bodies[i + 1].decode()): bodies[i + 2] for i in range(0, len(bodies), 3)
    }
    revisions = []
    for entry_id, fields in entries:
        flat = _triples(msgpack.unpackb(fields[1], raw=True, use_list=True))
        revisions.append((int(entry_id.split(b"-", 1)[0]), flat))
    # Walk back from the newest: an append's list is the one the next replacement of its name
    # (in the window) retired, or the current one if none.
    source: dict[str, int] = {}
    changes: list[Change] = []
    for revision, flat in reversed(revisions):
        for i in range(len(flat) - 3, -1, -3):
            op, name = flat[i], flat[i + 1].decode()
            value: Value | None
            if op == b"a":
                count, size = map(int, flat[i + 2].split())
                value = ListVersion(elements[source.get(name, 0), name], count, size)
            else:
                source[name] = revision
                value = flat[i + 2] if op == b"s" else None
            changes.append(Change(key, revision, name, value))
    changes.reverse()
    return changes


def pack_update(values: Mapping[str, bytes]) -> bytes:
    """An update's history entry, msgpack ``["u", name, value, ...]`` with every string raw
    (old-spec raw, no str8: what the script's cmsgpack reads). The update's script reads its
    names and values from it, so the command carries them once (tests/test_redis_wire.py).
    Made from msgpack's packing of ``values`` as a map, in one C call: a map's entries are
    the same bytes as the flat array's pairs, so only the header differs."""
    count = len(values)
    packed: bytes = msgpack.packb(values, use_bin_type=False)
    skip = 1 if count < 16 else 3 if count < 65536 else 5  # (the map's header)
    with memoryview(packed) as pairs:
        return b"".join((array_header(2 * count + 1), b"\xa1u", pairs[skip:]))


def unpack_changes(packed: bytes) -> dict[str, bytes | None]:
    """The changes of an entry packed (a message's, which holds no append), by name, in
    order: an update's zipped in C, and so a run of sets (else taken three by three)."""
    flat = msgpack.unpackb(packed, raw=True, use_list=True)
    if flat and flat[0] == UPDATE:
        return dict(zip(map(bytes.decode, flat[1::2]), flat[2::2], strict=True))
    if len(flat) % 3 == 0 and flat[0::3].count(b"s") * 3 == len(flat):
        return dict(zip(map(bytes.decode, flat[1::3]), flat[2::3], strict=True))
    return {
        flat[i + 1].decode(): flat[i + 2] if flat[i] == b"s" else None
        for i in range(0, len(flat), 3)
    }


def _triples(flat: list[Any]) -> list[Any]:
    """An entry as ``[op, name, value, ...]``: an update's pairs each made a set."""
    if flat and flat[0] == UPDATE:
        return list(chain.from_iterable(zip(repeat(b"s"), flat[1::2], flat[2::2])))
    return flat
