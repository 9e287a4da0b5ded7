"""The interface of a store the server awaits: one that lives outside it (Redis, Valkey).

A ``Store`` (base.py) answers synchronously from the server's memory; a *remote* store keeps
the board elsewhere, shared by any number of servers, so every operation is a round trip. The
server hands it each batch whole and awaits the answers (``apply``): the store sends the batch
in one pipeline, each call atomic on its own (a script), the calls on one namespace applied in
the order given, and the next batch gathers meanwhile. Every word of base.py holds here too:
keys, names and encoded values; revisions dense per namespace; the history's bounds and
``HistoryExpired``; the epoch; ``LimitExceeded`` past ``max_namespaces``.

**Calls.** ``apply`` takes ``(op, args)`` pairs, ``op`` one of ``STORE_CALLS`` with the
arguments ``Store``'s method of that name takes (``"del"`` is ``Store.delete``), and returns,
in order, each call's result as that method returns it, or the exception it would raise (an
instance, not raised: one call's ``KeyError`` must not cost the others their answers). A
failure of the store itself (unreachable, timed out, refused) is ``StoreUnavailable`` for
every call it touched; whether such a call took effect is unknown, as with any lost reply.

**Changes.** After ``apply`` returns, ``on_commit`` has been told every revision the batch
made, in revision order, as ``Store.on_commit`` is (key, revision, changes) — before the
answers are sent, so a writer's own watch events precede its reply as they do in memory.
Revisions made by *other* servers reach ``on_commit`` for the namespaces the server
``follow``\\ s (its watches' and client caches' namespaces), in revision order and without
gaps: a store that misses some (a dropped subscription) replays them from its history, and
when the history no longer reaches them calls ``on_lost(key)`` so that the server can tell
the watchers to resync. Each revision reaches ``on_commit`` once.

**Following.** ``follow(key, since)``: every revision of ``key`` after ``since`` reaches
``on_commit`` (a watch passes the revision its snapshot or replay ended at); ``since=None``:
every revision after the one the store next observes for ``key`` (the revision a read or
write of it in the next ``apply``, or ``history``, sees: the server follows before it sends a
tracked read, in the same batch). A call on a followed key that sees revision R (a read, a
write, ``history``) returns only once every revision up to R was told: the server starts a
watch at R, and a revision up to it told later would reach the watch twice. ``run()`` delivers
the revisions: the server starts it as a helper task when it serves, and it runs as long as
the server serves; without it, nothing of other servers arrives. ``unfollow(key)``: no more
of ``key``.

**Event loops.** A store that works on some of anyio's backends only (redis-py's asyncio
client: asyncio) says which in ``backends``, e.g. ``("asyncio",)``; the server refuses to
serve it on another, with an error saying so, before it starts the store. Without the
attribute, the store works on every backend.

**Epoch.** ``start`` reads the board's epoch (making one for a new board) and refuses a layout
of another version. A store that finds its engine lost data under it (revisions went back, the
engine's replication id changed) starts a new epoch and calls ``on_epoch(epoch)``: the server
drops what it told clients under the old one.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

from .base import Change, Changes, StoreUsage

__all__ = ["STORE_CALLS", "RemoteStore", "StoreCall"]

#: The operations ``apply`` takes, by their protocol names.
STORE_CALLS = frozenset(
    {
        "open",
        "get",
        "set",
        "del",
        "update",
        "setdefault",
        "pop",
        "incr",
        "append",
        "cas",
        "snapshot",
    }
)

#: One call of a batch: (op, args), args as the ``Store`` method of that name takes them.
StoreCall = tuple[str, tuple[Any, ...]]


class RemoteStore(Protocol):
    """What the server needs from a store it awaits (see the module's docstring)."""

    #: Marks a store the server awaits (a ``Store`` has no such attribute).
    remote: bool
    epoch: str
    max_namespaces: int | None
    on_commit: Callable[[str, int, Changes], None] | None
    #: Called with a key whose revisions were missed beyond the history's reach.
    on_lost: Callable[[str], None] | None
    #: Called with the new epoch (``epoch`` already holds it) when the engine lost data.
    on_epoch: Callable[[str], None] | None
    # Optional: ``backends: tuple[str, ...]``, the anyio backends it works on (module's
    # docstring); a Protocol cannot say "optional", so it is read with getattr.
    # Optional: ``in_order = True``, when ``apply`` also takes ``("snapshot_in_order", (key,
    # names))``: ``snapshot``'s result, except that the values may be a list, those of
    # ``names`` in their order, when each is held as bytes and none was asked twice (the
    # dispatcher's path for ``snapshot_packed``, which needs no dict: stores/base.py's
    # ``snapshot_in_order``).
    # Optional: ``apply_now(calls, done) -> bool``, a batch sent without a task, if the store
    # can (the Redis store's: plain reads, or one set or update; redis_rounds.py): False, and
    # nothing sent, if not; else ``done`` is called, from the loop's callback that got the
    # answer, with the results as ``apply`` returns them (what ``apply`` tells ``on_commit``
    # told already), or a coroutine function returning them (the rest of what ``apply``
    # does: call it and await that), or None: nothing ran, serve them with ``apply``.

    async def start(self) -> None: ...  # connect; check the layout; read or make the epoch
    async def apply(self, calls: Sequence[StoreCall]) -> list[Any]: ...
    async def history(self, key: str, since: int) -> list[Change]: ...
    async def keys(self) -> list[str]: ...
    async def count(self) -> int: ...
    async def drop(self, key: str) -> None: ...
    async def usage(self) -> StoreUsage: ...
    def follow(self, key: str, since: int | None = None) -> None: ...  # (module's docstring)
    def unfollow(self, key: str) -> None: ...
    async def run(self) -> None: ...  # delivers other servers' revisions while the server serves
    async def aclose(self) -> None: ...
