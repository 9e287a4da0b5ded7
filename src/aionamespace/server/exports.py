"""Exports: a consistent copy of the whole board, read by a client one namespace at a time.

``export`` freezes the board for the connection that asks: every namespace's revision and
attributes as they are at that instant (the values referenced, never copied), and answers the
epoch and the namespaces' keys; ``export_read`` then answers one namespace of that frozen copy
per request, as long as the client takes to read them, while the board goes on changing. A
connection holds one export at a time: a new ``export`` replaces it, and it is dropped with
the connection, or once every namespace has been read. ``python -m aionamespace backup`` is
its client: it writes what it reads into a new data file.
"""

from __future__ import annotations

from ..protocol.connection import ServerConnection
from ..protocol.pieces import Output, values_reply
from .peer import Peer
from .stores import Store

__all__ = ["Exports"]


class Exports:
    """The exports the connections of one server are reading."""

    def __init__(self, store: Store | None) -> None:  # (None: a store the server awaits)
        self.store = store
        self._frozen: dict[Peer, dict[str, tuple[int, dict[str, bytes]]]] = {}

    def begin(self, peer: Peer, request_id: int) -> bytes:
        """Freeze the board for ``peer``: the reply is ``[epoch, [key, ...]]``."""
        store = self.store
        assert store is not None
        frozen = {key: store.snapshot(key, None) for key in store.keys()}
        return self.hold(peer, request_id, store.epoch, frozen)

    def hold(
        self,
        peer: Peer,
        request_id: int,
        epoch: str,
        frozen: dict[str, tuple[int, dict[str, bytes]]],
    ) -> bytes:
        """Keep ``frozen`` (key -> its snapshot) as ``peer``'s export: the reply to ``export``.
        (A store the server awaits freezes the board itself, then hands it here.)"""
        self._frozen[peer] = frozen
        if not frozen:
            del self._frozen[peer]
        return ServerConnection.send_result(request_id, [epoch, list(frozen)])

    def read(self, peer: Peer, request_id: int, key: str) -> Output:
        """One namespace of ``peer``'s export: ``[revision, {name: value}]``."""
        frozen = self._frozen.get(peer)
        if frozen is None or key not in frozen:
            raise KeyError(
                f"{key!r} is not in this connection's export: send export first, and read each "
                "of the keys it answered once"
            )
        revision, values = frozen.pop(key)
        if not frozen:
            del self._frozen[peer]
        budget = peer.protocol.limits.max_reply_backlog_bytes
        return values_reply(request_id, (revision,), values, budget)

    def connection_lost(self, peer: Peer) -> None:
        self._frozen.pop(peer, None)
