"""What the dispatcher needs of a connection: the seam between dispatch and the I/O shells."""

from __future__ import annotations

from typing import Protocol

from ..protocol.connection import ServerConnection
from ..protocol.pieces import Output

__all__ = ["Peer"]


class Peer(Protocol):
    """What the dispatcher needs of a connection."""

    protocol: ServerConnection

    def write(self, data: Output) -> None:
        """Queue output for this connection without blocking."""

    def write_all(self, data: list[Output]) -> None:
        """Queue outputs for this connection without blocking, in order."""

    def backlog(self) -> int:
        """Bytes queued for this connection and not yet sent."""

    def close(self) -> None:
        """Close after sending what is queued."""

    def drop(self) -> None:
        """Close now, whatever is still queued (a peer that does not read)."""
