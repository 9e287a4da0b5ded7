"""Lists that appends grow in place: the in-memory store's representation of an appended list.

A list that ``append`` has touched is kept as its elements' bytes in one growing buffer
(``StoredList``), so an append costs the bytes appended, not the whole list. The list is only
ever appended to (any other change replaces it with a new value), so its version at an earlier
revision is a prefix of that buffer: a ``ListVersion`` (the list, and its length then) is what
the history records of an append, sharing the appended bytes with the list. A version's
encoding (array header and elements) is made when something reads it: the current one is kept
until the list changes again, so every reader and every watcher of a revision shares it.
"""

from __future__ import annotations

from collections.abc import Sequence

from ...protocol.lists import MAX_LIST_LENGTH, array_header, split_list

__all__ = ["ListVersion", "StoredList"]


class StoredList:
    """A list as its elements' bytes, appended to in place; ``size`` bytes, ``count`` items."""

    __slots__ = ("_encoded", "body", "count", "current", "revision", "since", "size")

    def __init__(self, body: bytearray, count: int, since: int = 0) -> None:
        self.body = body  # the elements' encodings, one after the other
        self.size = len(body)
        self.count = count
        self.since = since  # the revision of its first append: tells this list from others
        self.revision = 0  # of its last append
        self.current = True  # the value of its name (else: kept by the history alone)
        self._encoded: bytes | None = None  # the current version's encoding, once made

    @classmethod
    def parse(cls, encoded: bytes, since: int) -> StoredList | None:
        """The list an encoded value holds (its elements copied once), about to be appended to
        at revision ``since``; None if not a list."""
        found = split_list(encoded)
        if found is None:
            return None
        count, header = found
        return cls(bytearray(memoryview(encoded)[header:]), count, since)

    def extend(self, items: Sequence[bytes], revision: int) -> ListVersion:
        """Append encoded ``items`` as ``revision``: the version it makes."""
        count = self.count + len(items)
        if count > MAX_LIST_LENGTH:
            raise ValueError(f"a list holds at most {MAX_LIST_LENGTH} items")
        before = self.size
        self.body.extend(b"".join(items))  # one resize of the buffer for the whole append
        self.size = len(self.body)
        self.count = count
        self.revision = revision
        self._encoded = None
        return ListVersion(self, before, self.size, count)

    def encoded(self) -> bytes:
        """The list as it is now, encoded: made on the first read after a change, then kept
        while the list is its name's value."""
        encoded = self._encoded
        if encoded is None:
            encoded = b"".join((array_header(self.count), self.body))
            if self.current:
                self._encoded = encoded
        return encoded

    def __len__(self) -> int:
        """The length of its encoding, without making it."""
        return len(array_header(self.count)) + self.size

    def retire(self) -> None:
        """The list is no longer its name's value (replaced or deleted): keep no encoding of it,
        only what the history's replays need."""
        self.current = False
        self._encoded = None


class ListVersion:
    """A list as an append left it: ``StoredList.body[:size]``, ``count`` items; what that
    append added is ``body[start:size]``, shared with the list."""

    __slots__ = ("count", "size", "start", "stored")

    def __init__(self, stored: StoredList, start: int, size: int, count: int) -> None:
        self.stored = stored
        self.start = start
        self.size = size
        self.count = count

    @property
    def appended(self) -> int:
        """Bytes of the items the append added."""
        return self.size - self.start

    def materialise(self) -> bytes:
        """This version's encoding: the list's kept one if it is still the current version,
        else made afresh (past versions are not kept: they would cost their whole size)."""
        stored = self.stored
        if stored.size == self.size:
            return stored.encoded()
        with memoryview(stored.body) as body:
            return b"".join((array_header(self.count), body[: self.size]))

    def __len__(self) -> int:
        """The length of this version's encoding, without making it."""
        return len(array_header(self.count)) + self.size

    def __repr__(self) -> str:
        return f"<ListVersion of {self.count} items, {self.size} bytes>"
