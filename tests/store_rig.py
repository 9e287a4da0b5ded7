"""The stores under test, made in one place, and what the store tests read back from them.

``STORES`` makes each store the store tests run against (``make_store`` fixtures are
parametrized over it): a new store joins every store test by joining it. ``Commits`` records
what ``on_commit`` was told, values materialised during the call as the server does;
``replayed`` is ``history`` with its values materialised.
"""

from __future__ import annotations

from collections.abc import Callable

from aionamespace import Limits
from aionamespace.server.stores import MemoryStore, Store, materialised

__all__ = ["STORES", "Commits", "MakeStore", "replayed"]

#: Makes a store with the given limits (None: the defaults).
MakeStore = Callable[[Limits | None], Store]

STORES: dict[str, MakeStore] = {"memory": MemoryStore}


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
