"""The in-memory store: namespaces in this process's memory, until the server drops them.

Values stay the bytes clients sent (never re-encoded); only ``incr``, ``append`` and ``cas``
look inside the one value they change. A list that ``append`` touched becomes a ``StoredList``
(``lists.py``): appends then cost the items appended, and its encoding is made when read.
Each namespace keeps its last revisions, as they were committed, within the history's bounds
(``base.py``): a change's values are shared with the attributes, an append's items with its list.
"""

from __future__ import annotations

import collections
import secrets
from collections.abc import Callable, Mapping, Sequence

from ..._errors import HistoryExpired, LimitExceeded
from ...protocol.equality import cas_equal
from ...protocol.events import missing_attribute
from ...protocol.limits import Limits
from ...protocol.lists import EMPTY_LIST
from .base import CHANGE_OVERHEAD_BYTES, Change, Changes, StoreUsage
from .lists import StoredList
from .typed import incremented, list_refused, step_of

__all__ = ["MemoryStore", "new_epoch"]


class _Namespace:
    __slots__ = ("attributes", "history", "history_bytes", "lists", "revision")

    def __init__(self) -> None:
        # An attribute is its encoded value, or a list that appends grew (made bytes when read).
        self.attributes: dict[str, bytes | StoredList] = {}
        self.lists: set[str] = set()  # the names whose attribute is a StoredList
        self.revision = 0
        # Whole revisions (an update's changes stay together): a watch never replays half one.
        # Plain tuples (revision, changes, size): Change objects are made only for a replay.
        self.history: collections.deque[tuple[int, Changes, int]] = collections.deque()
        self.history_bytes = 0  # the sizes of the revisions in history, summed


class MemoryStore:
    """Namespaces in memory, living as long as the server; each keeps its last revisions within
    ``limits.max_history_revisions`` and ``limits.max_history_bytes`` for watches to resume."""

    def __init__(self, limits: Limits | None = None) -> None:
        limits = limits or Limits()
        self._namespaces: dict[str, _Namespace] = {}
        self._max_revisions = limits.max_history_revisions
        self._max_bytes = limits.max_history_bytes
        self.on_commit: Callable[[str, int, Changes], None] | None = None
        self.max_namespaces: int | None = None
        self.epoch = new_epoch()
        self.durable = False
        self.on_change: Callable[[], None] | None = None

    def _ns(self, key: str) -> _Namespace:
        namespace = self._namespaces.get(key)
        if namespace is None:
            if self.max_namespaces is not None and len(self._namespaces) >= self.max_namespaces:
                raise LimitExceeded(
                    f"the server holds {len(self._namespaces)} namespaces, its limit "
                    f"(Limits.max_namespaces): {key!r} cannot be created"
                )
            namespace = self._namespaces[key] = _Namespace()
        return namespace

    def _commit(
        self,
        key: str,
        namespace: _Namespace,
        changes: Mapping[str, bytes | None],
        size: int,
        deletes: bool = True,
    ) -> int:
        """Apply changes of ``size`` (base.py) as one revision, record them, tell the listener.

        ``changes`` is kept in the history as it is (not copied: callers pass a mapping of
        their own). ``deletes=False`` promises every value is bytes: applied in one C call.
        """
        attributes = namespace.attributes
        if namespace.lists:
            size += self._replaced_lists(namespace, changes)
        if deletes:
            for name, value in changes.items():
                if value is None:
                    del attributes[name]
                else:
                    attributes[name] = value
        else:
            attributes.update(changes)  # type: ignore[arg-type]
        return self._record(key, namespace, changes, size)

    def _record(self, key: str, namespace: _Namespace, changes: Changes, size: int) -> int:
        """Count a revision already applied: into the history (within its bounds), then told."""
        namespace.revision += 1
        revision = namespace.revision
        history = namespace.history
        history.append((revision, changes, size))
        namespace.history_bytes += size
        if len(history) > self._max_revisions:  # one in, so at most one out
            namespace.history_bytes -= history.popleft()[2]
        if namespace.history_bytes > self._max_bytes:
            while history and namespace.history_bytes > self._max_bytes:
                namespace.history_bytes -= history.popleft()[2]
        if self.on_commit is not None:
            self.on_commit(key, revision, changes)
        return revision

    def _replaced_lists(self, namespace: _Namespace, changes: Mapping[str, bytes | None]) -> int:
        """The bytes of the appended lists ``changes`` replace or delete that the history keeps
        alive (it still holds one of their appends): part of the revision's size."""
        size = 0
        oldest = namespace.history[0][0] if namespace.history else namespace.revision + 1
        for name in namespace.lists.intersection(changes):
            namespace.lists.discard(name)
            stored = namespace.attributes[name]
            assert isinstance(stored, StoredList)
            stored.retire()
            if stored.revision >= oldest:
                size += stored.size
        return size

    # ------------------------------------------------------------------ plain access

    def open(self, key: str, defaults: Mapping[str, bytes]) -> None:
        namespace = self._ns(key)
        missing = {n: v for n, v in defaults.items() if n not in namespace.attributes}
        if missing:
            self._commit(key, namespace, missing, _size_of(missing))

    def get(self, key: str, name: str) -> bytes:
        try:
            value = self._namespaces[key].attributes[name]
        except KeyError:
            raise missing_attribute(name) from None
        if type(value) is bytes:
            return value
        return value.encoded()  # type: ignore[union-attr]

    def set(self, key: str, name: str, value: bytes) -> int:
        namespace = self._ns(key)
        size = len(value) + CHANGE_OVERHEAD_BYTES
        if namespace.lists:  # it may replace one
            return self._commit(key, namespace, {name: value}, size)
        namespace.attributes[name] = value
        return self._record(key, namespace, {name: value}, size)

    def delete(self, key: str, name: str) -> int:
        namespace = self._namespaces.get(key)
        if namespace is None or name not in namespace.attributes:
            raise missing_attribute(name)
        return self._commit(key, namespace, {name: None}, CHANGE_OVERHEAD_BYTES)

    def snapshot(self, key: str, names: Sequence[str] | None) -> tuple[int, dict[str, bytes]]:
        """The revision and the attributes (all, or those of ``names`` that exist), together."""
        namespace = self._namespaces.get(key)
        if namespace is None:
            return 0, {}
        attributes = namespace.attributes
        if names is None:
            values = dict(attributes)
        else:
            try:  # every name there (the usual snapshot): looked up by loops in C
                values = dict(zip(names, map(attributes.__getitem__, names), strict=True))
            except KeyError:
                values = {n: attributes[n] for n in names if n in attributes}
        for name in namespace.lists.intersection(values) if namespace.lists else ():
            stored = attributes[name]
            assert isinstance(stored, StoredList)
            values[name] = stored.encoded()
        return namespace.revision, values  # type: ignore[return-value]

    def snapshot_in_order(self, key: str, names: list[str]) -> tuple[int, list[bytes]] | None:
        """``snapshot`` of ``names`` as a list in their order, when the namespace holds each of
        them as bytes (no list that appends grew) and none is asked twice; else None, and
        ``snapshot`` says. The dispatcher's fast path for ``snapshot_packed``: no dict made to
        be taken apart again."""
        namespace = self._namespaces.get(key)
        if namespace is None or (namespace.lists and not namespace.lists.isdisjoint(names)):
            return None
        if len(set(names)) != len(names):
            return None
        try:
            values = list(map(namespace.attributes.__getitem__, names))
        except KeyError:
            return None
        return namespace.revision, values  # type: ignore[return-value]  # (no list among them)

    def keys(self) -> list[str]:
        return sorted(self._namespaces)

    def count(self) -> int:
        return len(self._namespaces)

    def drop(self, key: str) -> None:
        self._namespaces.pop(key, None)

    def usage(self) -> StoreUsage:
        """Counted when asked: one pass over the namespaces and their names."""
        names = value_bytes = revisions = history_bytes = most_revisions = most_bytes = 0
        for namespace in self._namespaces.values():
            attributes = namespace.attributes
            names += len(attributes)
            value_bytes += sum(map(len, attributes.values()))
            revisions += len(namespace.history)
            history_bytes += namespace.history_bytes
            most_revisions = max(most_revisions, len(namespace.history))
            most_bytes = max(most_bytes, namespace.history_bytes)
        return StoreUsage(
            len(self._namespaces),
            names,
            value_bytes,
            revisions,
            history_bytes,
            most_revisions,
            most_bytes,
        )

    async def commit(self) -> None:
        """Nothing to write: what is in memory is all there is."""

    def commit_inline(self, *, lone: bool = False) -> bool:
        """Nothing to write, done at once."""
        return True

    def close(self) -> None:
        """Nothing to release."""

    # ------------------------------------------------------------------ atomic operations

    def update(self, key: str, values: Mapping[str, bytes]) -> int:
        """Set every name at once, as one revision (validated beforehand: all or nothing).

        The store keeps ``values`` itself in its history: the caller hands it over.
        """
        namespace = self._ns(key)
        if not values:
            return namespace.revision
        size = sum(map(len, values.values())) + CHANGE_OVERHEAD_BYTES * len(values)
        return self._commit(key, namespace, values, size, deletes=False)

    def setdefault(self, key: str, name: str, value: bytes) -> bytes:
        namespace = self._ns(key)
        if name in namespace.attributes:
            return self.get(key, name)
        self._commit(key, namespace, {name: value}, len(value) + CHANGE_OVERHEAD_BYTES)
        return value

    def pop(self, key: str, name: str) -> bytes:
        value = self.get(key, name)
        self._commit(key, self._namespaces[key], {name: None}, CHANGE_OVERHEAD_BYTES)
        return value

    def incr(self, key: str, name: str, by: bytes) -> bytes:
        step = step_of(by)
        namespace = self._ns(key)
        current = namespace.attributes.get(name)
        if isinstance(current, StoredList):
            raise TypeError(f"cannot increment {name!r}: it holds a list, not an int or a float")
        value = incremented(name, current, step)
        self._commit(key, namespace, {name: value}, len(value) + CHANGE_OVERHEAD_BYTES)
        return value

    def append(self, key: str, name: str, items: Sequence[bytes]) -> int:
        """Extend a list in place: the encoded items are added, nothing is re-encoded.

        The first append to a list copies its elements into a StoredList once; every later
        one costs the bytes it appends. The revision records the list's new version (its
        length then), sharing the appended bytes with the list.
        """
        namespace = self._ns(key)
        current = namespace.attributes.get(name, EMPTY_LIST)
        if isinstance(current, StoredList):
            stored = current
        else:
            parsed = StoredList.parse(current, namespace.revision + 1)
            if parsed is None:
                raise list_refused(name, current)
            stored = parsed
        version = stored.extend(items, namespace.revision + 1)
        if stored is not current:
            namespace.attributes[name] = stored
            namespace.lists.add(name)
        self._record(key, namespace, {name: version}, version.appended + CHANGE_OVERHEAD_BYTES)
        return stored.count

    def cas(self, key: str, name: str, expected: bytes, new: bytes) -> bool:
        """Set ``name`` to ``new`` if it holds a value equal to (and of the type of) expected."""
        namespace = self._ns(key)
        if name not in namespace.attributes:
            return False
        if not cas_equal(self.get(key, name), expected):
            return False
        self._commit(key, namespace, {name: new}, len(new) + CHANGE_OVERHEAD_BYTES)
        return True

    # ------------------------------------------------------------------ history

    def history(self, key: str, since: int) -> list[Change]:
        """Every change after revision ``since``; HistoryExpired if some were forgotten."""
        namespace = self._namespaces.get(key)
        revision = 0 if namespace is None else namespace.revision
        if since > revision:
            raise HistoryExpired(
                f"revision {since} is ahead of this namespace ({revision}): the server was "
                "restarted; resync with _snapshot() and watch from its revision"
            )
        if namespace is None or since == revision:
            return []
        oldest = namespace.history[0][0] if namespace.history else revision + 1
        if since < oldest - 1:
            raise HistoryExpired(
                f"revision {since} is older than the history kept (oldest: {oldest}); "
                "resync with _snapshot() and watch from its revision"
            )
        return [
            Change(key, committed, name, value)
            for committed, changes, _ in namespace.history
            if committed > since
            for name, value in changes.items()
        ]


def new_epoch() -> str:
    """A new epoch: 16 random hex digits (64 bits: two stores never share one)."""
    return secrets.token_hex(8)


def _size_of(values: Mapping[str, bytes]) -> int:
    """The size (base.py) of a revision setting ``values``."""
    return sum(map(len, values.values())) + CHANGE_OVERHEAD_BYTES * len(values)
