"""The cache invalidations a commit makes (``Dispatcher._push``): which of its names some
connection caches, and the frame that tells each of their readers.

The tables are the dispatcher's: ``tracked``, (key, name) -> the connections that cache it;
``peer_tracked``, the same per connection; ``pushes``, the frames queued per connection.
"""

from __future__ import annotations

from collections.abc import Mapping
from itertools import repeat
from typing import Any

from ..protocol.connection import ServerConnection
from .peer import Peer

__all__ = ["cached_among", "invalidate"]

Tracked = dict[tuple[str, str], set[Peer]]


def cached_among(tracked: Tracked, key: str, changes: Mapping[str, Any]) -> list[str]:
    """The names of ``changes`` (of ``key``) some connection caches, in the changes' order.

    Found by looking the fewer of the two up in the other, in C where the changes are the
    fewer (a change of many names mostly holds none): not by a step per changed name.
    """
    if len(tracked) < len(changes):
        hit = {item for item in tracked if item[0] == key and item[1] in changes}
    else:
        hit = tracked.keys() & zip(repeat(key), changes)
    if not hit:
        return []
    return [name for name in changes if (key, name) in hit]


def invalidate(
    tracked: Tracked,
    peer_tracked: dict[Peer, set[tuple[str, str]]],
    pushes: dict[Peer, list[Any]],
    key: str,
    name: str,
) -> None:
    """Tell the connections that cache ``name`` of ``key`` (if any) that it changed."""
    item = (key, name)
    readers = tracked.get(item)
    if readers:
        frame = ServerConnection.send_invalidation(key, name)
        for reader in readers:  # invalidated once: a reader that gets again re-tracks
            peer_tracked[reader].discard(item)
            pushes.setdefault(reader, []).append(frame)
        del tracked[item]
