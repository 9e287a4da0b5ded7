"""A data file: the SQLite database a durable server keeps its namespaces in.

One server at a time: the file is locked (``flock``) while a server has it open, and a second
one is refused with ``DataFileError``. A file is recognised by SQLite's ``application_id``
(``APPLICATION_ID``) and its format by ``user_version`` (``FORMAT``): a file that is not ours,
of a newer format, or that SQLite cannot read is refused at open, never taken for an empty
board. A new file is created readable and writable by its owner alone (0600; SQLite gives its
``-wal`` and ``-shm`` files the same permissions).

The tables (format 1):

* ``meta(name, value)``: ``epoch``, the random id made when the file was created;
* ``namespaces(key, revision)``: every namespace, and its last revision unless a newer one is
  in the history (the newest revision is the greater);
* ``attributes(key, name, place, value, list_since, list_count)``: the namespace's *folded*
  attributes: each one's encoded value, or, for a list that appends grew, NULL and the list's
  first append's revision and its length; ``place`` orders them as they were first set;
* ``list_chunks(key, name, since, start, revision, data)``: such a list's elements' bytes, in
  chunks (one per commit that appended to it), ``start`` their offset in the list's body,
  ``revision`` the chunk's last append's; a list keeps its chunks while an attribute or the
  history holds it;
* ``history(key, revision, size, changes)``: every revision since the folded attributes, each
  one's changes as a msgpack map of name to encoded value, nil (deleted), or ``[since, start,
  end, count]`` (an append: the list ``since`` names, as its first ``end`` bytes, ``count``
  items). A namespace's state is its folded attributes with its history replayed over them
  (``sqlite_load.py``); its history in memory is the newest part of this one.

WAL journal; ``synchronous=NORMAL`` (a commit survives the server's crash) or ``FULL`` (it
survives the machine's too: ``fsync`` on every commit).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import sqlite3
from collections.abc import Iterable
from typing import Any

from ..._errors import DataFileError

__all__ = ["APPLICATION_ID", "FORMAT", "DataFile", "Statement"]

APPLICATION_ID = 0x41494F4E  # "AION"
FORMAT = 1

#: One SQL statement and its parameters, as a commit runs them (a list of them: run for each).
Statement = tuple[str, tuple[Any, ...] | list[tuple[Any, ...]]]

_SCHEMA = """
CREATE TABLE meta (name TEXT PRIMARY KEY, value) WITHOUT ROWID;
CREATE TABLE namespaces (key TEXT PRIMARY KEY, revision INTEGER NOT NULL) WITHOUT ROWID;
CREATE TABLE attributes (
    key TEXT NOT NULL, name TEXT NOT NULL, place INTEGER NOT NULL, value BLOB,
    list_since INTEGER, list_count INTEGER, PRIMARY KEY (key, name)
) WITHOUT ROWID;
CREATE TABLE list_chunks (
    key TEXT NOT NULL, name TEXT NOT NULL, since INTEGER NOT NULL, start INTEGER NOT NULL,
    revision INTEGER NOT NULL, data BLOB NOT NULL, PRIMARY KEY (key, name, since, start)
) WITHOUT ROWID;
CREATE TABLE history (
    key TEXT NOT NULL, revision INTEGER NOT NULL, size INTEGER NOT NULL, changes BLOB NOT NULL,
    PRIMARY KEY (key, revision)
) WITHOUT ROWID;
"""


class DataFile:
    """An open, locked data file. Its methods run on one thread at a time."""

    def __init__(self, path: str | os.PathLike[str], *, fsync: bool = False) -> None:
        self.path = path = os.fspath(path)
        self._lock_fd = _open_locked(path)
        try:
            self.db = _connect(path)
            try:
                self.epoch = self._prepare(fsync)
            except BaseException:
                self.db.close()
                raise
        except BaseException:
            os.close(self._lock_fd)
            raise

    def _prepare(self, fsync: bool) -> str:
        db = self.db
        try:
            application_id = db.execute("PRAGMA application_id").fetchone()[0]
            version = db.execute("PRAGMA user_version").fetchone()[0]
            tables = db.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
            if application_id == 0 and tables == 0:
                return self._create(fsync)
            if application_id != APPLICATION_ID:
                raise DataFileError(f"{self.path} is not an aionamespace data file")
            if version > FORMAT:
                raise DataFileError(
                    f"{self.path} has format {version}, newer than this aionamespace's "
                    f"({FORMAT}): upgrade aionamespace to open it"
                )
            self._pragmas(fsync)
            row = db.execute("SELECT value FROM meta WHERE name = 'epoch'").fetchone()
        except sqlite3.DatabaseError as exc:
            raise DataFileError(f"{self.path} cannot be read as a data file: {exc}") from exc
        if row is None or not isinstance(row[0], str):
            raise DataFileError(f"{self.path} is damaged: it has no epoch")
        return row[0]

    def _create(self, fsync: bool) -> str:
        from .memory import new_epoch

        epoch = new_epoch()
        db = self.db
        self._pragmas(fsync)
        with _transaction(db):
            db.executescript("BEGIN IMMEDIATE;" + _SCHEMA)
            db.execute("INSERT INTO meta VALUES ('epoch', ?)", (epoch,))
            db.execute(f"PRAGMA application_id = {APPLICATION_ID}")
            db.execute(f"PRAGMA user_version = {FORMAT}")
        return epoch

    def _pragmas(self, fsync: bool) -> None:
        mode = self.db.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if mode != "wal":
            raise DataFileError(f"{self.path}: SQLite cannot use a write-ahead log here ({mode})")
        self.db.execute(f"PRAGMA synchronous = {'FULL' if fsync else 'NORMAL'}")
        # Checkpoints (copying the log into the file, with an fsync) are the store's to run,
        # in a thread (sqlite.py), not SQLite's, inside a commit on the event loop.
        self.db.execute("PRAGMA wal_autocheckpoint = 0")

    def rows(self, sql: str) -> Iterable[tuple[Any, ...]]:
        """Rows of a query, with SQLite's errors told as a damaged file."""
        try:
            yield from self.db.execute(sql)
        except sqlite3.DatabaseError as exc:
            raise DataFileError(f"{self.path} cannot be read as a data file: {exc}") from exc

    def write(self, statements: list[Statement]) -> None:
        """Run ``statements`` as one transaction: all of them are written, or none."""
        db = self.db
        if len(statements) == 1:  # one statement is a transaction of its own (autocommit)
            sql, parameters = statements[0]
            if type(parameters) is list and len(parameters) == 1:
                parameters = parameters[0]
            if type(parameters) is not list:
                try:
                    db.execute(sql, parameters)
                except sqlite3.Error as exc:
                    raise DataFileError(f"a commit to {self.path} failed: {exc}") from exc
                return
        try:
            with _transaction(db):
                db.execute("BEGIN IMMEDIATE")
                for sql, parameters in statements:
                    if type(parameters) is list:
                        db.executemany(sql, parameters)
                    else:
                        db.execute(sql, parameters)
        except sqlite3.Error as exc:
            raise DataFileError(f"a commit to {self.path} failed: {exc}") from exc

    def checkpoint(self) -> None:
        """Copy the write-ahead log into the file, so that the next commits write the log from
        its start again (it is not shrunk: rewriting its pages is cheaper than growing it)."""
        try:
            self.db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
        except sqlite3.Error as exc:
            raise DataFileError(f"a checkpoint of {self.path} failed: {exc}") from exc

    def close(self) -> None:
        """Close the database and release the lock (again: nothing)."""
        if self._lock_fd < 0:
            return
        with contextlib.suppress(sqlite3.Error):
            self.db.close()
        fd, self._lock_fd = self._lock_fd, -1
        os.close(fd)


@contextlib.contextmanager
def _transaction(db: sqlite3.Connection) -> Any:
    try:
        yield
    except BaseException:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")


def _open_locked(path: str) -> int:
    """Open (creating it 0600 if absent) and lock the file for this server alone."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise DataFileError(f"cannot open the data file {path}: {exc.strerror}") from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise DataFileError(f"{path} is in use by another aionamespace server") from None
    return fd


def _connect(path: str) -> sqlite3.Connection:
    try:
        # Autocommit (isolation_level=None): transactions are begun and ended here, one per
        # commit; the connection is used from the committing thread, one at a time.
        db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        # Only this server opens the file (``_open_locked``), so SQLite need not lock it at
        # every transaction; set before the first read, so that the write-ahead log's index
        # is kept in this process's memory, with no -shm file and no lock calls per commit.
        db.execute("PRAGMA locking_mode = EXCLUSIVE")
        return db
    except sqlite3.Error as exc:
        raise DataFileError(f"cannot open the data file {path}: {exc}") from exc
