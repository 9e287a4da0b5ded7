"""The SQLite store: the in-memory store's namespaces, written to a data file at each commit.

Reads and changes are the in-memory store's (``memory.py``), so both obey one behaviour; every
change is also recorded in a *journal*. ``commit`` turns the journal into SQL statements on the
event loop's thread (the values are bytes already: nothing is encoded again; an appended list
writes the bytes appended since its last commit, as a chunk), then runs them as one
transaction in a worker thread, while the server goes on applying the next batches: their
changes go to the next commit. Opening a store loads the file into memory
(``datafile.py`` has the format).

What a restart keeps: every namespace, value and revision, and the history within its bounds,
so watches resume: a list that appends grew keeps its chunks in the file while the history
holds one of its appends, even once it is replaced or deleted, as the in-memory store keeps it
alive for replays.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import anyio.to_thread
import msgpack

from ..._errors import DataFileError
from ...protocol.limits import Limits
from .base import Changes
from .datafile import DataFile, Statement
from .lists import ListVersion, StoredList
from .memory import MemoryStore, _Namespace

__all__ = ["SQLiteStore"]

# A journal entry's changes when its namespace was created (without a change), or dropped.
_CREATED: Changes = {}
_DROPPED: Changes = {}
_NO_HISTORY = -1  # a journal entry's size when it makes no history row (``restore``)
#: A commit without fsync of at most this many bytes of values runs on the event loop.
INLINE_COMMIT_BYTES = 64 * 1024


class SQLiteStore(MemoryStore):
    """Namespaces kept in memory and in the SQLite data file at ``path`` (created if absent).

    ``fsync=False`` (SQLite's ``synchronous=NORMAL``): a commit survives the server's crash.
    ``fsync=True`` (``FULL``): it survives a power loss too, at the cost of an fsync per commit.
    Raises ``DataFileError`` if the file is in use by another server, not ours, or damaged.
    """

    def __init__(
        self, path: str | os.PathLike[str], limits: Limits | None = None, *, fsync: bool = False
    ) -> None:
        super().__init__(limits)
        self.path = os.fspath(path)
        self.fsync = fsync
        self._file = DataFile(path, fsync=fsync)
        try:
            self.epoch = self._file.epoch
            self._places = _load(self._file, self._namespaces)  # the last attribute's place
        except BaseException:
            self._file.close()
            raise
        self.durable = True
        self.on_change: Callable[[], None] | None = None
        self._journal: list[tuple[str, int, Changes, int]] = []
        self._written: dict[tuple[str, str], tuple[int, int]] = {  # (key, name) -> since, size
            (key, name): (value.since, value.size)
            for key, namespace in self._namespaces.items()
            for name, value in namespace.attributes.items()
            if isinstance(value, StoredList)
        }
        # Where the file's history of each namespace starts, as far as this store wrote it;
        # and the namespaces whose file may hold lists only the history keeps (retired).
        self._trimmed = {
            key: namespace.history[0][0] if namespace.history else namespace.revision + 1
            for key, namespace in self._namespaces.items()
        }
        self._retired_keys: set[str] = set(self._namespaces)  # (unknown: as if all)
        self._listed = set(self._namespaces)  # the namespaces the file has a row of

    def _journaled(self, key: str, revision: int, changes: Changes, size: int) -> None:
        if not self._journal and self.on_change is not None:
            self.on_change()  # before anyone is told of the change (on_commit)
        self._journal.append((key, revision, changes, size))

    def _ns(self, key: str) -> _Namespace:
        namespace = self._namespaces.get(key)
        if namespace is None:
            namespace = super()._ns(key)
            self._journaled(key, 0, _CREATED, 0)
        return namespace

    def _record(self, key: str, namespace: _Namespace, changes: Changes, size: int) -> int:
        self._journaled(key, namespace.revision + 1, changes, size)
        return super()._record(key, namespace, changes, size)

    def restore(self, key: str, revision: int, values: Mapping[str, bytes]) -> None:
        """Make ``key`` hold ``values`` at ``revision``, with no history (a new file being
        written from a backup: its watches start from there)."""
        namespace = self._ns(key)
        namespace.attributes.update(values)
        namespace.revision = revision
        self._journaled(key, revision, values, _NO_HISTORY)

    def drop(self, key: str) -> None:
        if key in self._namespaces:
            self._journaled(key, 0, _DROPPED, 0)
        super().drop(key)

    @property
    def dirty(self) -> bool:
        """Whether changes wait for a commit."""
        return bool(self._journal)

    async def commit(self) -> None:
        """Write every change made so far, in one transaction: off the event loop, unless it
        is a small one without fsync (a few pages written to the log, which cost less than
        handing them to a thread and back: benchmarks/durable.py)."""
        volume = sum(size for _, _, _, size in self._journal)
        statements = self._statements()
        if not statements:
            return
        if not self.fsync and volume <= INLINE_COMMIT_BYTES:
            self._file.write(statements)
        else:
            await anyio.to_thread.run_sync(self._file.write, statements)

    def commit_now(self) -> None:
        """``commit`` on this thread (for a store used without a server, and tests)."""
        statements = self._statements()
        if statements:
            self._file.write(statements)

    def close(self) -> None:
        self._file.close()

    def _statements(self) -> list[Statement]:
        """The journal as SQL statements (taken on the loop's thread: what they carry is the
        state now, and later changes go to the next commit)."""
        journal, self._journal = self._journal, []
        statements: list[Statement] = []
        # Per namespace: the names this commit deleted, and those it set, in the order they
        # were (last) inserted in the namespace's attributes, which is the order they take.
        deleted: dict[str, set[str]] = {}
        inserted: dict[str, dict[str, None]] = {}
        appended: dict[tuple[str, str], dict[StoredList, None]] = {}  # the lists appended to
        revisions: list[tuple[Any, ...]] = []  # history rows, inserted in one go

        def insert_revisions() -> None:
            if revisions:
                statements.append((_INSERT_REVISIONS, revisions[:]))
                revisions.clear()

        for key, revision, changes, size in journal:
            if changes is _DROPPED:
                insert_revisions()  # (before the drop, which removes the namespace's rows)
                deleted.pop(key, None)
                inserted.pop(key, None)
                self._trimmed.pop(key, None)
                self._retired_keys.discard(key)
                self._listed.discard(key)
                statements.extend(_drop(key))
                for item in [item for item in self._written if item[0] == key]:
                    del self._written[item]
                continue
            gone, added = deleted.setdefault(key, set()), inserted.setdefault(key, {})
            for name, value in changes.items():
                if value is None:
                    gone.add(name)
                    added.pop(name, None)
                else:
                    if name not in added:
                        added[name] = None
                    if isinstance(value, ListVersion):
                        appended.setdefault((key, name), {})[value.stored] = None
            if changes is _CREATED or size == _NO_HISTORY:
                continue
            revisions.append((key, revision, size, _pack_changes(changes)))
        insert_revisions()
        for key, added in inserted.items():
            namespace = self._namespaces.get(key)
            if namespace is None:
                continue
            history = namespace.history
            if key not in self._listed or not history or history[-1][0] != namespace.revision:
                # (a namespace whose newest revision is in the file's history is revised
                # there: its row is written when it is created, or the history lacks it)
                self._listed.add(key)
                statements.append(
                    ("INSERT OR REPLACE INTO namespaces VALUES (?, ?)", (key, namespace.revision))
                )
            gone = deleted[key]
            for name in gone:  # (set again since: it takes the last place then)
                statements.append(
                    ("DELETE FROM attributes WHERE key = ? AND name = ?", (key, name))
                )
            attributes = namespace.attributes
            rows: list[tuple[Any, ...]] = []
            for name in [*added, *gone.difference(added)]:
                lists = appended.get((key, name), ())
                statements.extend(self._attribute(key, name, attributes.get(name), lists, rows))
            if rows:
                statements.append((_UPSERT_ATTRIBUTES, rows))
            oldest = namespace.history[0][0] if namespace.history else namespace.revision + 1
            if oldest > self._trimmed.get(key, 0):  # the history forgot revisions: so does the file
                self._trimmed[key] = oldest
                statements.append(
                    ("DELETE FROM history WHERE key = ? AND revision < ?", (key, oldest))
                )
                if key in self._retired_keys:
                    statements.append((_FORGET_LISTS, (key, key, oldest, key)))
        return statements

    def _attribute(
        self,
        key: str,
        name: str,
        value: bytes | StoredList | None,
        lists: Iterable[StoredList],
        rows: list[tuple[Any, ...]],
    ) -> list[Statement]:
        """What writes one attribute as it is now (its row goes to ``rows``, upserted with the
        others), and the last bytes of the ``lists`` this commit appended to under its name
        that are no longer its value (the history replays them)."""
        written = self._written.pop((key, name), None)
        if written is not None and not (
            isinstance(value, StoredList) and value.since == written[0]
        ):
            self._retired_keys.add(key)  # the list the file holds is now the history's alone
        statements = [
            chunk
            for stored in lists
            if stored is not value
            for chunk in _chunk(key, name, stored, written)
        ]
        if value is None:
            return statements
        self._places += 1  # its place if the file does not have it yet
        if type(value) is bytes:
            rows.append((key, name, self._places, value, None, None))
            return statements
        assert isinstance(value, StoredList)
        statements.extend(_chunk(key, name, value, written))
        rows.append((key, name, self._places, None, value.since, value.count))
        self._written[(key, name)] = (value.since, value.size)
        return statements


def _chunk(
    key: str, name: str, stored: StoredList, written: tuple[int, int] | None
) -> list[Statement]:
    """What writes the bytes of ``stored`` the file lacks (``written``: the list the file has
    under that name, and how much of it)."""
    start = written[1] if written is not None and written[0] == stored.since else 0
    if stored.size == start and start:
        return []
    return [
        (
            "INSERT OR REPLACE INTO list_chunks VALUES (?, ?, ?, ?, ?, ?)",
            (
                key,
                name,
                stored.since,
                start,
                stored.revision,
                bytes(stored.body[start : stored.size]),
            ),
        )
    ]


def _drop(key: str) -> list[Statement]:
    return [
        (f"DELETE FROM {table} WHERE key = ?", (key,))
        for table in ("namespaces", "attributes", "list_chunks", "history")
    ]


_INSERT_REVISIONS = "INSERT OR REPLACE INTO history VALUES (?, ?, ?, ?)"
#: Writes attributes, each keeping its place if the file has it, else taking the one given.
_UPSERT_ATTRIBUTES = (
    "INSERT INTO attributes VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (key, name) DO UPDATE"
    " SET value = excluded.value, list_since = excluded.list_since,"
    " list_count = excluded.list_count"
)

#: Forgets the chunks of a namespace's lists that are no attribute's value any more and whose
#: last append is older than the history's oldest revision: (key, key, oldest, key).
_FORGET_LISTS = """
DELETE FROM list_chunks WHERE key = ? AND (name, since) IN (
    SELECT name, since FROM list_chunks WHERE key = ? GROUP BY name, since
    HAVING max(revision) < ?
    EXCEPT SELECT name, list_since FROM attributes WHERE key = ? AND list_since IS NOT NULL
)
"""


def _pack_changes(changes: Changes) -> bytes:
    packed: dict[str, Any] = {}
    for name, value in changes.items():
        if isinstance(value, ListVersion):
            stored = value.stored
            packed[name] = [stored.since, value.start, value.size, value.count]
        else:
            packed[name] = value
    return msgpack.packb(packed, use_bin_type=True)  # type: ignore[no-any-return]


def _load(file: DataFile, namespaces: dict[str, _Namespace]) -> int:
    """Fill ``namespaces`` from the file; the last place an attribute holds."""
    for key, revision in file.rows("SELECT key, revision FROM namespaces"):
        namespace = namespaces[key] = _Namespace()
        namespace.revision = revision
    chunks: dict[tuple[str, str, int], list[bytes]] = {}
    for key, name, since, data in file.rows(
        "SELECT key, name, since, data FROM list_chunks ORDER BY key, name, since, start"
    ):
        chunks.setdefault((key, name, since), []).append(data)
    retired: dict[tuple[str, str, int], StoredList] = {}  # lists the history alone keeps
    places = 0
    for key, name, place, value, since, count in file.rows(
        "SELECT key, name, place, value, list_since, list_count FROM attributes ORDER BY key, place"
    ):
        places = max(places, place)
        namespace = _namespace(file, namespaces, key)
        if value is not None:
            namespace.attributes[name] = value
            continue
        body = bytearray(b"".join(chunks.pop((key, name, since), ())))
        namespace.attributes[name] = StoredList(body, count, since)
        namespace.lists.add(name)
    for (key, name, since), parts in chunks.items():
        stored = retired[key, name, since] = StoredList(bytearray(b"".join(parts)), 0, since)
        stored.retire()
    history: dict[str, list[tuple[int, int, bytes]]] = {}
    for key, revision, size, changes in file.rows(
        "SELECT key, revision, size, changes FROM history ORDER BY key, revision"
    ):
        history.setdefault(key, []).append((revision, size, changes))
    for key, rows in history.items():
        namespace = _namespace(file, namespaces, key)
        namespace.revision = max(namespace.revision, rows[-1][0])  # the newest is revised here
        _load_history(file, key, namespace, rows, retired)
    return places


def _namespace(file: DataFile, namespaces: dict[str, _Namespace], key: str) -> _Namespace:
    namespace = namespaces.get(key)
    if namespace is None:
        raise DataFileError(f"{file.path} is damaged: rows of an unknown namespace {key!r}")
    return namespace


def _load_history(
    file: DataFile,
    key: str,
    namespace: _Namespace,
    rows: list[tuple[int, int, bytes]],
    retired: dict[tuple[str, str, int], StoredList],
) -> None:
    """The history from its rows, newest first back to the first revision it cannot rebuild
    (an append to a list whose chunks are missing: a damaged file, so never more than that)."""
    kept: list[tuple[int, Changes, int]] = []
    for revision, size, packed in reversed(rows):
        try:
            changes = msgpack.unpackb(packed, raw=False)
        except Exception as exc:
            raise DataFileError(f"{file.path} is damaged: history: {exc}") from exc
        rebuilt = _rebuilt(key, namespace, changes, retired)
        if rebuilt is None:
            break
        kept.append((revision, rebuilt, size))
        for value in rebuilt.values():
            if isinstance(value, ListVersion) and value.stored.revision == 0:
                value.stored.revision = revision  # its last append's
    kept.reverse()
    namespace.history.extend(kept)
    namespace.history_bytes = sum(size for _, _, size in kept)


def _rebuilt(
    key: str,
    namespace: _Namespace,
    changes: Mapping[str, Any],
    retired: dict[tuple[str, str, int], StoredList],
) -> Changes | None:
    rebuilt: dict[str, Any] = {}
    for name, value in changes.items():
        if isinstance(value, list):
            since, start, end, count = value
            stored = namespace.attributes.get(name)
            if not isinstance(stored, StoredList) or stored.since != since:
                stored = retired.get((key, name, since))
            if stored is None or stored.size < end:
                return None
            if not stored.current and end == stored.size:
                stored.count = count  # a retired list's length: its last version's
            rebuilt[name] = ListVersion(stored, start, end, count)
        else:
            rebuilt[name] = value
    return rebuilt
