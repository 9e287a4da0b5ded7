"""Servers over one Redis for the shared-lock tests, and what they share there.

``LockServers`` starts servers over one Redis (``ServerThread``\\ s of this process, each with a
``RedisStore`` of one prefix) and, for a server to SIGKILL, ``ServerOverRedis``: a process of
its own. ``HolderProcess`` is a client process that takes a lock and holds it until killed.
``line(...)`` reads a lock's waiting line in Redis (redis_lock_scripts.py's keys), which no
event announces: ``in_line`` polls it with ``wait_until`` to know a waiter is in line. A
``Waiter`` is a thread waiting for a lock; ``first_failure`` pings until a LockLost.
"""

from __future__ import annotations

import os
import selectors
import subprocess
import sys
import textwrap
import threading
import time
from typing import Any

from aionamespace import ConnectionLost, LockLost, Namespace, ServerThread
from aionamespace.server.stores.redis import RedisStore
from deadlines import NO_HANG_SECONDS, wait_until

__all__ = [
    "AT_ONCE",
    "HolderProcess",
    "LockServers",
    "ServerOverRedis",
    "Waiter",
    "first_failure",
    "in_line",
    "line",
]

AT_ONCE = 1.0  # a push takes milliseconds; a loaded machine gets this much

SERVE = textwrap.dedent(
    """
    import sys
    import anyio
    from aionamespace import Server
    from aionamespace.server.stores.redis import RedisStore

    async def main() -> None:
        path, url, prefix, lease = sys.argv[1:5]
        store = RedisStore(url, prefix=prefix, lock_lease=float(lease))
        async with Server(path, store=store):
            print("serving", flush=True)
            await anyio.sleep_forever()

    anyio.run(main)
    """
)

HOLD = textwrap.dedent(
    """
    import sys, time
    from aionamespace import Namespace

    ns = Namespace(sys.argv[1], sys.argv[2])
    lock = ns._lock(sys.argv[3])
    assert lock.acquire(timeout=10)
    print("held", flush=True)
    time.sleep(3600)
    """
)


def _ready(process: subprocess.Popen[bytes], word: str) -> None:
    assert process.stdout is not None
    with selectors.DefaultSelector() as selector:
        selector.register(process.stdout, selectors.EVENT_READ)
        ready = selector.select(NO_HANG_SECONDS)
    said = process.stdout.readline().decode() if ready else ""
    if word not in said:
        process.kill()
        process.wait(NO_HANG_SECONDS)
        raise RuntimeError(f"the process did not say {word!r}: {said!r}")


class _Process:
    def __init__(self, script: str, word: str, *args: str) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-c", script, *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        _ready(self.process, word)

    def kill(self) -> None:
        """SIGKILL and reap it."""
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(NO_HANG_SECONDS)
        assert self.process.stdout is not None
        self.process.stdout.close()


class ServerOverRedis(_Process):
    """A server in a process of its own over the Redis at ``url`` (to SIGKILL)."""

    def __init__(self, path: str, url: str, prefix: str, lease: float) -> None:
        super().__init__(SERVE, "serving", path, url, prefix, str(lease))
        self.address = path


class HolderProcess(_Process):
    """A client process holding lock ``name`` of namespace ``key`` through ``address``."""

    def __init__(self, address: str, key: str, name: str) -> None:
        super().__init__(HOLD, "held", address, key, name)


class LockServers:
    """``count`` ServerThreads over one Redis board (Unix sockets in ``directory``)."""

    def __init__(self, url: str, prefix: str, directory: str, count: int, lease: float) -> None:
        self.url, self.prefix, self.lease = url, prefix, lease
        self.threads = [
            ServerThread(
                os.path.join(directory, f"s{index}.sock"),
                store=RedisStore(url, prefix=prefix, lock_lease=lease),
            )
            for index in range(count)
        ]

    def __enter__(self) -> list[ServerThread]:
        started: list[ServerThread] = []
        try:
            for thread in self.threads:
                thread.start()
                started.append(thread)
        except BaseException:
            for thread in started:
                thread.stop()
            raise
        return self.threads

    def __exit__(self, *exc: object) -> None:
        for thread in self.threads:
            thread.stop()


def line(client: Any, prefix: str, key: str, name: str) -> list[str]:
    """The ids waiting in line for lock ``name`` of ``key`` (a sync redis-py client; a key
    that needs no escapes: redis.py's ``base``)."""
    base = f"{prefix}{{={key}}}"
    return [member.decode() for member in client.zrange(f"{base}:lq:{name}", 0, -1)]


class Waiter(threading.Thread):
    """A thread that waits for lock ``name`` through ``address``; ``got`` is set (and ``at``
    noted) once it holds it; then it releases it when ``let_go`` is set."""

    def __init__(self, address: Any, name: str, timeout: float = NO_HANG_SECONDS * 3) -> None:
        super().__init__(daemon=True)
        self.ns = Namespace(address, "jobs")
        self.name, self.timeout = name, timeout
        self.got, self.let_go = threading.Event(), threading.Event()
        self.at = 0.0
        self.result: bool | BaseException | None = None
        self.order: list[str] | None = None
        self.label = ""

    def waited_since(self, since: float) -> float:
        """Once it holds the lock (a failure if it does not within NO_HANG_SECONDS): how long
        after ``since`` it got it."""
        assert self.got.wait(NO_HANG_SECONDS)
        assert self.result is True
        return self.at - since

    def let_it_go(self) -> None:
        """Release the lock it holds, and end."""
        self.let_go.set()
        self.join(NO_HANG_SECONDS)

    def run(self) -> None:
        lock = self.ns._lock(self.name)
        try:
            self.result = lock.acquire(timeout=self.timeout)
            self.at = time.monotonic()
            if self.result:
                if self.order is not None:
                    self.order.append(self.label)
                self.got.set()
                self.let_go.wait(NO_HANG_SECONDS * 3)
                lock.release()
        except BaseException as exc:
            self.result = exc
        finally:
            self.got.set()
            self.ns._close()


def first_failure(ns: Namespace, seconds: float) -> BaseException | None:
    """Ping (no store call: only a dropped connection fails it) until a call fails with
    LockLost, for at most ``seconds``: that failure (a broken call's own ConnectionLost may
    come first), or None."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            ns._ping()
        except LockLost as exc:
            return exc
        except ConnectionLost:
            continue
    return None


def in_line(client: Any, prefix: str, count: int, name: str = "L") -> None:
    wait_until(lambda: len(line(client, prefix, "jobs", name)) == count, f"{count} in line")
