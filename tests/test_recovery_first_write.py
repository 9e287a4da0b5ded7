"""The first write after a server restart goes through (issue 12.11): the old server's end of
stream (or goodbye) waits in the idle pooled connection, and a request written there would be
lost although it never reached any server. The proxies find it before sending.

A real server process is stopped (SIGKILL, or SIGTERM: a goodbye) and started again at the
same address, Unix or TCP; the proxy's connection is then idle, and its first write must be
applied once, by the new server, with no error. ``Retry(attempts=1)`` says more: the write is
not even retried, it never left (the sync proxy reports it not sent, the async ones send it on
a new connection at once).
"""

from __future__ import annotations

import signal

import anyio
import pytest

from aionamespace import AsyncNamespace, ConnectionLost, Namespace, Retry
from server_processes import ServeProcess

pytestmark = pytest.mark.usefixtures("collect_garbage")


@pytest.fixture(params=["unix", "tcp"])
def where(request: pytest.FixtureRequest, socket_path: str) -> object:
    return socket_path if request.param == "unix" else ("127.0.0.1", 0)


@pytest.fixture(params=["kill", "terminate"])
def stop(request: pytest.FixtureRequest) -> signal.Signals:
    return signal.SIGKILL if request.param == "kill" else signal.SIGTERM


def restart(server: ServeProcess, how: signal.Signals, servers: list[ServeProcess]) -> None:
    """Stop ``server`` (``how``) and start a new one at its address."""
    server.process.send_signal(how)
    server.process.wait()
    servers.append(ServeProcess(server.address))


def test_sync_first_write_after_a_restart(
    where: object, stop: signal.Signals, cli_servers: list[ServeProcess]
) -> None:
    cli_servers.append(old := ServeProcess(where))  # type: ignore[arg-type]
    ns = Namespace(old.address, "board", retry=Retry(attempts=1))
    ns.x = 1
    restart(old, stop, cli_servers)
    with pytest.raises(ConnectionLost) as caught:
        ns._incr("count")  # found the old server gone before sending: not sent
    assert caught.value.request_sent is False
    del caught
    assert ns._incr("count") == 1  # and with the default Retry it is simply sent again:
    ns._close()
    ns = Namespace(old.address, "board")
    ns.y = 1
    restart(cli_servers[-1], stop, cli_servers)
    assert ns._incr("count") == 1  # a fresh server: applied once
    assert ns._snapshot() == {"count": 1}
    ns._close()


@pytest.mark.anyio
async def test_async_first_write_after_a_restart(
    where: object, stop: signal.Signals, cli_servers: list[ServeProcess]
) -> None:
    cli_servers.append(old := ServeProcess(where))  # type: ignore[arg-type]
    ns = AsyncNamespace(old.address, "board", retry=Retry(attempts=1))
    assert await ns._incr("count") == 1
    await anyio.to_thread.run_sync(restart, old, stop, cli_servers)
    with anyio.fail_after(10):
        assert await ns._incr("count") == 1  # the new server's first: sent once, no error
        ns.x = 2  # a queued write, after another restart
        await anyio.to_thread.run_sync(restart, cli_servers[-1], stop, cli_servers)
        await ns._flush()
        assert await ns._snapshot() == {"x": 2}
    await ns._close()
