"""The Redis servers the tests start (redis_rig.py) are real, reachable, and cleaned up.

The standalone server answers on its Unix socket and nowhere else, and comes back on the same
path after a stop or a SIGKILL; the cluster's three masters agree on the slot map and one
cluster client reaches every node's keys; without a redis-server the rig skips, or fails under
``AIONAMESPACE_REQUIRE_REDIS=1``; and a test session leaves no redis-server behind, whether it
ends normally or is SIGKILLed.
"""

from __future__ import annotations

import json
import os
import select
import shutil
import signal
import socket
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import redis

import redis_rig
from deadlines import NO_HANG_SECONDS

TESTS = Path(__file__).resolve().parent
SRC = TESTS.parent / "src"


def test_the_standalone_answers_ping_on_its_unix_socket_only(
    redis_standalone: redis_rig.RedisServer,
) -> None:
    assert redis_standalone.url == f"unix://{redis_standalone.socket_path}"
    assert stat.S_ISSOCK(os.stat(redis_standalone.socket_path).st_mode)
    with socket.socket(socket.AF_UNIX) as raw:  # the wire itself, no client library
        raw.settimeout(NO_HANG_SECONDS)
        raw.connect(redis_standalone.socket_path)
        raw.sendall(b"PING\r\n")
        assert raw.recv(64) == b"+PONG\r\n"
    with redis_standalone.client(decode_responses=True) as client:
        assert client.config_get("port") == {"port": "0"}  # no TCP
        assert client.config_get("save") == {"save": ""}
        assert client.config_get("appendonly") == {"appendonly": "no"}


def test_the_shared_servers_are_one_per_process(
    redis_standalone: redis_rig.RedisServer, redis_cluster: redis_rig.RedisCluster
) -> None:
    assert redis_rig.standalone() is redis_standalone
    assert redis_rig.cluster() is redis_cluster


def test_stop_and_start_keep_the_socket_path(redis_private: redis_rig.RedisServer) -> None:
    path, first_pid = redis_private.socket_path, redis_private.pid
    with redis_private.client() as client:
        client.set("kept?", "no: nothing is saved")
    redis_private.stop()
    assert not redis_private.running
    assert not os.path.exists(path)  # it removes its socket on shutdown
    with redis_private.client() as client, pytest.raises(redis.ConnectionError):
        client.ping()
    redis_private.start()
    assert redis_private.socket_path == path
    assert redis_private.pid != first_pid
    with redis_private.client() as client:
        assert client.ping()
        assert client.get("kept?") is None


def test_a_killed_server_starts_again_over_its_stale_socket(
    redis_private: redis_rig.RedisServer,
) -> None:
    redis_private.kill()
    assert not redis_private.running
    assert os.path.exists(redis_private.socket_path)  # SIGKILL leaves the socket file
    redis_private.start()
    with redis_private.client() as client:
        assert client.ping()


def test_every_cluster_node_is_ok_and_agrees_on_the_slots(
    redis_cluster: redis_rig.RedisCluster,
) -> None:
    assert len(redis_cluster.nodes) == 3
    assert redis_cluster.url == "redis+cluster://" + ",".join(
        f"127.0.0.1:{port}" for _host, port in redis_cluster.nodes
    )
    maps = []
    for host, port in redis_cluster.nodes:
        with redis.Redis(host, port, decode_responses=True) as node:
            info = node.cluster("info")
            assert info["cluster_state"] == "ok"
            assert info["cluster_known_nodes"] == "3"
            assert info["cluster_size"] == "3"
            maps.append(
                sorted((first, last, owner[1]) for first, last, owner in node.cluster("slots"))
            )
    assert all(slot_map == maps[0] for slot_map in maps)
    assert sum(last - first + 1 for first, last, _port in maps[0]) == redis_rig.CLUSTER_SLOTS
    assert {port for _first, _last, port in maps[0]} == {port for _h, port in redis_cluster.nodes}


def test_one_cluster_client_reaches_the_keys_of_every_node(
    redis_cluster: redis_rig.RedisCluster, redis_prefix: str
) -> None:
    with redis_cluster.client(decode_responses=True) as cluster:
        for host, port in redis_cluster.nodes:
            with redis.Redis(host, port, decode_responses=True) as node:
                key = _a_key_served_by(node, port, redis_prefix)
                cluster.set(key, f"on {port}")
                assert node.get(key) == f"on {port}"  # it lives on that node
                assert cluster.get(key) == f"on {port}"
                assert cluster.delete(key) == 1


def _a_key_served_by(node: redis.Redis, port: int, prefix: str) -> str:
    owned = [(first, last) for first, last, owner in node.cluster("slots") if owner[1] == port]
    for n in range(10_000):
        key = f"{prefix}{n}"
        slot = node.cluster("keyslot", key)
        if any(first <= slot <= last for first, last in owned):
            return key
    raise AssertionError(f"no key of node {port} in 10,000 tries")


def test_unique_prefixes_never_repeat() -> None:
    prefixes = {redis_rig.unique_prefix() for _ in range(1000)}
    assert len(prefixes) == 1000
    assert not any("{" in prefix or "}" in prefix for prefix in prefixes)  # no hash tag


def test_a_forked_child_does_not_stop_its_parents_server(
    redis_private: redis_rig.RedisServer,
) -> None:
    pid = os.fork()
    if pid == 0:  # the child: what its exit would run
        try:
            redis_rig.stop_all()
        finally:
            os._exit(0)
    assert os.waitpid(pid, 0)[1] == 0
    assert redis_private.running
    with redis_private.client() as client:
        assert client.ping()


def _session(tmp: str, test_body: str, *pytest_options: str, **env: str) -> subprocess.Popen[str]:
    """A pytest session in a subprocess, running one test that uses the rig."""
    (Path(tmp) / "test_child.py").write_text(
        "import json, os, time\nimport redis_rig\n\n\n" + textwrap.dedent(test_body)
    )
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), str(SRC)]), **env}
    environment.pop("PYTEST_ADDOPTS", None)
    return subprocess.Popen(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-rsf", *pytest_options],
        cwd=tmp,
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _path_without_redis() -> str:
    binaries = ("redis-server", "valkey-server")
    return os.pathsep.join(
        directory
        for directory in os.environ.get("PATH", "").split(os.pathsep)
        if not any(os.path.exists(os.path.join(directory, name)) for name in binaries)
    )


@pytest.mark.parametrize("required", [False, True], ids=["skips", "fails when required"])
def test_without_redis_server_the_rig_skips_unless_required(short_tmp: str, required: bool) -> None:
    env = {"PATH": _path_without_redis(), redis_rig.SERVER_VARIABLE: ""}
    env[redis_rig.REQUIRE_VARIABLE] = "1" if required else ""
    session = _session(short_tmp, "def test_it():\n    redis_rig.standalone()\n", **env)
    output, _ = session.communicate(timeout=60)
    assert "apt-get install redis-server" in output, output
    if required:
        assert session.returncode == 1, output
        assert "1 failed" in output
        assert f"{redis_rig.REQUIRE_VARIABLE}=1 makes this a failure" in output
    else:
        assert session.returncode == 0, output
        assert "1 skipped" in output


REPORTING_TEST = """
def test_it():
    server, cluster = redis_rig.standalone(), redis_rig.cluster()
    pids = [server.pid, *cluster.pids]
    print("\\nSERVERS " + json.dumps([pids, [server.directory, cluster.directory]]), flush=True)
    if os.environ.get("HOLD"):
        time.sleep(60)  # until SIGKILLed
"""


def _reported(session: subprocess.Popen[str]) -> tuple[list[int], list[str]]:
    """The pids and directories the child session's test printed. (Blocking reads: the child
    prints them, or ends, within its own 60 s.)"""
    assert session.stdout is not None
    seen = []
    for line in session.stdout:
        if line.startswith("SERVERS "):
            pids, directories = json.loads(line.removeprefix("SERVERS "))
            return pids, directories
        seen.append(line)
    session.wait()
    pytest.fail("the child session reported no servers:\n" + "".join(seen))


def _gone(pid: int, seconds: float) -> bool:
    """Whether process ``pid`` has exited within ``seconds`` (a pidfd: no polling)."""
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True  # exited and reaped
    try:
        readable, _, _ = select.select([pidfd], [], [], seconds)
        return bool(readable)
    finally:
        os.close(pidfd)


@pytest.mark.slow
def test_a_session_that_ends_leaves_no_redis_server(short_tmp: str) -> None:
    session = _session(short_tmp, REPORTING_TEST, "-s")
    pids, directories = _reported(session)
    assert len(pids) == 4
    output, _ = session.communicate(timeout=60)
    assert session.returncode == 0, output
    for pid in pids:
        assert _gone(pid, 0), f"redis-server {pid} outlived its session"
    for directory in directories:
        assert not os.path.exists(directory)  # stopped by the rig, not only killed


@pytest.mark.slow
@pytest.mark.skipif(not shutil.which("setpriv"), reason="needs util-linux's setpriv")
def test_a_session_sigkilled_leaves_no_redis_server(short_tmp: str) -> None:
    session = _session(short_tmp, REPORTING_TEST, "-s", HOLD="1")
    pids, directories = _reported(session)
    session.send_signal(signal.SIGKILL)
    session.communicate(timeout=NO_HANG_SECONDS)
    for directory in directories:
        shutil.rmtree(directory, ignore_errors=True)  # what its exit would have removed
    for pid in pids:
        assert _gone(pid, NO_HANG_SECONDS), f"redis-server {pid} outlived its SIGKILLed session"
