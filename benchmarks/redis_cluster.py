"""A 3-master Redis Cluster on loopback for compare.py's cluster rows, stopped on exit.

Each node is a ``redis-server`` with ``cluster-enabled yes`` and no persistence, on free ports;
the 16384 slots are split in three, every node meets the others, and the cluster is ready when
every node says ``cluster_state:ok`` (about 2 s: a new master waits that long before it does).
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from typing import Any

__all__ = ["redis_cluster"]

SLOTS = 16384
READY_SECONDS = 30.0


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def _wait(check: Callable[[], bool], what: str) -> None:
    import redis

    deadline = time.monotonic() + READY_SECONDS
    while True:
        with contextlib.suppress(OSError, redis.RedisError):
            if check():
                return
        if time.monotonic() > deadline:
            raise RuntimeError(f"the benchmark's Redis Cluster: {what} did not happen in time")
        time.sleep(0.05)


@contextlib.contextmanager
def redis_cluster(
    directory: str, child_process: Any, masters: int = 3
) -> Iterator[list[tuple[str, int]]]:
    """Start the cluster's nodes (``child_process``: compare.py's), form it, yield its nodes."""
    import redis

    with contextlib.ExitStack() as stack:
        nodes: list[tuple[str, int, int]] = []
        for index in range(masters):
            port, bus = _free_ports(2)
            where = os.path.join(directory, f"cluster-{index}")
            os.mkdir(where)
            command = ["redis-server", "--port", str(port), "--bind", "127.0.0.1"]
            command += ["--cluster-enabled", "yes", "--cluster-port", str(bus)]
            command += ["--cluster-config-file", "nodes.conf", "--save", "", "--appendonly", "no"]
            command += ["--dir", where, "--daemonize", "no", "--loglevel", "warning"]
            process: subprocess.Popen[bytes] = stack.enter_context(child_process(command))
            nodes.append(("127.0.0.1", port, bus))
            client = stack.enter_context(contextlib.closing(redis.Redis("127.0.0.1", port)))
            _wait(lambda client=client, process=process: _answers(client, process), "a PING")
        clients = [redis.Redis(host, port) for host, port, _ in nodes]
        for client in clients:
            stack.callback(client.close)
        share = SLOTS // masters
        for index, client in enumerate(clients):
            last = SLOTS - 1 if index == masters - 1 else (index + 1) * share - 1
            client.execute_command("CLUSTER", "ADDSLOTSRANGE", index * share, last)
            client.execute_command("CLUSTER", "SET-CONFIG-EPOCH", index + 1)
        for client in clients:
            for host, port, bus in nodes:
                client.execute_command("CLUSTER", "MEET", host, port, bus)
        _wait(
            lambda: all(c.cluster("info").get("cluster_state") == "ok" for c in clients),
            "cluster_state:ok on every node",
        )
        yield [(host, port) for host, port, _ in nodes]


def _answers(client: Any, process: subprocess.Popen[bytes]) -> bool:
    if process.poll() is not None:
        raise RuntimeError(f"a cluster node exited: {process.args!r}")
    return bool(client.ping())
