"""The client cache (opt-in, ``cache=True``): reads served locally until the server says no.

Like Redis client tracking: a caching client reads through a connection in *tracking* mode;
the server remembers every name it read there and, when one changes, pushes an invalidation
(once: reading it again tracks it again). The cache keeps the answers until then, including
"no such attribute".

Everything that changes the cache happens in stream order on the one thread that reads the
tracking connection: a reply fills the cache, and an invalidation sent after it empties it
again, so a stale value can never be left behind. The caller's own writes ``forget`` the names
they touch first, and a generation count per name keeps a reply to a read made *before* that
forget from filling the cache after it (read-your-writes). The sync proxy writes on another
connection than its cache reads: a read sent after the first forget can still reach the server
before the write, so it forgets again once the write is acknowledged (``tracking.py``).

How stale can a cached read be? A change becomes visible once the invalidation has crossed the
socket and been applied by the reader thread; benchmarks/compare.py measures that window.
"""

from __future__ import annotations

import datetime
import decimal
import uuid
from typing import Any

from ..protocol.codec import decode_value
from ..protocol.events import missing_attribute

__all__ = ["ABSENT", "NOTHING_CACHED", "NOT_VALUES", "CacheTable", "entry_value"]

#: Decoded values of these types are immutable: the cache may hand out the same object (a
#: frozenset's items are hashable, so decoded ones are immutable too).
_IMMUTABLE = frozenset(
    {
        type(None), bool, int, float, str, bytes, complex, frozenset,
        datetime.datetime, datetime.date, datetime.time, datetime.timedelta,
        decimal.Decimal, uuid.UUID,
    }
)  # fmt: skip
#: Containers whose ``copy()`` is a copy of their own for a reader when every item is of an
#: immutable type (a set's items always are: decoded hashable values are immutable).
_SHALLOW = frozenset({list, dict, set, bytearray})


class _Missing:
    """The cached answer "no such attribute"."""


class _Absent:
    """Not in the cache."""


_MISSING = _Missing()
ABSENT = _Absent()


class _Copied:
    """A cached container of immutable items: each read gets its ``copy()``, a shallow copy
    being a whole one here, and far cheaper than decoding."""

    __slots__ = ("value",)

    def __init__(self, value: list[Any] | dict[Any, Any] | set[Any] | bytearray) -> None:
        self.value = value


class _Blob:
    """A cached value holding mutable values: decoded afresh for each read (values are copies)."""

    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data = data


#: The types of what a namespace's dict ``.get(name, ABSENT)`` gives that is not a value to
#: hand out as it is: one membership test tells a proxy's hot path that it has nothing more to do.
NOT_VALUES = frozenset({_Copied, _Blob, _Missing, _Absent})

#: What a proxy reads while it has no namespace dict to read (no cache, or not kept current).
#: Nothing ever fills it.
NOTHING_CACHED: dict[str, Any] = {}


def entry_value(entry: Any, name: str) -> Any:
    """What a cache entry means: a value, a fresh copy of one, or AttributeError."""
    kind = type(entry)
    if kind is _Copied:
        return entry.value.copy()
    if kind is _Blob:
        return decode_value(entry.data)
    if entry is _MISSING:
        raise missing_attribute(name)
    return entry


def _entry(value: Any, data: bytes) -> Any:
    """How to keep a decoded value (``data``, its encoding) so that reads get copies of it."""
    kind = type(value)
    if kind in _IMMUTABLE:
        return value
    immutable = _IMMUTABLE
    if kind is tuple:
        if all(type(item) in immutable for item in value):
            return value
    elif kind is dict:
        if all(type(item) in immutable for item in value.values()):
            return _Copied(value)
    elif kind in _SHALLOW:
        if kind is not list or all(type(item) in immutable for item in value):
            return _Copied(value)
    return _Blob(data)


class CacheTable:
    """What a cache holds, and the rules for changing it: shared by both proxies.

    The entries are kept in one dict per namespace (``namespace(key)``: ``{name: entry}``) so
    that a proxy can hold its namespace's dict and read it with one lookup. Such a dict is only
    ever emptied in place, never filled again once the table has let it go (an emptied one is
    dropped, and ``clear`` empties them all when the connection is lost): a proxy holding one
    finds nothing there and asks the table for its namespace's dict again on its way to the
    server, so a reference is never stale, only empty.

    ``expect`` notes a read on its way (with the name's generation), ``answered`` turns its
    reply into an entry and keeps it unless our own write came since, ``invalidate`` applies
    the server's word, ``forget`` our own writes'. A name has a generation only while reads of
    it are in flight (a write with none to outdate leaves nothing behind), so the table's
    memory is what it caches plus the reads in flight.
    """

    def __init__(self) -> None:
        self.namespaces: dict[str, dict[str, Any]] = {}  # key -> {name: entry}, see entry_value
        # name -> [reads of it in flight, generation]: only names with reads in flight
        self._reads: dict[tuple[str, str], list[int]] = {}
        self._expected: dict[int, tuple[tuple[str, str], list[int], int]] = {}  # by request id

    def namespace(self, key: str) -> dict[str, Any]:
        """The dict of a namespace's entries (made empty if there is none): what reads serve."""
        values = self.namespaces.get(key)
        if values is None:
            values = self.namespaces[key] = {}
        return values

    def entry(self, key: str, name: str) -> Any:
        """The entry for a name, or ABSENT."""
        values = self.namespaces.get(key)
        return ABSENT if values is None else values.get(name, ABSENT)

    def expect(self, request_id: int, item: tuple[str, str]) -> None:
        reads = self._reads.get(item)
        if reads is None:
            reads = self._reads[item] = [0, 0]
        reads[0] += 1
        self._expected[request_id] = (item, reads, reads[1])

    def answered(self, request_id: int, result: Any, error: BaseException | None) -> Any:
        """The entry a reply to an expected read makes (None for other replies)."""
        expected = self._expected.pop(request_id, None)
        if expected is None:
            return None
        item, reads, generation = expected
        reads[0] -= 1
        if not reads[0] and self._reads.get(item) is reads:
            del self._reads[item]
        if isinstance(error, AttributeError):
            entry: Any = _MISSING
        elif error is not None or type(result) not in (bytes, bytearray):
            return None
        else:
            entry = _entry(decode_value(result), result)
        if reads[1] == generation:
            self.namespace(item[0])[item[1]] = entry  # else our own write came since
        return entry

    def invalidate(self, key: str, name: str) -> None:
        values = self.namespaces.get(key)
        if values is not None:
            self._drop(key, values, name)

    def forget(self, key: str, names: tuple[str, ...]) -> None:
        """Our own write changes these (or just did): drop them, and outdate the reads of
        them in flight, whose replies may hold what they held before."""
        values = self.namespaces.get(key)
        for name in names:
            if values is not None:
                self._drop(key, values, name)
            reads = self._reads.get((key, name))
            if reads is not None:
                reads[1] += 1

    def _drop(self, key: str, values: dict[str, Any], name: str) -> None:
        if values.pop(name, ABSENT) is not ABSENT and not values:
            del self.namespaces[key]  # (a proxy may hold it: it stays empty)

    def clear(self) -> None:
        """The connection is gone: nothing cached can be trusted any more. Every namespace's
        dict is emptied in place, so that no proxy holding one reads from it again."""
        for values in self.namespaces.values():
            values.clear()
        self.namespaces.clear()
        self._expected.clear()
        self._reads.clear()
