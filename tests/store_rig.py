"""The stores under test, made in one place, and what the store tests read back from them.

``STORES`` makes each store the store tests run against (``make_store`` fixtures are
parametrized over it): a new store joins every store test by joining it. "sqlite reopened" is
an SQLiteStore committed, closed and loaded again from its file before every call, so every
store test also checks that what it tests survives a restart; "sqlite reopened, folding" the
same, folding its history into its attributes at every commit. ``close_stores`` closes the
files the SQLite stores made so far hold (in a directory removed at exit, on tmpfs where there
is one). "redis" and "redis cluster" are RedisStores (a ``RemoteStore``, awaited) seen through
``OnPortal``, each under a prefix of its own on this process's Redis server or cluster.
``Commits`` records what ``on_commit`` was told, values materialised during the call as the
server does; ``replayed`` is ``history`` with its values materialised.
"""

from __future__ import annotations

import atexit
import contextlib
import itertools
import os
import shutil
import tempfile
from collections.abc import Callable
from typing import Any

from anyio.from_thread import BlockingPortal, start_blocking_portal

import redis_rig
from aionamespace import Limits
from aionamespace.server.stores import MemoryStore, SQLiteStore, Store, materialised
from aionamespace.server.stores.redis import RedisStore
from aionamespace.server.stores.remote import RemoteStore

__all__ = [
    "STORES",
    "Commits",
    "MakeStore",
    "OnPortal",
    "close_stores",
    "new_redis_client",
    "portal",
    "redis_client",
    "replayed",
]

#: Makes a store with the given limits (None: the defaults).
MakeStore = Callable[[Limits | None], Store]

#: Where the SQLite stores' files go: in memory (tmpfs) where the machine has one. "sqlite
#: reopened" closes its file before every call, and closing checkpoints the WAL with an fsync:
#: on a disk other jobs also write to, the tests would mostly wait for the disk. Nothing here
#: tests durability against a power cut (tests/test_durable_crash.py kills a real server).
_TMPFS = "/dev/shm"
_DIRECTORY = tempfile.mkdtemp(
    prefix="aionamespace-stores-",
    dir=_TMPFS if os.path.isdir(_TMPFS) and os.access(_TMPFS, os.W_OK) else None,
)
atexit.register(shutil.rmtree, _DIRECTORY, ignore_errors=True)
_PATHS = (os.path.join(_DIRECTORY, f"{n}.db") for n in itertools.count())
_OPENED: list[SQLiteStore] = []


def _sqlite(limits: Limits | None) -> SQLiteStore:
    store = SQLiteStore(next(_PATHS), limits)
    _OPENED.append(store)
    return store


class Reopening:
    """An SQLiteStore committed, closed and opened again from its file before every call: each
    call meets the store as a restarted server would. ``fold`` (``FOLD_REVISIONS``): how soon
    it folds what its history forgets into the file's attributes (1: at every commit)."""

    fold: int | None = None

    def __init__(self, limits: Limits | None) -> None:
        self._limits = limits
        self._store = _sqlite(limits)
        self._folding(self._store)
        self.on_commit: Any = None
        self.max_namespaces: int | None = None

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._store, name)
        if not callable(attribute):
            return attribute

        def call(*args: Any) -> Any:
            self._reopen()
            return getattr(self._store, name)(*args)

        return call

    def _reopen(self) -> None:
        old = self._store
        old.commit_now()
        old.close()
        _OPENED.remove(old)
        self._store = store = SQLiteStore(old.path, self._limits)
        self._folding(store)
        _OPENED.append(store)
        assert store.epoch == old.epoch
        store.on_commit, store.max_namespaces = self.on_commit, self.max_namespaces

    def _folding(self, store: SQLiteStore) -> None:
        if self.fold is not None:
            store.fold_revisions = self.fold


class Folding(Reopening):
    """``Reopening``, folding at every commit what the history forgot."""

    fold = 1


def close_stores() -> None:
    """Close every SQLite store made so far."""
    while _OPENED:
        _OPENED.pop().close()


_PORTAL: dict[str, Any] = {}


def portal() -> BlockingPortal:
    """This process's event loop in a thread (asyncio), where every RemoteStore here runs."""
    if "portal" not in _PORTAL:
        stack = contextlib.ExitStack()
        _PORTAL["portal"] = stack.enter_context(start_blocking_portal("asyncio"))
        atexit.register(stack.close)
    return _PORTAL["portal"]  # type: ignore[no-any-return]


class OnPortal:
    """A RemoteStore seen as a ``Store``: each method is its awaitable twin run on the portal,
    an op is ``apply`` of a batch of one (its exception raised). With ``on_commit`` set it
    follows every namespace it is asked about, so that appends are told with their lists
    (the server follows the namespaces it pushes changes of)."""

    durable = False
    on_change = None

    def __init__(self, store: RemoteStore) -> None:
        self.remote = store
        portal().call(store.start)

    @property
    def on_commit(self) -> Any:
        return self.remote.on_commit

    @on_commit.setter
    def on_commit(self, hook: Any) -> None:
        self.remote.on_commit = hook

    @property
    def max_namespaces(self) -> int | None:
        return self.remote.max_namespaces

    @max_namespaces.setter
    def max_namespaces(self, bound: int | None) -> None:
        self.remote.max_namespaces = bound

    @property
    def epoch(self) -> str:
        return self.remote.epoch

    def _apply(self, op: str, *args: Any) -> Any:
        if self.remote.on_commit is not None:
            self.remote.follow(args[0])
        (result,) = portal().call(self.remote.apply, [(op, args)])
        if isinstance(result, BaseException):
            raise result
        return result

    def open(self, *args: Any) -> Any:
        return self._apply("open", *args)

    def get(self, *args: Any) -> Any:
        return self._apply("get", *args)

    def set(self, *args: Any) -> Any:
        return self._apply("set", *args)

    def delete(self, *args: Any) -> Any:
        return self._apply("del", *args)

    def snapshot(self, *args: Any) -> Any:
        return self._apply("snapshot", *args)

    def update(self, *args: Any) -> Any:
        return self._apply("update", *args)

    def setdefault(self, *args: Any) -> Any:
        return self._apply("setdefault", *args)

    def pop(self, *args: Any) -> Any:
        return self._apply("pop", *args)

    def incr(self, *args: Any) -> Any:
        return self._apply("incr", *args)

    def append(self, *args: Any) -> Any:
        return self._apply("append", *args)

    def cas(self, *args: Any) -> Any:
        return self._apply("cas", *args)

    def history(self, key: str, since: int) -> Any:
        return portal().call(self.remote.history, key, since)

    def keys(self) -> list[str]:
        return portal().call(self.remote.keys)

    def count(self) -> int:
        return portal().call(self.remote.count)

    def drop(self, key: str) -> None:
        portal().call(self.remote.drop, key)

    def usage(self) -> Any:
        return portal().call(self.remote.usage)

    async def commit(self) -> None:
        """Nothing to wait for: ``apply`` returns once Redis has answered."""

    def close(self) -> None:
        portal().call(self.remote.aclose)


def redis_client(cluster: bool = False) -> Any:
    """This process's client (made on the portal) of its Redis server, or of its cluster."""
    name = "cluster" if cluster else "standalone"
    if name not in _PORTAL:
        client = _PORTAL[name] = portal().call(new_redis_client, cluster)
        atexit.register(lambda: portal().call(client.aclose))  # (before the portal stops)
    return _PORTAL[name]


async def new_redis_client(cluster: bool, server: Any = None, **options: Any) -> Any:
    """A new redis-py asyncio client (one that never retries, as RedisStore requires) of
    ``server`` (a standalone one; default: this process's) or of this process's cluster."""
    from redis.asyncio import Redis
    from redis.asyncio.cluster import ClusterNode, RedisCluster
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff

    options = {"retry": Retry(NoBackoff(), 0), "socket_timeout": 5, **options}
    if cluster:
        nodes = [ClusterNode(host, port) for host, port in redis_rig.cluster().nodes]
        return RedisCluster(startup_nodes=nodes, **options)
    return Redis(unix_socket_path=(server or redis_rig.standalone()).socket_path, **options)


def _redis(limits: Limits | None, cluster: bool = False) -> OnPortal:
    store = RedisStore(redis_client(cluster), limits, prefix=redis_rig.unique_prefix())
    return OnPortal(store)


def _redis_available() -> bool:
    """Whether the Redis tests can run here (or must: a missing binary then fails them)."""
    return bool(
        os.environ.get(redis_rig.SERVER_VARIABLE)
        or shutil.which("redis-server")
        or shutil.which("valkey-server")
        or os.environ.get(redis_rig.REQUIRE_VARIABLE) == "1"
    )


STORES: dict[str, MakeStore] = {
    "memory": MemoryStore,
    "sqlite": _sqlite,
    "sqlite reopened": Reopening,  # type: ignore[dict-item]
    "sqlite reopened, folding": Folding,  # type: ignore[dict-item]
}
if _redis_available():  # (else test_redis_store.py says why it skips, and how to run it)
    STORES["redis"] = _redis  # type: ignore[assignment]
    STORES["redis cluster"] = lambda limits: _redis(limits, cluster=True)  # type: ignore[assignment,misc]


class Commits:
    """What ``on_commit`` was told, in order, with each value materialised during the call."""

    def __init__(self, store: Store) -> None:
        self.seen: list[tuple[str, int, dict[str, bytes | None]]] = []
        store.on_commit = lambda key, revision, changes: self.seen.append(
            (key, revision, {name: materialised(value) for name, value in changes.items()})
        )


def replayed(store: Store, key: str, since: int) -> list[tuple[int, str, bytes | None]]:
    """``store.history(key, since)``: (revision, name, value) with values materialised."""
    return [
        (change.revision, change.name, materialised(change.value))
        for change in store.history(key, since)
    ]
