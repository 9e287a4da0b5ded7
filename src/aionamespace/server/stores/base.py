"""The interface every store obeys, and the words it uses.

A store maps a namespace *key* to its attributes, each attribute an encoded value (the bytes
``protocol.codec.encode_value`` made). Plain reads and writes never look inside values; only
the atomic read-modify-write operations (``incr``, ``append``, ``cas``) decode the one value
they change.

Every change gets a *revision*: each namespace counts its changes, and a bounded history of
recent changes lets a watcher resume from a revision (the etcd model). When a watcher asks for
a revision the history no longer reaches, ``HistoryExpired`` tells it to resync.

Methods are synchronous: the server applies every frame of a chunk in one go, without awaiting
between them, so each method is atomic and an in-memory store never waits.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import NamedTuple, Protocol

__all__ = ["Change", "Changes", "Store"]


class Change(NamedTuple):
    """One attribute changed at ``revision``: its new encoded value, or None if deleted."""

    key: str
    revision: int
    name: str
    value: bytes | None


#: What one revision changed: name -> new encoded value, or None if deleted.
Changes = Mapping[str, bytes | None]


class Store(Protocol):
    """What the server needs from a store. Keys, names and values arrive validated."""

    #: Called once per revision, in revision order, as it happens: (key, revision, changes).
    #: The server's watch and cache hook; it must not keep ``changes`` beyond the call.
    on_commit: Callable[[str, int, Changes], None] | None
    #: The most namespaces the store holds (None: no bound): an operation that would create one
    #: more raises ``LimitExceeded`` and changes nothing. The server sets it from ``Limits``.
    max_namespaces: int | None

    def open(self, key: str, defaults: Mapping[str, bytes]) -> None: ...
    def get(self, key: str, name: str) -> bytes: ...
    def set(self, key: str, name: str, value: bytes) -> int: ...
    def delete(self, key: str, name: str) -> int: ...
    def snapshot(self, key: str, names: Sequence[str] | None) -> tuple[int, dict[str, bytes]]: ...
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
