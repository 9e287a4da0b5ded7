"""The stores under test, made in one place, and what the store tests read back from them.

``STORES`` makes each store the store tests run against (``make_store`` fixtures are
parametrized over it): a new store joins every store test by joining it. "sqlite reopened" is
an SQLiteStore committed, closed and loaded again from its file before every call, so every
store test also checks that what it tests survives a restart; "sqlite reopened, folding" the
same, folding its history into its attributes at every commit. ``close_stores`` closes the
files the SQLite stores made so far hold (in a directory removed at exit). ``Commits`` records
what ``on_commit`` was told, values materialised during the call as the server does;
``replayed`` is ``history`` with its values materialised.
"""

from __future__ import annotations

import atexit
import itertools
import os
import shutil
import tempfile
from collections.abc import Callable
from typing import Any

from aionamespace import Limits
from aionamespace.server.stores import MemoryStore, SQLiteStore, Store, materialised

__all__ = ["STORES", "Commits", "MakeStore", "close_stores", "replayed"]

#: Makes a store with the given limits (None: the defaults).
MakeStore = Callable[[Limits | None], Store]

_DIRECTORY = tempfile.mkdtemp(prefix="aionamespace-stores-")
atexit.register(shutil.rmtree, _DIRECTORY, ignore_errors=True)
_PATHS = (os.path.join(_DIRECTORY, f"{n}.db") for n in itertools.count())
_OPENED: list[SQLiteStore] = []


def _sqlite(limits: Limits | None) -> SQLiteStore:
    store = SQLiteStore(next(_PATHS), limits)
    _OPENED.append(store)
    return store


class Reopening:
    """An SQLiteStore committed, closed and opened again from its file before every call: each
    call meets the store as a restarted server would. ``fold`` (``FOLD_REVISIONS``): how soon
    it folds what its history forgets into the file's attributes (1: at every commit)."""

    fold: int | None = None

    def __init__(self, limits: Limits | None) -> None:
        self._limits = limits
        self._store = _sqlite(limits)
        self._folding(self._store)
        self.on_commit: Any = None
        self.max_namespaces: int | None = None

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._store, name)
        if not callable(attribute):
            return attribute

        def call(*args: Any) -> Any:
            self._reopen()
            return getattr(self._store, name)(*args)

        return call

    def _reopen(self) -> None:
        old = self._store
        old.commit_now()
        old.close()
        _OPENED.remove(old)
        self._store = store = SQLiteStore(old.path, self._limits)
        self._folding(store)
        _OPENED.append(store)
        assert store.epoch == old.epoch
        store.on_commit, store.max_namespaces = self.on_commit, self.max_namespaces

    def _folding(self, store: SQLiteStore) -> None:
        if self.fold is not None:
            store.fold_revisions = self.fold


class Folding(Reopening):
    """``Reopening``, folding at every commit what the history forgot."""

    fold = 1


def close_stores() -> None:
    """Close every SQLite store made so far."""
    while _OPENED:
        _OPENED.pop().close()


STORES: dict[str, MakeStore] = {
    "memory": MemoryStore,
    "sqlite": _sqlite,
    "sqlite reopened": Reopening,  # type: ignore[dict-item]
    "sqlite reopened, folding": Folding,  # type: ignore[dict-item]
}


class Commits:
    """What ``on_commit`` was told, in order, with each value materialised during the call."""

    def __init__(self, store: Store) -> None:
        self.seen: list[tuple[str, int, dict[str, bytes | None]]] = []
        store.on_commit = lambda key, revision, changes: self.seen.append(
            (key, revision, {name: materialised(value) for name, value in changes.items()})
        )


def replayed(store: Store, key: str, since: int) -> list[tuple[int, str, bytes | None]]:
    """``store.history(key, since)``: (revision, name, value) with values materialised."""
    return [
        (change.revision, change.name, materialised(change.value))
        for change in store.history(key, since)
    ]
