"""A ``Dispatcher`` with its connections in memory, and the frames it answers, built to compare.

``Rig`` is one dispatcher over a ``MemoryStore`` with a ``ManualClock`` for its timers (lock
timeouts, the grace period of unused anonymous namespaces); ``Rig.connect`` gives a
``MemoryPeer`` past the hello, and ``Rig.send`` applies requests as one batch, as a server shell
does with the bytes of one read, returning the answer's frames.
``ok``, ``failed``, ``push`` and ``invalidation`` build the frames a test expects.
"""

from __future__ import annotations

from typing import Any

import msgpack

from aionamespace.protocol.codec import encode_value
from aionamespace.protocol.connection import PROTOCOL_NAME, PROTOCOL_VERSION, ServerConnection
from aionamespace.protocol.events import PUSH_EVENT, PUSH_INVALIDATE, REPLY_ERROR, REPLY_OK
from aionamespace.protocol.limits import Limits
from aionamespace.protocol.pieces import Output, unfold
from aionamespace.server.dispatch import Dispatcher
from aionamespace.server.stores import MemoryStore
from manual_clock import ManualClock
from memory_peer import MemoryPeer, unpack_all

HELLO = msgpack.packb({"protocol": PROTOCOL_NAME, "version": PROTOCOL_VERSION})
ONE, TWO, THREE = encode_value(1), encode_value(2), encode_value(3)  # encoded values to set


def ok(request_id: int, result: Any = None) -> list[Any]:
    return [request_id, REPLY_OK, result]


def failed(request_id: int, error_type: str, message: str) -> list[Any]:
    return [request_id, REPLY_ERROR, error_type, message]


def push(watch_id: int, revision: int, name: str, value: bytes | None) -> list[Any]:
    return [0, PUSH_EVENT, watch_id, revision, name, value]


def invalidation(key: str, name: str) -> list[Any]:
    return [0, PUSH_INVALIDATE, key, name]


def joined(outputs: list[Output]) -> bytes:
    """What a connection sends of ``outputs``: every piece, Producers made whole."""
    return b"".join(piece for output in outputs for piece in unfold(output))


class Rig:
    """One dispatcher over a store, its connections, and the clock of its lock timeouts."""

    def __init__(self, store: MemoryStore | None = None, limits: Limits | None = None) -> None:
        self.store = store if store is not None else MemoryStore()
        self.clock = ManualClock()
        self.dispatcher = Dispatcher(self.store, self.clock.call_later, limits)

    def connect(self, reads: bool = True) -> MemoryPeer:
        """A connection past the hello (``reads=False``: its client never reads)."""
        peer = MemoryPeer(ServerConnection(), reads)
        (hello,) = unpack_all(
            joined(self.dispatcher.respond(peer, peer.protocol.receive_data(HELLO)))
        )
        assert hello["version"] == PROTOCOL_VERSION
        return peer

    def send(self, peer: MemoryPeer, *requests: list[Any]) -> list[Any]:
        """Apply ``requests`` as one batch (as if they arrived in one read): its answer's frames."""
        return self.send_bytes(peer, b"".join(msgpack.packb(request) for request in requests))

    def send_bytes(self, peer: MemoryPeer, data: bytes) -> list[Any]:
        events = peer.protocol.receive_data(data)
        return unpack_all(joined(self.dispatcher.respond(peer, events)))

    def watch(self, peer: MemoryPeer, key: str, names: list[str] | None = None) -> int:
        """Start a watch from now on; its id."""
        ((_, status, (watch_id, _, _)),) = self.send(peer, [99, "watch", key, names, None])
        assert status == REPLY_OK
        return int(watch_id)
