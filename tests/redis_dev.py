"""Redis servers for the Redis store's tests until tests/redis_rig.py lands (same names).

``standalone()``: one redis-server on a Unix socket per test process; ``cluster()``: three
masters on loopback; ``private_standalone()``: one the caller owns; ``unique_prefix()``: a key
prefix no other caller gets. Started lazily, stopped at exit.
"""

from __future__ import annotations

import atexit
import os
import random
import shutil
import subprocess
import tempfile
import time
import uuid
from typing import Any

import pytest

__all__ = ["available", "cluster", "private_standalone", "standalone", "unique_prefix"]

_BINARY = shutil.which("redis-server")
_STARTED: list[Any] = []
_EPHEMERAL = ("--save", "", "--appendonly", "no")  # nothing written to disk
_SHARED: dict[str, Any] = {}


def available() -> bool:
    """Whether the Redis tests can run here (or must: $AIONAMESPACE_REQUIRE_REDIS=1)."""
    return _BINARY is not None or os.environ.get("AIONAMESPACE_REQUIRE_REDIS") == "1"


def _binary() -> str:
    if _BINARY is None:
        if os.environ.get("AIONAMESPACE_REQUIRE_REDIS") == "1":
            pytest.fail("no redis-server on PATH, and $AIONAMESPACE_REQUIRE_REDIS=1")
        pytest.skip("no redis-server on PATH: install one (apt-get install redis-server)")
    return _BINARY


def _wait(condition: Any, what: str) -> None:
    deadline = time.monotonic() + 20
    while True:
        try:
            if condition():
                return
        except Exception:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        time.sleep(0.02)


class RedisServer:
    """A standalone redis-server on a Unix socket, without persistence."""

    def __init__(self) -> None:
        self.directory = tempfile.mkdtemp(prefix="ans-redis-")
        self.socket_path = os.path.join(self.directory, "redis.sock")
        self.url = f"unix://{self.socket_path}"
        self.process: subprocess.Popen[bytes] | None = None
        _STARTED.append(self)

    @property
    def pid(self) -> int | None:
        return None if self.process is None else self.process.pid

    def start(self) -> RedisServer:
        if self.process is not None and self.process.poll() is None:
            return self
        self.process = subprocess.Popen(
            [
                _binary(),
                *("--port", "0", "--unixsocket", self.socket_path),
                *_EPHEMERAL,
                "--dir",
                self.directory,
            ],
            stdout=subprocess.DEVNULL,
        )
        _wait(lambda: self.client().ping(), "redis-server answers")
        return self

    def client(self, **options: Any) -> Any:
        import redis

        return redis.Redis(unix_socket_path=self.socket_path, **options)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait()

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()


class RedisCluster:
    """Three masters on loopback sharing the 16384 slots."""

    def __init__(self) -> None:
        self.directory = tempfile.mkdtemp(prefix="ans-cluster-")
        base = random.randrange(20_000, 30_000, 10)
        self.nodes = [("127.0.0.1", base + i) for i in range(3)]
        self.processes: list[subprocess.Popen[bytes]] = []
        _STARTED.append(self)

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(f"{h}:{p}" for h, p in self.nodes)

    def start(self) -> RedisCluster:
        import redis

        for _host, port in self.nodes:
            directory = os.path.join(self.directory, str(port))
            os.makedirs(directory)
            self.processes.append(
                subprocess.Popen(
                    [
                        _binary(),
                        "--port",
                        str(port),
                        "--cluster-enabled",
                        "yes",
                        *_EPHEMERAL,
                        "--dir",
                        directory,
                    ],
                    stdout=subprocess.DEVNULL,
                )
            )
        for _host, port in self.nodes:
            _wait(lambda port=port: redis.Redis(port=port).ping(), "node answers")
        subprocess.run(
            ["redis-cli", "--cluster", "create", "--cluster-yes"]
            + [f"{h}:{p}" for h, p in self.nodes],
            check=True,
            capture_output=True,
        )
        for _host, port in self.nodes:
            _wait(
                lambda port=port: redis.Redis(port=port).cluster("info")["cluster_state"] == "ok",
                "cluster_state:ok",
            )
        return self

    def stop(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.terminate()
                process.wait()


def standalone() -> RedisServer:
    server = _SHARED.get("standalone")
    if server is None:
        server = _SHARED["standalone"] = RedisServer()
    return server.start()  # type: ignore[no-any-return]


def cluster() -> RedisCluster:
    formed = _SHARED.get("cluster")
    if formed is None:
        formed = _SHARED["cluster"] = RedisCluster().start()
    return formed  # type: ignore[no-any-return]


def private_standalone() -> RedisServer:
    return RedisServer().start()


def unique_prefix(label: str = "test") -> str:
    return f"{label}:{uuid.uuid4().hex[:16]}:"


@atexit.register
def _stop_all() -> None:
    for started in reversed(_STARTED):
        started.stop()
        shutil.rmtree(started.directory, ignore_errors=True)
