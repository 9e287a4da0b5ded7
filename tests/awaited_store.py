"""A ``RemoteStore`` for tests, without Redis: ``AwaitedStore``, over a shared ``Board``.

A ``Board`` is one ``MemoryStore`` that several ``AwaitedStore``\\ s share, as servers share
one Redis: a change made through one reaches the others' ``on_commit`` for the keys they
``follow`` (synchronously, in revision order: the board's own ``on_commit`` fans it out while
the change is made), and the store that made it gets every revision of its own batch. Every
awaited method really yields to the event loop (``anyio.lowlevel.checkpoint``, or ``delay``
seconds of sleep) so that batches interleave as they would over a network, and each counts
what it was asked (``applies``: the calls of each ``apply``). ``fail()`` makes every call
end with ``StoreUnavailable`` until ``recover()``; ``hold(key)`` keeps every ``apply`` naming
``key`` in the store (``held`` of them wait) until ``release(key)``: before its calls are
applied, or (``after=True``) once they are, before it returns.

The servers of one board must run on one event loop (the fan-out calls their hooks
directly): ``servers_on_one_loop`` starts them so. A test thread changes a running store
through ``call`` (run in that loop's thread).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import anyio
import anyio.from_thread
import anyio.lowlevel
import pytest

import redis_rig
from aionamespace import Server, StoreUnavailable
from aionamespace.protocol.connection import Address
from aionamespace.protocol.limits import Limits
from aionamespace.server.stores import Change, Changes, MemoryStore, StoreUsage
from aionamespace.server.stores.remote import STORE_CALLS, StoreCall

__all__ = [
    "STORE_KINDS",
    "AwaitedStore",
    "Board",
    "new_store",
    "over_every_store",
    "servers_on_one_loop",
]

#: The kinds of store a test's server may serve from: its own memory, or a store it awaits
#: (the path a Redis store takes). conftest's ``store_kind`` fixture picks one.
STORE_KINDS = ["memory", "awaited"]

#: Runs a test over every kind of store: on a test that uses ``server`` (or ``store_kind``).
over_every_store = pytest.mark.parametrize("store_kind", STORE_KINDS, indirect=True)

#: Store methods by the op names ``apply`` takes.
_METHODS = {op: ("delete" if op == "del" else op) for op in STORE_CALLS}


class Board:
    """One MemoryStore shared by AwaitedStores (one board, several servers)."""

    def __init__(self, limits: Limits | None = None) -> None:
        self.limits = limits
        self.memory = MemoryStore(limits)
        self.memory.on_commit = self._committed
        self.stores: list[AwaitedStore] = []
        self._applying: AwaitedStore | None = None  # whose apply is changing the board

    def _committed(self, key: str, revision: int, changes: Changes) -> None:
        for store in self.stores:
            if store is self._applying or key in store.following:
                if store.on_commit is not None:
                    store.on_commit(key, revision, changes)

    def lose_data(self) -> str:
        """The engine lost everything (a flush, a failover to an empty replica): a new, empty
        board of a new epoch, told to every store. Call it in the servers' loop."""
        self.memory = MemoryStore(self.limits)
        self.memory.on_commit = self._committed
        for store in self.stores:
            if store.on_epoch is not None:
                store.on_epoch(self.memory.epoch)
        return self.memory.epoch

    def lose(self, key: str) -> None:
        """Revisions of ``key`` went by undelivered: every store following it says so."""
        for store in self.stores:
            if key in store.following and store.on_lost is not None:
                store.on_lost(key)


class AwaitedStore:
    """A RemoteStore over a Board (a board of its own unless one is given)."""

    remote = True

    def __init__(
        self,
        board: Board | None = None,
        *,
        delay: float = 0.0,
        backends: tuple[str, ...] | None = None,
        limits: Limits | None = None,
    ) -> None:
        self.board = board if board is not None else Board(limits)
        self.board.stores.append(self)
        self.delay = delay
        if backends is not None:
            self.backends = backends  # (absent: every backend)
        self.on_commit: Callable[[str, int, Changes], None] | None = None
        self.on_lost: Callable[[str], None] | None = None
        self.on_epoch: Callable[[str], None] | None = None
        self.following: set[str] = set()
        self.follows: list[str] = []  # every follow, in order (and unfollows: "-key")
        self.applies: list[list[StoreCall]] = []  # the calls of every apply
        self.started = self.closed = False
        self.failing = False
        self.held = 0  # applies waiting at a hold
        self._holds: dict[str, tuple[anyio.Event, bool]] = {}  # key -> (gate, after)
        self._token: Any = None  # the loop it was started in

    @property
    def epoch(self) -> str:
        return self.board.memory.epoch

    @property
    def max_namespaces(self) -> int | None:
        return self.board.memory.max_namespaces

    @max_namespaces.setter
    def max_namespaces(self, bound: int | None) -> None:
        self.board.memory.max_namespaces = bound

    def fail(self) -> None:
        """From now on, every call ends with StoreUnavailable (until ``recover``)."""
        self.failing = True

    def recover(self) -> None:
        self.failing = False

    def hold(self, key: str, *, after: bool = False) -> None:
        """Keep every apply naming ``key`` in the store until ``release(key)``: before it
        applies its calls, or after (called from a test's thread)."""
        self.call(lambda: self._holds.setdefault(key, (anyio.Event(), after)))

    def release(self, key: str) -> None:
        self.call(lambda: self._holds.pop(key)[0].set())

    async def _wait_at_holds(self, calls: Sequence[StoreCall], after: bool) -> None:
        for _, args in calls:
            while (hold := self._holds.get(args[0])) is not None and hold[1] is after:
                self.held += 1
                try:
                    await hold[0].wait()
                finally:
                    self.held -= 1

    def call(self, function: Callable[[], Any]) -> Any:
        """Run ``function`` in the loop the store was started in (from a test's thread)."""
        return anyio.from_thread.run_sync(function, token=self._token)

    async def _round_trip(self) -> None:
        if self.delay:
            await anyio.sleep(self.delay)
        else:
            await anyio.lowlevel.checkpoint()
        if self.failing:
            raise StoreUnavailable("AwaitedStore (a test double) is told to fail")

    # ------------------------------------------------------------------ RemoteStore

    async def start(self) -> None:
        self._token = anyio.lowlevel.current_token()
        await anyio.lowlevel.checkpoint()
        self.started = True

    async def aclose(self) -> None:
        await anyio.lowlevel.checkpoint()
        self.closed = True

    async def apply(self, calls: Sequence[StoreCall]) -> list[Any]:
        self.applies.append(list(calls))
        await self._wait_at_holds(calls, after=False)
        try:
            await self._round_trip()
        except StoreUnavailable as exc:
            return [exc] * len(calls)
        memory, board = self.board.memory, self.board
        results: list[Any] = []
        board._applying = self
        try:
            for op, args in calls:
                try:
                    results.append(getattr(memory, _METHODS[op])(*args))
                except Exception as exc:
                    results.append(exc)
        finally:
            board._applying = None
        await anyio.lowlevel.checkpoint()
        await self._wait_at_holds(calls, after=True)
        return results

    async def history(self, key: str, since: int) -> list[Change]:
        await self._round_trip()
        return self.board.memory.history(key, since)

    async def keys(self) -> list[str]:
        await self._round_trip()
        return self.board.memory.keys()

    async def count(self) -> int:
        await self._round_trip()
        return self.board.memory.count()

    async def drop(self, key: str) -> None:
        await self._round_trip()
        self.board.memory.drop(key)

    async def usage(self) -> StoreUsage:
        await self._round_trip()
        return self.board.memory.usage()

    def follow(self, key: str, since: int | None = None) -> None:
        self.following.add(key)
        self.follows.append(key)

    def unfollow(self, key: str) -> None:
        self.following.discard(key)
        self.follows.append(f"-{key}")

    async def run(self) -> None:
        """(The double's board tells every store at once: nothing to run.)"""


def new_store(kind: str, limits: Limits | None = None) -> Any:
    """A store of ``kind`` for a Server (None: the server's own in-memory store); "redis" and
    "redis-cluster": a RedisStore of a prefix of its own on the session's Redis (redis_rig)."""
    if kind in ("redis", "redis-cluster"):
        from aionamespace.server.stores.redis import RedisStore

        where = redis_rig.standalone() if kind == "redis" else redis_rig.cluster()
        return RedisStore(where.url, limits, prefix=redis_rig.unique_prefix(kind))
    return AwaitedStore(limits=limits) if kind == "awaited" else None


@contextlib.contextmanager
def servers_on_one_loop(
    stores: Sequence[AwaitedStore], backend: str, directory: str, **options: Any
) -> Iterator[list[Server]]:
    """A server per store, all on one event loop in a thread, on Unix sockets in
    ``directory``: yields them, listening."""
    with anyio.from_thread.start_blocking_portal(backend) as portal:
        servers: list[Server] = []
        futures = []
        try:
            for index, store in enumerate(stores):
                address: Address = os.path.join(directory, f"s{index}.sock")
                server = Server(address, store=store, **options)
                future, _ = portal.start_task(server.serve)
                servers.append(server)
                futures.append(future)
            yield servers
        finally:
            for server in servers:
                portal.call(server.stop)
            for future in futures:
                future.result(timeout=10)
