"""The bounds both ends of a connection keep: one frozen dataclass of constructor arguments."""

from __future__ import annotations

import dataclasses
from typing import Any, TypeVar

__all__ = ["Limits", "described"]

_T = TypeVar("_T", int, float)


def described(default: _T, description: str) -> Any:
    """A field of ``Limits`` with its one-line description (``serve``'s flags show it)."""
    return dataclasses.field(default=default, metadata={"description": description})


@dataclasses.dataclass(frozen=True)
class Limits:
    """Bounds both ends enforce; each is a constructor argument, never a buried constant.

    ``max_frame_bytes`` and ``max_name_length`` apply on both sides, and so does
    ``handshake_timeout``: the seconds a new connection has to say hello and authenticate (a
    proxy whose server has not greeted it by then raises ConnectionLost). The proxies alone use
    ``call_timeout``: the seconds a call waits for a server that sends nothing at all before
    they take it for frozen (ServerTimeout; None: wait for ever), and the sync proxy alone
    ``reply_poll``: the seconds a call reads its socket without blocking, once its request is
    sent, before it sleeps until the reply comes (0: it sleeps at once; client/busypoll.py says
    why a short poll pays, and when it stops polling by itself). The async proxy alone
    uses ``max_queued_writes`` (``ns.x = v`` raises WriteQueueFull beyond that many writes not
    yet acknowledged). The server alone uses:

    * ``max_connections``: more are refused at the hello;
    * ``max_handshakes``: the most connections still in their handshake; beyond it the oldest
      such peer is dropped, so peers that never authenticate cannot take the slots of those
      that do;
    * ``max_namespaces``: a request that would create one more raises LimitExceeded;
    * ``anonymous_grace``: the seconds an anonymous namespace is kept once no connection uses
      it, for proxies in transit to reach it (pickled into a queue, or into a child process
      that has not started yet), after which it is freed (README, "Semantics");
    * two bounds on the bytes waiting to be sent to one connection (its *backlog*): past
      ``max_reply_backlog_bytes`` it stops applying that connection's requests until the
      client has read enough (replies and watch replays wait their turn: backpressure), and
      past ``max_push_backlog_bytes`` a push or deferred reply, which cannot wait, drops the
      connection instead (ConnectionLost);
    * ``max_keys_per_hash``: it refuses a value holding a set, frozenset or map in which more
      of the items (keys) than that share one CPython hash value, which any Python reader
      would take quadratic time to build (docs/PROTOCOL.md 9.3).

    The server's store keeps, per namespace, a history of at most ``max_history_revisions``
    revisions whose sizes (values' bytes, ``server/stores/base.py``) sum to at most
    ``max_history_bytes``; a watch resuming from before it gets HistoryExpired. Until a
    connection has said hello and authenticated, each frame it sends may be at most
    ``max_handshake_bytes`` long (and ``max_frame_bytes``) and nest at most
    ``max_handshake_depth`` arrays and maps: that is all an unauthenticated peer can make the
    server hold.
    """

    max_frame_bytes: int = described(
        64 * 1024 * 1024, "the longest frame either end accepts, in bytes: it bounds a value's size"
    )
    max_name_length: int = described(256, "the longest attribute or namespace name")
    max_keys_per_hash: int = described(
        8, "the most keys of one set, frozenset or dict that may share a hash"
    )
    max_connections: int = described(10_000, "connections the server holds at once")
    # what a peer may send before its handshake completes
    max_handshake_bytes: int = described(
        4096, "the longest frame a connection may send before it has authenticated"
    )
    max_handshake_depth: int = described(4, "how deeply arrays and maps may nest in such a frame")
    handshake_timeout: float = described(
        10.0, "seconds a new connection has to say hello and authenticate"
    )
    max_queued_writes: int = described(100_000, "an AsyncNamespace's writes not yet acknowledged")
    # the server's history of changes, per namespace
    max_history_revisions: int = described(
        10_000, "revisions of each namespace kept for watches to resume from"
    )
    max_history_bytes: int = described(
        64 * 1024 * 1024, "bytes of values those revisions may hold, per namespace"
    )
    # what may wait to be sent to one connection
    max_reply_backlog_bytes: int = described(
        1024 * 1024, "unsent bytes past which a connection's requests wait (backpressure)"
    )
    max_push_backlog_bytes: int = described(
        16 * 1024 * 1024, "unsent bytes past which a push drops the connection"
    )
    # connections in their handshake, namespaces, and how long an unused anonymous one is kept
    max_handshakes: int = described(
        1_000, "connections in their handshake; beyond, the oldest is dropped"
    )
    max_namespaces: int = described(100_000, "namespaces the server holds")
    anonymous_grace: float = described(
        300.0, "seconds an unused anonymous namespace is kept before it is freed"
    )
    # how long a proxy waits for a server that sends nothing before taking it for frozen
    call_timeout: float | None = described(
        10.0, "seconds a proxy waits for a silent server before ConnectionLost (none: for ever)"
    )
    # how long a sync proxy polls its socket for a reply before it sleeps (client/busypoll.py)
    reply_poll: float = described(
        200e-6, "seconds a sync proxy polls for its reply before it sleeps (0: never polls)"
    )

    def check_name(self, name: object) -> str | None:
        """Why ``name`` cannot name an attribute or a namespace, or None if it can."""
        if type(name) is not str:
            return f"names must be str, not {type(name).__name__}"
        if not name:
            return "names must not be empty"
        if len(name) > self.max_name_length:
            return f"name longer than {self.max_name_length} characters"
        return None
