"""A write that reached a server which died before answering is never sent again: the proxy
raises ``ConnectionLost`` with ``request_sent`` (a sync write, an awaited async one, a queued
async one), and the fake server that took the request saw it once, on one connection.
"""

from __future__ import annotations

import anyio
import pytest

from aionamespace import AsyncNamespace, ConnectionLost, Namespace, Server, ServerThread
from deadlines import NO_HANG_SECONDS
from fake_server import fake_server
from reporting_retry import restart_retry

pytestmark = pytest.mark.usefixtures("collect_garbage")


def test_sync_write_that_reached_a_dying_server_is_not_resent(socket_path: str) -> None:
    retry = restart_retry()
    ns = Namespace(socket_path, "board", retry=retry)
    with fake_server(socket_path) as fake:
        with pytest.raises(ConnectionLost) as caught:
            ns.x = "written once at most"
        assert caught.value.request_sent is True
        assert [request[1:4] for request in fake.requests] == [["set", "board", "x"]]
        assert fake.connections == 1  # never reconnected to send it again
    with ServerThread(socket_path):
        with pytest.raises(AttributeError):
            ns.x  # noqa: B018 - the read is the point: the write was not applied
        assert ns._snapshot() == {}
        ns._close()


@pytest.mark.anyio
async def test_async_awaited_write_that_reached_a_dying_server_is_not_resent(
    socket_path: str,
) -> None:
    retry = restart_retry()
    ns = AsyncNamespace(socket_path, "board", retry=retry)
    with fake_server(socket_path) as fake:
        with anyio.fail_after(NO_HANG_SECONDS), pytest.raises(ConnectionLost) as caught:
            await ns._incr("count")
        assert caught.value.request_sent is True
        assert [request[1:4] for request in fake.requests] == [["incr", "board", "count"]]
        assert fake.connections == 1
    async with Server(socket_path):
        with anyio.fail_after(NO_HANG_SECONDS):
            assert await ns._snapshot() == {}
        await ns._close()


@pytest.mark.anyio
async def test_async_queued_write_that_reached_a_dying_server_is_not_resent(
    socket_path: str,
) -> None:
    """``ns.x = v`` then ``_flush()``: the loss is reported once, as a write that was sent
    (``request_sent``), and later flushes do not send it again."""
    ns = AsyncNamespace(socket_path, "board", retry=restart_retry())
    with fake_server(socket_path) as fake:
        ns.x = "written once at most"
        with anyio.fail_after(NO_HANG_SECONDS), pytest.raises(ConnectionLost) as caught:
            await ns._flush()
        sent = caught.value.request_sent
        del caught  # no traceback (holding a closed stream) kept alive past the test
        with anyio.fail_after(NO_HANG_SECONDS):
            await ns._flush()  # reported already; nothing left to send
        assert [request[1:4] for request in fake.requests] == [["set", "board", "x"]]
        assert fake.connections == 1
    async with Server(socket_path):
        with anyio.fail_after(NO_HANG_SECONDS), pytest.raises(AttributeError):
            await ns.x
        await ns._close()
    assert sent is True, (
        "ConnectionLost from _flush() for a write that was sent says request_sent=False"
    )
