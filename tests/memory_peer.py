"""A server connection held in memory: the ``Peer`` a ``Dispatcher`` answers and writes to.

The server's shells give the dispatcher sockets; this gives it a list. What the dispatcher
writes outside a batch's answer (pushes, deferred replies, a refusal) is kept write by write,
so a test can say how many writes there were as well as which frames. A peer that ``reads`` has
nothing left unsent; one that does not keeps every byte written in its backlog, as a client
that never reads its socket would. ``on_drop`` runs when the dispatcher drops the peer (the
asyncio shell's ``drop`` tells the dispatcher at once that the connection is gone).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgpack

from aionamespace.protocol.connection import ServerConnection
from aionamespace.protocol.pieces import Output, unfold

__all__ = ["MemoryPeer", "unpack_all"]


def unpack_all(data: bytes) -> list[Any]:
    """Every frame in ``data``, which must end on a frame boundary."""
    unpacker = msgpack.Unpacker(raw=False, strict_map_key=False)
    unpacker.feed(data)
    frames = list(unpacker)
    assert unpacker.tell() == len(data), "bytes left over after the last whole frame"
    return frames


class MemoryPeer:
    """Implements ``aionamespace.server.peer.Peer``: protocol, write, write_all, backlog,
    close, drop. A Producer written is made whole at once: ``writes`` holds bytes."""

    def __init__(self, protocol: ServerConnection, reads: bool = True) -> None:
        self.protocol = protocol
        self.reads = reads
        self.writes: list[bytes] = []
        self.closed = False
        self.dropped = False
        self.on_drop: Callable[[], None] | None = None

    def write(self, data: Output) -> None:
        self.writes.append(b"".join(unfold(data)))

    def write_all(self, data: list[Output]) -> None:
        self.writes.append(b"".join(piece for output in data for piece in unfold(output)))

    def backlog(self) -> int:
        return 0 if self.reads else sum(map(len, self.writes))

    def close(self) -> None:
        self.closed = True

    def drop(self) -> None:
        self.dropped = True
        if self.on_drop is not None:
            self.on_drop()

    def written(self) -> list[Any]:
        """The frames of every write so far, in order."""
        return unpack_all(b"".join(self.writes))
