"""A lock lost with its connection is never lost silently (issue 12, item 9).

The server frees a lock when the connection holding it breaks, and another process may take it
at once. The holder must learn it (``LockLost``, at the latest when it releases), and its calls
must not reconnect as if it still held the lock: on the sync proxy, the same thread's calls to
that server; on the async proxy, the holding task's. Before the fix, the holder's next write
reconnected silently and landed in the middle of the other process's critical section, and
``__exit__`` ignored the failed release.

The connection breaks for real: the server is SIGKILLed and restarted at the same path, or the
holder's socket is shut down under it (the server sees the peer leave); the other process is a
real one.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import textwrap
from typing import Any

import anyio
import pytest

from aionamespace import AsyncNamespace, ConnectionLost, LockLost, Namespace
from aionamespace.client.blocking import POOL
from deadlines import NO_HANG_SECONDS, async_wait_until
from server_processes import ServeProcess

pytestmark = pytest.mark.usefixtures("collect_garbage")

OTHER_PROCESS = textwrap.dedent(
    """
    import sys
    from aionamespace import Namespace

    ns = Namespace(sys.argv[1], "ledger")
    with ns._lock("L", timeout=10):
        ns.owner = "other"
    """
)


def other_process_takes_the_lock(path: str) -> None:
    """Another process takes lock L (free on the server now) and writes ``owner``."""
    subprocess.run(
        [sys.executable, "-c", OTHER_PROCESS, path],
        check=True,
        capture_output=True,
        timeout=NO_HANG_SECONDS * 2,
    )


def test_sync_holder_learns_a_restart_freed_its_lock(
    socket_path: str, cli_servers: list[ServeProcess]
) -> None:
    cli_servers.append(old := ServeProcess(socket_path))
    ns = Namespace(socket_path, "ledger")

    def critical_section() -> None:
        with ns._lock("L"):
            ns.owner = "holder"
            old.kill()
            cli_servers.append(ServeProcess(socket_path))  # back at the same path, no lock held
            other_process_takes_the_lock(socket_path)
            with pytest.raises(ConnectionLost):  # (LockLost, or the broken call's own error)
                ns.owner = "holder, again"
            for _ in range(2):  # the thread does not reconnect while it believes it holds L
                with pytest.raises(LockLost, match="'L' is no longer held"):
                    ns.owner = "holder, once more"
                with pytest.raises(LockLost):
                    _ = ns.owner

    with pytest.raises(LockLost):
        critical_section()
    # __exit__ raised LockLost; the thread's calls reconnect now, and nothing of ours landed
    assert ns.owner == "other"
    with ns._lock("L", timeout=NO_HANG_SECONDS):  # and the lock works again
        ns.owner = "holder"
    assert ns.owner == "holder"


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_sync_holder_learns_its_broken_socket_freed_its_lock(
    socket_path: str, cli_servers: list[ServeProcess], backend: str
) -> None:
    """The server stays up; the holder's socket breaks (shut down under it): the server frees
    the lock, another process takes it, and the holder is told."""
    cli_servers.append(ServeProcess(socket_path, backend))
    ns = Namespace(socket_path, "ledger")
    lock = ns._lock("L")
    lock.acquire()
    ns.owner = "holder"
    transport = POOL.transport(ns._aionamespace.target)
    assert transport.sock is not None
    transport.sock.shutdown(socket.SHUT_RDWR)  # the network fails under the connection
    other_process_takes_the_lock(socket_path)
    with pytest.raises(ConnectionLost):
        ns.owner = "holder, again"
    with pytest.raises(LockLost):
        ns._incr("n")
    assert not lock.locked()
    with pytest.raises(LockLost):
        lock.release()
    assert ns.owner == "other"
    assert not hasattr(ns, "n")


async def test_async_holder_task_learns_a_restart_freed_its_lock(
    socket_path: str, cli_servers: list[ServeProcess], anyio_backend: str
) -> None:
    """The holding task's requests and writes raise LockLost; another task of the same proxy
    is no holder, and reconnects as usual."""
    cli_servers.append(old := ServeProcess(socket_path))
    ns = AsyncNamespace(socket_path, "ledger")
    seen = []

    async def another_task() -> None:
        seen.append(await ns.owner)

    async def critical_section() -> None:
        async with ns._lock("L"):
            ns.owner = "holder"
            await ns._flush()
            old.kill()
            cli_servers.append(ServeProcess(socket_path))
            await anyio.to_thread.run_sync(other_process_takes_the_lock, socket_path)
            with pytest.raises(ConnectionLost):
                await ns._incr("n")
            with pytest.raises(LockLost):
                await ns.owner
            with pytest.raises(LockLost):
                ns.owner = "queued under a lost lock"
            async with anyio.create_task_group() as group:
                group.start_soon(another_task)
            assert seen == ["other"]

    with pytest.raises(LockLost):
        await critical_section()
    assert await ns.owner == "other"
    assert await ns._snapshot("n") == {}
    await ns._close()


async def test_async_writes_queued_under_a_lost_lock_never_leave(
    socket_path: str, cli_servers: list[ServeProcess], anyio_backend: str
) -> None:
    """Writes the holder queued under the lock and that had not left when the connection was
    lost are dropped (reported by the next flush), never sent on the next connection."""
    cli_servers.append(ServeProcess(socket_path))
    ns = AsyncNamespace(socket_path, "ledger")
    other = Namespace(socket_path, "ledger")
    lock = ns._lock("L")
    await lock.acquire()
    ns.owner = "holder"  # queued, not sent: nothing has awaited since
    # The connection is lost (as its transport reports a broken socket) with the write queued.
    transport = ns._aionamespace.transport
    link = transport.link
    transport.lost(ConnectionLost("the network failed"))
    await transport.aclose_link(link)
    assert other._lock("L").acquire(timeout=NO_HANG_SECONDS)  # the server freed it
    other.owner = "other"
    with pytest.raises(LockLost):
        await lock.release()
    with pytest.raises(LockLost, match="never sent"):
        await ns._flush()
    await ns._flush()  # reported once
    assert await ns.owner == "other"
    await ns._close()
    other._close()


async def test_a_wait_lost_with_its_connection_is_not_withdrawn_on_a_new_one(
    socket_path: str, cli_servers: list[ServeProcess], anyio_backend: str
) -> None:
    """The server frees the waits of a connection that is gone: a waiter whose connection went
    away raises at once, without sending a withdrawal on a new connection (to a server frozen
    or restarting, that one waited out its own timeouts: the reliability report's item 12)."""
    cli_servers.append(server := ServeProcess(socket_path))
    holder = Namespace(socket_path, "ledger")
    holder_lock = holder._lock("L")
    assert holder_lock.acquire()
    waiter = AsyncNamespace(socket_path, "ledger")
    await waiter._ping()
    sent: list[str] = []
    run = waiter._run

    async def recording(call: Any) -> Any:
        sent.append(call[0].op)
        return await run(call)

    waiter._run = recording  # type: ignore[method-assign]
    async with anyio.create_task_group() as group:

        async def wait() -> None:
            with pytest.raises(ConnectionLost):
                async with waiter._lock("L"):
                    pass

        group.start_soon(wait)
        await async_wait_until(lambda: sent == ["acquire"], "the acquire is sent")
        await anyio.wait_all_tasks_blocked()
        server.kill()
    assert sent == ["acquire"]  # and no "release"
    await waiter._close()
    holder._close()
