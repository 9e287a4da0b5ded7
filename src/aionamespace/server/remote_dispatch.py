"""Applying requests to a store the server awaits (stores/remote.py): a batch in rounds.

``Dispatcher.respond_some`` applies a batch without awaiting; over a ``RemoteStore`` each store
call is a round trip, so ``RemoteDispatcher.respond_awaiting`` walks the batch in request
order and gathers consecutive store calls (``open``, ``get``, ``set``, ``del``, ``update``,
``setdefault``, ``pop``, ``incr``, ``append``, ``cas``, ``snapshot``, ``dump``, a tracked
``get``, a ``watch`` from now) into one ``apply``: one round trip for all of them. What is not
a store call is served in its place between those rounds: ``ping``, ``track`` and
``export_read`` at once; ``keys``, ``info``, ``export`` and a ``watch`` with ``since`` by
awaiting the store themselves, and ``unwatch``, ``acquire`` and ``release`` (whose effects
others see) once the calls before them are applied. The replies keep request order and go out
in one write, followed by what arose for the connection meanwhile (watch pushes,
invalidations, deferred replies: ``FeedDispatcher._held``).

Every synchronous step runs as a batch of the ``Dispatcher`` does (``_section``): what it
gives rise to for other connections is sent at its end. A store call's result comes back as
its reply, or as the exception the store gave for it (``StoreUnavailable`` when the store did
not answer: that call's error reply; the connection goes on). A connection that goes away
while its batch is in the store gets nothing more: the batch stops at the next round.

What a store the server awaits cannot give is said where it matters: ``export`` freezes each
namespace as one read, the board as a sequence of them (not one instant); the locks are this
server's ``LockTable`` unless the store shares them. The seam for locks shared by every server
over the store is the ``locks`` argument: a table with ``LockTable``'s methods (``Locks``,
locks.py) goes in its place, answering an ``acquire`` through its ``grant`` callback whenever
the store says (as a timer does, outside any batch), and handing a lock over when its holder's
connection is lost. The server passes the one a store makes (``lock_table``: a RedisStore's is
stores/redis_locks.py) and runs its ``run`` among its own tasks.

**Anonymous namespaces.** Alone over its store, the server keeps them as over any store
(anonymous.py). A store whose servers share them (``anonymous_registry``: a RedisStore's is
stores/redis_anonymous.py) gives the ``registry`` argument: a request naming an anonymous key
that neither its connection nor this server uses yet then waits, the store calls before it
applied, for one registry call that asks for every such key of the batch (remote_anonymous.py).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any, cast

from .._errors import ConnectionLost, StoreUnavailable
from ..protocol.connection import BadRequest, Hello, Refusal, Request
from ..protocol.limits import Limits
from ..protocol.pieces import Output, Producer, list_reply, packed_values_reply, values_reply
from .anonymous import AnonymousNamespaces
from .dispatch import Dispatcher, ReplyData
from .info import anonymous_count
from .locks import Locks
from .outbox import apart
from .peer import Peer
from .remote_anonymous import MakeRegistry, SharingDispatcher, Unadmitted
from .remote_feed import EXPECTED_ERRORS, Gone
from .stores import Store
from .stores.remote import STORE_CALLS, RemoteStore, StoreCall
from .timers import CallLater

__all__ = ["MAX_CALLS_PER_APPLY", "RemoteDispatcher"]

logger = logging.getLogger("aionamespace.server")

#: The most store calls one ``apply`` carries: what a batch's replies may hold at once beyond
#: the reply budget is bounded by their number (their sizes are known once they are back).
MAX_CALLS_PER_APPLY = 512

#: Ops served in their place without the store.
_AT_ONCE = frozenset({"ping", "track", "export_read"})
#: Ops served once the store calls before them are applied (awaiting the store or not).
_IN_TURN = frozenset({"keys", "info", "export", "unwatch", "acquire", "release"})

#: Spawns a background task (the server's task group's ``start_soon``).
Spawn = Callable[..., object]


class _Round:
    """Store calls gathered for one ``apply``: each with its reply's place and what makes the
    reply of the call's result."""

    __slots__ = ("calls", "finish")

    def __init__(self) -> None:
        self.calls: list[StoreCall] = []
        self.finish: list[tuple[int, Callable[[Any], ReplyData]]] = []


class RemoteDispatcher(SharingDispatcher):
    """The op layer over a ``RemoteStore``, shared by all connections (module docstring)."""

    def __init__(
        self,
        store: RemoteStore,
        call_later: CallLater,
        limits: Limits | None = None,
        locks: Locks | None = None,
        registry: MakeRegistry | None = None,
    ) -> None:
        #: Starts background tasks (anonymous namespaces' drops); the server sets it.
        self.spawn: Spawn | None = None
        self._share(registry)
        # The base's own store reads are never called here: every one goes through ``apply``.
        super().__init__(cast(Store, store), call_later, limits)
        self._feed_from(store)
        #: The store call of a ``snapshot_packed``: one that may answer with a list.
        self._snapshot_in_order = (
            "snapshot_in_order" if getattr(store, "in_order", False) else "snapshot"
        )
        if locks is not None:  # the seam of a lock table shared through the store
            self.locks = locks

    def _store_operations(self, store: Store) -> dict[str, Callable[..., Any]]:
        return {"ping": lambda: None}

    def _anonymous_namespaces(self, call_later: CallLater, grace: float) -> AnonymousNamespaces:
        shared = self._shared_anonymous(grace)
        if shared is not None:
            return shared
        # The request's own ``open`` creates it; drops are awaited in the background. (Only
        # this server's: another's anonymous namespaces in a shared store are its own.)
        return AnonymousNamespaces(call_later, grace, create=None, drop=self._drop_later)

    def _drop_later(self, key: str) -> None:
        if self.spawn is None:  # not serving: tried again after another grace period
            self.anonymous.free_later(key)
            return
        self.spawn(self._drop, key)

    async def _drop(self, key: str) -> None:
        try:
            await self.remote.drop(key)
        except Exception as exc:
            logger.warning(
                "could not free the anonymous namespace %r (%r): trying again in %g seconds",
                key,
                exc,
                self.anonymous.grace,
            )
            self.anonymous.free_later(key)

    # ------------------------------------------------------------------ a batch

    async def respond_awaiting(
        self, peer: Peer, events: list[Hello | Request | BadRequest | Refusal], budget: float
    ) -> tuple[list[Output], int]:
        """Apply events in order, awaiting the store, until the answers pass ``budget``
        bytes: (answers, applied), as ``Dispatcher.respond_some`` returns them."""
        # (a batch sent at once that came back to this path left what was held for it)
        held = self._held.setdefault(peer, [])
        replies: list[ReplyData] = []
        round_ = _Round()
        applied = size = 0
        failed: dict[str, StoreUnavailable] = {}  # anonymous keys the registry failed on
        try:
            while applied < len(events) and size <= budget:
                unadmitted = False
                with self._section(peer):
                    while applied < len(events) and len(round_.calls) < MAX_CALLS_PER_APPLY:
                        event = events[applied]
                        if (type(event) is Request and event.op in _IN_TURN) or _since(event):
                            break
                        if not self._plan(peer, event, round_, replies, failed):
                            unadmitted = True
                            break
                        applied += 1
                size += await self._round(peer, round_, replies)
                if unadmitted:  # the registry first, then the request again
                    await self._ask_registry(peer, events, applied, failed)
                    continue
                if applied < len(events) and size <= budget:
                    event = events[applied]
                    if type(event) is Request and (event.op in _IN_TURN or _since(event)):
                        reply: ReplyData
                        if self._asks(peer, event):
                            failure = failed.get(event.args[0])
                            if failure is None:
                                await self._ask_registry(peer, events, applied, failed)
                                continue
                            self.requests += 1
                            reply = peer.protocol.send_error(event.id, failure)
                        else:
                            reply = await self._in_turn(peer, event)
                        replies.append(reply)
                        applied += 1
                        size += _size(reply)
        except Gone:
            return [], applied
        finally:
            if self._held.get(peer) is held:
                del self._held[peer]
        if held and peer.backlog() > peer.protocol.limits.max_push_backlog_bytes:
            Dispatcher._write(self, peer, held)  # a peer that does not read: refused, dropped
            return [], applied
        return _joined(replies, held, type(events[applied - 1]) is Refusal), applied

    def _plan(
        self,
        peer: Peer,
        event: Hello | Request | BadRequest | Refusal,
        round_: _Round,
        replies: list[ReplyData],
        failed: dict[str, StoreUnavailable],
    ) -> bool:
        """Answer an event at once, or add its store call to the round (its reply's place
        kept, filled when the round is back); False: not yet, its anonymous key needs the
        registry first (``_ask_registry``)."""
        if type(event) is not Request:
            self.requests += 1
            replies.append(self._apply(peer, event))
            return True
        request_id, op, args = event.id, event.op, event.args
        if op in _AT_ONCE:
            if op == "export_read" and self._asks(peer, event):
                exc = failed.get(args[0])
                if exc is None:
                    return False
                replies.append(peer.protocol.send_error(request_id, exc))
            else:
                replies.append(self.answer(peer, request_id, op, args))
            self.requests += 1
            return True
        try:
            created = self._admit(peer, op, args[0])
            call, finish = self._call(peer, request_id, op, args, created)
        except EXPECTED_ERRORS as exc:
            self.requests += 1
            replies.append(peer.protocol.send_error(request_id, exc))
            return True
        except Unadmitted:
            failure = failed.get(args[0])
            if failure is None:
                return False
            self.requests += 1
            replies.append(peer.protocol.send_error(request_id, failure))
            return True
        self.requests += 1
        round_.finish.append((len(replies), finish))
        round_.calls.append(call)
        replies.append(b"")
        return True

    def _call(
        self, peer: Peer, request_id: int, op: str, args: tuple[Any, ...], created: str | None
    ) -> tuple[StoreCall, Callable[[Any], ReplyData]]:
        """The store call a request makes, and what makes its reply of the call's result (or
        of the exception it ended with)."""
        protocol, budget = peer.protocol, peer.protocol.limits.max_reply_backlog_bytes
        make: Callable[[Any], ReplyData]
        if op == "get":
            key, name = args
            if peer in self._tracking:  # read with its revision: see remote_feed.py
                arrivals = self._start(key)
                read = functools.partial(self._tracked_read, peer, request_id, key, name, arrivals)
                return ("snapshot", (key, [name])), read
            call: StoreCall = ("get", args)
            make = functools.partial(protocol.send_value, request_id)
        elif op == "snapshot":
            call = ("snapshot", args)
            make = lambda result: values_reply(request_id, (result[0],), result[1], budget)  # noqa: E731
        elif op == "snapshot_packed":
            call = (self._snapshot_in_order, args)
            make = lambda result: packed_values_reply(  # noqa: E731
                request_id, result[0], args[1], result[1], budget
            )
        elif op == "dump":
            call = ("snapshot", (args[0], None))
            make = lambda result: values_reply(request_id, (), result[1], budget)  # noqa: E731
        elif op == "watch":  # from now: the snapshot it starts at, then what follows
            key, names, _ = args
            arrivals = self._start(key)
            start = functools.partial(self._watch_started, peer, request_id, key, names, arrivals)
            return ("snapshot", (key, names)), start
        else:
            assert op in STORE_CALLS, op
            call = (op, args)
            make = functools.partial(protocol.send_result, request_id)
        return call, functools.partial(self._reply, peer, request_id, make, created)

    def _reply(
        self,
        peer: Peer,
        request_id: int,
        make: Callable[[Any], ReplyData],
        created: str | None,
        result: Any,
    ) -> ReplyData:
        if not isinstance(result, BaseException):
            return make(result)
        if created is not None:  # the open that was to make an anonymous namespace its own
            self.anonymous.undo_first_use(peer, created)
        return self._error(peer, request_id, result)

    async def _applied(self, calls: list[StoreCall]) -> list[Any]:
        """The store's results of ``calls`` (exceptions in place of the failed ones)."""
        store = self.remote
        try:
            results = await store.apply(calls)
        except StoreUnavailable as exc:
            return [exc] * len(calls)
        except MemoryError:
            raise
        except Exception as exc:  # never a raw client error to the caller: said, and logged
            logger.error(
                "%s failed applying %d calls", type(store).__name__, len(calls), exc_info=exc
            )
            failure = StoreUnavailable(f"{type(store).__name__} failed: {exc}")
            return [failure] * len(calls)
        if len(results) != len(calls):
            failure = StoreUnavailable(
                f"{type(store).__name__} answered {len(results)} of {len(calls)} calls"
            )
            logger.error("%s", failure)
            return [failure] * len(calls)
        return results

    async def _round(self, peer: Peer, round_: _Round, replies: list[ReplyData]) -> int:
        """Apply the round's calls in one ``apply``; fill in their replies: their size."""
        if not round_.calls:
            return 0
        calls, finish = round_.calls, round_.finish
        round_.calls, round_.finish = [], []
        results = await self._applied(calls)
        alive = self._alive(peer)
        if not alive:  # what the calls started is undone all the same
            results = [ConnectionLost("the connection is gone")] * len(calls)
        size = 0
        with self._section(peer):
            for (at, make), result in zip(finish, results, strict=True):
                reply = replies[at] = make(result)
                size += _size(reply)
        if not alive:
            raise Gone
        return size

    # ------------------------------------------------------------------ in turn

    async def _in_turn(self, peer: Peer, request: Request) -> ReplyData:
        """A request served once the store calls before it are applied."""
        request_id, op, args = request.id, request.op, request.args
        self.requests += 1
        reply: ReplyData
        if op in ("unwatch", "acquire", "release"):
            with self._section(peer):
                key = self.watches.key_of(peer, args[0]) if op == "unwatch" else None
                reply = self.answer(peer, request_id, op, args)
                if key is not None:
                    self._maybe_unfollow(key)
            settled = getattr(self.locks, "settled", None)  # (a table shared through the store)
            if op == "release" and settled is not None:
                await settled()  # answered once others can see it: a release, then their acquire
                if not self._alive(peer):  # ended meanwhile (a lease that ran out, an epoch)
                    raise Gone
            return reply
        if op == "watch":
            return await self._watch_since(peer, request_id, *args)
        try:
            if op == "keys":
                keys = await self.remote.keys()
                budget = peer.protocol.limits.max_reply_backlog_bytes
                reply = list_reply(request_id, keys, budget)
            elif op == "info":
                usage, keys = await self.remote.usage(), await self.remote.keys()
                figures = self.describe(store_figures=(usage, anonymous_count(keys)))
                reply = peer.protocol.send_result(request_id, figures)
            else:
                assert op == "export", op
                reply = await self._export(peer, request_id)
        except MemoryError:
            raise
        except Exception as exc:
            reply = self._error(peer, request_id, exc)
        if not self._alive(peer):
            raise Gone
        return reply

    async def _export(self, peer: Peer, request_id: int) -> ReplyData:
        epoch = self.remote.epoch
        keys = await self.remote.keys()
        frozen = {}
        for start in range(0, len(keys), MAX_CALLS_PER_APPLY):
            part = keys[start : start + MAX_CALLS_PER_APPLY]
            results = await self._applied([("snapshot", (key, None)) for key in part])
            for key, result in zip(part, results, strict=True):
                if isinstance(result, BaseException):
                    raise result
                frozen[key] = result
        if not self._alive(peer):
            raise Gone
        return self.exports.hold(peer, request_id, epoch, frozen)


def _since(event: object) -> bool:
    """Whether ``event`` is a watch that resumes (``since``): served in turn."""
    return type(event) is Request and event.op == "watch" and event.args[2] is not None


def _size(reply: ReplyData) -> int:
    if type(reply) is bytes:
        return len(reply)
    if type(reply) is tuple:
        return len(reply[0]) + len(reply[1])
    assert isinstance(reply, Producer)
    return reply.remaining


def _joined(replies: list[ReplyData], held: list[Output], refused: bool) -> list[Output]:
    """The answers in one buffer (unless some stand apart), what was held for after them
    following (before a refusal, which stays the last frame)."""
    out: list[Output] = []
    large = False
    for reply in replies:
        if type(reply) is bytes:
            out.append(reply)
        elif type(reply) is tuple:
            out.extend(reply)
            large = True
        else:
            assert isinstance(reply, Producer)
            out.append(reply)
            large = True
    if held:
        at = len(out) - 1 if refused else len(out)
        out[at:at] = held
        large = large or apart(held)
    if large:
        return out
    return [b"".join(out)]  # type: ignore[arg-type]  # (bytes, as not large)
