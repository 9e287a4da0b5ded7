"""``serve --store URL`` and ``Manager(store=URL)``: how a board in Redis is started, and every
way it can fail to start (one line naming the store, its password never shown, no traceback).

The failures at start over a Redis that is down, and the servers at work under failures, are
in test_scale_out.py.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from multiprocessing import get_context

import pytest

import aionamespace
import redis_rig
from aionamespace import (
    DataFileError,
    HistoryExpired,
    LimitExceeded,
    Manager,
    Namespace,
    RedisStore,
    ServerThread,
    StoreUnavailable,
)
from deadlines import NO_HANG_SECONDS
from server_processes import ServeProcess

pytestmark = pytest.mark.usefixtures("collect_garbage")

LAYOUT_KEY = "{board}:layout"


def run_cli(*arguments: str, blocking_redis: bool = False) -> subprocess.CompletedProcess[str]:
    """``python -m aionamespace ARGUMENTS``; ``blocking_redis``: as if redis-py were not
    installed (an import of it fails, as Python's own tests block a module)."""
    code = "import sys; from aionamespace.cli import main; sys.exit(main(sys.argv[1:]))"
    if blocking_redis:
        code = "import sys; sys.modules['redis'] = None; " + code
    return subprocess.run(
        [sys.executable, "-c", code, *arguments],
        capture_output=True,
        text=True,
        timeout=NO_HANG_SECONDS * 2,
        check=False,
    )


def one_line(done: subprocess.CompletedProcess[str], status: int) -> str:
    assert done.returncode == status, done.stderr
    [line] = done.stderr.splitlines()
    return line


@pytest.mark.parametrize(
    ("flags", "said"),
    [
        (["--data", "b.db"], "--store and --data exclude each other"),
        (["--fsync"], "--store and --fsync exclude each other"),
        (["--backend", "trio"], "--store runs on --backend asyncio"),
        (["--store-timeout", "0"], "--store-timeout wants seconds above 0"),
        (["--store-timeout", "inf"], "--store-timeout wants seconds above 0"),
        (["--store-lock-lease", "0"], "--store-lock-lease wants seconds above 0"),
        (["--store-prefix", "a{b}"], "--store-prefix holds no braces"),
    ],
)
def test_flags_that_contradict_store_are_usage_errors(
    short_tmp: str, flags: list[str], said: str
) -> None:
    path = os.path.join(short_tmp, "s.sock")
    done = run_cli("serve", "--unix", path, "--store", "unix:///no/redis.sock", *flags)
    assert said in one_line(done, 2)


def test_store_flags_without_store_and_bad_urls_are_usage_errors(short_tmp: str) -> None:
    path = os.path.join(short_tmp, "s.sock")
    line = one_line(run_cli("serve", "--unix", path, "--store-prefix", "p"), 2)
    assert "--store-prefix applies to --store URL" in line
    line = one_line(run_cli("serve", "--unix", path, "--store", "redis://u:s3cret@host:x/"), 2)
    assert "--store: 'host:x': the port 'x' is not a number" in line
    assert "s3cret" not in line
    line = one_line(run_cli("serve", "--unix", path, "--store", "http://host"), 2)
    assert "not a store URL" in line


def test_without_redis_py_the_store_says_how_to_get_it(short_tmp: str) -> None:
    path = os.path.join(short_tmp, "s.sock")
    done = run_cli("serve", "--unix", path, "--store", "redis://h:1", blocking_redis=True)
    assert one_line(done, 1) == (
        "aionamespace: the Redis store needs redis-py: pip install 'aionamespace[redis]'"
    )


def test_a_board_of_another_layout_is_refused(
    redis_standalone: redis_rig.RedisServer, redis_prefix: str, short_tmp: str
) -> None:
    with redis_standalone.client() as client:
        client.set(redis_prefix + LAYOUT_KEY, "0")
    url = redis_standalone.url
    done = run_cli(
        "serve", "--unix", os.path.join(short_tmp, "s.sock"), "--store", url,
        "--store-prefix", redis_prefix,
    )  # fmt: skip
    line = one_line(done, 1)
    assert line.startswith(f"aionamespace: cannot serve: {url} holds an aionamespace board")
    assert "layout '0'" in line
    with pytest.raises(DataFileError, match="layout '0'"):
        Manager(store=url, store_prefix=redis_prefix).start()


def test_the_limit_flags_bound_a_board_in_redis(
    redis_standalone: redis_rig.RedisServer,
    redis_prefix: str,
    short_tmp: str,
    cli_servers: list[ServeProcess],
) -> None:
    server = ServeProcess(
        os.path.join(short_tmp, "s.sock"), "asyncio", "--store", redis_standalone.url,
        "--store-prefix", redis_prefix, "--max-namespaces", "1",
        "--max-history-revisions", "2",
    )  # fmt: skip
    cli_servers.append(server)
    with Namespace(server.address, "first") as ns:
        for value in range(4):
            ns.x = value
        with pytest.raises(HistoryExpired), ns._watch(since=0) as watch:
            watch.next(timeout=NO_HANG_SECONDS)
    with Namespace(server.address, "second") as ns, pytest.raises(LimitExceeded):
        ns.x = 1


def test_manager_arguments_a_redis_store_cannot_take() -> None:
    with pytest.raises(ValueError, match="exclude each other"):
        Manager(store="redis://h", data="board.db")
    with pytest.raises(ValueError, match="asyncio"):
        Manager(store="redis://h", backend="trio")
    with pytest.raises(ValueError, match="not a store URL"):
        Manager(store="h:6379")
    with pytest.raises(ValueError, match="braces"):
        Manager(store="redis://h", store_prefix="{x}")


def test_a_manager_whose_redis_is_down_does_not_start(
    redis_private: redis_rig.RedisServer,
) -> None:
    redis_private.stop()
    with pytest.raises(StoreUnavailable, match=r"cannot serve: the store \(unix://"):
        Manager(store=redis_private.url).start()


def double_in_child(ns: Namespace) -> None:
    ns.item = ns.item * 2


def test_managers_over_one_redis_share_one_board(
    redis_cluster: redis_rig.RedisCluster, redis_prefix: str
) -> None:
    """Two Managers (two private servers) over one Redis Cluster: one board, proxies pickled
    into a spawned child as with the memory store."""
    options = {"store": redis_cluster.url, "store_prefix": redis_prefix}
    with Manager(**options) as one, Manager(**options) as other:  # type: ignore[arg-type]
        ns = one.Namespace("board")
        ns.item = 21
        child = get_context("spawn").Process(target=double_in_child, args=(ns,))
        child.start()
        child.join(NO_HANG_SECONDS * 3)
        assert child.exitcode == 0
        assert other.Namespace("board").item == 42
        lock = other.Lock("jobs")
        with lock:
            assert lock.locked()


def test_redis_store_is_exported_for_embedding(
    redis_standalone: redis_rig.RedisServer, redis_prefix: str, short_tmp: str
) -> None:
    assert aionamespace.RedisStore is RedisStore
    store = RedisStore(redis_standalone.url, prefix=redis_prefix)
    with (
        ServerThread(os.path.join(short_tmp, "e.sock"), store=store) as server,
        Namespace(server.address, "embedded") as ns,
    ):
        ns.x = 1
        assert ns._incr("x") == 2


def test_a_password_from_the_environment_or_the_url_never_shown(
    redis_private: redis_rig.RedisServer,
    short_tmp: str,
    monkeypatch: pytest.MonkeyPatch,
    cli_servers: list[ServeProcess],
) -> None:
    with redis_private.client() as client:
        client.config_set("requirepass", "s3cret")
    path = os.path.join(short_tmp, "s.sock")
    wrong = f"unix://:wr0ng@{redis_private.socket_path}"
    line = one_line(run_cli("serve", "--unix", path, "--store", wrong), 1)
    assert line.startswith("aionamespace: cannot serve: the store (unix://:***@")
    assert "wr0ng" not in line
    line = one_line(run_cli("serve", "--unix", path, "--store", redis_private.url), 1)
    assert "is unavailable: AuthenticationError" in line
    monkeypatch.setenv("AIONAMESPACE_STORE_PASSWORD", "s3cret")  # (ServeProcess inherits it)
    line = one_line(run_cli("serve", "--unix", path, "--store", wrong), 2)
    assert "give one" in line
    server = ServeProcess(path, "asyncio", "--store", redis_private.url)
    cli_servers.append(server)
    with Namespace(server.address, "board") as ns:
        ns.x = 1
        assert ns.x == 1


@pytest.mark.parametrize(
    ("options", "error", "said"),
    [
        ({"store_timeout": 0}, ValueError, "store_timeout wants seconds above 0"),
        ({"store_timeout": float("inf")}, ValueError, "store_timeout wants seconds above 0"),
        ({"store_timeout": float("nan")}, ValueError, "store_timeout wants seconds above 0"),
        ({"store_lock_lease": -1}, ValueError, "store_lock_lease wants seconds above 0"),
        ({"store_timeout": "5"}, TypeError, "store_timeout is a number of seconds, not str"),
        ({"store_lock_lease": True}, TypeError, "store_lock_lease is a number of seconds"),
        ({"store": None, "store_timeout": 1}, ValueError, "store_timeout applies to a Redis"),
        ({"store": None, "store_lock_lease": 1}, ValueError, "store_lock_lease applies"),
    ],
)
def test_manager_store_options_are_checked_before_anything_starts(
    options: dict[str, object], error: type[Exception], said: str
) -> None:
    arguments: dict[str, object] = {"store": "redis://h", **options}
    with pytest.raises(error, match=said):
        Manager(**arguments)  # type: ignore[arg-type]


def test_a_manager_refuses_two_passwords(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIONAMESPACE_STORE_PASSWORD", "s3cret")
    with pytest.raises(ValueError, match="gives one too") as refused:
        Manager(store="redis://:other@h")
    assert "other" not in str(refused.value)


def test_a_manager_gives_its_server_the_store_timeout_and_lock_lease(
    redis_private: redis_rig.RedisServer, redis_prefix: str
) -> None:
    """The lease shows in the lock key's TTL in Redis (three leases, redis_lock_scripts.py;
    the default lease would make it 30 s); the timeout, in how soon a call fails once Redis
    stops answering (SIGSTOP), well within the default of 5 seconds."""
    with Manager(
        store=redis_private.url,
        store_prefix=redis_prefix,
        store_timeout=0.5,
        store_lock_lease=1.5,
    ) as manager:
        lock = manager.Lock("jobs")
        with lock, redis_private.client() as client:
            ttls = [client.pttl(key) for key in client.scan_iter(f"{redis_prefix}*")]
            leases = [ttl for ttl in ttls if ttl > 0]  # (a namespace's keys have none)
            assert len(leases) == 1
            assert 3000 < leases[0] <= 3 * 1500
        ns = manager.Namespace("board")
        ns.x = 1
        assert redis_private.pid is not None
        os.kill(redis_private.pid, signal.SIGSTOP)
        try:
            began = time.monotonic()
            with pytest.raises(StoreUnavailable, match=r"no answer within 0\.5 seconds"):
                ns.x = 2
            assert time.monotonic() - began < 2.5  # (the default would take 5)
        finally:
            os.kill(redis_private.pid, signal.SIGCONT)


def test_a_manager_takes_the_password_from_the_environment_never_its_command_line(
    redis_private: redis_rig.RedisServer, redis_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with redis_private.client() as client:
        client.config_set("requirepass", "s3cret")
    with pytest.raises(StoreUnavailable, match="AuthenticationError"):
        Manager(store=redis_private.url, store_prefix=redis_prefix).start()
    monkeypatch.setenv("AIONAMESPACE_STORE_PASSWORD", "s3cret")
    with Manager(store=redis_private.url, store_prefix=redis_prefix) as manager:
        manager.Namespace("board").x = 1
        assert manager._process is not None
        with open(f"/proc/{manager._process.pid}/cmdline", "rb") as cmdline:
            assert b"s3cret" not in cmdline.read()
    with redis_private.client(password="s3cret") as client:
        assert client.exists(f"{redis_prefix}{{=board}}:m")


def test_info_names_the_redis_store_never_its_password(
    redis_private: redis_rig.RedisServer,
    short_tmp: str,
    redis_prefix: str,
    cli_servers: list[ServeProcess],
) -> None:
    """``info`` says where the board is: the store's URL with its password replaced (as every
    message shows it) and the key prefix."""
    with redis_private.client() as client:
        client.config_set("requirepass", "s3cret")
    url = f"unix://:s3cret@{redis_private.socket_path}"
    server = ServeProcess(
        os.path.join(short_tmp, "s.sock"), "asyncio", "--store", url, "--store-prefix", "board"
    )
    cli_servers.append(server)
    shown = f"unix://:***@{redis_private.socket_path}"
    with Namespace(server.address, "x") as ns:
        figures = ns._info()
    assert (figures["store"], figures["store_location"]) == ("RedisStore", shown)
    assert figures["store_prefix"] == "board:"
    printed = run_cli("info", str(server.address))
    assert printed.returncode == 0, printed.stderr
    assert f"store        RedisStore at {shown} (keys board:...)" in printed.stdout.splitlines()
    assert "s3cret" not in printed.stdout
