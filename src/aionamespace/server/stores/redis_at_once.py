"""The Redis store's batches sent at once, without a task (remote.py's ``apply_now``).

Plain reads (gets, snapshots of names), or one set or update of a namespace the store
registered, whose links are connected (in a cluster, the epoch's read goes to the board's node
and each call to its namespace's: ``submit_each_then``, redis_rounds.py): sent by
``Rounds.read_now`` / ``write_now`` (redis_rounds.py), their replies read in the links'
callbacks. ``done`` is told, from there, the results as ``apply`` returns them, or an awaitable
of them (what ``apply`` does after its rounds that a write needs: a new epoch, its namespace
registered), or None: nothing ran (``NOSCRIPT``, ``MOVED``; a read that is not plain, or whose
node failed), serve them with ``apply``. Anything else (a namespace not yet registered; a
cluster whose slot map is to be read again) is not sent at all.

A followed namespace (redis_follow.py) goes at once too: the callback tells the follower what
``apply`` would (``Follower.own_now``: the write's revision, in order through the same gate
as the messages; ``read_now``: the revision a read saw). Only when that needs a fetch first
(another server's revisions not told yet) is it handed on as an awaitable: ``apply``'s
``_told``, which fetches them, then tells.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from ..._errors import StoreUnavailable
from .redis_calls import Call, prepare
from .remote import StoreCall

if TYPE_CHECKING:
    from .redis import RedisStore

__all__ = ["apply_now"]

#: What is sent at once: plain reads, or one of these writes alone.
_READS = frozenset({"get", "snapshot", "snapshot_in_order"})
_WRITES = frozenset({"set", "update"})


def apply_now(store: RedisStore, calls: Sequence[StoreCall], done: Callable[[Any], None]) -> bool:
    """Send the calls at once, if they are a batch to send so (module docstring): False, and
    nothing sent, if not."""
    if len(calls) == 1 and calls[0][0] in _WRITES:
        op, args = calls[0]
        if args[0] not in store._registered:
            return False
        write = prepare(op, args, store._guesses)
        return store._rounds.write_now(write, functools.partial(_written, store, write, done))
    prepared = []
    for op, args in calls:
        if op not in _READS:
            return False
        prepared.append(prepare(op, args, store._guesses))
    return store._rounds.read_now(prepared, functools.partial(_read, store, done))


def _read(store: RedisStore, done: Callable[[Any], None], calls: list[Call] | None) -> None:
    if calls is None:
        done(None)
        return
    follower = store._follower
    behind = False
    for call in calls:  # (as apply's _told: what a read saw of a followed key is told first)
        if call.observed >= 0 and call.key in follower:
            behind = not follower.read_now(call.key, call.observed) or behind
    if behind:
        done(functools.partial(_told, store, calls))
    else:
        done([call.result for call in calls])


async def _told(store: RedisStore, calls: list[Call]) -> list[Any]:
    """What ``apply`` does after its rounds, for reads of a followed key told less than they
    saw (its history fetched first: a watch started at the revision read sees none twice)."""
    await store._told(calls)
    return [call.result for call in calls]


def _written(
    store: RedisStore,
    call: Call,
    done: Callable[[Any], None],
    outcome: tuple[str | None, bool] | None,
) -> None:
    if outcome is None:
        done(None)
        return
    epoch, made = outcome
    if epoch != store.epoch or made:
        # (what is left to do, not begun: a coroutine made here would warn, never awaited, if
        # the server stopped before the task that awaits it ran)
        done(functools.partial(_after, store, call, epoch, made))
        return
    if call.changes is not None:
        if call.key in store._follower:  # (as apply's _told, unless a fetch is due first)
            if not store._follower.own_now(call.key, call.revision, call.changes):
                done(functools.partial(_after, store, call, epoch, made))
                return
        elif store.on_commit is not None:
            store.on_commit(call.key, call.revision, call.changes)
    done([call.result])


async def _after(store: RedisStore, call: Call, epoch: str | None, made: bool) -> list[Any]:
    """What ``apply`` does after its rounds, for a write sent at once."""
    try:
        if epoch != store.epoch or made:
            async with store._guard():
                if epoch != store.epoch:
                    await store._new_epoch()
                if made:  # (made without the store's check: dropped, or flushed)
                    await store._client.sadd(store._registry, call.key)
                    store._registered.add(call.key)
    except StoreUnavailable:
        pass  # (the call is done: its result stands, as in apply)
    await store._told([call])
    return [call.result]
