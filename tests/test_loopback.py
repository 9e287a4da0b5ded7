"""Proxies over the in-memory transport: the whole client path against a Dispatcher, no socket.

``LoopbackServer`` hands a proxy's bytes to a ``ServerConnection`` and a ``Dispatcher`` in this
process, and the real transports (blocking, asyncio, trio) run over those in-memory ends. The
tests here prove that nothing opens a socket on that path, and that the proxies' behaviour is
the behaviour they have against a real server (the atomic suite runs on it too: see
test_atomic.py's ``client`` fixture).
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator

import anyio
import pytest

from aionamespace import (
    AsyncNamespace,
    AuthenticationError,
    HistoryExpired,
    Limits,
    Namespace,
    NamespaceGone,
)
from aionamespace.client.loopback import LoopbackServer
from deadlines import async_wait_until, wait_until


@contextlib.contextmanager
def no_sockets() -> Iterator[None]:
    """Any socket made inside fails the test (an event loop makes its own before)."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("a socket was opened on the loopback path")

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(socket, "socket", refuse)
        patch.setattr(socket, "socketpair", refuse)
        patch.setattr(socket, "create_connection", refuse)
        yield


@no_sockets()
def test_a_sync_proxy_runs_with_no_socket() -> None:
    board = LoopbackServer()
    ns = Namespace(board, "board")
    ns.status = "running"
    assert ns.status == "running"
    assert ns._incr("count", 2) == 2
    assert ns._append("log", "a", "b") == 2
    snap = ns._snapshot()
    assert snap == {"status": "running", "count": 2, "log": ["a", "b"]}
    assert snap.revision == 3
    del ns.status
    with pytest.raises(AttributeError, match="status"):
        ns.status  # noqa: B018
    assert str(ns) == "Namespace(count=2, log=['a', 'b'])"
    assert board.store.keys() == ["board"]


@pytest.mark.anyio
async def test_an_async_proxy_runs_with_no_socket(anyio_backend: str) -> None:
    board = LoopbackServer()
    ns = AsyncNamespace(board, "board")
    results: list[int] = []

    async def bump() -> None:
        results.append(await ns._incr("n"))

    with no_sockets():
        ns.x = 1
        ns.y = [1, 2]
        await ns._flush()
        async with anyio.create_task_group() as group:
            for _ in range(20):
                group.start_soon(bump)
        assert await ns.y == [1, 2]
        assert (await ns._snapshot("x", "n")) == {"x": 1, "n": 20}
        await ns._close()
    assert sorted(results) == list(range(1, 21))


def test_sync_and_async_proxies_share_one_loopback_board() -> None:
    board = LoopbackServer()
    Namespace(board, "shared").greeting = "hello"

    async def main() -> str:
        ns = AsyncNamespace(board, "shared")
        try:
            return str(await ns.greeting)
        finally:
            await ns._close()

    assert anyio.run(main) == "hello"
    assert anyio.run(main, backend="trio") == "hello"


def test_a_watch_sees_writes_of_another_thread() -> None:
    board = LoopbackServer()
    ns = Namespace(board, "w")
    with ns._watch("x") as watch:
        writer = threading.Thread(target=lambda: setattr(Namespace(board, "w"), "x", 7))
        writer.start()
        event = watch.next(timeout=10)
        writer.join()
    assert (event.name, event.value, event.revision) == ("x", 7, 1)
    with pytest.raises(HistoryExpired):
        ns._watch(since=5)


@pytest.mark.anyio
async def test_an_async_watch_sees_a_sync_write_from_another_thread(anyio_backend: str) -> None:
    board = LoopbackServer()
    async with AsyncNamespace(board, "w")._watch("x") as watch:
        writer = threading.Thread(
            target=lambda: setattr(Namespace(board, "w"), "x", "from a thread")
        )
        writer.start()
        with anyio.fail_after(10):
            event = await watch.__anext__()
        writer.join()
    assert event.value == "from a thread"


def test_locks_exclude_and_pass_on_over_loopback() -> None:
    board = LoopbackServer()
    ns = Namespace(board, "locks")
    inside = threading.Event()
    release = threading.Event()
    order: list[str] = []

    def holder() -> None:
        with Namespace(board, "locks")._lock("L"):
            order.append("first in")
            inside.set()
            release.wait(10)
            order.append("first out")

    thread = threading.Thread(target=holder)
    thread.start()
    assert inside.wait(10)
    with pytest.raises(TimeoutError):
        with ns._lock("L", timeout=0):
            pass
    release.set()
    with ns._lock("L", timeout=10):
        order.append("second in")
    thread.join()
    assert order == ["first in", "first out", "second in"]


def test_timers_over_loopback_share_one_thread() -> None:
    """Lock timeouts and the grace of unused anonymous namespaces fire from one thread (each
    timer was a thread of its own), in order, and a freed namespace is gone."""
    board = LoopbackServer(limits=Limits(anonymous_grace=0.05))
    holder, waiter = Namespace(board, "locks"), AsyncNamespace(board, "locks")
    threads = threading.active_count()
    outcomes: list[str] = []

    async def wait(seconds: float) -> None:
        try:
            async with waiter._lock("L", timeout=seconds):
                pass
        except TimeoutError:
            outcomes.append(f"timed out after {seconds}")

    gone = Namespace(board)
    gone._close()  # (closes this thread's connection: before the lock is taken on it)
    with holder._lock("L"):

        async def waits() -> None:
            async with anyio.create_task_group() as group:
                for timeout in (0.3, 0.2, 0.1, 0.25, 0.15):
                    group.start_soon(wait, timeout)
                await async_wait_until(lambda: len(waiting()) == 5, "the five wait in line")
                assert threading.active_count() <= threads + 1  # five timers, one thread

        def waiting() -> object:
            lock = board.dispatcher.locks._locks["locks", "L"]
            return lock.waits or ()

        anyio.run(waits)
    assert outcomes == [f"timed out after {t}" for t in (0.1, 0.15, 0.2, 0.25, 0.3)]
    wait_until(lambda: board.store.keys() == [], "the anonymous namespace was freed")
    with pytest.raises(NamespaceGone):
        gone.x  # noqa: B018


def test_a_cached_proxy_is_invalidated_over_loopback() -> None:
    board = LoopbackServer()
    reader = Namespace(board, "c", cache=True)
    writer = Namespace(board, "c")
    writer.x = 1
    assert reader.x == 1
    writer.x = 2  # the invalidation is in the reader's end; its reader thread applies it
    wait_until(lambda: reader.x == 2, "the cached reader sees the new value")


def test_a_wrong_authkey_is_refused_over_loopback() -> None:
    board = LoopbackServer(authkey=b"secret")
    Namespace(board, "k", authkey=b"secret").x = 1
    with pytest.raises(AuthenticationError):
        Namespace(board, "k", authkey=b"wrong").x  # noqa: B018


def test_a_loopback_proxy_cannot_be_pickled() -> None:
    import pickle

    with pytest.raises(TypeError, match="this process"):
        pickle.dumps(Namespace(LoopbackServer(), "p"))


def test_a_loopback_board_keeps_the_history_its_limits_say() -> None:
    board = LoopbackServer(limits=Limits(max_history_revisions=2))
    ns = Namespace(board, "h")
    for i in range(4):
        ns.x = i  # revisions 1 to 4: the last two are kept
    with pytest.raises(HistoryExpired, match=r"\(oldest: 3\)"):
        ns._watch(since=1)
    with ns._watch(since=2) as watch:
        assert [watch.next(timeout=10).value for _ in range(2)] == [2, 3]
