"""Real Redis servers for the tests: a standalone one on a Unix socket, a 3-master cluster.

``standalone()`` and ``cluster()`` start one server (one cluster) per test process, lazily, on
first use, and ``stop_all`` (run at exit and at the end of a pytest session) stops them. They
are plain functions, not only fixtures (conftest.py wraps them), so that store factories
(store_rig.py) can call them. ``private_standalone()`` starts one the caller owns, to stop,
kill and restart at will. ``unique_prefix()`` gives each test keys no other test sees.

The binary is ``$AIONAMESPACE_REDIS_SERVER``, else ``redis-server`` (else ``valkey-server``)
on PATH. Without one, the caller is skipped with a message saying how to get one, unless
``AIONAMESPACE_REQUIRE_REDIS=1`` (CI sets it: .ci/run), which makes it a failure instead, so a
green CI always means the Redis tests ran.

A server is ready when its log says it accepts connections (redis_processes.py), and then
answers PING. A cluster is ready when every node reports ``cluster_state:ok`` and every node
maps the 16384 slots alike: that no event announces, so it is polled. Cluster ports are chosen
below the kernel's ephemeral range and checked free, and a node that still loses a race for
its port (other test runs start clusters too) is started again on others. Only the process
that started a server stops it (a forked child's exit must not take the parent's server down).
"""

from __future__ import annotations

import atexit
import os
import shutil
import signal
import tempfile
import threading
import time
import uuid
from typing import Any

from deadlines import wait_until
from redis_processes import (
    REQUIRE_VARIABLE,
    SERVER_VARIABLE,
    RedisProcess,
    StartFailed,
    find_binary,
    free_ports,
)

__all__ = [
    "CLUSTER_SLOTS",
    "REQUIRE_VARIABLE",
    "SERVER_VARIABLE",
    "RedisCluster",
    "RedisServer",
    "StartFailed",
    "cluster",
    "find_binary",
    "private_standalone",
    "standalone",
    "startup_seconds",
    "stop_all",
    "unique_prefix",
]

CLUSTER_SLOTS = 16384
START_ATTEMPTS = 5  # a cluster node that loses its ports to another process tries others
_LOCK = threading.RLock()
_STARTED: list[RedisServer | RedisCluster] = []
_shared_server: RedisServer | None = None
_shared_cluster: RedisCluster | None = None


class _Owned:
    """A server (or cluster) stopped at exit by the process that started it, and only by it."""

    directory: str

    def __init__(self) -> None:
        self.owner = os.getpid()
        with _LOCK:
            _STARTED.append(self)

    def stop(self) -> None:
        raise NotImplementedError

    def remove(self) -> None:
        """Stop it and remove its files (if this process started it)."""
        if os.getpid() != self.owner:
            return
        self.stop()
        shutil.rmtree(self.directory, ignore_errors=True)
        with _LOCK:
            if self in _STARTED:
                _STARTED.remove(self)


class RedisServer(_Owned):
    """A standalone redis-server on a Unix socket (``port 0``: no TCP), without persistence.

    ``stop()`` shuts it down (SIGTERM), ``kill()`` SIGKILLs it, ``start()`` starts it again on
    the same socket path, empty (nothing is saved). ``config``: more lines of its redis.conf."""

    def __init__(self, binary: str, config: str = "") -> None:
        super().__init__()
        self.binary = binary
        self.directory = tempfile.mkdtemp(prefix="ans-redis-")
        self.socket_path = os.path.join(self.directory, "redis.sock")
        self.url = f"unix://{self.socket_path}"
        self._config = os.path.join(self.directory, "redis.conf")
        with open(self._config, "w") as file:
            file.write(
                "port 0\n"
                f'unixsocket "{self.socket_path}"\n'
                "unixsocketperm 700\n"
                'save ""\n'
                "appendonly no\n"
                f'dir "{self.directory}"\n'
                'logfile ""\n'
                "daemonize no\n"
                "always-show-logo no\n" + config
            )
        self._process: RedisProcess | None = None

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.popen.poll() is None

    @property
    def pid(self) -> int | None:
        return self._process.popen.pid if self._process else None

    def start(self) -> RedisServer:
        """Start it (again) and return once it answers PING."""
        if self.running:
            return self
        if self._process is not None:
            self._process.end(signal.SIGKILL)  # it died by itself: reap it, close its pipe
        self._process = RedisProcess(self.binary, self._config, self.directory)
        self._process.wait_ready(f"redis-server on {self.socket_path}")
        with self.client() as client:
            assert client.ping()
        return self

    def stop(self) -> None:
        """Shut it down (SIGTERM, as a service manager would) and reap it."""
        if self._process is not None:
            self._process.end(signal.SIGTERM)

    def kill(self) -> None:
        """SIGKILL it, as a crash would, and reap it."""
        if self._process is not None:
            self._process.end(signal.SIGKILL)

    def client(self, **options: Any) -> Any:
        """A new sync ``redis.Redis`` on its socket (close it: ``with server.client() as r:``),
        that fails at once when the server is down (redis-py's default retries for 4 s)."""
        import redis
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        options.setdefault("retry", Retry(NoBackoff(), 0))
        return redis.Redis(unix_socket_path=self.socket_path, **options)


class RedisCluster(_Owned):
    """Three redis-server masters on loopback with the 16384 slots split between them, and
    ``replicas`` replicas of the first master (``nodes`` lists the masters first; the
    replicas are ``replica_nodes``)."""

    def __init__(self, binary: str, masters: int = 3, replicas: int = 0) -> None:
        super().__init__()
        self.binary = binary
        self.directory = tempfile.mkdtemp(prefix="ans-cluster-")
        self.nodes: list[tuple[str, int]] = []
        self._bus_ports: list[int] = []
        self._processes: list[RedisProcess] = []
        self._masters = masters
        self._replicas = replicas

    @property
    def replica_nodes(self) -> list[tuple[str, int]]:
        return self.nodes[self._masters :]

    def pid_of(self, node: tuple[str, int]) -> int:
        return self._processes[self.nodes.index(node)].popen.pid

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(f"{host}:{port}" for host, port in self.nodes)

    @property
    def running(self) -> bool:
        return bool(self._processes) and all(p.popen.poll() is None for p in self._processes)

    @property
    def pids(self) -> list[int]:
        return [process.popen.pid for process in self._processes]

    def start(self) -> RedisCluster:
        """Start the nodes, give each its slots, introduce them; return once all agree (about
        2 s: a master waits 2 s after it starts before it calls the cluster ok, in Redis 7.0's
        cluster.c, ``CLUSTER_WRITABLE_DELAY``)."""
        if self._processes:
            raise RuntimeError("a RedisCluster starts once; make a new one")
        try:
            for index in range(self._masters + self._replicas):
                self._start_node(index)
            self._form()
            if self._replicas:
                self._replicate()
        except BaseException:
            self.stop()  # no half-made cluster lingers until exit
            raise
        return self

    def _start_node(self, index: int) -> None:
        directory = os.path.join(self.directory, f"node{index}")
        os.mkdir(directory)
        for _attempt in range(START_ATTEMPTS):
            port, bus_port = free_ports(2)
            config = os.path.join(directory, "redis.conf")
            with open(config, "w") as file:
                file.write(
                    "bind 127.0.0.1\n"
                    f"port {port}\n"
                    "cluster-enabled yes\n"
                    f"cluster-port {bus_port}\n"
                    'cluster-config-file "nodes.conf"\n'
                    "cluster-node-timeout 5000\n"
                    'save ""\n'
                    "appendonly no\n"
                    f'dir "{directory}"\n'
                    'logfile ""\n'
                    "daemonize no\n"
                    "always-show-logo no\n"
                )
            process = RedisProcess(self.binary, config, directory)
            try:
                process.wait_ready(f"cluster node {index} on 127.0.0.1:{port}")
            except StartFailed as failed:
                if failed.port_taken:
                    continue  # another process took a port between the check and the bind
                raise
            self._processes.append(process)
            self.nodes.append(("127.0.0.1", port))
            self._bus_ports.append(bus_port)
            return
        raise RuntimeError(f"cluster node {index}: no free ports in {START_ATTEMPTS} attempts")

    def _form(self) -> None:
        import redis

        clients = [redis.Redis(host, port) for host, port in self.nodes]
        try:
            share = CLUSTER_SLOTS // self._masters
            for index, client in enumerate(clients[: self._masters]):
                first = index * share
                last = CLUSTER_SLOTS - 1 if index == self._masters - 1 else first + share - 1
                client.execute_command("CLUSTER", "ADDSLOTSRANGE", first, last)
                client.execute_command("CLUSTER", "SET-CONFIG-EPOCH", index + 1)
            # Every node meets every other: none waits for gossip to hear of a third.
            for index, client in enumerate(clients):
                for other, (host, port) in enumerate(self.nodes):
                    if other != index:
                        bus_port = self._bus_ports[other]
                        client.execute_command("CLUSTER", "MEET", host, port, bus_port)
            wait_until(lambda: _agreed(clients), "every cluster node reports cluster_state:ok")
        finally:
            for client in clients:
                client.close()

    def _replicate(self) -> None:
        """Make the replicas replicas of the first master; return once each is in sync."""
        import redis

        clients = [redis.Redis(host, port) for host, port in self.replica_nodes]
        try:
            with redis.Redis(*self.nodes[0]) as master:
                master_id = master.execute_command("CLUSTER MYID").decode()
            for client in clients:
                wait_until(
                    lambda client=client: _knows(client, master_id), "a replica knows its master"
                )
                client.execute_command("CLUSTER REPLICATE", master_id)
            for client in clients:
                wait_until(lambda client=client: _in_sync(client), "a replica is in sync")
        finally:
            for client in clients:
                client.close()

    def client(self, **options: Any) -> Any:
        """A new sync ``redis.cluster.RedisCluster`` (close it: ``with cluster.client() as c:``)."""
        from redis.cluster import ClusterNode
        from redis.cluster import RedisCluster as Client

        return Client(startup_nodes=[ClusterNode(h, p) for h, p in self.nodes], **options)

    def stop(self) -> None:
        """Shut every node down and reap it."""
        for process in self._processes:
            process.end(signal.SIGTERM)


def _agreed(clients: list[Any]) -> bool:
    """Every node says cluster_state:ok and sees the same slot map, all slots covered."""
    maps = set()
    for client in clients:
        if client.cluster("info").get("cluster_state") != "ok":
            return False
        ranges = client.cluster("slots")
        maps.add(tuple(sorted((int(r[0]), int(r[1]), int(r[2][1])) for r in ranges)))
    if len(maps) != 1:
        return False
    (ranges,) = maps
    return sum(last - first + 1 for first, last, _port in ranges) == CLUSTER_SLOTS


def _knows(client: Any, node_id: str) -> bool:
    known = client.cluster("nodes")  # (parsed by redis-py: address -> fields)
    return any(fields.get("node_id") == node_id for fields in known.values())


def _in_sync(client: Any) -> bool:
    info = client.info("replication")
    return bool(info.get("master_link_status") == "up" and not info.get("master_sync_in_progress"))


def standalone() -> RedisServer:
    """This process's shared standalone server, started on first use (restarted if a test
    stopped it: it comes back empty)."""
    global _shared_server
    with _LOCK:
        if _shared_server is None:
            _shared_server = RedisServer(find_binary())
        return _shared_server.start()


def cluster() -> RedisCluster:
    """This process's shared cluster, started on first use (a new one if it was stopped)."""
    global _shared_cluster
    with _LOCK:
        if _shared_cluster is not None and not _shared_cluster.running:
            _shared_cluster.remove()
            _shared_cluster = None
        if _shared_cluster is None:
            _shared_cluster = RedisCluster(find_binary()).start()
        return _shared_cluster


def private_standalone(config: str = "") -> RedisServer:
    """A standalone server for the caller alone, started (``remove()`` it when done; it is
    removed at exit otherwise), ``config`` added to its redis.conf."""
    return RedisServer(find_binary(), config).start()


def slot_owner(node: Any, slot: int) -> str:
    """The id of the node that ``node`` (a redis-py client of a cluster node) says serves
    ``slot``, or "" if none does."""
    for first, last, (_, _, node_id, *_), *_ in node.execute_command("CLUSTER SLOTS"):
        if first <= slot <= last:
            return str(node_id.decode())
    return ""


def move_slot(nodes: list[Any], slot: int, to: str) -> None:
    """Give ``slot`` to the node of id ``to``, telling every node of ``nodes``; return once
    they all say so."""
    for node in nodes:
        node.execute_command("CLUSTER SETSLOT", slot, "NODE", to)
    wait_until(lambda: all(slot_owner(node, slot) == to for node in nodes), "the slot moved")


def key_in_empty_slot(node: Any, key_of: Any, label: str) -> tuple[str, int]:
    """A namespace ``label-N`` whose Redis key (``key_of(namespace)``) is in a slot holding no
    key yet, and that slot."""
    for i in range(1000):
        namespace = f"{label}-{i}"
        slot = node.execute_command("CLUSTER KEYSLOT", key_of(namespace))
        if node.execute_command("CLUSTER COUNTKEYSINSLOT", slot) == 0:
            return namespace, slot
    raise AssertionError("no empty slot among a thousand keys")


def unique_prefix(label: str = "test") -> str:
    """A key prefix no other caller gets: tests sharing one Redis never see each other's keys.
    (No braces: a store's own hash tags follow it.)"""
    return f"{label}:{uuid.uuid4().hex[:16]}:"


def stop_all() -> None:
    """Stop and remove every server and cluster this process started."""
    global _shared_server, _shared_cluster
    with _LOCK:
        started = list(_STARTED)
        _shared_server = _shared_cluster = None
    for owned in reversed(started):
        owned.remove()


atexit.register(stop_all)


def startup_seconds() -> dict[str, float]:
    """How long a standalone server and a cluster take to start here (for the README)."""
    began = time.perf_counter()
    server = private_standalone()
    standalone_seconds = time.perf_counter() - began
    server.remove()
    began = time.perf_counter()
    formed = RedisCluster(find_binary()).start()
    cluster_seconds = time.perf_counter() - began
    formed.remove()
    return {"standalone": standalone_seconds, "cluster": cluster_seconds}
