"""Batches over the Redis store answered without a task (server/remote_at_once.py): the
same answers as the usual path's when Redis lost the board, froze, or the reader left.

A batch of gets and named snapshots, or of one set or update, is sent from the callback that
parsed the client's frame and answered from the one that parsed Redis's reply; whatever that
cannot answer goes the usual way (tests/test_atomic.py's lists grown by appends, over every
store, take it too), and a write whose script ran is never sent again.
"""

from __future__ import annotations

import gc
import inspect
import os
import signal
import time
import warnings
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import anyio
import msgpack
import pytest

import redis_rig
from aionamespace import Namespace, ServerThread, StoreUnavailable
from aionamespace.protocol.codec import encode_value
from aionamespace.server.stores.redis import RedisStore
from aionamespace.server.stores.redis_at_once import _written
from deadlines import NO_HANG_SECONDS
from raw_client import connect_raw, exchange, read_frames
from store_rig import new_redis_client

pytestmark = pytest.mark.usefixtures("collect_garbage")

STORE_TIMEOUT = 0.5


@pytest.fixture
def served(redis_private: redis_rig.RedisServer, short_tmp: str) -> Iterator[ServerThread]:
    store = RedisStore(redis_private.url, prefix="reads", timeout=STORE_TIMEOUT)
    with ServerThread(os.path.join(short_tmp, "r.sock"), store=store) as server:
        yield server


def test_a_read_that_finds_the_board_flushed_starts_the_new_epoch(
    served: ServerThread, redis_private: redis_rig.RedisServer
) -> None:
    """The epoch is read with the reads: a board Redis lost (FLUSHALL) is found by a get of
    a namespace nobody watches, as by any batch; the get answers from the new board, and the
    server ends the connections whose watches were of the old one."""
    with Namespace(served.address, "board") as ns:
        ns.x = 1
        assert ns.x == 1
        assert ns._snapshot("x") == {"x": 1}
        watcher, frames = connect_raw(served.address)
        try:
            assert exchange(watcher, frames, [1, "watch", "w", None, None])[0][:2] == [1, 0]
            with redis_private.client() as direct:
                direct.flushall()
            with pytest.raises(AttributeError):
                _ = ns.x  # (the new board's answer)
            (refusal,) = read_frames(watcher, frames, until_eof=True)
            assert refusal[:3] == [0, 1, "ConnectionLost"]
            assert "new epoch" in refusal[3]
        finally:
            watcher.close()
        ns.x = 2
        assert ns._snapshot("x") == {"x": 2}


def test_a_frozen_redis_fails_reads_within_the_store_timeout_then_they_go_on(
    served: ServerThread, redis_private: redis_rig.RedisServer
) -> None:
    """SIGSTOP: a get, a snapshot and an update fail with StoreUnavailable within the store's
    timeout, a reader that leaves meanwhile is forgotten; SIGCONT: the same proxy reads
    again."""
    assert redis_private.pid is not None
    with Namespace(served.address, "board") as ns:
        ns._update(x=1, y=2)
        assert ns.x == 1
        leaver, _ = connect_raw(served.address)
        os.kill(redis_private.pid, signal.SIGSTOP)
        try:
            leaver.sendall(msgpack.packb([1, "get", "board", "x"]))
            leaver.close()  # (gone while its read is in the store)
            began = time.monotonic()
            with pytest.raises(StoreUnavailable, match=r"no answer within 0\.5 seconds"):
                _ = ns.x
            with pytest.raises(StoreUnavailable):
                ns._snapshot("x", "y")
            with pytest.raises(StoreUnavailable, match=r"no answer within 0\.5 seconds"):
                ns._update(z=3)  # (whether it ran is not known)
            assert time.monotonic() - began < 3 * STORE_TIMEOUT + NO_HANG_SECONDS / 2
        finally:
            os.kill(redis_private.pid, signal.SIGCONT)
        assert ns.x == 1
        assert ns._snapshot("y", "x") == {"y": 2, "x": 1}
    reader, frames = connect_raw(served.address)
    try:
        reader.sendall(
            msgpack.packb([1, "get", "board", "x"]) + msgpack.packb([2, "get", "board", "y"])
        )
        replies = []
        while len(replies) < 2:
            data = reader.recv(65536)
            assert data, "the server closed the connection"
            frames.feed(data)
            replies.extend(frames)
        assert replies == [[1, 0, encode_value(1)], [2, 0, encode_value(2)]]
    finally:
        reader.close()


def test_sets_and_updates_sent_at_once_make_one_revision_each(served: ServerThread) -> None:
    """A sync proxy's set or update is a batch of one write, sent at once: each makes one
    revision, and a read after it sees it."""
    with Namespace(served.address, "board") as ns:
        ns.x = 0
        first = ns._snapshot().revision
        for step in range(1, 7):
            if step % 2:
                ns.x = step
                assert ns.x == step
            else:
                assert ns._update(x=step, y=step) == first + step
                assert ns._snapshot("x", "y") == {"x": step, "y": step}
        assert ns._snapshot().revision == first + 6


def test_a_write_that_finds_its_script_gone_runs_once(
    served: ServerThread, redis_private: redis_rig.RedisServer
) -> None:
    """SCRIPT FLUSH: the next set or update sent at once gets NOSCRIPT (its script did not
    run), and the usual path loads the script and runs it: one revision each, none lost."""
    with Namespace(served.address, "board") as ns:
        ns.x = 0
        first = ns._snapshot().revision
        for step in range(1, 4):
            with redis_private.client() as direct:
                direct.script_flush()
            if step % 2:
                ns.x = step
            else:
                assert ns._update(x=step, y=step) == first + step
            assert ns._snapshot().revision == first + step
        assert ns._snapshot() == {"x": 3, "y": 2}


def test_a_write_that_finds_the_board_flushed_starts_the_new_epoch(
    served: ServerThread, redis_private: redis_rig.RedisServer
) -> None:
    """An update sent at once onto a board Redis lost: it makes revision 1 of its namespace
    on the new board, registered there (its key listed), and the old
    epoch's watchers are ended, as when any batch finds the board gone."""
    with Namespace(served.address, "board") as ns:
        ns._update(x=1, y=2)
        watcher, frames = connect_raw(served.address)
        try:
            assert exchange(watcher, frames, [1, "watch", "w", None, None])[0][:2] == [1, 0]
            with redis_private.client() as direct:
                direct.flushall()
            assert ns._update(x=2) == 1
            (refusal,) = read_frames(watcher, frames, until_eof=True)
            assert refusal[:3] == [0, 1, "ConnectionLost"]
            assert "new epoch" in refusal[3]
        finally:
            watcher.close()
        assert ns._snapshot() == {"x": 2}
        assert ns._keys() == ["board"]


def test_a_write_with_more_to_do_is_handed_on_unbegun() -> None:
    """A write sent at once that leaves the store more to do (a new epoch, say) hands that on
    as a function for a task to call, not as a coroutine made already: when the server
    stopped before that task ran, the coroutine was reported never awaited (a warning at
    shutdown, an error in this suite)."""
    store = SimpleNamespace(epoch="e2", _follower=set(), on_commit=None)
    call = SimpleNamespace(key="k", changes=None, revision=1, result=1)
    handed: list[Any] = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _written(store, call, handed.append, ("e1", False))  # type: ignore[arg-type]
        assert len(handed) == 1
        assert callable(handed[0])
        assert not inspect.isawaitable(handed[0])
        handed.clear()  # the task that would have called it never runs
        gc.collect()
    assert not [w for w in caught if "never awaited" in str(w.message)]


def test_a_read_of_a_followed_namespace_sent_at_once_tells_what_it_saw_first() -> None:
    """A get of a namespace the store follows is sent at once too: answered from the link's
    callback when the follower was told up to the revision it read (or follows from "now"),
    else handed on to a task that tells the follower the revisions up to it first, as
    ``apply`` does (test_redis_follow.py's reads: a watch starts at what a read saw)."""
    told: list[tuple[str, int]] = []

    async def at_once(store: RedisStore, calls: list[Any]) -> Any:
        answered: list[Any] = []
        event = anyio.Event()

        def done(results: Any) -> None:
            answered.append(results)
            event.set()

        assert store.apply_now(calls, done)
        with anyio.fail_after(NO_HANG_SECONDS):
            await event.wait()
        return answered[0]

    async def main() -> None:
        prefix = redis_rig.unique_prefix()
        clients = [await new_redis_client(False) for _ in range(2)]
        try:
            a, b = (RedisStore(client, prefix=prefix) for client in clients)
            for store in (a, b):
                await store.start()
            b.on_commit = lambda key, revision, changes: told.append((key, revision))
            await b.apply([("get", ("k", "x"))])  # (registered: b knows the namespace)
            b.follow("k", 0)  # (its subscriber does not run: only reads tell)
            for i in range(3):
                await a.apply([("set", ("k", "x", encode_value(i)))])
            later = await at_once(b, [("get", ("k", "x"))])
            assert callable(later)  # the follower is behind: a task tells it first
            assert told == []
            assert await later() == [encode_value(2)]
            assert told == [("k", 1), ("k", 2), ("k", 3)]
            assert await at_once(b, [("get", ("k", "x"))]) == [encode_value(2)]
            b.follow("j")  # from "now": the read it sees starts it, nothing to tell
            await a.apply([("set", ("j", "y", encode_value(1)))])
            assert await at_once(b, [("get", ("j", "y"))]) == [encode_value(1)]
            assert b._follower._keys["j"].told == 1
            for store in (a, b):
                await store.aclose()
        finally:
            for client in clients:
                await client.aclose()

    anyio.run(main, backend="asyncio")
