"""A durable store: nothing a change is followed by leaves the server before it is committed.

The server and its clients run in the test's own event loop (on asyncio and on trio), over a
real socket, with an SQLite store whose commits wait for the test to let them go: while a
commit waits, the test sees the server's output held behind its gate, and nothing arrive.
"""

from __future__ import annotations

import os
from typing import Any

import anyio
import pytest

from aionamespace import AsyncNamespace, Server, SQLiteStore
from aionamespace.server.durability import Durability
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
