"""The in-memory store: namespaces in this process's memory, until the server drops them.

Values stay the bytes clients sent (never re-encoded); only ``incr``, ``append`` and ``cas``
look inside the one value they change. Each namespace keeps its last revisions (whole, as they
were committed) for watches to resume from.
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from ..._errors import HistoryExpired, LimitExceeded
from ...protocol.codec import decode_value, encode_value
from ...protocol.events import missing_attribute
from ...protocol.lists import EMPTY_LIST, extend_list
from .base import Change, Changes

__all__ = ["DEFAULT_HISTORY", "MemoryStore"]

DEFAULT_HISTORY = 10_000


class _Namespace:
    __slots__ = ("attributes", "history", "revision")

    def __init__(self, history: int) -> None:
        self.attributes: dict[str, bytes] = {}
        self.revision = 0
        # Whole revisions (an update's changes stay together): a watch never replays half one.
        # Plain tuples: Change objects are made only when a watch replays them.
        self.history: collections.deque[tuple[int, Changes]] = collections.deque(maxlen=history)


class MemoryStore:
    """Namespaces in memory, living until the server drops them (it drops only unused anonymous
    ones); each keeps its last ``history`` revisions for watches to resume from."""

    def __init__(self, history: int = DEFAULT_HISTORY) -> None:
        self._namespaces: dict[str, _Namespace] = {}
        self._history = history
        self.on_commit: Callable[[str, int, Changes], None] | None = None
        self.max_namespaces: int | None = None

    def _ns(self, key: str) -> _Namespace:
        namespace = self._namespaces.get(key)
        if namespace is None:
            if self.max_namespaces is not None and len(self._namespaces) >= self.max_namespaces:
                raise LimitExceeded(
                    f"the server holds {len(self._namespaces)} namespaces, its limit "
                    f"(Limits.max_namespaces): {key!r} cannot be created"
                )
            namespace = self._namespaces[key] = _Namespace(self._history)
        return namespace

    def _commit(
        self, key: str, namespace: _Namespace, changes: Changes, deletes: bool = True
    ) -> int:
        """Apply changes as one revision, record them, tell the listener.

        ``changes`` is kept in the history as it is (not copied: callers pass a mapping of
        their own). ``deletes=False`` promises every value is bytes: applied in one C call.
        """
        namespace.revision += 1
        revision = namespace.revision
        attributes = namespace.attributes
        if deletes:
            for name, value in changes.items():
                if value is None:
                    del attributes[name]
                else:
                    attributes[name] = value
        else:
            attributes.update(changes)  # type: ignore[arg-type]
        namespace.history.append((revision, changes))
        if self.on_commit is not None:
            self.on_commit(key, revision, changes)
        return revision

    # ------------------------------------------------------------------ plain access

    def open(self, key: str, defaults: Mapping[str, bytes]) -> None:
        namespace = self._ns(key)
        missing = {n: v for n, v in defaults.items() if n not in namespace.attributes}
        if missing:
            self._commit(key, namespace, missing)

    def get(self, key: str, name: str) -> bytes:
        try:
            return self._namespaces[key].attributes[name]
        except KeyError:
            raise missing_attribute(name) from None

    def set(self, key: str, name: str, value: bytes) -> int:
        return self._commit(key, self._ns(key), {name: value})

    def delete(self, key: str, name: str) -> int:
        namespace = self._namespaces.get(key)
        if namespace is None or name not in namespace.attributes:
            raise missing_attribute(name)
        return self._commit(key, namespace, {name: None})

    def snapshot(self, key: str, names: Sequence[str] | None) -> tuple[int, dict[str, bytes]]:
        """The revision and the attributes (all, or those of ``names`` that exist), together."""
        namespace = self._namespaces.get(key)
        if namespace is None:
            return 0, {}
        attributes = namespace.attributes
        if names is None:
            return namespace.revision, dict(attributes)
        return namespace.revision, {n: attributes[n] for n in names if n in attributes}

    def keys(self) -> list[str]:
        return sorted(self._namespaces)

    def count(self) -> int:
        return len(self._namespaces)

    def drop(self, key: str) -> None:
        self._namespaces.pop(key, None)

    # ------------------------------------------------------------------ atomic operations

    def update(self, key: str, values: Mapping[str, bytes]) -> int:
        """Set every name at once, as one revision (validated beforehand: all or nothing).

        The store keeps ``values`` itself in its history: the caller hands it over.
        """
        namespace = self._ns(key)
        if not values:
            return namespace.revision
        return self._commit(key, namespace, values, deletes=False)

    def setdefault(self, key: str, name: str, value: bytes) -> bytes:
        namespace = self._ns(key)
        current = namespace.attributes.get(name)
        if current is not None:
            return current
        self._commit(key, namespace, {name: value})
        return value

    def pop(self, key: str, name: str) -> bytes:
        value = self.get(key, name)
        self._commit(key, self._namespaces[key], {name: None})
        return value

    def incr(self, key: str, name: str, by: bytes) -> bytes:
        step = decode_value(by)
        if type(step) not in (int, float):
            raise TypeError(f"can only increment by an int or a float, not {_kind(step)}")
        namespace = self._ns(key)
        current_blob = namespace.attributes.get(name)
        current = 0 if current_blob is None else decode_value(current_blob)
        if type(current) not in (int, float):
            raise TypeError(
                f"cannot increment {name!r}: it holds {_kind(current)}, not an int or a float"
            )
        value = encode_value(current + step)
        self._commit(key, namespace, {name: value})
        return value

    def append(self, key: str, name: str, items: Sequence[bytes]) -> int:
        """Extend a list in place: the encoded items are spliced in, nothing is re-encoded."""
        namespace = self._ns(key)
        current = namespace.attributes.get(name, EMPTY_LIST)
        spliced = extend_list(current, items)
        if spliced is None:
            raise TypeError(
                f"cannot append to {name!r}: it holds {_kind(decode_value(current))}, not a list"
            )
        value, length = spliced
        self._commit(key, namespace, {name: value})
        return length

    def cas(self, key: str, name: str, expected: bytes, new: bytes) -> bool:
        """Set ``name`` to ``new`` if it holds a value equal to (and of the type of) expected."""
        namespace = self._ns(key)
        current_blob = namespace.attributes.get(name)
        if current_blob is None:
            return False
        if current_blob != expected:
            current, wanted = decode_value(current_blob), decode_value(expected)
            try:
                if type(current) is not type(wanted) or current != wanted:
                    return False
            except ArithmeticError:  # Decimal('sNaN') refuses to be compared: not equal
                return False
        self._commit(key, namespace, {name: new})
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
            for committed, changes in namespace.history
            if committed > since
            for name, value in changes.items()
        ]


def _kind(value: Any) -> str:
    return f"a {type(value).__name__}"
