"""The SQLite store: the in-memory store's namespaces, written to a data file at each commit.

Reads and changes are the in-memory store's (``memory.py``), so both obey one behaviour; every
change is also recorded in a *journal*. ``commit`` turns the journal into SQL statements on the
event loop's thread (the values are bytes already: nothing is encoded again), then runs them as
one transaction, while the server goes on applying the next batches: their changes go to the
next commit. Opening a store loads the file into memory (``sqlite_load.py``).

**What a commit writes** is, for each revision, one history row (its changes, values and all),
and for each list appends grew, the bytes appended since (a chunk): the file's history, replayed
over the namespace's *folded* attributes, is its state (``datafile.py``). The attributes are
folded in batches: once the file's history holds ``FOLD_REVISIONS`` revisions (or
``FOLD_BYTES``) older than what the history keeps in memory, one commit writes the attributes
those revisions changed, as they are now, and forgets the revisions from the file. So a write
costs one row, however many times a name changes between folds; and a restart finds every
namespace, value and revision, and the history within its bounds, so watches resume (a list
keeps its chunks while the file's history appends to it, even once replaced or deleted).
"""

from __future__ import annotations

import collections
import os
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import anyio.to_thread
import msgpack

from ...protocol.limits import Limits
from .base import Changes
from .datafile import DataFile, Statement
from .lists import ListVersion, StoredList
from .memory import MemoryStore, _Namespace
from .sqlite_load import load

__all__ = ["CHECKPOINT_PAGES", "FOLD_BYTES", "FOLD_REVISIONS", "SQLiteStore"]

# A journal entry's changes when its namespace was created (without a change), or dropped.
_CREATED: Changes = {}
_DROPPED: Changes = {}
_NO_HISTORY = -1  # a journal entry's size when it makes no history row (``restore``)
#: A commit of at most this many bytes of values runs on the event loop's thread; a larger one
#: in a thread. With fsync too: on a machine whose other CPU runs the clients, a thread would
#: not fsync in parallel with the loop so much as take turns with it, and handing the commit to
#: it and back (a wake-up each way, often a preemption) cost the 64-task --fsync row more than
#: the loop lost by waiting for the fsync, during which the next batches gather in the sockets
#: and go to the next commit together all the same (benchmarks/durable.py; README).
INLINE_COMMIT_BYTES = 64 * 1024
#: Checkpoint the data file's write-ahead log (``DataFile.checkpoint``, in a thread) once about
#: this many pages were written to it since the last: SQLite's own default, estimated as a page
#: per commit and one per ``PAGE_BYTES`` of values.
CHECKPOINT_PAGES = 1000
PAGE_BYTES = 4096
#: Fold a namespace's attributes once its file history holds this many revisions, or bytes of
#: them, older than what its history keeps (the module's docstring).
FOLD_REVISIONS = 1024
FOLD_BYTES = 4 * 1024 * 1024
#: A history row of at most this many bytes is handed to SQLite as a copy (``_blob``).
_BLOB_COPY_BYTES = 4096
_INSERT_REVISIONS = "INSERT OR REPLACE INTO history VALUES (?, ?, ?, ?)"
_INSERT_CHUNK = "INSERT OR REPLACE INTO list_chunks VALUES (?, ?, ?, ?, ?, ?)"
#: Writes attributes, each keeping its place if the file has it, else taking the one given.
_UPSERT_ATTRIBUTES = (
    "INSERT INTO attributes VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (key, name) DO UPDATE"
    " SET value = excluded.value, list_since = excluded.list_since,"
    " list_count = excluded.list_count"
)
_DELETE_ATTRIBUTE = "DELETE FROM attributes WHERE key = ? AND name = ?"

#: Forgets the chunks of a namespace's lists that are no attribute's value and whose last
#: append is older than the file's history: (key, key, oldest revision, key).
_FORGET_LISTS = """
DELETE FROM list_chunks WHERE key = ? AND (name, since) IN (
    SELECT name, since FROM list_chunks WHERE key = ? GROUP BY name, since
    HAVING max(revision) < ?
    EXCEPT SELECT name, list_since FROM attributes WHERE key = ? AND list_since IS NOT NULL
)
"""


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
            # the last attribute's place; each namespace's revisions in the file's history
            self._places, self._in_file = load(
                self._file, self._namespaces, self._max_revisions, self._max_bytes
            )
        except BaseException:
            self._file.close()
            raise
        self._in_file_bytes = {  # the sizes of each namespace's revisions in the file, summed
            key: sum(size for _, _, size in revisions) for key, revisions in self._in_file.items()
        }
        self.durable = True
        self.on_change: Callable[[], None] | None = None
        self._journal: list[tuple[str, int, Changes, int]] = []
        # (key, name) -> (since, size): the list under that name whose chunks the file has,
        # and how many bytes of it.
        self._written: dict[tuple[str, str], tuple[int, int]] = {}
        for key, namespace in self._namespaces.items():
            for name, value in namespace.attributes.items():
                if isinstance(value, StoredList):
                    self._written[key, name] = (value.since, value.size)
        self._listed = set(self._namespaces)  # the namespaces the file has a row of
        self.fold_revisions, self.fold_bytes = FOLD_REVISIONS, FOLD_BYTES
        self._logged = 0  # pages written to the log since the last checkpoint (estimated)
        # (one per store, used on the loop's thread: ``msgpack.packb`` makes one per call)
        self._packer = msgpack.Packer(use_bin_type=True)

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

    def waiting(self) -> int:
        """How many changes wait for a commit (server/durability.py gathers on it)."""
        return len(self._journal)

    async def commit(self) -> None:
        """Write every change made so far, in one transaction; first, when one is due, a
        checkpoint. Off the event loop, unless it is small (``INLINE_COMMIT_BYTES``)."""
        if self._logged >= CHECKPOINT_PAGES:
            await anyio.to_thread.run_sync(self._file.checkpoint)
            self._logged = 0
        volume = self._volume()
        if volume <= INLINE_COMMIT_BYTES:
            self._write_now(volume)
            return
        statements = self._statements()
        if statements:
            await anyio.to_thread.run_sync(self._file.write, statements)
            self._logged += 1 + volume // PAGE_BYTES

    def commit_inline(self, *, lone: bool = False) -> bool:
        """Commit now, on this thread, if it is a small commit (``INLINE_COMMIT_BYTES``)
        without fsync: a few pages written to the log, which cost less than waking the
        committer task to do it; with fsync, only for a lone writer (``lone``: see
        server/durability.py), whose commit has nothing to wait for to be grouped with.
        False: not done, ``commit`` does it (and any checkpoint due)."""
        if self._logged >= CHECKPOINT_PAGES or (self.fsync and not lone):
            return False
        volume = self._volume()
        if volume > INLINE_COMMIT_BYTES:
            return False
        self._write_now(volume)
        return True

    def commit_now(self) -> None:
        """``commit`` on this thread (for a store used without a server, and tests)."""
        self._write_now(self._volume())

    def _volume(self) -> int:
        journal = self._journal
        if len(journal) == 1:
            return journal[0][3]
        return sum(size for _, _, _, size in journal)

    def _write_now(self, volume: int) -> None:
        statements = self._statements()
        if statements:
            self._file.write(statements)
            self._logged += 1 + volume // PAGE_BYTES

    def close(self) -> None:
        self._file.close()

    def _statements(self) -> list[Statement]:
        """The journal as SQL statements (taken on the loop's thread: what they carry is the
        state now, and later changes go to the next commit)."""
        journal, self._journal = self._journal, []
        if len(journal) == 1:  # (a lone writer's commit, as a rule: one revision)
            statement = self._lone_revision(*journal[0])
            if statement is not None:
                return [statement]
        statements: list[Statement] = []
        revisions: list[tuple[Any, ...]] = []  # history rows, inserted in one go
        chunks: dict[tuple[str, str], dict[StoredList, None]] = {}  # the lists appended to
        touched: dict[str, None] = {}

        pack = self._packer.pack
        file_history, file_bytes = self._in_file, self._in_file_bytes

        def insert_revisions() -> None:
            if revisions:
                statements.append((_INSERT_REVISIONS, revisions[:]))
                revisions.clear()

        for key, revision, changes, size in journal:
            if changes is _DROPPED:
                insert_revisions()  # (before the drop, which removes the namespace's rows)
                statements.extend(_drop(key))
                touched.pop(key, None)
                self._listed.discard(key)
                self._in_file.pop(key, None)
                self._in_file_bytes.pop(key, None)
                for item in [item for item in self._written if item[0] == key]:
                    del self._written[item]
                chunks = {item: lists for item, lists in chunks.items() if item[0] != key}
                continue
            touched[key] = None
            if size == _NO_HISTORY:  # restored: the attributes themselves, no history
                insert_revisions()
                statements.extend(self._fold(key, list(changes)))
                continue
            if changes is _CREATED:
                continue
            if ListVersion in set(map(type, changes.values())):  # (no loop in Python)
                for name, value in changes.items():
                    if isinstance(value, ListVersion):
                        chunks.setdefault((key, name), {})[value.stored] = None
                packed = pack(_packable(changes))
            else:  # bytes and deletions only: packed as they are
                packed = pack(changes if type(changes) is dict else dict(changes))
            revisions.append((key, revision, size, _blob(packed)))
            in_file = file_history.get(key)
            if in_file is None:
                in_file = file_history[key] = collections.deque()
            in_file.append((revision, tuple(changes), size))
            file_bytes[key] = file_bytes.get(key, 0) + size
        insert_revisions()
        for (key, name), lists in chunks.items():
            statements.extend(self._chunks(key, name, lists))
        for key in touched:
            namespace = self._namespaces.get(key)
            if namespace is None:
                continue
            statements.extend(self._fold_when_due(key, namespace))
            in_file = self._in_file.get(key)
            if key not in self._listed or not in_file or in_file[-1][0] != namespace.revision:
                self._listed.add(key)  # (else the newest revision is in the file's history)
                statements.append(
                    ("INSERT OR REPLACE INTO namespaces VALUES (?, ?)", (key, namespace.revision))
                )
        return statements

    def _lone_revision(
        self, key: str, revision: int, changes: Changes, size: int
    ) -> Statement | None:
        """A commit of one revision of values and deletions, of a namespace the file lists
        (with its history: a drop forgets both), with no fold due: its history row, the one
        statement ``_statements`` would make, made with less Python. None for any other commit
        (``_statements`` makes it)."""
        in_file = self._in_file.get(key)
        namespace = self._namespaces.get(key)
        if (
            in_file is None
            or namespace is None
            or size < 0
            or changes is _CREATED
            or changes is _DROPPED
            or type(changes) is not dict
            or key not in self._listed
            or ListVersion in set(map(type, changes.values()))
        ):
            return None
        file_bytes = self._in_file_bytes.get(key, 0) + size
        if self._fold_due(namespace, len(in_file) + 1, file_bytes):
            return None
        in_file.append((revision, tuple(changes), size))
        self._in_file_bytes[key] = file_bytes
        return (_INSERT_REVISIONS, (key, revision, size, _blob(self._packer.pack(changes))))

    def _chunks(self, key: str, name: str, lists: Iterable[StoredList]) -> list[Statement]:
        """The bytes the file lacks of the lists appended to under ``name`` in this commit."""
        statements: list[Statement] = []
        for stored in lists:
            written = self._written.get((key, name))
            start = written[1] if written is not None and written[0] == stored.since else 0
            # (a chunk even of no bytes: its revision says the history still appends to the
            # list, which _FORGET_LISTS must then keep)
            body = bytes(stored.body[start : stored.size])
            row = (key, name, stored.since, start, stored.revision, body)
            statements.append((_INSERT_CHUNK, row))
            self._written[key, name] = (stored.since, stored.size)
        return statements

    def _fold_due(self, namespace: _Namespace, revisions: int, size: int) -> bool:
        """Whether a namespace whose file holds ``revisions`` revisions of ``size`` bytes in
        all is due a fold. The history in memory is the newest part of the file's: what is
        beyond it is counted without a walk (this runs at every commit)."""
        return (
            revisions - len(namespace.history) >= self.fold_revisions
            or size - namespace.history_bytes >= self.fold_bytes
        )

    def _fold_when_due(self, key: str, namespace: _Namespace) -> list[Statement]:
        """Fold the revisions the file holds beyond what the history keeps, once they are
        ``FOLD_REVISIONS`` (or ``FOLD_BYTES``): write the attributes they changed, as they are
        now, and forget them from the file."""
        in_file = self._in_file.get(key)
        if not in_file:
            return []
        if not self._fold_due(namespace, len(in_file), self._in_file_bytes[key]):
            return []
        count = len(in_file) - len(namespace.history)
        oldest = namespace.history[0][0] if namespace.history else namespace.revision + 1
        names: dict[str, None] = {}
        for _ in range(count):
            _, changed, folded = in_file.popleft()
            names.update(dict.fromkeys(changed))
            self._in_file_bytes[key] -= folded
        statements = self._fold(key, list(names))
        statements.append(("DELETE FROM history WHERE key = ? AND revision < ?", (key, oldest)))
        statements.append((_FORGET_LISTS, (key, key, oldest, key)))
        return statements

    def _fold(self, key: str, names: list[str]) -> list[Statement]:
        """Write ``names`` of namespace ``key`` as they are now (deleted if absent)."""
        attributes = self._namespaces[key].attributes
        statements: list[Statement] = []
        rows: list[tuple[Any, ...]] = []
        for name in names:
            value = attributes.get(name)
            if value is None:
                statements.append((_DELETE_ATTRIBUTE, (key, name)))
                continue
            self._places += 1  # its place if the file does not have it yet
            if type(value) is bytes:
                rows.append((key, name, self._places, value, None, None))
                continue
            assert isinstance(value, StoredList)
            statements.extend(self._chunks(key, name, (value,)))
            rows.append((key, name, self._places, None, value.since, value.count))
        if rows:
            statements.append((_UPSERT_ATTRIBUTES, rows))
        return statements


def _blob(data: bytes) -> bytes | bytearray:
    """``data`` as SQLite is given it cheapest: Python's sqlite3 looks for an adapter for
    ``bytes`` on every binding (a failed attribute lookup, an exception made and cleared), not
    for ``bytearray``, whose copy costs less while ``data`` is small (``_BLOB_COPY_BYTES``)."""
    return bytearray(data) if len(data) <= _BLOB_COPY_BYTES else data


def _drop(key: str) -> list[Statement]:
    return [
        (f"DELETE FROM {table} WHERE key = ?", (key,))
        for table in ("namespaces", "attributes", "list_chunks", "history")
    ]


def _packable(changes: Changes) -> dict[str, Any]:
    """A history row's changes, its appends as ``[since, start, end, count]``."""
    packable: dict[str, Any] = {}
    for name, value in changes.items():
        if isinstance(value, ListVersion):
            stored = value.stored
            packable[name] = [stored.since, value.start, value.size, value.count]
        else:
            packable[name] = value
    return packable
