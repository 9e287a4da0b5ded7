"""``Manager``: the SyncManager shape around a real server process.

Most tests start a Manager of their own (about 0.1 s each) because they watch its lifecycle; the
session's ``manager`` fixture serves the ones that only need a running server.
"""

from __future__ import annotations

import os
import pickle
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Iterator

import anyio
import pytest

from aionamespace import AsyncNamespace, ConnectionLost, Manager, Namespace

EXIT_SECONDS = 10.0


@pytest.fixture
def started() -> Iterator[Manager]:
    with Manager() as running:
        yield running


def server_process(manager: Manager) -> subprocess.Popen[bytes]:
    process = manager._process
    assert process is not None
    return process


def test_start_and_shutdown() -> None:
    manager = Manager()
    manager.start()
    try:
        address = manager.address
        assert isinstance(address, str)
        private_dir = os.path.dirname(address)
        assert stat.S_IMODE(os.stat(private_dir).st_mode) == 0o700
        assert stat.S_IMODE(os.stat(address).st_mode) == 0o600
        process = server_process(manager)
        assert process.poll() is None
        ns = manager.Namespace(a=1)
        assert ns.a == 1
        ns._close()
    finally:
        start = time.monotonic()
        manager.shutdown()
    assert time.monotonic() - start < EXIT_SECONDS
    assert process.returncode == 0  # stopped by the closed pipe, not terminated or killed
    assert not os.path.exists(private_dir)
    with pytest.raises(RuntimeError):
        _ = manager.address


def test_context_manager() -> None:
    with Manager() as manager:
        process = server_process(manager)
        address = manager.address
        manager.Namespace().x = 1
    assert process.returncode == 0
    assert not os.path.exists(str(address))


def test_shutdown_is_idempotent() -> None:
    Manager().shutdown()  # never started: nothing to do
    manager = Manager()
    manager.start()
    process = server_process(manager)
    manager.shutdown()
    manager.shutdown()
    with manager:  # a shut-down manager can be started again
        manager.Namespace().x = 1
    manager.shutdown()
    assert process.returncode == 0


def test_a_requested_unix_path_is_used_and_removed(short_tmp: str) -> None:
    path = os.path.join(short_tmp, "board.sock")
    with Manager(path) as manager:
        assert manager.address == path
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        manager.Namespace().x = 1
    assert not os.path.exists(path)
    assert os.path.isdir(short_tmp)  # not a private directory of ours: left alone


def test_tcp_port_zero_gets_a_real_port() -> None:
    with Manager(("127.0.0.1", 0)) as manager:
        host, port = manager.address  # type: ignore[misc]
        assert (host, port > 0) == ("127.0.0.1", True)
        with socket.create_connection((host, port), timeout=EXIT_SECONDS):
            pass
        ns = manager.Namespace(where="tcp")
        assert ns.where == "tcp"
        assert repr(f"127.0.0.1:{port}") in repr(ns)


def test_connect_shares_named_namespaces(started: Manager) -> None:
    other = Manager(started.address, started.authkey)
    other.connect()
    try:
        assert other.address == started.address
        board = other.Namespace("shared-board", x=1)
        assert started.Namespace("shared-board").x == 1
        started.Namespace("shared-board").y = 2
        assert board.y == 2
    finally:
        other.shutdown()  # only detaches: the server belongs to `started`
    assert server_process(started).poll() is None
    assert started.Namespace("shared-board", x=100).x == 1
    with pytest.raises(RuntimeError):
        _ = other.address


def test_connect_to_nothing_raises_connection_lost(short_tmp: str) -> None:
    manager = Manager(os.path.join(short_tmp, "nobody.sock"))
    with pytest.raises(ConnectionLost):
        manager.connect()
    with pytest.raises(RuntimeError):
        _ = manager.address


def test_misuse_is_refused_clearly(started: Manager) -> None:
    with pytest.raises(RuntimeError):
        started.start()
    with pytest.raises(ValueError, match="address"):
        Manager().connect()
    with pytest.raises(RuntimeError):
        Manager().Namespace()
    with pytest.raises(TypeError):
        Manager(authkey="not bytes")  # type: ignore[arg-type]


def test_trio_backend() -> None:
    with Manager(backend="trio") as manager:
        ns = manager.Namespace("trio-board", a=1)
        ns.b = [1, 2]
        assert (ns.a, ns.b) == (1, [1, 2])

        async def read() -> object:
            async with manager.AsyncNamespace("trio-board") as async_ns:
                return await async_ns.b

        assert anyio.run(read, backend="trio") == [1, 2]
        process = server_process(manager)
    assert process.returncode == 0


def test_repr_follows_the_state() -> None:
    manager = Manager()
    assert repr(manager) == "<aionamespace.Manager idle>"
    with manager:
        assert repr(manager) == f"<aionamespace.Manager started at {manager.address!r}>"
        other = Manager(manager.address, manager.authkey)
        other.connect()
        assert repr(other) == f"<aionamespace.Manager connected at {manager.address!r}>"
    assert repr(manager) == "<aionamespace.Manager idle>"


def test_a_parent_that_exits_without_shutdown_leaves_no_server() -> None:
    """The server stops when its Manager's process ends: normally, or killed (SIGKILL)."""
    script = (
        "import os, sys\n"
        "from aionamespace import Manager\n"
        "manager = Manager(); manager.start()\n"
        "print(manager._process.pid, flush=True)\n"
        "if sys.argv[1] == 'wait': sys.stdin.read()\n"
    )
    for mode in ("exit", "wait"):
        with subprocess.Popen(
            [sys.executable, "-c", script, mode],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        ) as parent:
            assert parent.stdout is not None
            server_pid = int(parent.stdout.readline())
            if mode == "wait":
                parent.kill()
            parent.wait(EXIT_SECONDS)
        wait_until_gone(server_pid)


def wait_until_gone(pid: int) -> None:
    """Poll (bounded) until ``pid`` no longer runs; an unreaped zombie counts as gone."""
    deadline = time.monotonic() + EXIT_SECONDS
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/stat") as status:
                if status.read().rpartition(")")[2].split()[0] in ("Z", "X"):
                    return
        except FileNotFoundError:
            return
        time.sleep(0.02)
    pytest.fail(f"server process {pid} still runs {EXIT_SECONDS}s after its parent ended")


@pytest.mark.anyio
async def test_async_namespace_from_the_manager(manager: Manager) -> None:
    async with manager.AsyncNamespace("async-board", a=1) as ns:
        assert await ns.a == 1
    async with manager.AsyncNamespace("async-board", a=100, b=2) as again:
        assert (await again.a, await again.b) == (1, 2)
    assert manager.Namespace("async-board")._snapshot() == {"a": 1, "b": 2}


@pytest.mark.anyio
async def test_async_namespace_initial_values_survive_pickling(manager: Manager) -> None:
    """Like ``Manager.Namespace(**initial)``, the values must exist for a copy sent elsewhere
    (a pickled proxy is what a child process gets)."""
    ns = manager.AsyncNamespace(greeting="hi")
    copy = pickle.loads(pickle.dumps(ns))
    assert isinstance(copy, AsyncNamespace)
    try:
        assert await copy.greeting == "hi"
    finally:
        await copy._close()
        await ns._close()


def test_namespace_checks_the_server_at_once() -> None:
    """``Manager.Namespace()`` makes a round trip, like the stdlib's: a dead server fails there."""
    manager = Manager()
    manager.start()
    try:
        process = server_process(manager)
        address = manager.address
        process.kill()
        process.wait(EXIT_SECONDS)
        with pytest.raises(ConnectionLost):
            manager.Namespace()
        with pytest.raises(ConnectionLost):
            Namespace(address, "x", authkey=manager.authkey)._ping()
    finally:
        manager.shutdown()


def test_start_returns_the_manager_and_join_waits_for_the_server() -> None:
    manager = Manager().start()
    assert isinstance(manager, Manager)
    process = server_process(manager)
    private_dir = os.path.dirname(str(manager.address))
    manager.join(timeout=0)  # still serving: returns, as the stdlib's, and changes nothing
    assert manager.Namespace(a=1).a == 1
    process.terminate()  # someone else stops the server (SIGTERM stops it cleanly)
    manager.join()
    assert process.returncode == 0
    assert not os.path.exists(private_dir)
    with pytest.raises(RuntimeError, match="not started"):
        _ = manager.address  # as after shutdown()
    Manager().join()  # never started: nothing to wait for


def test_a_manager_used_before_start_says_how_to_start_it() -> None:
    with pytest.raises(RuntimeError, match=r"call manager\.start\(\) first .*connect\(\)"):
        Manager().Namespace()


def test_connection_lost_is_also_the_eoferror_stdlib_handlers_catch() -> None:
    """The stdlib's proxies raise EOFError when their manager dies: such handlers still work."""
    manager = Manager().start()
    ns = manager.Namespace(a=1)
    process = server_process(manager)
    process.kill()
    process.wait(EXIT_SECONDS)
    try:
        with pytest.raises(EOFError) as caught:
            _ = ns.a
        assert isinstance(caught.value, ConnectionLost)
        assert isinstance(caught.value, ConnectionError)
    finally:
        manager.shutdown()


@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
def test_shutdown_in_a_forked_child_only_detaches() -> None:
    """As the stdlib's Finalize: only the process that started the server stops it."""
    with Manager() as manager:
        ns = manager.Namespace("forked-shutdown", a=1)
        pid = os.fork()
        if pid == 0:  # the child: shutdown() (or leaving a with block) must not stop it
            code = 1
            try:
                manager.shutdown()
                with pytest.raises(RuntimeError):
                    _ = manager.address
                code = 0
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert server_process(manager).poll() is None
        assert os.path.exists(str(manager.address))
        assert ns.a == 1
