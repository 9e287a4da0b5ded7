"""Shared fixtures: real servers on real sockets, both transports, both async backends.

Two kinds of backend, not to be confused: the *server's* (``SERVER_BACKENDS``, the event loop a
``ServerThread``, ``Manager`` or ``serve --backend`` runs on; the ``server_backend`` fixture) and
the *client's* (the event loop of an async test, anyio's ``anyio_backend`` fixture).
"""

from __future__ import annotations

import gc
import io
import os
import shutil
import tempfile
from collections.abc import Generator, Iterator
from typing import Any

import msgpack
import pytest
from hypothesis import settings

import redis_rig
from aionamespace import Manager, ServerThread
from aionamespace.client.asyncio_transport import SocketLink
from aionamespace.protocol.connection import Address
from awaited_store import REDIS_KINDS, new_store
from server_processes import ServeProcess

# CI explores the same examples on every run, so a red build is about the change, not luck;
# a developer's run explores new ones (and keeps failures in .hypothesis/).
settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")


#: The server's I/O shells: every test of a server runs on each (through ``server_backend``).
SERVER_BACKENDS = ["asyncio", "trio"]


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    """Every async test runs on asyncio and on trio."""
    return str(request.param)


@pytest.fixture(params=SERVER_BACKENDS)
def server_backend(request: pytest.FixtureRequest) -> str:
    """The event loop the test's server runs on (the client's, for async tests, is
    ``anyio_backend``)."""
    return str(request.param)


@pytest.fixture
def server_backends() -> list[str]:
    """Every server backend, for a test that goes through them all itself."""
    return list(SERVER_BACKENDS)


@pytest.fixture
def collect_garbage() -> Iterator[None]:
    """Collect at teardown, so a socket a test leaked fails that test, not a later one (a
    module whose tests leave sockets to the collector says
    ``pytestmark = pytest.mark.usefixtures("collect_garbage")``)."""
    yield
    gc.collect()


@pytest.fixture
def short_tmp() -> Iterator[str]:
    """A short directory for Unix sockets (pytest's tmp_path can exceed AF_UNIX's 108 bytes)."""
    path = tempfile.mkdtemp(prefix="ans-")
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def socket_path(short_tmp: str) -> str:
    """A Unix socket path for a server the test starts itself."""
    return os.path.join(short_tmp, "ns.sock")


@pytest.fixture
def cli_servers() -> Iterator[list[ServeProcess]]:
    """Every CLI server a test registers here is killed and reaped, pass or fail."""
    started: list[ServeProcess] = []
    yield started
    for server in started:
        server.close()


@pytest.fixture
def frames_per_write(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """How many frames each write of an asyncio AsyncNamespace's connection carried, in order
    (its ``SocketLink.write`` patched to count them) for the rest of the test."""
    writes: list[int] = []
    write = SocketLink.write

    def counting_write(self: SocketLink, data: bytes) -> None:
        writes.append(len(list(msgpack.Unpacker(io.BytesIO(data)))))
        write(self, data)

    monkeypatch.setattr(SocketLink, "write", counting_write)
    return writes


@pytest.fixture
def store_kind(request: pytest.FixtureRequest) -> str:
    """The kind of store ``server`` serves from (``awaited_store.new_store``): "memory",
    unless the test is parametrized with ``awaited_store.over_every_store``."""
    return str(getattr(request, "param", "memory"))


@pytest.fixture(params=["unix", "tcp"])
def server(
    request: pytest.FixtureRequest, short_tmp: str, store_kind: str
) -> Iterator[ServerThread]:
    """A server in a background thread of this process, on a Unix socket or on TCP (over a
    store of ``store_kind``)."""
    address: Address = (
        os.path.join(short_tmp, "ns.sock") if request.param == "unix" else ("127.0.0.1", 0)
    )
    with ServerThread(address, store=new_store(store_kind)) as running:
        yield running


@pytest.fixture(scope="session")
def manager() -> Iterator[Manager]:
    """One spawned server process shared by the session (each test uses its own namespace)."""
    with Manager() as running:
        yield running


@pytest.fixture(scope="session")
def tcp_manager() -> Iterator[Manager]:
    with Manager(("127.0.0.1", 0)) as running:
        yield running


@pytest.fixture(scope="session")
def redis_standalone() -> redis_rig.RedisServer:
    """The session's redis-server on a Unix socket (redis_rig.py; skipped without one)."""
    return redis_rig.standalone()


@pytest.fixture(scope="session")
def redis_cluster() -> redis_rig.RedisCluster:
    """The session's 3-master Redis Cluster on loopback (redis_rig.py; skipped without one)."""
    return redis_rig.cluster()


@pytest.fixture(params=["standalone", "cluster"])
def redis_of(request: pytest.FixtureRequest) -> redis_rig.RedisServer | redis_rig.RedisCluster:
    """The session's standalone Redis, and (the test run again) its cluster."""
    if request.param == "standalone":
        return redis_rig.standalone()
    return redis_rig.cluster()


@pytest.fixture
def redis_client(redis_of: redis_rig.RedisServer | redis_rig.RedisCluster) -> Iterator[Any]:
    """A sync redis-py client of ``redis_of``, to look at what the servers keep there."""
    with redis_of.client() as client:
        yield client


@pytest.fixture
def redis_private() -> Iterator[redis_rig.RedisServer]:
    """A redis-server of the test's own, to stop, kill and start again; removed after it."""
    server = redis_rig.private_standalone()
    try:
        yield server
    finally:
        server.remove()


@pytest.fixture
def redis_prefix() -> str:
    """A key prefix of the test's own: tests sharing one Redis never see each other's keys."""
    return redis_rig.unique_prefix()


#: The cells of the other parameters a test over a real Redis runs in (conftest's and
#: test_atomic's ``client``, the proxy's kind): see ``pytest_collection_modifyitems``.
REDIS_CELLS = {
    "server_backend": ("asyncio",),
    "anyio_backend": ("asyncio",),
    "server": ("unix",),
    "client": ("sync", "asyncio"),
}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """A test over a real Redis (``over_every_store``) runs in the ``REDIS_CELLS`` of its
    other parameters only: the server on asyncio (the only backend it serves a Redis store on;
    the trio refusal has a test of its own), on a Unix socket, clients on asyncio. What those
    parameters vary is proved over the other stores; what Redis adds is the store, so the
    Redis cells stay few and the suite's time modest."""
    kept, dropped = [], []
    for item in items:
        params = getattr(getattr(item, "callspec", None), "params", {})
        other_cells = params.get("store_kind") in REDIS_KINDS and any(
            name in params and params[name] not in cells for name, cells in REDIS_CELLS.items()
        )
        (dropped if other_cells else kept).append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = kept


@pytest.hookimpl(wrapper=True, optionalhook=True)
def pytest_xdist_auto_num_workers(config: pytest.Config) -> Generator[None, int, int]:
    """``-n auto`` (README's test command): pytest-xdist's count of CPUs, one worker on each;
    on a single CPU, no worker at all (0: the run is serial, in this process), since one worker
    would only add a process between pytest and the tests."""
    workers = yield
    return 0 if workers == 1 else workers


def pytest_sessionfinish(session: pytest.Session) -> None:
    """Stop the Redis servers the session started (atexit would too, later)."""
    redis_rig.stop_all()
