"""The interface every store obeys, and the words it uses.

A store maps a namespace *key* to its attributes, each attribute an encoded value (the bytes
``protocol.codec.encode_value`` made). Plain reads and writes never look inside values; only
the atomic read-modify-write operations (``incr``, ``append``, ``cas``) decode the one value
they change. Reads (``get``, ``snapshot``, ``setdefault``, ``pop``) return encoded bytes,
whatever the store keeps; changes told to ``on_commit`` and replayed by ``history`` may carry
a ``LazyValue`` instead, whose ``materialise()`` makes those bytes when someone needs them.

Every change gets a *revision*: each namespace counts its changes, and a bounded history of
recent changes lets a watcher resume from a revision (the etcd model). When a watcher asks for
a revision the history no longer reaches, ``HistoryExpired`` tells it to resync.

**The history's bounds.** A store is made with a ``Limits`` and keeps, per namespace, the most
recent revisions that fit both ``max_history_revisions`` (how many) and ``max_history_bytes``
(their sizes summed), forgetting the oldest first and each revision whole, never part of one.
The *size* of a revision is, for each name it changed, ``CHANGE_OVERHEAD_BYTES`` plus:

* the length of the new encoded value (a set, an update, an incr, a cas, an open's default);
* nothing more for a deletion (del, pop);
* for an append, the bytes of the items it appended, not of the whole list: a store keeps an
  appended list so that its earlier versions share the current one's items;
* when the change replaces or deletes a list that appends grew, and the history still holds
  one of those appends, that list's bytes too (its elements', without the array header): the
  history keeps the list alive to replay them.

A revision bigger than ``max_history_bytes`` on its own is not kept (only a watch from the
current revision is served then). A store forgets no more than the bounds require, so what a
watcher can resume from depends only on the changes made and the bounds.

**Replays.** ``history`` replays every change after ``since``, in order, each with the value
the name held right after it: for an append, the whole list as it was at that revision
(materialised only when asked, so a store need not build every version up front).

Methods are synchronous: the server applies every frame of a chunk in one go, without awaiting
between them, so each method is atomic and an in-memory store never waits.

**Durability.** A store whose changes must be written somewhere before they count (``durable``:
the SQLite store) holds each change until ``await commit()`` has written it, together with
every other change made since the last commit: one transaction per commit, however many
batches it gathers (or ``commit_inline()``, the same on the caller's thread when that is cheap).
It calls ``on_change`` before the first change after a commit, so that the
server can hold back what it sends from then on (replies, pushes) until the commit that holds
the change is done (server/durability.py). The in-memory store is not durable: the server never
waits for it.

**Epochs.** Each store's data has an *epoch*, a random id made when the data was created (for
the in-memory store, when the store is made): revisions count within one epoch, and a revision
of another epoch means nothing here.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import NamedTuple, Protocol

from ...protocol.pieces import LazyValue, materialised

__all__ = [
    "CHANGE_OVERHEAD_BYTES",
    "Change",
    "Changes",
    "LazyValue",
    "Store",
    "StoreUsage",
    "Value",
    "materialised",
]

#: What each changed name adds to its revision's size, beyond its value's bytes: the history's
#: own bookkeeping, so that revisions of many small changes are bounded by bytes too.
CHANGE_OVERHEAD_BYTES = 64


#: A value as a change carries it: its encoding, or a LazyValue that makes it.
Value = bytes | LazyValue


class Change(NamedTuple):
    """One attribute changed at ``revision``: its new value, or None if deleted."""

    key: str
    revision: int
    name: str
    value: Value | None


#: What one revision changed: name -> new value, or None if deleted.
Changes = Mapping[str, Value | None]


class StoreUsage(NamedTuple):
    """What a store holds (the ``info`` operation's figures): its namespaces, their names, the
    bytes of their values (encoded), and their histories (revisions and sizes, summed, and the
    largest one's, which ``max_history_revisions`` and ``max_history_bytes`` bound)."""

    namespaces: int
    names: int
    value_bytes: int
    history_revisions: int
    history_bytes: int
    largest_history_revisions: int
    largest_history_bytes: int


class Store(Protocol):
    """What the server needs from a store. Keys, names and values arrive validated."""

    #: Called once per revision, in revision order, as it happens: (key, revision, changes).
    #: The server's watch and cache hook; it must not keep ``changes`` beyond the call. A
    #: LazyValue in them materialises the value as of that revision (during the call).
    on_commit: Callable[[str, int, Changes], None] | None
    #: The most namespaces the store holds (None: no bound): an operation that would create one
    #: more raises ``LimitExceeded`` and changes nothing. The server sets it from ``Limits``.
    max_namespaces: int | None
    #: The epoch of the store's data (see the module's docstring).
    epoch: str
    #: Whether the server must ``await commit()`` before it sends what follows a change.
    durable: bool
    #: A durable store calls it before the first change after a commit (the server's hook).
    on_change: Callable[[], None] | None

    def open(self, key: str, defaults: Mapping[str, bytes]) -> None: ...
    def get(self, key: str, name: str) -> bytes: ...
    def set(self, key: str, name: str, value: bytes) -> int: ...
    def delete(self, key: str, name: str) -> int: ...
    def snapshot(self, key: str, names: Sequence[str] | None) -> tuple[int, dict[str, bytes]]: ...
    # Optional, not part of the protocol: ``snapshot_in_order(key, names)``, the revision and
    # the values of ``names`` as a list in their order, or None unless each is held as bytes
    # and none asked twice (the dispatcher's fast path for ``snapshot_packed``; memory.py).
    def update(self, key: str, values: Mapping[str, bytes]) -> int: ...
    def setdefault(self, key: str, name: str, value: bytes) -> bytes: ...
    def pop(self, key: str, name: str) -> bytes: ...
    def incr(self, key: str, name: str, by: bytes) -> bytes: ...
    def append(self, key: str, name: str, items: Sequence[bytes]) -> int: ...
    def cas(self, key: str, name: str, expected: bytes, new: bytes) -> bool: ...
    def history(self, key: str, since: int) -> list[Change]: ...
    def keys(self) -> list[str]: ...
    def count(self) -> int: ...  # how many namespaces it holds
    def drop(self, key: str) -> None: ...  # forget a namespace (the server frees anonymous ones)
    def usage(self) -> StoreUsage: ...  # what it holds, counted when asked (``info``)
    async def commit(self) -> None: ...  # write every change made since the last commit
    #: ``commit`` now, on this thread, if the store can do it cheaply (a small commit without
    #: fsync; with ``lone``, the changes of a lone writer's batch, also one with fsync: see
    #: server/durability.py); False: not done, ``await commit()`` must (the server calls it
    #: after each batch).
    def commit_inline(self, *, lone: bool = False) -> bool: ...
    def close(self) -> None: ...  # release what the store holds (files); it is not used again
