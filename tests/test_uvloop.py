"""uvloop (the optional extra): the server on it, and the async proxy in a program that runs it.

``serve --loop uvloop`` must serve everything the default loop does; an AsyncNamespace inside a
uvloop program takes the same AsyncioTransport path as on asyncio's own loop (uvloop's transports
are not asyncio.Transport subclasses, but behave as one).
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Iterator

import anyio
import pytest

from aionamespace import AsyncNamespace, Namespace
from aionamespace.client.asyncio_transport import AsyncioTransport
from child_processes import Reports, run_child
from server_processes import ServeProcess

uvloop = pytest.importorskip("uvloop", reason="the uvloop extra (a test dependency on Linux)")


@pytest.fixture
def uvloop_server(short_tmp: str) -> Iterator[str]:
    path = os.path.join(short_tmp, "uv.sock")
    server = ServeProcess(path, "asyncio", "--loop", "uvloop")
    try:
        yield path
    finally:
        server.kill()


def test_a_uvloop_server_serves_sync_proxies(uvloop_server: str) -> None:
    with Namespace(uvloop_server, "uv") as ns:
        ns.x = 1
        ns._update(a=[1, 2], b=b"\x00" * 200_000)  # a large value, too
        assert ns._incr("x", 2) == 3
        assert ns._snapshot() == {"x": 3, "a": [1, 2], "b": b"\x00" * 200_000}
        with ns._watch("x") as watch:
            ns.x = 10
            event = watch.next(timeout=10)
        assert (event.name, event.value) == ("x", 10)


async def _async_round(path: str) -> tuple[int, type]:
    async with AsyncNamespace(path, "uv-async") as ns:
        ns.n = 0
        async with anyio.create_task_group() as group:
            for _ in range(50):
                group.start_soon(ns._incr, "n")
        with pytest.raises(AttributeError):
            await ns.missing
        return await ns.n, type(ns._aionamespace.transport)


def _uvloop_program(path: str, reports: Reports) -> None:
    """A spawned program running uvloop (bounded by run_child: a wedged loop fails the test
    instead of hanging the suite, which a signal-based timeout cannot interrupt)."""
    count, stream_type = anyio.run(
        _async_round, path, backend="asyncio", backend_options={"use_uvloop": True}
    )
    reports.queue.put((count, stream_type is AsyncioTransport))


@pytest.mark.parametrize("server_loop", ["uvloop", "asyncio"])
def test_an_async_proxy_in_a_uvloop_program(short_tmp: str, server_loop: str) -> None:
    path = os.path.join(short_tmp, "s.sock")
    server = ServeProcess(path, "asyncio", "--loop", server_loop)
    context = multiprocessing.get_context("spawn")
    reports = Reports(context)
    try:
        assert run_child(context, _uvloop_program, path, reports) == 0
        assert reports.get() == (50, True)
    finally:
        reports.close()
        server.kill()
