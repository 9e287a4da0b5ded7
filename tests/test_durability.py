"""A durable store: nothing a change is followed by leaves the server before it is committed.

The server and its clients run in the test's own event loop (on asyncio and on trio), over a
real socket, with an SQLite store whose commits wait for the test to let them go: while a
commit waits, the test sees the server's output held behind its gate, and nothing arrive.
"""

from __future__ import annotations

import contextlib
import os
from typing import Any

import anyio
import pytest

from aionamespace import AsyncNamespace, ConnectionLost, DataFileError, Server, SQLiteStore
from aionamespace.server.durability import LONE_COMMITS, Durability
from aionamespace.server.stores import MemoryStore
from deadlines import async_wait_until

pytestmark = pytest.mark.anyio


class GatedStore(SQLiteStore):
    """An SQLite store whose commits start only when the test releases them, one by one."""

    def __init__(self, path: str) -> None:
        super().__init__(path)
        self.release = anyio.Semaphore(0)
        self.committed = 0  # commits done
        self.gets = 0

    def get(self, key: str, name: str) -> bytes:
        self.gets += 1
        return super().get(key, name)

    def commit_inline(self, *, lone: bool = False) -> bool:
        return False  # every commit waits for the test

    async def commit(self) -> None:
        await self.release.acquire()
        await super().commit()
        self.committed += 1


async def test_replies_reads_and_pushes_wait_for_the_commit(short_tmp: str) -> None:
    store = GatedStore(os.path.join(short_tmp, "data.db"))
    arrived: list[str] = []
    try:
        async with Server(os.path.join(short_tmp, "s.sock"), store=store) as server:
            writer = AsyncNamespace(server.address, "board")
            reader = AsyncNamespace(server.address, "board")
            await writer._ping()
            await reader._ping()
            async with writer._watch("x") as pushes, anyio.create_task_group() as group:

                async def watch() -> None:
                    async for event in pushes:
                        arrived.append(f"push {event.name}={event.value}")
                        return

                async def write() -> None:
                    writer.x = 1
                    await writer._flush()
                    arrived.append("acknowledged")

                async def read() -> None:
                    arrived.append(f"read {await reader.x}")

                group.start_soon(watch)
                group.start_soon(write)
                await async_wait_until(lambda: store.dirty, "the write is applied")
                group.start_soon(read)
                await async_wait_until(lambda: store.gets == 1, "the read is applied")
                gate = server.durability.gate
                await async_wait_until(lambda: len(gate.held) == 3, "three outputs are held")
                assert not gate.open
                assert arrived == []  # the ack, the push, the read: all held
                store.release.release()
            assert store.committed == 1
            assert sorted(arrived) == ["acknowledged", "push x=1", "read 1"]
            await writer._close()
            await reader._close()
    finally:
        store.close()


async def test_batches_applied_during_a_commit_share_the_next(short_tmp: str) -> None:
    """Group commit: 64 tasks' increments take a handful of commits, not 64."""
    store = GatedStore(os.path.join(short_tmp, "data.db"))
    try:
        async with Server(os.path.join(short_tmp, "s.sock"), store=store) as server:
            ns = AsyncNamespace(server.address, "board")
            await ns._ping()
            async with anyio.create_task_group() as group:
                for _ in range(64):
                    group.start_soon(ns._incr, "n")
                await async_wait_until(lambda: store.dirty, "increments are applied")
                for _ in range(64):  # let every commit go that the increments make
                    store.release.release()
            assert await ns.n == 64
            assert store.committed < 64 // 4
            await ns._close()
    finally:
        store.close()
    reopened = SQLiteStore(os.path.join(short_tmp, "data.db"))
    try:
        assert reopened.get("board", "n") == b"\x40"  # 64, as the clients were told
    finally:
        reopened.close()


async def test_acknowledged_writes_are_in_the_file_once_the_server_stops(short_tmp: str) -> None:
    path = os.path.join(short_tmp, "data.db")
    store = SQLiteStore(path)
    try:
        async with Server(os.path.join(short_tmp, "s.sock"), store=store) as server:
            ns = AsyncNamespace(server.address, "board")
            await ns._update(a=1, b=[1, 2])
            await ns._close()
    finally:
        store.close()
    reopened = SQLiteStore(path)
    try:
        assert reopened.snapshot("board", None) == (1, {"a": b"\x01", "b": b"\x92\x01\x02"})
    finally:
        reopened.close()


def test_an_in_memory_store_never_holds() -> None:
    durability = Durability(MemoryStore())
    store: Any = durability.store
    store.set("k", "x", b"\x01")
    assert durability.holding is False
    assert store.on_change is None


class CountingStore(SQLiteStore):
    """An SQLite store that counts the commits made at a batch's end and those awaited."""

    def __init__(self, path: str, *, fail: bool = False, fsync: bool = False) -> None:
        super().__init__(path, fsync=fsync)
        self.inline = self.awaited = 0
        self.fail = fail

    def commit_inline(self, *, lone: bool = False) -> bool:
        if self.fail and self.dirty:
            raise DataFileError("a commit failed (the test's)")
        done = super().commit_inline(lone=lone)
        self.inline += done
        return done

    async def commit(self) -> None:
        self.awaited += 1
        await super().commit()


async def test_a_small_commit_is_made_at_the_end_of_its_batch(short_tmp: str) -> None:
    """A commit without fsync of a few bytes is written by the batch that made it, before its
    replies go, with no committer task woken to do it."""
    path = os.path.join(short_tmp, "data.db")
    store = CountingStore(path)
    try:
        async with Server(os.path.join(short_tmp, "s.sock"), store=store) as server:
            ns = AsyncNamespace(server.address, "board")
            for _ in range(20):
                await ns._incr("n")
                assert not store.dirty  # acknowledged: already in the file
            assert store.inline >= 20
            assert store.awaited == 0
            await ns._close()
    finally:
        store.close()
    reopened = SQLiteStore(path)
    try:
        assert reopened.get("board", "n") == b"\x14"  # 20
    finally:
        reopened.close()


async def test_a_commit_failing_at_a_batch_end_stops_the_server_unacknowledged(
    short_tmp: str,
) -> None:
    store = CountingStore(os.path.join(short_tmp, "data.db"), fail=True)
    acknowledged = False
    ns: AsyncNamespace | None = None
    try:
        with pytest.raises(BaseException) as stopped:  # noqa: PT011,PT012  (checked below)
            async with Server(os.path.join(short_tmp, "s.sock"), store=store) as server:
                ns = AsyncNamespace(server.address, "board")
                await ns._ping()
                with contextlib.suppress(ConnectionLost):  # (or this task is cancelled)
                    await ns._incr("n")
                    acknowledged = True
                await anyio.sleep_forever()  # until the server's failure ends this
        assert stopped.group_contains(DataFileError, match="the test's")
    finally:
        if ns is not None:
            with anyio.CancelScope(shield=True):
                await ns._close()
        store.close()
    assert not acknowledged


async def test_a_lone_writers_fsync_commits_are_made_at_the_end_of_its_batches(
    short_tmp: str,
) -> None:
    """With fsync, one connection writing alone has its commits made by its batches, not by
    the committer task (which would cost it a wake-up, a turn of the loop and the gate)."""
    path = os.path.join(short_tmp, "data.db")
    store = CountingStore(path, fsync=True)
    try:
        async with Server(os.path.join(short_tmp, "s.sock"), store=store) as server:
            ns = AsyncNamespace(server.address, "board")
            for _ in range(LONE_COMMITS):
                await ns._incr("n")
            assert store.awaited == LONE_COMMITS  # not a lone writer yet
            for _ in range(20):
                await ns._incr("n")
                assert not store.dirty  # acknowledged: already in the file
            assert store.inline == 20
            assert store.awaited == LONE_COMMITS
            await ns._close()
    finally:
        store.close()
    reopened = SQLiteStore(path)
    try:
        assert reopened.get("board", "n") == bytes([LONE_COMMITS + 20])
    finally:
        reopened.close()


async def test_a_second_writer_sends_commits_back_to_the_committer(short_tmp: str) -> None:
    """Once another connection writes, the lone writer's commits go back to the committer
    task, where the batches of both share commits; it is lone again after LONE_COMMITS."""
    store = CountingStore(os.path.join(short_tmp, "data.db"), fsync=True)
    try:
        async with Server(os.path.join(short_tmp, "s.sock"), store=store) as server:
            lone = AsyncNamespace(server.address, "board")
            other = AsyncNamespace(server.address, "board")
            for _ in range(LONE_COMMITS + 1):
                await lone._incr("n")
            assert store.inline == 1
            await other._incr("n")
            assert store.inline == 1  # the other's batch: not a lone writer's
            for _ in range(LONE_COMMITS):
                await lone._incr("n")
            assert store.inline == 1  # no longer alone: the committer commits
            await lone._incr("n")
            assert store.inline == 2  # alone again
            assert await other.n == 2 * LONE_COMMITS + 3
            await lone._close()
            await other._close()
    finally:
        store.close()


async def test_writers_on_many_connections_share_fsync_commits(short_tmp: str) -> None:
    """Group commit across connections: 16 writers' 160 increments take far fewer commits."""
    store = CountingStore(os.path.join(short_tmp, "data.db"), fsync=True)
    try:
        async with Server(os.path.join(short_tmp, "s.sock"), store=store) as server:
            writers = [AsyncNamespace(server.address, "board") for _ in range(16)]
            for writer in writers:
                await writer._ping()

            async def write(ns: AsyncNamespace) -> None:
                for _ in range(10):
                    await ns._incr("n")

            async with anyio.create_task_group() as group:
                for writer in writers:
                    group.start_soon(write, writer)
            assert await writers[0].n == 160
            assert store.inline + store.awaited < 160 // 4
            for writer in writers:
                await writer._close()
    finally:
        store.close()


async def test_with_fsync_a_few_changes_wait_for_the_many_the_last_commit_answered(
    short_tmp: str,
) -> None:
    """After a commit of many changes, a commit of a few waits (at most as long as the last
    one took) for the rest of its writers' next changes, so that all share one fsync: the
    group-commit of 64 tasks, which would otherwise split into two groups taking turns."""
    store = SQLiteStore(os.path.join(short_tmp, "data.db"), fsync=True)
    durability = Durability(store)
    connection = object()  # (the identity of a connection is all Durability keeps of it)

    def batch(changes: int) -> None:
        durability.batching = True
        for i in range(changes):
            store.set("board", f"x{i}", b"\x01")
            durability.settle(connection)
        durability.batch_ended()

    try:
        async with anyio.create_task_group() as group:
            group.start_soon(durability.run)
            batch(63)
            await async_wait_until(lambda: not store.dirty, "the 63 are committed")
            # As if that commit had taken a minute: the wait below cannot end at its deadline
            # on a slow machine before the test looks.
            durability._last_seconds = 60.0
            batch(1)
            await anyio.wait_all_tasks_blocked()
            assert store.waiting() == 1  # not committed: it waits for the others
            batch(62)
            await async_wait_until(lambda: not store.dirty, "the 63 are committed together")
            assert durability._last_size == 63
            batch(2)  # fewer than a quarter of 63, and nothing follows: committed at the
            await async_wait_until(lambda: not store.dirty, "the deadline")  # deadline
            assert durability._last_size == 2
            group.cancel_scope.cancel()
    finally:
        store.close()
