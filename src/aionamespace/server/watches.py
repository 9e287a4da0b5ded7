"""The watches of one server: which connection watches which namespace, and which names.

``Dispatcher`` reads ``by_key`` itself on every commit (``_committed``, ``_push``): the table
is kept in plain dicts for that, and this module does the rest (ids, starting, ending).
"""

from __future__ import annotations

from typing import Any

from ..protocol.pieces import event_head
from .peer import Peer

__all__ = ["NO_WATCHES", "Watch", "WatchTable"]

NO_WATCHES: dict[int, Any] = {}


class Watch:
    __slots__ = ("head", "id", "names", "peer")

    def __init__(self, watch_id: int, peer: Peer, names: frozenset[str] | None) -> None:
        self.id, self.peer, self.names = watch_id, peer, names
        self.head = event_head(watch_id)  # every push of this watch starts so


class WatchTable:
    """Every watch, by namespace key and by connection."""

    def __init__(self) -> None:
        self.by_key: dict[str, dict[int, Watch]] = {}  # namespace key -> watch id -> watch
        self._by_peer: dict[Peer, dict[int, str]] = {}  # peer -> watch id -> key
        self._last_id = 0

    def add(self, peer: Peer, key: str, names: frozenset[str] | None) -> Watch:
        self._last_id += 1
        watch = Watch(self._last_id, peer, names)
        self.by_key.setdefault(key, {})[watch.id] = watch
        self._by_peer.setdefault(peer, {})[watch.id] = key
        return watch

    def remove(self, peer: Peer, watch_id: int) -> bool:
        """End one of ``peer``'s watches: whether it had it."""
        key = self._by_peer.get(peer, {}).pop(watch_id, None)
        if key is None:
            return False
        self._forget(key, watch_id)
        return True

    def connection_lost(self, peer: Peer) -> None:
        for watch_id, key in self._by_peer.pop(peer, {}).items():
            self._forget(key, watch_id)

    def key_of(self, peer: Peer, watch_id: int) -> str | None:
        """The namespace one of ``peer``'s watches watches (None: no such watch)."""
        return self._by_peer.get(peer, {}).get(watch_id)

    def keys_of(self, peer: Peer) -> set[str]:
        """The namespaces ``peer`` watches."""
        return set(self._by_peer.get(peer, {}).values())

    def count(self) -> int:
        return sum(map(len, self.by_key.values()))

    def _forget(self, key: str, watch_id: int) -> None:
        watches = self.by_key.get(key)
        if watches is not None:
            watches.pop(watch_id, None)
            if not watches:
                del self.by_key[key]
