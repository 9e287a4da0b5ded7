"""Recovery from a server restart: a proxy's call spans a kill -9 and a restart at the same Unix
path without the caller seeing an error, and a write the server never received is retried
until the new server applies it, once.

Nothing here sleeps to synchronise: the server is restarted once the proxy's ``ReportingRetry``
reports a failed attempt, and it is ready when it says so.
"""

from __future__ import annotations

import threading

import anyio
import pytest

from aionamespace import AsyncNamespace, Namespace
from deadlines import NO_HANG_SECONDS
from reporting_retry import restart_retry
from server_processes import ServeProcess

pytestmark = pytest.mark.usefixtures("collect_garbage")


class Restart(threading.Thread):
    """Start a CLI server at ``path`` once a proxy's call has failed against the dead one."""

    def __init__(self, path: str, after: threading.Event) -> None:
        super().__init__(name="restart")
        self.path, self.after = path, after
        self.server: ServeProcess | None = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            if not self.after.wait(NO_HANG_SECONDS):
                raise RuntimeError("the proxy never reported a failed attempt")
            self.server = ServeProcess(self.path)
        except BaseException as exc:  # reported by finish()
            self.error = exc

    def finish(self) -> ServeProcess:
        self.join(NO_HANG_SECONDS * 2)
        assert not self.is_alive(), "the restart hangs"
        if self.error is not None:
            raise self.error
        assert self.server is not None
        return self.server


def test_sync_read_spans_a_restart(socket_path: str, cli_servers: list[ServeProcess]) -> None:
    """kill -9, then a read: it fails against the dead server, is retried, and answers from
    the new one; the caller sees no error."""
    cli_servers.append(old := ServeProcess(socket_path))
    retry = restart_retry()
    ns = Namespace(socket_path, "board", retry=retry)
    ns.x = 1
    assert ns.x == 1
    old.kill()
    restart = Restart(socket_path, after=retry.failed)
    restart.start()
    try:
        snapshot = ns._snapshot()  # during the restart
    finally:
        cli_servers.append(restart.finish())
    assert snapshot == {}  # answered by the new server (the old one held x)
    assert retry.errors, "the read never failed: the restart was not exercised"
    ns.x = 2
    assert ns.x == 2
    ns._close()


def test_sync_write_never_sent_is_retried_once(
    socket_path: str, cli_servers: list[ServeProcess]
) -> None:
    """Writes made while the server is down never leave (the pooled socket is dead, then
    connecting is refused): they are retried until the new server applies each one once."""
    cli_servers.append(old := ServeProcess(socket_path))
    retry = restart_retry()
    ns = Namespace(socket_path, "board", retry=retry)
    ns.x = 1
    old.kill()
    restart = Restart(socket_path, after=retry.failed)
    restart.start()
    try:
        assert ns._incr("count", 5) == 5
    finally:
        cli_servers.append(restart.finish())
    assert ns._append("log", "once") == 1
    assert ns._snapshot() == {"count": 5, "log": ["once"]}
    assert retry.errors
    assert not any(sent for _, sent in retry.errors), retry.errors
    # Down again, and this time the proxy's connection is gone first: refused, then retried.
    cli_servers[-1].kill()
    ns._close()
    retry.failed.clear()
    restart = Restart(socket_path, after=retry.failed)
    restart.start()
    try:
        assert ns._incr("count", 7) == 7  # a fresh server: counted from 0, exactly once
    finally:
        cli_servers.append(restart.finish())
    assert ns._snapshot() == {"count": 7}
    ns._close()


@pytest.mark.anyio
async def test_async_read_spans_a_restart(
    socket_path: str, cli_servers: list[ServeProcess]
) -> None:
    cli_servers.append(old := await anyio.to_thread.run_sync(ServeProcess, socket_path))
    retry = restart_retry()
    ns = AsyncNamespace(socket_path, "board", retry=retry)
    ns.x = 1
    assert await ns.x == 1
    await anyio.to_thread.run_sync(old.kill)
    restart = Restart(socket_path, after=retry.failed)
    restart.start()
    try:
        with anyio.fail_after(NO_HANG_SECONDS):
            snapshot = await ns._snapshot()
    finally:
        cli_servers.append(await anyio.to_thread.run_sync(restart.finish))
    assert snapshot == {}
    assert retry.errors
    ns.x = 2
    assert await ns.x == 2
    await ns._close()


@pytest.mark.anyio
async def test_async_write_never_sent_is_retried_once(
    socket_path: str, cli_servers: list[ServeProcess]
) -> None:
    cli_servers.append(old := await anyio.to_thread.run_sync(ServeProcess, socket_path))
    retry = restart_retry()
    ns = AsyncNamespace(socket_path, "board", retry=retry)
    ns.x = 1
    await ns._flush()
    await anyio.to_thread.run_sync(old.kill)
    restart = Restart(socket_path, after=retry.failed)
    restart.start()
    try:
        with anyio.fail_after(NO_HANG_SECONDS):
            assert await ns._incr("count", 5) == 5
    finally:
        cli_servers.append(await anyio.to_thread.run_sync(restart.finish))
    assert await ns._append("log", "once") == 1
    assert await ns._snapshot() == {"count": 5, "log": ["once"]}
    assert retry.errors
    assert not any(sent for _, sent in retry.errors), retry.errors
    await anyio.to_thread.run_sync(cli_servers[-1].kill)
    await ns._close()
    retry.failed.clear()
    restart = Restart(socket_path, after=retry.failed)
    restart.start()
    try:
        with anyio.fail_after(NO_HANG_SECONDS):
            assert await ns._incr("count", 7) == 7
    finally:
        cli_servers.append(await anyio.to_thread.run_sync(restart.finish))
    assert await ns._snapshot() == {"count": 7}
    await ns._close()
