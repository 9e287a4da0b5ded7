"""Watches and _wait_for: pushed changes, revisions, resuming with since=, bounded history.

Every test runs against a server on asyncio and on trio (``ServerThread(backend=...)``); async
clients run on both event loops too. Writers are spawned processes or threads; nothing waits
by sleeping: a test waits for events, process exits, or the server's own signal that a watch
is registered (``SignallingStore``).
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.sharedctypes
import multiprocessing.synchronize
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import anyio
import anyio.to_thread
import pytest

import aionamespace
from aionamespace import (
    AsyncNamespace,
    ConnectionLost,
    Limits,
    MemoryStore,
    Namespace,
    ServerThread,
)
from aionamespace._errors import HistoryExpired
from aionamespace.client.calls import WatchEvent
from awaited_store import new_store, over_every_store
from deadlines import NO_HANG_SECONDS, wait_until
from waiting_calls import blocked_reading

CTX = multiprocessing.get_context("spawn")
TIMEOUT_SECONDS = 30.0
WAKEUP_LATENCY_SECONDS = 0.2
WRITERS, WRITES = 4, 250

# ---------------------------------------------------------------------- children and helpers


def set_many(ns: Namespace, worker: int, times: int) -> None:
    for i in range(times):
        setattr(ns, f"w{worker}", i)
    ns._close()


def set_flag_when_watched(
    ns: Namespace, watched: Callable[[float], bool], report: Callable[[float], None]
) -> None:
    """Wait until the server registers the watch, then note the time and write."""
    assert watched(TIMEOUT_SECONDS), "the watch was never registered"
    ns.other = "noise"  # first a change the waiter must ignore
    wrote_at = time.monotonic()  # CLOCK_MONOTONIC: comparable across processes on one host
    ns.flag = "go"
    report(wrote_at)
    ns._close()


def set_flag_in_child(
    ns: Namespace,
    watched: multiprocessing.synchronize.Event,
    wrote_at: multiprocessing.sharedctypes.Synchronized[float],
) -> None:
    def report(when: float) -> None:
        wrote_at.value = when

    set_flag_when_watched(ns, watched.wait, report)


class SignallingStore(MemoryStore):
    """A MemoryStore that calls ``signal`` when a watch of ``["flag"]`` reads its snapshot.

    The dispatcher registers the watch in the same synchronous step, so any request a writer
    sends after the signal is applied after the watch exists.
    """

    def __init__(self, signal: Callable[[], None]) -> None:
        super().__init__()
        self._signal = signal

    def snapshot(
        self,
        key: str,
        names: Sequence[str] | None,
    ) -> tuple[int, dict[str, bytes]]:
        result = super().snapshot(key, names)
        if names == ["flag"]:
            self._signal()
        return result


class Spawned:
    """Spawned writer processes, joined (and checked) on exit; killed if they outlive it."""

    def __init__(self, target: Callable[..., None], arguments: Sequence[tuple[Any, ...]]) -> None:
        self.processes = [CTX.Process(target=target, args=args) for args in arguments]

    def __enter__(self) -> Spawned:
        for process in self.processes:
            process.start()
        return self

    def join(self) -> None:
        deadline = time.monotonic() + TIMEOUT_SECONDS
        for process in self.processes:
            process.join(max(0.0, deadline - time.monotonic()))
        assert [p.exitcode for p in self.processes] == [0] * len(self.processes)

    def __exit__(self, *exc_info: object) -> None:
        for process in self.processes:
            if process.is_alive():
                process.kill()
            process.join(TIMEOUT_SECONDS)
            process.close()


@pytest.fixture
def watch_server(server_backend: str, short_tmp: str, store_kind: str) -> Iterator[ServerThread]:
    address = os.path.join(short_tmp, "ns.sock")
    with ServerThread(address, backend=server_backend, store=new_store(store_kind)) as server:
        yield server


@pytest.fixture
def ns(watch_server: ServerThread) -> Iterator[Namespace]:
    proxy = Namespace(watch_server.address, "board")
    yield proxy
    proxy._close()


def check_every_write_in_order(events: list[WatchEvent], start: int) -> None:
    """Contiguous revisions after ``start``; each writer's values all there, in its order."""
    assert [e.revision for e in events] == list(range(start + 1, start + 1 + WRITERS * WRITES))
    assert not any(e.deleted for e in events)
    for worker in range(WRITERS):
        assert [e.value for e in events if e.name == f"w{worker}"] == list(range(WRITES))


def count_watches(server: ServerThread) -> int:
    return server.server.dispatcher.watches.count()


# ---------------------------------------------------------------------- every change, in order


@over_every_store
@pytest.mark.slow
def test_sync_watch_sees_every_change_of_4_writer_processes(
    watch_server: ServerThread, ns: Namespace
) -> None:
    ns.w0 = "before"
    with (
        ns._watch() as watch,
        Spawned(set_many, [(ns, w, WRITES) for w in range(WRITERS)]) as writers,
    ):
        assert watch.revision == 1
        assert watch.values == {"w0": "before"}
        events = [watch.next(timeout=TIMEOUT_SECONDS) for _ in range(WRITERS * WRITES)]
        writers.join()
    check_every_write_in_order(events, start=1)


@pytest.mark.slow
@pytest.mark.anyio
async def test_async_watch_sees_every_change_of_4_writer_processes(
    watch_server: ServerThread,
) -> None:
    ans = AsyncNamespace(watch_server.address, "board")
    events: list[WatchEvent] = []
    with anyio.fail_after(TIMEOUT_SECONDS):
        async with ans._watch() as watch:
            assert (watch.revision, watch.values) == (0, {})
            writer_proxy = Namespace(watch_server.address, "board")
            with Spawned(set_many, [(writer_proxy, w, WRITES) for w in range(WRITERS)]) as writers:
                async for event in watch:
                    events.append(event)
                    if len(events) == WRITERS * WRITES:
                        break
                await anyio.to_thread.run_sync(writers.join)
    check_every_write_in_order(events, start=0)
    await ans._close()


@over_every_store
def test_iterating_a_watch_over_unix_and_tcp(server: ServerThread) -> None:
    ns = Namespace(server.address, "board")
    seen: list[WatchEvent] = []
    with ns._watch() as watch:
        for value in range(3):
            ns.n = value
        for event in watch:
            seen.append(event)
            if event.value == 2:
                break
    ns._close()
    assert seen == [WatchEvent("n", value, value + 1) for value in range(3)]


@over_every_store
def test_update_is_one_revision_of_several_events(ns: Namespace) -> None:
    with ns._watch() as watch:
        revision = ns._update(a=1, b=2)
        ns.c = 3
        events = [watch.next(timeout=TIMEOUT_SECONDS) for _ in range(3)]
    assert events == [
        WatchEvent("a", 1, revision),
        WatchEvent("b", 2, revision),
        WatchEvent("c", 3, revision + 1),
    ]


@over_every_store
def test_deletions_are_events(ns: Namespace) -> None:
    ns._update(a=1, b=2)
    with ns._watch() as watch:
        del ns.a
        assert ns._pop("b") == 2
        ns.a = None  # a value of None is not a deletion
        events = [watch.next(timeout=TIMEOUT_SECONDS) for _ in range(3)]
    assert events == [
        WatchEvent("a", None, 2, deleted=True),
        WatchEvent("b", None, 3, deleted=True),
        WatchEvent("a", None, 4, deleted=False),
    ]


@over_every_store
def test_a_names_filter_sees_only_those_names(ns: Namespace) -> None:
    ns._update(a=0, b=0)
    with ns._watch("a", "c") as watch:
        assert watch.values == {"a": 0}  # only watched names that exist
        assert watch.revision == 1
        ns.b = 1
        ns.a = 1
        ns.d = 1
        ns._update(b=2, c=2)
        del ns.b
        del ns.c
        events = [watch.next(timeout=TIMEOUT_SECONDS) for _ in range(3)]
    assert events == [
        WatchEvent("a", 1, 3),
        WatchEvent("c", 2, 5),
        WatchEvent("c", None, 7, deleted=True),
    ]


@over_every_store
@pytest.mark.anyio
async def test_async_watch_filter_deletions_and_values(watch_server: ServerThread) -> None:
    async with AsyncNamespace(watch_server.address, "board") as ans:
        await ans._update(a=1, b=1)
        with anyio.fail_after(TIMEOUT_SECONDS):
            async with ans._watch("b") as watch:
                assert (watch.revision, watch.values) == (1, {"b": 1})
                ans.a = 2
                ans.b = 2
                del ans.b
                await ans._flush()
                events = []
                async for event in watch:
                    events.append(event)
                    if len(events) == 2:
                        break
    assert events == [WatchEvent("b", 2, 3), WatchEvent("b", None, 4, deleted=True)]


def test_a_timed_out_next_leaves_the_watch_usable(ns: Namespace) -> None:
    with ns._watch() as watch:
        with pytest.raises(TimeoutError):
            watch.next(timeout=0.05)
        ns.a = 1
        assert watch.next(timeout=TIMEOUT_SECONDS) == WatchEvent("a", 1, 1)


# ---------------------------------------------------------------------- resuming with since=


@over_every_store
def test_since_resumes_with_exactly_the_missed_events(ns: Namespace) -> None:
    ns.a = 1
    with ns._watch() as watch:
        ns.b = 2
        last = watch.next(timeout=TIMEOUT_SECONDS).revision
    assert last == 2
    ns.c = 3  # missed while disconnected
    ns._update(d=4, e=5)
    del ns.b
    with ns._watch(since=last) as watch:
        assert watch.revision == 5
        assert watch.values == {}  # resuming: the replay replaces the snapshot
        replayed = [watch.next(timeout=TIMEOUT_SECONDS) for _ in range(4)]
        ns.f = 6
        live = watch.next(timeout=TIMEOUT_SECONDS)  # right after the replay: nothing else
    assert replayed == [
        WatchEvent("c", 3, 3),
        WatchEvent("d", 4, 4),
        WatchEvent("e", 5, 4),
        WatchEvent("b", None, 5, deleted=True),
    ]
    assert live == WatchEvent("f", 6, 6)


@over_every_store
def test_since_with_names_replays_only_those(ns: Namespace) -> None:
    ns.a = 0
    ns.b = 0
    ns.a = 1
    ns.b = 1
    with ns._watch("b", since=1) as watch:
        replayed = [watch.next(timeout=TIMEOUT_SECONDS) for _ in range(2)]
        ns.a = 2
        ns.b = 2
        live = watch.next(timeout=TIMEOUT_SECONDS)
    assert replayed == [WatchEvent("b", 0, 2), WatchEvent("b", 1, 4)]
    assert live == WatchEvent("b", 2, 6)


@over_every_store
def test_since_the_current_revision_replays_nothing(ns: Namespace) -> None:
    ns.a = 1
    with ns._watch(since=1) as watch:
        ns.a = 2
        assert watch.next(timeout=TIMEOUT_SECONDS) == WatchEvent("a", 2, 2)
    with ns._watch(since=0) as watch:  # from the very beginning: all of it
        assert [watch.next(timeout=TIMEOUT_SECONDS) for _ in range(2)] == [
            WatchEvent("a", 1, 1),
            WatchEvent("a", 2, 2),
        ]


@over_every_store
@pytest.mark.anyio
async def test_async_since_resumes_after_a_disconnect(watch_server: ServerThread) -> None:
    async with AsyncNamespace(watch_server.address, "board") as ans:
        with anyio.fail_after(TIMEOUT_SECONDS):
            async with ans._watch() as watch:
                ans.a = 1
                await ans._flush()
                async for event in watch:
                    last = event.revision
                    break
            ans.a = 2
            del ans.a
            await ans._flush()
            async with ans._watch(since=last) as watch:
                assert (watch.revision, watch.values) == (3, {})
                ans.b = 3
                await ans._flush()
                events = []
                async for event in watch:
                    events.append(event)
                    if len(events) == 3:
                        break
    assert events == [
        WatchEvent("a", 2, 2),
        WatchEvent("a", None, 3, deleted=True),
        WatchEvent("b", 3, 4),
    ]


@pytest.mark.parametrize("since", [-1, 1.5, "1", True])
def test_since_must_be_a_revision(ns: Namespace, since: Any) -> None:
    with pytest.raises(ValueError, match="since must be a revision"):
        ns._watch(since=since)


# ---------------------------------------------------------------------- bounded history


@pytest.fixture
def short_history(server_backend: str, short_tmp: str, store_kind: str) -> Iterator[ServerThread]:
    address = os.path.join(short_tmp, "short.sock")
    limits = Limits(max_history_revisions=5)
    store = new_store(store_kind, limits)
    with ServerThread(address, backend=server_backend, limits=limits, store=store) as server:
        yield server


def test_history_expired_is_exported() -> None:
    assert aionamespace.HistoryExpired is HistoryExpired
    assert "HistoryExpired" in aionamespace.__all__


@over_every_store
def test_since_older_than_the_history_raises_history_expired(short_history: ServerThread) -> None:
    ns = Namespace(short_history.address, "board")
    for i in range(10):
        ns.n = i  # revisions 1..10; the server keeps 6..10
    with pytest.raises(HistoryExpired, match="older than the history"):
        ns._watch(since=4)
    with ns._watch(since=5) as watch:  # the oldest resumable point
        assert [watch.next(timeout=TIMEOUT_SECONDS) for _ in range(5)] == [
            WatchEvent("n", i - 1, i) for i in range(6, 11)
        ]
    with pytest.raises(HistoryExpired, match="ahead of this namespace"):
        ns._watch(since=11)
    ns.n = "still fine"  # a refused watch breaks nothing
    assert ns._snapshot().revision == 11
    ns._close()


@over_every_store
@pytest.mark.anyio
async def test_async_since_too_old_raises_history_expired(short_history: ServerThread) -> None:
    async with AsyncNamespace(short_history.address, "board") as ans:
        for i in range(7):
            ans.n = i
        await ans._flush()
        with pytest.raises(HistoryExpired):
            async with ans._watch(since=1):
                pass
        async with ans._watch(since=2) as watch:
            async for event in watch:
                assert event == WatchEvent("n", 2, 3)
                break


def test_since_from_before_a_server_restart_raises_history_expired(
    server_backend: str, short_tmp: str
) -> None:
    address = os.path.join(short_tmp, "restart.sock")
    with ServerThread(address, backend=server_backend):
        ns = Namespace(address, "board")
        ns.a = 1
        ns.a = 2
        revision = ns._snapshot().revision
        ns._close()
    with ServerThread(address, backend=server_backend):
        ns.a = "after restart"
        with pytest.raises(HistoryExpired, match="another lifetime of this board"):
            ns._watch(since=revision)  # a Revision: of the first server's epoch
        with pytest.raises(HistoryExpired, match="ahead"):
            ns._watch(since=int(revision))  # a plain int: ahead of this namespace
        ns._close()


@over_every_store
def test_history_never_replays_part_of_a_revision(short_history: ServerThread) -> None:
    """A revision with several changes (_update) is replayed whole, or HistoryExpired.

    The history holds 5 *changes*: after revisions 1, 2, 3 (a, b, c at once), 4, 5 and 6 it
    holds 3b, 3c, 4, 5, 6. Resuming since=2 must not silently skip 3a.
    """
    ns = Namespace(short_history.address, "board")
    ns.x = 1
    ns.y = 2
    ns._update(a=1, b=2, c=3)
    ns.d = 4
    ns.e = 5
    ns.f = 6
    try:
        with ns._watch(since=2) as watch:
            events = [watch.next(timeout=TIMEOUT_SECONDS)]
            while events[-1].revision < 6:
                events.append(watch.next(timeout=TIMEOUT_SECONDS))
    except HistoryExpired:
        return  # acceptable: the history no longer holds all of revision 3
    finally:
        ns._close()
    assert [(e.name, e.revision) for e in events] == [
        ("a", 3),
        ("b", 3),
        ("c", 3),
        ("d", 4),
        ("e", 5),
        ("f", 6),
    ]


# ---------------------------------------------------------------------- _wait_for


@pytest.fixture
def signalling_server(
    server_backend: str, short_tmp: str
) -> Iterator[tuple[ServerThread, threading.Event]]:
    """A server whose store says (through the event) when a watch of "flag" is registered."""
    watched = threading.Event()
    address = os.path.join(short_tmp, "wait.sock")
    with ServerThread(
        address, backend=server_backend, store=SignallingStore(watched.set)
    ) as server:
        yield server, watched


def test_wait_for_wakes_within_milliseconds_of_a_write_from_a_thread(
    signalling_server: tuple[ServerThread, threading.Event],
) -> None:
    server, watched = signalling_server
    wrote_at: list[float] = []
    ns = Namespace(server.address, "board")
    writer = threading.Thread(
        target=set_flag_when_watched,
        args=(Namespace(server.address, "board"), watched.wait, wrote_at.append),
    )
    writer.start()
    try:
        value = ns._wait_for("flag", lambda v: v == "go", timeout=TIMEOUT_SECONDS)
        woke_at = time.monotonic()
    finally:
        writer.join(TIMEOUT_SECONDS)
        ns._close()
    assert value == "go"
    assert 0 <= woke_at - wrote_at[0] < WAKEUP_LATENCY_SECONDS


@pytest.mark.slow
def test_wait_for_wakes_within_milliseconds_of_a_write_from_a_process(
    server_backend: str, short_tmp: str
) -> None:
    watched = CTX.Event()
    wrote_at = CTX.Value("d", 0.0)
    address = os.path.join(short_tmp, "wait.sock")
    with ServerThread(address, backend=server_backend, store=SignallingStore(watched.set)):
        ns = Namespace(address, "board")
        with Spawned(set_flag_in_child, [(ns, watched, wrote_at)]) as writer:
            value = ns._wait_for("flag", lambda v: v == "go", timeout=TIMEOUT_SECONDS)
            woke_at = time.monotonic()
            writer.join()
        ns._close()
    assert value == "go"
    assert 0 < woke_at - wrote_at.value < WAKEUP_LATENCY_SECONDS


@pytest.mark.anyio
async def test_async_wait_for_wakes_within_milliseconds_of_a_write(
    signalling_server: tuple[ServerThread, threading.Event],
) -> None:
    server, watched = signalling_server
    wrote_at: list[float] = []
    ans = AsyncNamespace(server.address, "board")

    async def write() -> None:
        await anyio.to_thread.run_sync(
            set_flag_when_watched, Namespace(server.address, "board"), watched.wait, wrote_at.append
        )

    with anyio.fail_after(TIMEOUT_SECONDS):
        async with anyio.create_task_group() as group:
            group.start_soon(write)
            value = await ans._wait_for("flag", lambda v: v == "go")
            woke_at = time.monotonic()
    await ans._close()
    assert value == "go"
    assert 0 <= woke_at - wrote_at[0] < WAKEUP_LATENCY_SECONDS


def test_wait_for_returns_a_value_that_already_holds(ns: Namespace) -> None:
    ns.count = 5
    assert ns._wait_for("count", lambda v: v >= 5, timeout=TIMEOUT_SECONDS) == 5


def test_wait_for_without_predicate_returns_the_next_set(
    signalling_server: tuple[ServerThread, threading.Event],
) -> None:
    server, watched = signalling_server
    ns = Namespace(server.address, "board")
    ns.flag = "old"

    def write() -> None:
        writer = Namespace(server.address, "board")
        assert watched.wait(TIMEOUT_SECONDS)
        del writer.flag  # a deletion does not count
        writer.flag = "old"  # the same value again is a new set
        writer._close()

    thread = threading.Thread(target=write)
    thread.start()
    try:
        assert ns._wait_for("flag", timeout=TIMEOUT_SECONDS) == "old"
        assert ns._snapshot().revision == 3
    finally:
        thread.join(TIMEOUT_SECONDS)
        ns._close()


def test_wait_for_times_out(ns: Namespace) -> None:
    ns.flag = 0
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        ns._wait_for("flag", lambda v: v > 0, timeout=0.1)
    assert 0.1 <= time.monotonic() - started < 2


def test_wait_for_and_next_with_a_zero_timeout_raise_timeout_error(ns: Namespace) -> None:
    """timeout=0 means "do not wait", as for the lock; the watch stays usable."""
    with pytest.raises(TimeoutError):
        ns._wait_for("missing", timeout=0)
    with ns._watch() as watch:
        with pytest.raises(TimeoutError):
            watch.next(timeout=0)
        ns.a = 1
        assert watch.next(timeout=TIMEOUT_SECONDS) == WatchEvent("a", 1, 1)


@pytest.mark.anyio
async def test_async_wait_for_times_out(watch_server: ServerThread) -> None:
    async with AsyncNamespace(watch_server.address, "board") as ans:
        ans.flag = 0
        started = time.monotonic()
        with pytest.raises(TimeoutError):
            await ans._wait_for("flag", lambda v: v > 0, timeout=0.1)
        assert 0.1 <= time.monotonic() - started < 2
        with pytest.raises(TimeoutError):
            await ans._wait_for("missing", timeout=0)
        ans.flag = 1
        assert await ans._wait_for("flag", lambda v: v > 0, timeout=TIMEOUT_SECONDS) == 1


# ---------------------------------------------------------------------- server-side cleanup


def test_a_closed_watch_is_forgotten_and_others_keep_working(
    watch_server: ServerThread, ns: Namespace
) -> None:
    with ns._watch() as kept:
        gone = ns._watch("a")
        assert count_watches(watch_server) == 2
        gone.close()
        for _ in range(1_000):  # each ping is a server round trip: it sees the hang-up soon
            if count_watches(watch_server) == 1:
                break
            ns._ping()
        assert count_watches(watch_server) == 1
        ns.a = 1
        assert kept.next(timeout=TIMEOUT_SECONDS) == WatchEvent("a", 1, 1)
    for _ in range(1_000):
        if count_watches(watch_server) == 0:
            break
        ns._ping()
    assert count_watches(watch_server) == 0
    assert watch_server.server.dispatcher._watches == {}


@pytest.mark.anyio
async def test_a_closed_async_watch_is_forgotten(watch_server: ServerThread) -> None:
    async with AsyncNamespace(watch_server.address, "board") as ans:
        async with ans._watch() as kept:
            async with ans._watch("a"):
                assert count_watches(watch_server) == 2
            for _ in range(1_000):
                if count_watches(watch_server) == 1:
                    break
                await ans._ping()
            assert count_watches(watch_server) == 1
            ans.a = 1
            await ans._flush()
            with anyio.fail_after(TIMEOUT_SECONDS):
                async for event in kept:
                    assert event == WatchEvent("a", 1, 1)
                    break


def test_a_sync_watch_raises_the_goodbye_of_a_server_shutting_down(short_tmp: str) -> None:
    """A server stopping gracefully says why before it closes: the blocked watch raises that
    (it raised IndexError from an empty queue of events before the transport rebuild)."""
    server = ServerThread(os.path.join(short_tmp, "bye.sock"))
    server.start()
    try:
        watch = Namespace(server.address, "bye")._watch("x")
        outcome: list[BaseException] = []

        def wait_for_an_event() -> None:
            try:
                watch.next(timeout=NO_HANG_SECONDS)
            except BaseException as exc:
                outcome.append(exc)

        waiter = threading.Thread(target=wait_for_an_event)
        waiter.start()
        wait_until(lambda: blocked_reading(waiter, "next"), "the watch waits for an event")
    finally:
        server.stop()
    waiter.join(NO_HANG_SECONDS)
    assert len(outcome) == 1
    assert type(outcome[0]) is ConnectionLost
    assert "shutting down" in str(outcome[0])
