"""The client cache (opt-in, ``cache=True``): reads served locally until the server says no.

Like Redis client tracking: a caching client reads through a connection in *tracking* mode;
the server remembers every name it read there and, when one changes, pushes an invalidation
(once: reading it again tracks it again). The cache keeps the answers until then, including
"no such attribute".

Everything that changes the cache happens in stream order on the one thread that reads the
tracking connection: a reply fills the cache, and an invalidation sent after it empties it
again, so a stale value can never be left behind. The caller's own writes ``forget`` the names
they touch first, and a generation count per name keeps a reply to a read made *before* that
forget from filling the cache after it (read-your-writes).

How stale can a cached read be? A change becomes visible once the invalidation has crossed the
socket and been applied by the reader thread; benchmarks/compare.py measures that window.
"""

from __future__ import annotations

from typing import Any

from ..protocol.codec import decode_value
from ..protocol.events import missing_attribute

__all__ = ["ABSENT", "SPECIAL_ENTRIES", "CacheTable", "entry_value"]

#: Decoded values of these types are immutable: the cache may hand out the same object.
_IMMUTABLE = frozenset({type(None), bool, int, float, str, bytes, complex})


class _Missing:
    """The cached answer "no such attribute"."""


_MISSING = _Missing()
ABSENT = object()  # not in the cache


class _Blob:
    """A cached value of a mutable type: decoded afresh for each read (values are copies)."""

    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data = data


#: Cache entries that are not the value itself (everything else is: an immutable value).
SPECIAL_ENTRIES = frozenset({_Blob, _Missing})


def entry_value(entry: Any, name: str) -> Any:
    """What a cache entry means: a value, a fresh copy of one, or AttributeError."""
    if type(entry) is _Blob:
        return decode_value(entry.data)
    if entry is _MISSING:
        raise missing_attribute(name)
    return entry


class CacheTable:
    """What a cache holds, and the rules for changing it: shared by both proxies.

    ``expect`` notes a read on its way (with the name's generation), ``answered`` turns its
    reply into an entry and keeps it unless our own write came since, ``invalidate`` applies
    the server's word, ``forget`` our own writes'.
    """

    def __init__(self) -> None:
        self.values: dict[tuple[str, str], Any] = {}  # what reads serve, see entry_value
        self._generations: dict[tuple[str, str], int] = {}
        self._expected: dict[int, tuple[tuple[str, str], int]] = {}  # request id -> item, gen

    def expect(self, request_id: int, item: tuple[str, str]) -> None:
        self._expected[request_id] = (item, self._generations.get(item, 0))

    def answered(self, request_id: int, result: Any, error: BaseException | None) -> Any:
        """The entry a reply to an expected read makes (None for other replies)."""
        expected = self._expected.pop(request_id, None)
        if expected is None:
            return None
        if isinstance(error, AttributeError):
            entry: Any = _MISSING
        elif error is not None or type(result) not in (bytes, bytearray):
            return None
        else:
            value = decode_value(result)
            entry = value if type(value) in _IMMUTABLE else _Blob(result)
        item, generation = expected
        if self._generations.get(item, 0) == generation:
            self.values[item] = entry  # else our own write came since: don't keep it
        return entry

    def invalidate(self, key: str, name: str) -> None:
        self.values.pop((key, name), None)

    def forget(self, key: str, names: tuple[str, ...]) -> None:
        for name in names:
            item = (key, name)
            self._generations[item] = self._generations.get(item, 0) + 1
            self.values.pop(item, None)

    def clear(self) -> None:
        """The connection is gone: nothing cached can be trusted any more."""
        self.values.clear()
        self._expected.clear()
