"""AsyncNamespace on trio: one reader task per connection, replies resume parked tasks.

The rest of the suite runs every async test on trio too; these pin what the trio transport has
to get right itself: its reader (a system task) ends with the connection and with the run, a
request's waiter is its parked task, and cancelling parked tasks at any moment never hands a
reply to the wrong one.
"""

from __future__ import annotations

import gc
import os
import random
import socket

import pytest
import trio
import trio.testing

from aionamespace import AsyncNamespace, ConnectionLost, Retry, ServerThread
from aionamespace.client.trio_transport import Parked, TrioTransport
from deadlines import NO_HANG_SECONDS

ON_TRIO = [pytest.mark.anyio, pytest.mark.parametrize("anyio_backend", ["trio"])]


def on_trio(test):  # type: ignore[no-untyped-def]
    for mark in ON_TRIO:
        test = mark(test)
    return test


def living_tasks() -> int:
    return trio.lowlevel.current_statistics().tasks_living


@on_trio
async def test_the_reader_task_ends_when_the_proxy_closes(server: ServerThread) -> None:
    before = living_tasks()
    ns = AsyncNamespace(server.address, "reader")
    ns.x = 1
    assert await ns.x == 1
    transport = ns._aionamespace.transport
    assert type(transport) is TrioTransport
    assert living_tasks() == before + 1  # the reader
    await ns._close()
    await trio.testing.wait_all_tasks_blocked()  # the reader, told of the close, has left
    assert living_tasks() == before
    assert await ns.x == 1  # a later use reconnects, with a reader of its own
    assert living_tasks() == before + 1
    await ns._close()
    await trio.testing.wait_all_tasks_blocked()
    assert living_tasks() == before


@on_trio
async def test_the_reader_task_ends_when_the_server_goes(short_tmp: str) -> None:
    before = living_tasks()
    address = os.path.join(short_tmp, "gone.sock")
    server = await trio.to_thread.run_sync(ServerThread(address).__enter__)
    ns = AsyncNamespace(address, "gone", retry=Retry(attempts=1))
    ns.x = 1
    assert await ns.x == 1
    assert living_tasks() == before + 1
    await trio.to_thread.run_sync(server.stop)
    with trio.fail_after(NO_HANG_SECONDS), pytest.raises(ConnectionLost):
        await ns.x
    await trio.testing.wait_all_tasks_blocked()
    assert living_tasks() == before
    assert ns._aionamespace.transport.link is None


def test_a_proxy_never_closed_is_closed_with_its_run(server: ServerThread) -> None:
    """The run's end cancels the reader, which closes the connection: no socket is left
    open (the suite turns ResourceWarning into an error), and another run reconnects."""
    ns = AsyncNamespace(server.address, "run")
    ns.x = 1

    async def use() -> tuple[object, socket.socket]:
        value = await ns.x
        link = ns._aionamespace.transport.link
        assert link is not None
        return value, link.sock

    value, sock = trio.run(use)
    assert value == 1
    assert sock.fileno() == -1  # closed when the run ended
    assert ns._aionamespace.transport.link is None
    value, sock = trio.run(use)
    assert value == 1
    assert sock.fileno() == -1
    gc.collect()


@on_trio
async def test_each_request_waits_as_its_parked_task(server: ServerThread) -> None:
    """Cancelled waiters leave the table at once; the others get their own replies, and
    nothing is left behind."""
    ns = AsyncNamespace(server.address, "parked")
    table = ns._aionamespace.table
    seen: list[type] = []
    original = table.request

    def recording(operation, args, waiter):  # type: ignore[no-untyped-def]
        seen.append(type(waiter))
        return original(operation, args, waiter)

    table.request = recording  # type: ignore[method-assign]
    ns.v = 7
    results: list[object] = []

    async def get() -> None:
        results.append(await ns.v)

    async with trio.open_nursery() as nursery:
        for _ in range(8):
            nursery.start_soon(get)
    assert results == [7] * 8
    assert seen.count(Parked) == 8
    assert table.waiters == {}
    await ns._close()


@on_trio
async def test_a_parked_task_is_resumed_with_its_own_result_or_error() -> None:
    """The waiter itself is what ``wait_task_rescheduled`` unwraps: its result, returned,
    or its error, raised (a reply's, or a lost connection's: one error for many waiters)."""
    error = ConnectionLost("gone")
    outcomes: dict[int, object] = {}
    waiters: dict[int, Parked] = {}

    async def park(number: int) -> None:
        waiter = waiters[number] = Parked(trio.lowlevel.current_task())
        waiter.parked = True
        try:
            outcomes[number] = await trio.lowlevel.wait_task_rescheduled(waiter)
        except ConnectionLost as exc:
            outcomes[number] = exc

    async with trio.open_nursery() as nursery:
        for number in range(3):
            nursery.start_soon(park, number)
        await trio.testing.wait_all_tasks_blocked()
        waiters[0].set_result("zero")
        waiters[1].set_exception(error)
        waiters[2].set_exception(error)
    assert outcomes == {0: "zero", 1: error, 2: error}
    assert not any(waiter.parked for waiter in waiters.values())


@on_trio
async def test_parked_tasks_cancelled_at_any_moment_never_take_each_others_replies(
    server: ServerThread,
) -> None:
    """64 tasks read their own names while another task cancels them at random: before their
    frame leaves, while it is in flight, after the reply came. Every read that completes has
    its own value, and the proxy ends with nothing waiting."""
    ns = AsyncNamespace(server.address, "cancels")
    tasks, rounds = 64, 40
    for i in range(tasks):
        setattr(ns, f"v{i}", i)
    await ns._flush()
    scopes: dict[int, trio.CancelScope] = {}
    completed = cancelled = 0
    wrong: list[tuple[int, object]] = []
    chooser = random.Random(17)

    async def reader(i: int) -> None:
        nonlocal completed, cancelled
        name = f"v{i}"
        for _ in range(rounds):
            with trio.CancelScope() as scope:
                scopes[i] = scope
                value = await getattr(ns, name)
                if value != i:
                    wrong.append((i, value))
                completed += 1
            if scope.cancelled_caught:
                cancelled += 1
        scopes.pop(i, None)

    async def canceller() -> None:
        while scopes:
            chooser.choice(list(scopes.values())).cancel()
            for _ in range(chooser.randrange(4)):
                await trio.lowlevel.checkpoint()

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            for i in range(tasks):
                nursery.start_soon(reader, i)
            await trio.lowlevel.checkpoint()  # (every reader has its scope)
            nursery.start_soon(canceller)
    assert wrong == []
    assert completed + cancelled == tasks * rounds
    assert completed > 0
    assert cancelled > 0
    assert ns._aionamespace.table.waiters == {}
    assert [await getattr(ns, f"v{i}") for i in range(tasks)] == list(range(tasks))
    await ns._close()


@on_trio
async def test_the_reader_waits_in_one_cancel_scope_across_reads(server: ServerThread) -> None:
    """The reader's scope (whose deadline is the next look at the connection's silence)
    lasts from one look to the next, not one read: 50 round trips, one scope (on main, a
    new one for each chunk read)."""
    ns = AsyncNamespace(server.address, "scope")
    ns.v = 1
    await ns._flush()
    transport = ns._aionamespace.transport
    assert isinstance(transport, TrioTransport)
    assert transport.period is not None
    scopes = []
    start = trio.current_time()
    for _ in range(50):
        assert await ns.v == 1
        scopes.append(transport.watch_scope)  # (the reader waits in it now)
    looks = (trio.current_time() - start) / transport.period  # (on a slow machine, some)
    assert all(scope is not None for scope in scopes)
    assert len({id(scope) for scope in scopes}) <= 2 + looks
    await ns._close()
