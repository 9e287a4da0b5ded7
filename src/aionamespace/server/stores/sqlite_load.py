"""Loading a data file into the SQLite store's memory (the format: ``datafile.py``).

A namespace's state in the file is its *folded* attributes (``attributes``: each name as of
the revision before the file's history starts, or later) with the file's history replayed over
them, in order: each revision sets, deletes or appends as it did. The history kept in memory is
the newest part of the file's, within the store's bounds; the file may hold older revisions
than that, not folded yet (``sqlite.py``: ``FOLD_REVISIONS``).
"""

from __future__ import annotations

import collections
from collections.abc import Mapping
from typing import Any

import msgpack

from ..._errors import DataFileError
from .base import Changes
from .datafile import DataFile
from .lists import ListVersion, StoredList
from .memory import _Namespace

__all__ = ["FileRevision", "load"]

#: A revision the file's history holds: (revision, the names it changed, its size).
FileRevision = tuple[int, tuple[str, ...], int]


def load(
    file: DataFile,
    namespaces: dict[str, _Namespace],
    max_revisions: int,
    max_bytes: int,
) -> tuple[int, dict[str, collections.deque[FileRevision]]]:
    """Fill ``namespaces`` from the file: the last place an attribute holds, and the revisions
    each namespace's history holds in the file."""
    for key, revision in file.rows("SELECT key, revision FROM namespaces"):
        namespace = namespaces[key] = _Namespace()
        namespace.revision = revision
    lists: dict[tuple[str, str, int], StoredList] = {}
    for key, name, since, data in file.rows(
        "SELECT key, name, since, data FROM list_chunks ORDER BY key, name, since, start"
    ):
        stored = lists.get((key, name, since))
        if stored is None:
            stored = lists[key, name, since] = StoredList(bytearray(), 0, since)
            stored.retire()  # until an attribute, or the history, makes it a value
        stored.body.extend(data)
        stored.size = len(stored.body)
    places = 0
    for key, name, place, value, since, count in file.rows(
        "SELECT key, name, place, value, list_since, list_count FROM attributes ORDER BY key, place"
    ):
        places = max(places, place)
        namespace = _namespace(file, namespaces, key)
        if value is not None:
            namespace.attributes[name] = value
            continue
        stored = lists.get((key, name, since))
        if stored is None:
            raise DataFileError(f"{file.path} is damaged: the list {key!r}.{name} is missing")
        stored.count, stored.current = count, True
        namespace.attributes[name] = stored
        namespace.lists.add(name)
    rows: dict[str, list[tuple[int, int, bytes]]] = {}
    for key, revision, size, changes in file.rows(
        "SELECT key, revision, size, changes FROM history ORDER BY key, revision"
    ):
        rows.setdefault(key, []).append((revision, size, changes))
    in_file = {}
    for key, history in rows.items():
        namespace = _namespace(file, namespaces, key)
        in_file[key] = _replay(file, key, namespace, history, lists, max_revisions, max_bytes)
    return places, in_file


def _namespace(file: DataFile, namespaces: dict[str, _Namespace], key: str) -> _Namespace:
    namespace = namespaces.get(key)
    if namespace is None:
        raise DataFileError(f"{file.path} is damaged: rows of an unknown namespace {key!r}")
    return namespace


def _replay(
    file: DataFile,
    key: str,
    namespace: _Namespace,
    rows: list[tuple[int, int, bytes]],
    lists: dict[tuple[str, str, int], StoredList],
    max_revisions: int,
    max_bytes: int,
) -> collections.deque[FileRevision]:
    """Replay the file's history over the folded attributes; keep its newest part, within the
    bounds, as the namespace's history. The file's revisions, as they are there."""
    history: list[tuple[int, Changes, int]] = []
    for revision, size, packed in rows:
        try:
            changes = msgpack.unpackb(packed, raw=False)
        except Exception as exc:
            raise DataFileError(f"{file.path} is damaged: history: {exc}") from exc
        rebuilt = _rebuilt(file, key, changes, lists)
        _apply(namespace, revision, rebuilt)
        history.append((revision, rebuilt, size))
    namespace.revision = max(namespace.revision, rows[-1][0])  # the newest is revised here
    kept: collections.deque[tuple[int, Changes, int]] = collections.deque()
    total = 0
    for entry in reversed(history):  # the newest the bounds allow, as the store keeps them
        if len(kept) >= max_revisions or total + entry[2] > max_bytes:
            break
        kept.appendleft(entry)
        total += entry[2]
    namespace.history, namespace.history_bytes = kept, total
    return collections.deque(
        (revision, tuple(changes), size) for revision, changes, size in history
    )


def _rebuilt(
    file: DataFile,
    key: str,
    changes: Mapping[str, Any],
    lists: dict[tuple[str, str, int], StoredList],
) -> Changes:
    rebuilt: dict[str, Any] = {}
    for name, value in changes.items():
        if isinstance(value, list):
            since, start, end, count = value
            stored = lists.get((key, name, since))
            if stored is None or stored.size < end:
                raise DataFileError(
                    f"{file.path} is damaged: the list {key!r}.{name} lacks what its history "
                    "appended"
                )
            rebuilt[name] = ListVersion(stored, start, end, count)
        else:
            rebuilt[name] = value
    return rebuilt


def _apply(namespace: _Namespace, revision: int, changes: Changes) -> None:
    """One revision of the history, applied to the attributes as it was when made."""
    attributes = namespace.attributes
    for name, value in changes.items():
        before = attributes.get(name)
        if isinstance(value, ListVersion):
            stored = value.stored
            if before is not stored:
                if isinstance(before, StoredList):
                    before.retire()
                stored.current = True
            stored.count, stored.revision = value.count, revision
            attributes[name] = stored
            namespace.lists.add(name)
            continue
        if isinstance(before, StoredList):
            before.retire()
            namespace.lists.discard(name)
        if value is None:
            attributes.pop(name, None)
        else:
            assert type(value) is bytes  # (a history row holds bytes, or lists' versions)
            attributes[name] = value
