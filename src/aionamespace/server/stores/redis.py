"""The Redis store: the board in a Redis or Valkey (standalone or cluster) that any number of
servers share (remote.py's ``RemoteStore``): a batch's calls over connections of its own
(redis_link.py), everything else over redis-py's asyncio client.

**Layout.** Every key starts with the prefix. The board's own keys share the hash tag
``{board}``: its layout version (a store refuses another), its epoch (made with the board) and
its registry of namespaces. A namespace's keys share the hash tag ``{=KEY}``, the key with
``%``, ``{`` and ``}`` escaped (%25, %7B, %7D): one cluster slot per namespace, the key
readable in Redis, and no two keys with one tag. What each namespace key holds, and why lists
are kept as they are: redis_scripts.py.

**Calls.** ``apply`` sends a batch as one pipeline (not a transaction): one ``EVALSHA`` of the
namespace script per call, each atomic, the calls on one namespace in their order, packed into
one buffer per node and written at once on the store's own pipelined connection to that node
(redis_link.py, redis_wire.py: redis-py's pipeline cost most of a server's CPU per call). In
a cluster each call goes to the node of its namespace's slot; a ``MOVED`` reply (the call did
not run) reads the slot map again and sends the call there (redis_rounds.py). An ``incr``
or a ``cas`` whose conditional write fails (redis_calls.py) tries again in another round trip,
and the later calls on its namespace wait for it (redis_scripts.py, Rounds); the other
namespaces are done.

**The registry and max_namespaces.** In a cluster the registry (one key, one slot) cannot be
changed by the script that creates a namespace in another slot. So a store registers a
namespace *before* creating it: the first time a batch may create a namespace this store has
not registered, one round trip runs the ``RESERVE`` script, which adds it to the registry if
the registry holds fewer than ``max_namespaces`` (atomically, so the bound holds across any
number of servers), and the namespace script may create only the namespaces so registered
(else it answers ``full``: ``LimitExceeded``, nothing changed). A store remembers what it
registered, so later batches pay nothing. What this does not cover: a namespace another server
drops (``drop`` unregisters it) and this one writes again before learning of it is created
again without the check, and registered after the fact; and a batch that fails between the
registration and the creation leaves a registered name without a namespace (``keys`` lists it,
``count`` counts it) until it is written or dropped. ``keys``, ``count`` and ``usage`` read the
registry.

**Epochs.** Each batch's first pipeline reads the board's epoch too (one more command, no more
round trips): if it is gone (Redis restarted empty, or was flushed) the store makes a new
board and epoch (or takes the one another server made first) and calls ``on_epoch`` before
telling the batch's commits. The subscriber checks it too (redis_follow.py) and compares each
master it connects to with the one it saw on that shard, as PSYNC would: a failover that may
have lost writes under a surviving epoch key makes a new epoch (redis_replication.py).

**Redis's configuration.** A namespace is several keys, none with a TTL: an eviction policy
that may evict any key (``allkeys-*``) could take one of them and leave the namespace torn, so
the board's Redis needs ``maxmemory-policy noeviction`` (the default) or a ``volatile-*`` one.
Not checked here (managed services often refuse CONFIG).

**Failures.** Every redis-py error, every failure of a link (a lost connection, an error
reply, bytes that are not RESP2) and every round trip that outlives ``timeout`` becomes
``StoreUnavailable`` naming the store, the original as ``__cause__``. Nothing that may have
run is sent again: only a ``NOSCRIPT`` or ``MOVED`` reply, which say the script did not run,
is. redis-py must not retry on its own either (a retried script could run twice), so a
client given with retries is refused. The links are the store's: ``aclose`` closes them (and
they close when their event loop's run ends, for a store over a client its caller closes).

**Followed namespaces.** Every revision is published on its namespace's shard channel, with
its changes when small; ``run`` keeps one subscriber connection per node and tells
``on_commit`` other servers' revisions of the followed keys, in order, once each, filling gaps
from the history (``on_lost`` past it), and reconnects by itself: redis_follow.py. Their
appended lists are fetched whole; ``apply`` tells its own revisions after those of others.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from ..._errors import DataFileError, HistoryExpired, StoreUnavailable
from ...protocol.limits import Limits
from .base import Change, Changes, StoreUsage
from .memory import new_epoch
from .redis_anonymous import shared_anonymous
from .redis_at_once import apply_now
from .redis_calls import Call, Guesses, prepare
from .redis_client import Guard, client_for, describe, on_asyncio, redis_py, unavailable
from .redis_follow import Follower
from .redis_history import replay
from .redis_link import Links
from .redis_rounds import Rounds
from .redis_scripts import BOARD_START, LAYOUT_VERSION, NAMESPACE, RENEW_EPOCH, RESERVE
from .redis_urls import parse_store_url
from .redis_wire import ReplyError, RespError
from .remote import StoreCall

if TYPE_CHECKING:
    from ..timers import CallLater
    from .redis_locks import RedisLockTable

__all__ = ["RedisStore"]

_SHA = hashlib.sha1(NAMESPACE.encode()).hexdigest()
_ESCAPES = str.maketrans({"%": "%25", "{": "%7B", "}": "%7D"})


class RedisStore:
    """Namespaces in the Redis or Redis Cluster of a store URL (redis_urls.py), or of a
    redis-py asyncio client (``redis.asyncio.Redis``, ``redis.asyncio.cluster.RedisCluster``;
    one that does not retry), under ``prefix``; each call fails with StoreUnavailable after
    ``timeout`` seconds without an answer."""

    remote = True
    durable = False
    backends = ("asyncio",)  # redis-py's asyncio client: the server refuses trio (remote.py)
    anonymous_registry = shared_anonymous  # (shared by the board's servers: as lock_table)
    in_order = True  # apply takes snapshot_in_order (remote.py)

    def __init__(
        self,
        client: Any,
        limits: Limits | None = None,
        prefix: str = "aionamespace",
        *,
        timeout: float = 5.0,
        lock_lease: float = 10.0,
    ) -> None:
        redis = redis_py()
        if "{" in prefix or "}" in prefix:
            raise ValueError(f"a key prefix holds no braces (hash tags follow it): {prefix!r}")
        self._owned = isinstance(client, str)  # a client it makes, it closes
        if isinstance(client, str):
            url = parse_store_url(client)
            name, client = url.redacted(), client_for(url, timeout)
        else:
            name = describe(client, isinstance(client, redis.asyncio.cluster.RedisCluster))
        self._cluster = isinstance(client, redis.asyncio.cluster.RedisCluster)
        retry = client.retry if self._cluster else client.get_retry()
        if retry is not None and retry.get_retries() > 0:
            raise ValueError(
                "give RedisStore a client that does not retry (retry=Retry(NoBackoff(), 0)): "
                "a script retried after a lost reply would run twice"
            )
        self._client = client
        self._errors = (
            redis.RedisError,
            redis.exceptions.RedisClusterException,
            OSError,
            ReplyError,
            RespError,
        )
        self._noscript = redis.exceptions.NoScriptError
        self._links: Links | None = None  # (made by start: a loop runs there)
        self.name = name
        limits = limits or Limits()
        self._bounds = (limits.max_history_revisions, limits.max_history_bytes)
        # A reply holds a namespace's names and values, which a frame must hold (as values).
        self._max_reply_bytes = 2 * limits.max_frame_bytes
        self._prefix = prefix if prefix.endswith(":") else prefix + ":"
        self.prefix = self._prefix  # (what every key starts with: ``info`` shows it)
        board = self._prefix + "{board}:"
        self._layout_key, self._epoch_key = board + "layout", board + "epoch"
        self._registry = board + "namespaces"
        self._timeout = timeout
        self.lock_lease = lock_lease
        self._registered: set[str] = set()
        self._guesses: Guesses = {}
        self._follower = Follower(self, self._cluster)
        self._rounds = Rounds(self, _SHA, self._epoch_key)
        self.epoch = ""
        self.max_namespaces: int | None = None
        self.on_commit: Callable[[str, int, Changes], None] | None = None
        self.on_lost: Callable[[str], None] | None = None
        self.on_epoch: Callable[[str], None] | None = None

    def base(self, key: str) -> str:
        """The name every Redis key of namespace ``key`` starts with (its hash tag inside)."""
        return f"{self._prefix}{{={key.translate(_ESCAPES)}}}"

    def lock_table(self, call_later: CallLater) -> RedisLockTable:
        """Locks shared by the board's servers, leased ``lock_lease`` s (redis_locks.py)."""
        from .redis_locks import RedisLockTable

        return RedisLockTable(self, call_later, self.lock_lease)

    # ------------------------------------------------------------------ the board

    async def start(self) -> None:
        """Read the board's layout and epoch (made for a new board); load the script."""
        if not on_asyncio():
            raise RuntimeError(
                "the Redis store runs on asyncio (redis-py's client): serve with the asyncio "
                "backend"
            )
        async with self._guard():
            self.epoch = await self._board()
            await self._load_script()
        self._links = self._rounds.links = Links(self._client, self._cluster, self._max_reply_bytes)

    async def _board(self) -> str:
        """The board's epoch, the board made if new; DataFileError if of another layout."""
        layout, epoch = await self._client.eval(
            BOARD_START, 2, self._layout_key, self._epoch_key, LAYOUT_VERSION, new_epoch()
        )
        if epoch is None:
            raise DataFileError(
                f"{self.name} holds an aionamespace board (prefix {self._prefix!r}) of "
                f"layout {layout.decode(errors='replace')!r}; this version reads layout "
                f"{LAYOUT_VERSION!r}: use another prefix or the matching version"
            )
        return str(epoch.decode())

    async def _load_script(self, refresh: bool = False, script: str = NAMESPACE) -> None:
        """Load ``script`` (the namespace script) on every master; ``refresh``: after a
        NOSCRIPT reply, which a failover gives too, so the masters are read again first (a
        promoted replica never loaded it, and the client may still list the master it
        replaced)."""
        if self._cluster:
            if refresh:
                await self._client.nodes_manager.initialize()
            await self._client.execute_command(
                "SCRIPT LOAD", script, target_nodes=self._client.PRIMARIES
            )
        else:
            await self._client.script_load(script)

    async def keys(self) -> list[str]:
        async with self._guard():
            members = await self._client.smembers(self._registry)
        return sorted(member.decode() for member in members)

    async def count(self) -> int:
        async with self._guard():
            count = await self._client.scard(self._registry)
        return int(count)

    async def drop(self, key: str) -> None:
        self._registered.discard(key)
        async with self._guard():
            await self._script(key, "drop", ())
            await self._client.srem(self._registry, key)

    async def usage(self) -> StoreUsage:
        """Counted when asked: one script call per namespace, in one pipeline."""
        keys = await self.keys()
        async with self._guard():
            replies = await self._usage_pipeline(keys, raise_on_error=False)
            if any(isinstance(reply, self._noscript) for reply in replies):
                await self._load_script(refresh=True)  # (a restart or a failover: nothing ran)
                replies = await self._usage_pipeline(keys, raise_on_error=True)
        figures = [reply[1][1:] for reply in replies]
        return StoreUsage(
            sum(exists for exists, *_ in figures),
            sum(names for _, names, *_ in figures),
            sum(size for _, _, size, *_ in figures),
            sum(revisions for *_, revisions, _ in figures),
            sum(size for *_, size in figures),
            max((revisions for *_, revisions, _ in figures), default=0),
            max((size for *_, size in figures), default=0),
        )

    async def _usage_pipeline(self, keys: list[str], raise_on_error: bool) -> list[Any]:
        pipe = self._client.pipeline(transaction=False)
        for key in keys:
            self._queue(pipe, key, "usage", ())
        return list(await pipe.execute(raise_on_error=raise_on_error))

    # ------------------------------------------------------------------ following

    def follow(self, key: str, since: int | None = None) -> None:
        """Tell ``on_commit`` other servers' revisions of ``key`` after ``since`` (None: after
        the revision the next call on it sees), once ``run`` runs (redis_follow.py)."""
        self._follower.follow(key, since)

    def unfollow(self, key: str) -> None:
        self._follower.unfollow(key)

    async def run(self) -> None:
        """Deliver the followed keys' revisions, as long as the server serves."""
        await self._follower.subscriptions.run()

    async def check_epoch(self, renew: bool = False) -> bool:
        """Whether the board's epoch is another than this store's (then made this store's,
        and ``on_epoch`` told): Redis lost the board, or another server found it so.
        ``renew``: Redis lost data but kept the epoch: replace it (if no server did yet)."""
        async with self._guard():
            if renew:
                await self._client.eval(RENEW_EPOCH, 1, self._epoch_key, self.epoch, new_epoch())
            found = await self._client.get(self._epoch_key)
            if found is not None and found.decode() == self.epoch:
                return False
            await self._new_epoch()
        return True

    async def aclose(self) -> None:
        """Close the subscribers' pools, and the client it made from a URL (not one given)."""
        await self._follower.subscriptions.aclose()
        if self._links is not None:
            self._links.close()
        if self._owned:
            await self._client.aclose()

    # ------------------------------------------------------------------ history

    async def history(self, key: str, since: int) -> list[Change]:
        """Every change after revision ``since``; HistoryExpired if some were forgotten."""
        async with self._guard():
            reply = await self._script(key, "history", (since,))
        if reply[0] == b"expired":
            revision, oldest = reply[1], reply[2]
            if since > revision:
                raise HistoryExpired(
                    f"revision {since} is ahead of this namespace ({revision}): the server was "
                    "restarted; resync with _snapshot() and watch from its revision"
                )
            raise HistoryExpired(
                f"revision {since} is older than the history kept (oldest: {oldest}); "
                "resync with _snapshot() and watch from its revision"
            )
        changes = replay(key, reply[1], reply[2])
        if key in self._follower:
            await self._follower.after_read(key, reply[3])
        return changes

    # ------------------------------------------------------------------ batches

    async def apply(self, calls: Sequence[StoreCall]) -> list[Any]:
        """Run a batch (remote.py): one pipeline, more round trips only for what needs them."""
        prepared: list[Call] = []
        for op, args in calls:
            try:
                call = prepare(op, args, self._guesses)
            except Exception as exc:  # a bad incr step: refused before anything is sent
                call = Call(args[0])
                call.finish(exc)
            call.want_list = self.on_commit is not None and call.key in self._follower
            prepared.append(call)
        try:
            # (Each step bounded by the timeout: the rounds by their links' deadline, the
            # rest, rarer, by a Guard; a Guard costs a cancel scope, a round only a timer.)
            granted, refused = await self._reserve(prepared)
            try:
                epoch, created = await self._rounds.run(prepared, refused)
            except self._errors as exc:
                raise self._unavailable(exc) from exc
            if epoch != self.epoch or created - granted:
                async with self._guard():
                    if epoch != self.epoch:
                        await self._new_epoch()
                    else:
                        created -= granted
                    if created:  # (made without this store's check: dropped, or flushed)
                        await self._client.sadd(self._registry, *created)
                        self._registered.update(created)
        except StoreUnavailable as exc:
            for call in prepared:
                if not call.done:
                    lost = StoreUnavailable(*exc.args)
                    lost.__cause__ = exc.__cause__
                    call.finish(lost)
        await self._told(prepared)
        return [call.result for call in prepared]

    async def _told(self, calls: list[Call]) -> None:
        """Tell the revisions the calls made (and, of a followed key, what they read)."""
        follower = self._follower
        for call in calls:
            if call.key in follower:  # in order, after what other servers did before
                if call.observed >= 0:
                    await follower.after_read(call.key, call.observed)
                if call.changes is not None:
                    await follower.own(call.key, call.revision, call.changes)
            elif call.changes is not None and self.on_commit is not None:
                self.on_commit(call.key, call.revision, call.changes)

    def apply_now(self, calls: Sequence[StoreCall], done: Callable[[Any], None]) -> bool:
        """remote.py's ``apply_now``: plain reads, or one set or update (redis_at_once.py)."""
        return apply_now(self, calls, done)

    async def _reserve(self, calls: list[Call]) -> tuple[set[str], set[str]]:
        """Register the namespaces the batch may create that this store has not registered
        yet (one round trip, only if there are some): those registered, and those refused
        (past max_namespaces)."""
        new = list(
            dict.fromkeys(
                call.key
                for call in calls
                if call.creates and not call.done and call.key not in self._registered
            )
        )
        granted: set[str] = set()
        refused: set[str] = set()
        if new:
            bound = -1 if self.max_namespaces is None else self.max_namespaces
            async with self._guard():
                answers = await self._client.eval(RESERVE, 1, self._registry, bound, *new)
            for key, ok in zip(new, answers, strict=True):
                (granted if ok else refused).add(key)
            self._registered.update(granted)
        return granted, refused

    async def _new_epoch(self) -> None:
        """The board's epoch is gone (Redis lost the data: restarted empty, flushed) or was
        made anew by another server that found it gone: take the board's (made if missing),
        forget what was learnt under the old one, tell the server."""
        self.epoch = await self._board()
        self._registered.clear()
        self._guesses.clear()
        self._follower.reset()
        if self.on_epoch is not None:
            self.on_epoch(self.epoch)

    def _queue(
        self,
        pipe: Any,
        key: str,
        op: str,
        args: Sequence[Any],
        may_create: bool = False,
        want_list: bool = False,
        token: str = "",
        blocks: bool = False,
    ) -> None:
        revisions, size = self._bounds
        pipe.execute_command(
            "EVALSHA", _SHA, 1, self.base(key), op, revisions, size,
            int(may_create), int(want_list), token, int(blocks), self.epoch, *args,
        )  # fmt: skip

    async def _script(self, key: str, op: str, args: Sequence[Any]) -> Any:
        """One call of the namespace script, outside a batch: its reply."""
        revisions, size = self._bounds
        argv = (op, revisions, size, 0, 0, "", 0, self.epoch, *args)
        try:
            reply = await self._client.evalsha(_SHA, 1, self.base(key), *argv)
        except self._noscript:
            await self._load_script(refresh=True)
            reply = await self._client.evalsha(_SHA, 1, self.base(key), *argv)
        return reply[1]

    # ------------------------------------------------------------------ failures

    def _guard(self) -> Guard:
        return Guard(self._timeout, self._errors, self._unavailable)

    def _unavailable(self, error: BaseException) -> StoreUnavailable:
        return unavailable(self.name, self._timeout, error)
