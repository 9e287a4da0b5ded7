"""aionamespace against multiprocessing's SyncManager().Namespace() and Redis, in one run.

Every server is started by this script, in this process tree, and stopped at the end, also on
Ctrl-C or SIGTERM: a SyncManager and an aionamespace Manager (each on its private Unix socket)
and, when ``redis-server`` is on PATH and redis-py is importable, a Redis of our own on a Unix
socket in a temporary directory (``--port 0 --save "" --appendonly no``). The durable rows
(durable.py) add two Managers with data files and two Redis servers with append-only files;
the store rows (store_rows.py), an aionamespace server over the run's Redis (a process of its
own, store_server.py) against redis-py talking to that Redis directly. Two rows are measured
against a yardstick of the same run (yardstick_rows.py): 64 tasks on trio against the asyncio
row, and the cached read against a dict-backed ``__getattribute__``; one row holds 1,000
connections from 8 spawned processes against a thread per connection (many_connections.py).
The async get row's clients run on uvloop when it is installed (the other async rows', on
asyncio's loop); the notes of the rows added for issue 17 name their loops.

Each row is measured for every contender in every round, interleaved (the contenders' order
rotates from round to round) so that the noise of a shared machine hits them alike. A figure is
the median of the rounds; a ratio is the median of the rounds' paired ratios (a ratio > 1 means
aionamespace is better: faster, or for memory smaller). The idle-connection row is measured
once, on fresh servers started for it.

    python benchmarks/compare.py                        # 9 rounds: about two minutes
    python benchmarks/compare.py --quick                # tiny counts, a smoke test (< 30 s)
    python benchmarks/compare.py --rounds 15 --json out.json --plot out.png
    python benchmarks/compare.py --growth               # then growth.py's tables (a minute more)
    python benchmarks/verdict.py run1.json ... run7.json  # a target over runs: median and worst
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import importlib.metadata
import json
import math
import multiprocessing
import multiprocessing.connection
import os
import platform
import selectors
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import types
from collections.abc import Awaitable, Callable, Iterator
from multiprocessing.managers import SyncManager
from typing import Any

import msgpack

import aionamespace

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import durable
import growth
import many_connections
import store_rows
import yardstick_rows
from spawned import Spawned

CONTENDERS = ("aionamespace", "stdlib", "redis")
NAMESPACE = "bench"
CALIBRATION_SECONDS = 0.002  # grow a batch of sync operations until it takes this long
WORKER_START_MARGIN = 0.15  # seconds between telling the workers and their common start
SETTLE_SECONDS = 1.0  # before reading a server's RSS (--quick: QUICK_SETTLE_SECONDS)
QUICK_SETTLE_SECONDS = 0.1  # a quick run's RSS means nothing: only the code path is exercised
SERVER_START_TIMEOUT = 30.0

# ---------------------------------------------------------------------------------- settings


@dataclasses.dataclass(frozen=True)
class Settings:
    rounds: int
    sample_seconds: float  # per contender, per row, per round
    process_seconds: float  # the 8-process row's measuring time, per contender and round
    idle_connections: int  # aionamespace and Redis
    idle_connections_stdlib: int  # a thread each
    slices: int = 5  # a sample is made of this many slices, interleaved with the others'
    process_slices: int = 2
    processes: int = 8
    tasks: int = 64
    names: int = 100
    blob_bytes: int = 1 << 20
    crowd_processes: int = 8  # the many-connections row: processes, connections in each
    crowd_connections: int = 125
    settle_seconds: float = SETTLE_SECONDS

    @classmethod
    def make(cls, quick: bool, rounds: int | None) -> Settings:
        if quick:
            return cls(
                rounds=rounds or 1,
                sample_seconds=0.03,
                process_seconds=0.15,
                idle_connections=500,
                idle_connections_stdlib=50,
                slices=1,
                process_slices=1,
                processes=2,
                crowd_processes=2,
                crowd_connections=8,
                settle_seconds=QUICK_SETTLE_SECONDS,
            )
        return cls(
            rounds=rounds or 9,
            sample_seconds=0.25,
            process_seconds=1.0,
            idle_connections=10_000,
            idle_connections_stdlib=1_000,
        )


#: The kinds of target that bound aionamespace's figure (the others name a contender).
ABSOLUTE = ("at_least", "below")


@dataclasses.dataclass(frozen=True)
class Target:
    """What a row must reach: a ratio against a contender, or an absolute bound."""

    text: str
    kind: str  # "at_least" or "below" (aionamespace's figure), else a contender (a ratio)
    value: float


@dataclasses.dataclass
class Row:
    key: str
    label: str
    unit: str
    targets: tuple[Target, ...]
    lower_is_better: bool = False
    samplers: dict[str, Sampler] = dataclasses.field(default_factory=dict)
    slices: int = 1  # per round and contender, alternating: ABC CBA ABC ...
    slice_seconds: float = 0.05
    samples: dict[str, list[float | None]] = dataclasses.field(default_factory=dict)
    missing: dict[str, str] = dataclasses.field(default_factory=dict)  # contender -> why
    notes: list[str] = dataclasses.field(default_factory=list)
    # Rows measured once (idle connections) set these directly instead of samples:
    single: dict[str, float] = dataclasses.field(default_factory=dict)
    single_ratio: dict[str, float] = dataclasses.field(default_factory=dict)
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)

    def figure(self, who: str) -> float | None:
        if who in self.single:
            return self.single[who]
        values = [v for v in self.samples.get(who, []) if v is not None]
        return statistics.median(values) if values else None

    def ratio(self, other: str) -> float | None:
        """aionamespace vs ``other``, paired round by round; > 1: aionamespace is better."""
        if self.single or self.single_ratio:
            return self.single_ratio.get(other)
        ours, theirs = self.samples.get("aionamespace", []), self.samples.get(other, [])
        paired = [
            (a, b) for a, b in zip(ours, theirs, strict=False) if a is not None and b is not None
        ]
        if not paired:
            return None
        return statistics.median((b / a) if self.lower_is_better else (a / b) for a, b in paired)

    def score(self, target: Target) -> float | None:
        """What was measured over what ``target`` asks (>= 1: met): for the verdict, the chart,
        and benchmarks/verdict.py, which judges a target over several runs."""
        if target.kind not in ABSOLUTE:
            measured = self.ratio(target.kind)
            return None if measured is None else measured / target.value
        figure = self.figure("aionamespace")
        if figure is None or figure <= 0:
            return None
        return figure / target.value if target.kind == "at_least" else target.value / figure

    def met(self, target: Target) -> bool | None:
        score = self.score(target)
        return None if score is None else score >= 1


def make_rows(settings: Settings) -> dict[str, Row]:
    n, mib = settings.names, settings.blob_bytes / (1 << 20)
    # Rows of their own modules, each placed after the row it extends.
    beside = yardstick_rows.make_rows(settings, Row, Target)
    beside |= many_connections.make_rows(settings, Row, Target)
    rows = [
        Row(
            "sync_get", "sync get, one client", "ops/s", (Target(">= 1.2x stdlib", "stdlib", 1.2),)
        ),
        Row(
            "sync_set", "sync set, one client", "ops/s", (Target(">= 1.2x stdlib", "stdlib", 1.2),)
        ),
        Row(
            "async_get",
            f"async get, {settings.tasks} tasks, one proxy",
            "ops/s",
            (Target(">= 30x stdlib", "stdlib", 30), Target(">= 5x redis", "redis", 5)),
        ),
        beside["async_get_trio"],
        Row(
            "snapshot",
            f"_snapshot of {n} names",
            "names/s",
            (Target(">= 2x redis MGET", "redis", 2),),
        ),
        Row(
            "update",
            f"_update of {n} names",
            "names/s",
            (Target(">= 2x redis MSET", "redis", 2),),
        ),
        Row(
            "get_blob",
            f"{mib:g} MiB bytes get",
            "MiB/s",
            (Target(">= 2x stdlib", "stdlib", 2), Target(">= 0.8x redis", "redis", 0.8)),
        ),
        Row(
            "cached_get",
            "cached read, unchanged attribute",
            "ops/s",
            (Target(">= 50x stdlib get", "stdlib", 50),),
        ),
        beside["cached_floor"],
        Row(
            "processes_get",
            f"{settings.processes} spawned processes, aggregate get",
            "ops/s",
            (Target(">= 1.5x stdlib", "stdlib", 1.5),),
        ),
        beside["connections_get"],
        Row(
            "idle_connections",
            f"{settings.idle_connections:,} idle connections, server RSS",
            "MB",
            (Target("< 200 MB", "below", 200),),
            lower_is_better=True,
        ),
    ]
    rows += durable.make_rows(settings, Row, Target).values()
    rows += store_rows.make_rows(settings, Row, Target).values()
    return {row.key: row for row in rows}


# ---------------------------------------------------------------------------------- samplers


#: AsyncRepeat's tasks read the clock once every this many awaits.
AWAITS_PER_CLOCK = 8

#: A sampler runs for about the seconds it is given and says (units done, seconds it took).
Sampler = Callable[[float], "tuple[float, float]"]


class Repeat:
    """Run ``run(batch)`` (``batch`` sync operations) again and again for about ``seconds``."""

    def __init__(self, run: Callable[[int], object], units_per_op: float = 1.0) -> None:
        self.run, self.units_per_op = run, units_per_op
        self.batch = 0

    def calibrate(self) -> None:
        """Warm up (connections, caches) and size a batch to take about 2 ms."""
        self.batch = 1
        while self.batch < 1 << 20:
            start = time.perf_counter()
            self.run(self.batch)
            if time.perf_counter() - start >= CALIBRATION_SECONDS:
                break
            self.batch *= 2

    def __call__(self, seconds: float) -> tuple[float, float]:
        if not self.batch:
            self.calibrate()
        ops = 0
        start = time.perf_counter()
        deadline = start + seconds
        while True:
            self.run(self.batch)
            ops += self.batch
            now = time.perf_counter()
            if now >= deadline:
                return ops * self.units_per_op, now - start


class AsyncRepeat:
    """``tasks`` tasks awaiting ``op()`` in a loop for about ``seconds``.

    Each task reads the clock once every ``AWAITS_PER_CLOCK`` awaits, as ``Repeat`` reads it
    once a batch: read after every await, it cost aionamespace 5% of its rate (295k against
    310k gets/s, 6 paired samples).
    """

    def __init__(
        self, loop: asyncio.AbstractEventLoop, op: Callable[[], Awaitable[object]], tasks: int
    ) -> None:
        self.loop, self.op, self.tasks = loop, op, tasks

    def __call__(self, seconds: float) -> tuple[float, float]:
        return self.loop.run_until_complete(self._sample(seconds))

    async def _sample(self, seconds: float) -> tuple[float, float]:
        op, done, deadline = self.op, 0, 0.0

        async def task() -> None:
            nonlocal done
            count = 0
            while time.perf_counter() < deadline:
                for _ in range(AWAITS_PER_CLOCK):
                    await op()
                count += AWAITS_PER_CLOCK
            done += count

        start = time.perf_counter()
        deadline = start + seconds
        await asyncio.gather(*(task() for _ in range(self.tasks)))
        return done, time.perf_counter() - start


def gets(ns: Any, name: str) -> Callable[[int], None]:
    def run(n: int) -> None:
        for _ in range(n):
            getattr(ns, name)

    return run


def sets(ns: Any, name: str) -> Callable[[int], None]:
    def run(n: int) -> None:
        for i in range(n):
            setattr(ns, name, i)

    return run


def repeat(op: Callable[[], object]) -> Callable[[int], None]:
    def run(n: int) -> None:
        for _ in range(n):
            op()

    return run


# ---------------------------------------------------------------------------------- processes


def _close_quietly(closer: Callable[[], object]) -> None:
    with contextlib.suppress(Exception):
        closer()


def stop_process(process: subprocess.Popen[bytes], grace: float = 5.0) -> None:
    """Terminate (SIGTERM: every server here stops cleanly on it), wait, then kill."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    for stream in (process.stdin, process.stdout, process.stderr):
        if stream is not None:
            _close_quietly(stream.close)


@contextlib.contextmanager
def child_process(
    command: list[str],
    env: dict[str, str] | None = None,
) -> Iterator[subprocess.Popen[bytes]]:
    process = subprocess.Popen(
        command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env
    )
    try:
        yield process
    finally:
        stop_process(process)


def wait_for_line(
    process: subprocess.Popen[bytes], marker: bytes, timeout: float = SERVER_START_TIMEOUT
) -> bytes:
    """Read the child's output until a line holds ``marker`` (bounded in time)."""
    assert process.stdout is not None
    deadline = time.monotonic() + timeout
    seen = b""
    with selectors.DefaultSelector() as selector:
        selector.register(process.stdout, selectors.EVENT_READ)
        while time.monotonic() < deadline:
            if not selector.select(max(0.0, deadline - time.monotonic())):
                break
            line = process.stdout.readline()
            if not line:
                break
            seen += line
            if marker in line:
                return line
    raise RuntimeError(
        f"{process.args!r} did not print {marker!r} in time; it said:\n"
        f"{seen.decode(errors='replace')}"
    )


def raise_open_file_limit() -> int:
    """Lift this process's soft RLIMIT_NOFILE to the hard limit; return the new soft limit."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def server_environment() -> dict[str, str]:
    """For ``python -m aionamespace serve``: this copy of aionamespace, and no authkey."""
    env = dict(os.environ)
    env.pop("AIONAMESPACE_AUTHKEY", None)
    package_parent = os.path.dirname(os.path.dirname(os.path.abspath(aionamespace.__file__)))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_parent, env.get("PYTHONPATH")]))
    return env


# ---------------------------------------------------------------------------------- redis


@dataclasses.dataclass
class RedisInfo:
    available: bool
    reason: str = ""
    server_version: str = ""
    client_version: str = ""
    hiredis: bool = False


def redis_info(disabled: bool) -> RedisInfo:
    if disabled:
        return RedisInfo(False, "--no-redis")
    binary = shutil.which("redis-server")
    if binary is None:
        return RedisInfo(False, "redis-server is not on PATH")
    try:
        import redis
        import redis.asyncio
    except ImportError:
        return RedisInfo(False, "redis-py is not importable (pip install redis)")
    version = subprocess.run(
        [binary, "--version"], capture_output=True, text=True, timeout=10, check=False
    ).stdout.strip()
    try:
        from redis.utils import HIREDIS_AVAILABLE as hiredis
    except ImportError:  # pragma: no cover - older redis-py
        hiredis = False
    return RedisInfo(
        True, server_version=version, client_version=redis.__version__, hiredis=bool(hiredis)
    )


@contextlib.contextmanager
def redis_server(
    directory: str,
    name: str,
    maxclients: int | None = None,
    appendfsync: str | None = None,
) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """Our own redis-server on a Unix socket in ``directory`` (no TCP; no persistence, or an
    append-only file with the ``appendfsync`` policy given)."""
    path = os.path.join(directory, f"{name}.sock")
    command = [
        "redis-server",
        "--port",
        "0",
        "--unixsocket",
        path,
        "--unixsocketperm",
        "700",
        "--save",
        "",
        "--appendonly",
        "no",
        "--daemonize",
        "no",
        "--dir",
        directory,
        "--loglevel",
        "warning",
    ]
    if maxclients is not None:
        command += ["--maxclients", str(maxclients)]
    if appendfsync is not None:
        command += ["--appendonly", "yes", "--appendfsync", appendfsync]
    with child_process(command) as process:
        deadline = time.monotonic() + SERVER_START_TIMEOUT
        while True:
            if process.poll() is not None:
                assert process.stdout is not None
                raise RuntimeError(f"redis-server exited: {process.stdout.read().decode()}")
            try:
                with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
                    probe.connect(path)
                    probe.sendall(b"PING\r\n")
                    if probe.recv(64).startswith(b"+PONG"):
                        break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.02)
        yield process, path


# ---------------------------------------------------------------------------------- workers


def _worker(
    conn: multiprocessing.connection.Connection, stdlib_ns: Any, our_ns: Any, redis_path: str | None
) -> None:
    """A spawned process: on each command, gets in a loop from a common start to a common end."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C and stops us
    try:
        getters: dict[str, Callable[[], object]] = {
            "stdlib": lambda: stdlib_ns.x,
            "aionamespace": lambda: our_ns.x,
        }
        if redis_path is not None:
            import redis

            client = redis.Redis(unix_socket_path=redis_path)
            getters["redis"] = lambda: client.get("x")
        for get in getters.values():
            get()  # connect now, not while measuring
        conn.send(("ready", os.getpid()))
        while True:
            try:
                command = conn.recv()
            except EOFError:
                return
            if command is None:
                return
            who, start_at, end_at = command
            get = getters[who]
            get()
            while (now := time.monotonic()) < start_at:
                time.sleep(min(0.01, start_at - now))
            count = 0
            while time.monotonic() < end_at:
                get()
                count += 1
            conn.send(("done", count))
    except Exception as exc:
        with contextlib.suppress(OSError):
            conn.send(("error", f"{type(exc).__name__}: {exc}"))


class Workers(Spawned):
    """N spawned processes, each with a proxy (or client) per contender."""

    def __init__(self, count: int, stdlib_ns: Any, our_ns: Any, redis_path: str | None) -> None:
        super().__init__(count, _worker, (stdlib_ns, our_ns, redis_path), "a worker")
        try:
            for conn in self.conns:
                self.value(conn, SERVER_START_TIMEOUT * 2)
        except BaseException:
            self.close()
            raise

    def sample(self, who: str, seconds: float) -> tuple[float, float]:
        """Every worker gets from ``who`` during the same ``seconds``: the sum of their gets."""
        start_at = time.monotonic() + WORKER_START_MARGIN
        for conn in self.conns:
            conn.send((who, start_at, start_at + seconds))
        counts = [self.value(conn, seconds + 60) for conn in self.conns]
        return float(sum(counts)), seconds


# ---------------------------------------------------------------------------------- idle


def _read_msgpack_object(sock: socket.socket) -> Any:
    unpacker = msgpack.Unpacker(raw=False)
    while True:
        data = sock.recv(4096)
        if not data:
            raise ConnectionError("the server closed the connection during the hello")
        unpacker.feed(data)
        for obj in unpacker:
            return obj


def hold_idle(
    process: subprocess.Popen[bytes],
    count: int,
    connect: Callable[[int], Any],
    what: str,
    settle: float,
) -> dict[str, Any]:
    """The server ``process``'s RSS when settled (``settle`` seconds), then while it holds
    ``count`` connections, each opened by ``connect(i)`` (which returns something to
    ``close()``)."""
    time.sleep(settle)
    baseline = growth.rss_mb(process.pid)
    held: list[Any] = []
    try:
        for i in range(count):
            held.append(connect(i))
        time.sleep(settle)
        if process.poll() is not None:
            raise RuntimeError(f"{what} died holding the connections")
        rss = growth.rss_mb(process.pid)
    finally:
        for connection in held:
            connection.close()
    return {
        "connections": count,
        "rss_mb": rss,
        "baseline_mb": baseline,
        "per_connection_kib": (rss - baseline) * 1e6 / 1024 / count,
    }


def _connected_socket(path: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(path)
    except BaseException:
        sock.close()
        raise
    return sock


def idle_aionamespace(directory: str, count: int, settle: float) -> dict[str, Any]:
    """``python -m aionamespace serve``, then ``count`` raw connections that said hello."""
    path = os.path.join(directory, "idle-aionamespace.sock")
    command = [sys.executable, "-m", "aionamespace", "serve", "--unix", path]
    hello = msgpack.packb({"protocol": "aionamespace", "version": 1}, use_bin_type=True)

    def connect(i: int) -> socket.socket:
        sock = _connected_socket(path)
        sock.sendall(hello)
        reply = _read_msgpack_object(sock)
        if type(reply) is not dict or reply.get("version") != 1 or "error" in reply:
            sock.close()
            raise RuntimeError(f"connection {i + 1} was refused: {reply!r}")
        return sock

    with child_process(command, server_environment()) as process:
        wait_for_line(process, b"serving on")
        return hold_idle(process, count, connect, "the aionamespace server", settle)


STDLIB_SERVER = """
import os, sys
from multiprocessing.managers import SyncManager
manager = SyncManager(address=sys.argv[1], authkey=bytes.fromhex(os.environ["COMPARE_AUTHKEY"]))
server = manager.get_server()
print("ready", flush=True)
server.serve_forever()
"""


def idle_stdlib(directory: str, count: int, settle: float) -> dict[str, Any]:
    """A SyncManager server in a fresh interpreter; ``count`` connections, each accepted the
    way a proxy's first use is (authentication, then ``accept_connection``: a thread each)."""
    from multiprocessing.managers import dispatch  # type: ignore[attr-defined]

    path = os.path.join(directory, "idle-stdlib.sock")
    authkey = os.urandom(32)
    env = dict(os.environ, COMPARE_AUTHKEY=authkey.hex())

    def connect(i: int) -> multiprocessing.connection.Connection:
        conn = multiprocessing.connection.Client(path, authkey=authkey)
        dispatch(conn, None, "accept_connection", (f"idle-{i}",))
        return conn

    with child_process([sys.executable, "-c", STDLIB_SERVER, path], env) as process:
        wait_for_line(process, b"ready")
        return hold_idle(process, count, connect, "the stdlib manager", settle)


def idle_redis(directory: str, count: int, settle: float) -> dict[str, Any]:
    """A fresh redis-server; ``count`` connections, each answered one PING."""

    def connect(i: int) -> socket.socket:
        sock = _connected_socket(path)
        sock.sendall(b"PING\r\n")
        reply = b""
        while not reply.endswith(b"\r\n"):
            data = sock.recv(256)
            if not data:
                sock.close()
                raise ConnectionError("redis closed a connection")
            reply += data
        if reply != b"+PONG\r\n":
            sock.close()
            raise RuntimeError(f"redis refused connection {i + 1}: {reply!r}")
        return sock

    with redis_server(directory, "idle-redis", maxclients=count + 100) as (process, path):
        return hold_idle(process, count, connect, "redis-server", settle)


def measure_idle(row: Row, settings: Settings, directory: str, redis: RedisInfo) -> None:
    if not os.path.exists("/proc/self/status"):
        for who in CONTENDERS:
            row.missing[who] = "n/a (no /proc)"
        return
    limit = raise_open_file_limit()
    room = max(0, limit - 256)  # descriptors this process needs besides the connections
    wanted = {
        "aionamespace": settings.idle_connections,
        "stdlib": settings.idle_connections_stdlib,
        "redis": settings.idle_connections,
    }
    counts = {who: min(n, room) for who, n in wanted.items()}
    for who, n in counts.items():
        if n < wanted[who]:
            row.notes.append(f"{who}: only {n:,} connections (RLIMIT_NOFILE is {limit:,})")
    measures: dict[str, Callable[[str, int, float], dict[str, Any]]] = {
        "aionamespace": idle_aionamespace,
        "stdlib": idle_stdlib,
    }
    if redis.available:
        measures["redis"] = idle_redis
    else:
        row.missing["redis"] = "n/a"
    for who, measure in measures.items():
        print(f"  idle connections: {who}, {counts[who]:,} connections ...", flush=True)
        result = measure(directory, counts[who], settings.settle_seconds)
        row.single[who] = result["rss_mb"]
        row.extra[who] = result
    ours = row.extra["aionamespace"]["per_connection_kib"]
    for other in ("stdlib", "redis"):
        if other in row.extra and ours > 0:
            row.single_ratio[other] = row.extra[other]["per_connection_kib"] / ours
    stdlib = row.extra["stdlib"]
    row.notes.append(
        f"stdlib: a thread each, so it was measured with {stdlib['connections']:,} "
        f"connections, not {counts['aionamespace']:,}; the RSS ratios compare memory per "
        "connection above the idle server's (theirs / ours, > 1: aionamespace uses less)"
    )
    per_conn = ", ".join(f"{who} {r['per_connection_kib']:.1f} KiB" for who, r in row.extra.items())
    baselines = ", ".join(f"{who} {r['baseline_mb']:.1f} MB" for who, r in row.extra.items())
    row.notes.append(f"per connection: {per_conn}; idle server: {baselines}")


# ---------------------------------------------------------------------------------- the run


class Bench:
    """Servers, proxies and clients for every row, all stopped by ``close()``."""

    def __init__(
        self,
        settings: Settings,
        rows: dict[str, Row],
        redis: RedisInfo,
        stack: contextlib.ExitStack,
    ) -> None:
        self.settings, self.rows, self.redis, self.stack = settings, rows, redis, stack
        self.directory = tempfile.mkdtemp(prefix="ans-compare-")
        stack.callback(shutil.rmtree, self.directory, ignore_errors=True)
        # The stdlib manager first: its server is forked from us before we have any thread.
        self.stdlib_manager = stack.enter_context(SyncManager())
        self.manager = stack.enter_context(aionamespace.Manager())
        self.redis_path: str | None = None
        if redis.available:
            _, self.redis_path = stack.enter_context(redis_server(self.directory, "redis"))
        self.loop = asyncio.new_event_loop()
        stack.callback(self._close_loop, self.loop)
        # The async get row's client loop: the fastest installed (uvloop, with the extra).
        self.client_loop, self.client_loop_name = yardstick_rows.fastest_loop()
        stack.callback(self._close_loop, self.client_loop)
        self.blob = os.urandom(settings.blob_bytes)
        self.values = {f"n{i}": i for i in range(settings.names)}
        self.cached: Any | None = None

    @staticmethod
    def _close_loop(loop: asyncio.AbstractEventLoop) -> None:
        try:
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.run_until_complete(loop.shutdown_default_executor())
        finally:
            loop.close()

    def setup(self) -> None:
        s, rows, names = self.settings, self.rows, list(self.values)
        mib = s.blob_bytes / (1 << 20)
        for row in rows.values():
            if row.key == "processes_get":
                row.slices = s.process_slices
                row.slice_seconds = s.process_seconds / s.process_slices
            else:
                row.slices = s.slices
                row.slice_seconds = s.sample_seconds / s.slices

        # aionamespace: a named namespace (so that a cached proxy can name it too)
        ours = self.manager.Namespace(NAMESPACE)
        ours.x, ours.c, ours.blob = 1, 1, self.blob
        ours._update(**self.values)
        self.stack.callback(ours._close)
        aours = self.manager.AsyncNamespace(NAMESPACE)
        self.stack.callback(lambda: self.client_loop.run_until_complete(aours._close()))
        # stdlib
        theirs = self.stdlib_manager.Namespace()
        for name, value in {"x": 1, "c": 1, "blob": self.blob, **self.values}.items():
            setattr(theirs, name, value)
        self.ours, self.theirs = ours, theirs

        for ns, who in ((ours, "aionamespace"), (theirs, "stdlib")):
            rows["sync_get"].samplers[who] = Repeat(gets(ns, "x"))
            rows["sync_set"].samplers[who] = Repeat(sets(ns, "x"))
            rows["get_blob"].samplers[who] = Repeat(gets(ns, "blob"), mib)

        rows["async_get"].samplers["aionamespace"] = AsyncRepeat(
            self.client_loop, lambda: aours.x, s.tasks
        )
        rows["async_get"].samplers["stdlib"] = AsyncRepeat(
            self.client_loop, lambda: asyncio.to_thread(getattr, theirs, "x"), s.tasks
        )
        rows["async_get"].notes.append(
            f"every contender's client on {self.client_loop_name}; "
            "aionamespace's server: the Manager's, asyncio busy-polling"
        )

        rows["snapshot"].samplers["aionamespace"] = Repeat(
            repeat(lambda: ours._snapshot(*names)), s.names
        )
        rows["update"].samplers["aionamespace"] = Repeat(
            repeat(lambda: ours._update(**self.values)), s.names
        )

        def stdlib_snapshot(n: int) -> None:
            for _ in range(n):
                for name in names:
                    getattr(theirs, name)

        def stdlib_update(n: int) -> None:
            for _ in range(n):
                for name, value in self.values.items():
                    setattr(theirs, name, value)

        rows["snapshot"].samplers["stdlib"] = Repeat(stdlib_snapshot, s.names)
        rows["update"].samplers["stdlib"] = Repeat(stdlib_update, s.names)

        self.cached = cached = self._cached_proxy()
        if cached is not None:
            rows["cached_get"].samplers["aionamespace"] = Repeat(gets(cached, "c"))
        rows["cached_get"].samplers["stdlib"] = Repeat(gets(theirs, "c"))

        yardstick_rows.setup(self, NAMESPACE, Repeat, gets, AWAITS_PER_CLOCK)
        durable.setup(self, redis_server, Repeat, AsyncRepeat, sets)
        store_rows.setup(self, STORE_HELPERS)
        self._check_values(ours, theirs, cached)
        if self.redis_path is not None:
            self._setup_redis()
        else:
            for row in rows.values():
                if row.key != "idle_connections":
                    row.missing["redis"] = "n/a"
        print(f"  spawning {s.processes} worker processes ...", flush=True)
        workers = Workers(s.processes, theirs, ours, self.redis_path)
        self.stack.callback(workers.close)
        many_connections.setup(self, NAMESPACE, theirs)
        for who in ("aionamespace", "stdlib", "redis"):
            if who == "redis" and self.redis_path is None:
                continue
            rows["processes_get"].samplers[who] = lambda seconds, who=who: workers.sample(
                who, seconds
            )  # type: ignore[misc]

    def _cached_proxy(self) -> Any | None:
        row = self.rows["cached_get"]
        try:
            cached = aionamespace.Namespace(
                self.manager.address, NAMESPACE, authkey=self.manager.authkey, cache=True
            )
        except TypeError as exc:
            if "cache" not in str(exc):
                raise
            row.missing["aionamespace"] = "n/a (no cache)"
            row.notes.append(f"aionamespace.Namespace(..., cache=True) is refused: {exc}")
            return None
        self.stack.callback(cached._close)
        row.notes.append(
            "aionamespace: Namespace(address, name, authkey=..., cache=True); "
            "stdlib: a plain get (the ratio's yardstick)"
        )
        return cached

    def _check_values(self, ours: Any, theirs: Any, cached: Any | None) -> None:
        """Every contender reads what we stored: a benchmark of wrong answers is worthless."""
        for ns in (ours, theirs):
            assert ns.blob == self.blob
            assert ns.c == 1
        assert dict(ours._snapshot(*self.values)) == self.values
        if cached is not None:
            assert cached.c == 1
            assert cached.blob == self.blob

    def _setup_redis(self) -> None:
        import redis
        import redis.asyncio

        s, rows, path = self.settings, self.rows, self.redis_path
        mib = s.blob_bytes / (1 << 20)
        client = redis.Redis(unix_socket_path=path)
        self.stack.callback(client.close)
        client.mset({"x": 1, "c": 1, "blob": self.blob, **self.values})
        assert client.get("blob") == self.blob
        keys = list(self.values)
        rows["sync_get"].samplers["redis"] = Repeat(repeat(lambda: client.get("x")))
        rows["sync_set"].samplers["redis"] = Repeat(sets_redis(client, "x"))
        rows["get_blob"].samplers["redis"] = Repeat(repeat(lambda: client.get("blob")), mib)
        rows["snapshot"].samplers["redis"] = Repeat(repeat(lambda: client.mget(keys)), s.names)
        rows["update"].samplers["redis"] = Repeat(repeat(lambda: client.mset(self.values)), s.names)
        aclient = redis.asyncio.Redis(unix_socket_path=path)
        self.stack.callback(lambda: self.client_loop.run_until_complete(aclient.aclose()))
        rows["async_get"].samplers["redis"] = AsyncRepeat(
            self.client_loop, lambda: aclient.get("x"), s.tasks
        )
        rows["async_get"].notes.append(
            "stdlib: asyncio.to_thread(getattr, ns, 'x') on the default executor; redis: "
            f"redis.asyncio, {s.tasks} tasks sharing one client (its pool)"
        )
        rows["snapshot"].notes.append(f"stdlib: {s.names} getattr; redis: MGET of {s.names} keys")
        rows["update"].notes.append(f"stdlib: {s.names} setattr; redis: MSET of {s.names} keys")
        try:
            from redis.cache import CacheConfig

            cached = redis.Redis(unix_socket_path=path, protocol=3, cache_config=CacheConfig())
            assert cached.get("c") == b"1"
        except Exception as exc:  # an older redis-py or server: no client-side cache
            rows["cached_get"].missing["redis"] = "n/a"
            rows["cached_get"].notes.append(f"redis: no client-side cache ({exc})")
        else:
            self.stack.callback(cached.close)
            rows["cached_get"].samplers["redis"] = Repeat(repeat(lambda: cached.get("c")))
            rows["cached_get"].notes.append(
                "redis: redis-py's client-side cache (RESP3 tracking, CacheConfig())"
            )

    def warm_up(self) -> None:
        for row in self.rows.values():
            for sampler in row.samplers.values():
                if isinstance(sampler, Repeat):
                    sampler.calibrate()
                elif isinstance(sampler, AsyncRepeat | yardstick_rows.PortalRepeat):
                    sampler(0.02)

    def run_rounds(self) -> None:
        """Each round, each row: every contender runs ``row.slices`` short slices, the order
        alternating (ABC CBA ABC ...) and rotating from round to round, so that a burst of
        noise lands on all of them; a contender's sample is its units over its time."""
        timed = [row for row in self.rows.values() if row.samplers]
        for number in range(self.settings.rounds):
            start = time.perf_counter()
            for row in timed:
                contenders = [who for who in CONTENDERS if who in row.samplers]
                contenders += [who for who in row.samplers if who not in CONTENDERS]
                shift = number % len(contenders)
                order = contenders[shift:] + contenders[:shift]
                done = {who: [0.0, 0.0] for who in order}
                for piece in range(row.slices):
                    for who in order if piece % 2 == 0 else order[::-1]:
                        units, seconds = row.samplers[who](row.slice_seconds)
                        done[who][0] += units
                        done[who][1] += seconds
                for who, (units, seconds) in done.items():
                    row.samples.setdefault(who, []).append(units / seconds)
            print(
                f"  round {number + 1}/{self.settings.rounds}: {time.perf_counter() - start:.1f} s",
                flush=True,
            )

    def check_cache_invalidation(self, timeout: float = 2.0) -> None:
        """After the timing: a write by another proxy must reach the cached proxy."""
        if self.cached is None:
            return
        row = self.rows["cached_get"]
        self.ours.c = 2
        start = time.perf_counter()
        while self.cached.c != 2:
            if time.perf_counter() - start > timeout:
                row.notes.append(
                    f"WARNING: the cached proxy still read the old value {timeout} "
                    "s after another proxy changed it"
                )
                break
            time.sleep(0.0005)
        else:
            row.notes.append(
                "a change made by another proxy reached the cached proxy in "
                f"{(time.perf_counter() - start) * 1e3:.1f} ms"
            )
        self.ours.c = 1


def sets_redis(client: Any, key: str) -> Callable[[int], None]:
    def run(n: int) -> None:
        for i in range(n):
            client.set(key, i)

    return run


#: What store_rows.py borrows from this script (it does not import it: this is __main__).
STORE_HELPERS = types.SimpleNamespace(
    child_process=child_process,
    wait_for_line=wait_for_line,
    server_environment=server_environment,
    Repeat=Repeat,
    AsyncRepeat=AsyncRepeat,
    gets=gets,
    repeat=repeat,
)

# ---------------------------------------------------------------------------------- report


def machine() -> dict[str, Any]:
    model = ""
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo") as cpuinfo:
            model = next(
                (
                    line.split(":", 1)[1].strip()
                    for line in cpuinfo
                    if line.startswith("model name")
                ),
                "",
            )
    versions = {}
    for package in ("anyio", "msgpack", "redis", "hiredis"):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            versions[package] = importlib.metadata.version(package)
    return {
        "aionamespace_source": source_revision(),
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "cpu_model": model,
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "platform": platform.platform(),
        "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
        "aionamespace": aionamespace.__version__,
        "packages": versions,
    }


def source_revision() -> str:
    """The git commit aionamespace was imported from, "+ local changes" if it differs."""
    where = os.path.dirname(os.path.abspath(aionamespace.__file__))
    git = ["git", "--no-optional-locks", "-C", where]
    try:
        head = subprocess.run(
            [*git, "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            [*git, "diff", "--quiet", "HEAD", "--", "."],
            capture_output=True,
            timeout=10,
            check=False,
        ).returncode
    except (OSError, subprocess.SubprocessError):
        return "unknown (not a git checkout)"
    return head + (" + local changes" if dirty else "")


def format_figure(value: float | None, unit: str) -> str:
    if value is None:
        return ""
    if unit == "MB" or value < 100:
        return f"{value:,.1f}"
    return f"{value:,.0f}"


def format_ratio(value: float | None) -> str:
    if value is None:
        return "n/a"
    if value >= 100:
        return f"{value:,.0f}x"
    return f"{value:.1f}x" if value >= 10 else f"{value:.2f}x"


def table_rows(rows: dict[str, Row]) -> list[list[str]]:
    out = [
        [
            "row",
            "unit",
            "aionamespace",
            "stdlib",
            "redis",
            "ratio vs stdlib",
            "ratio vs redis",
            "target",
            "met?",
        ]
    ]
    for row in rows.values():
        cells = [row.label, row.unit]
        for who in CONTENDERS:
            figure = row.figure(who)
            text = (
                format_figure(figure, row.unit)
                if figure is not None
                else row.missing.get(who, "n/a")
            )
            if row.key == "idle_connections" and who == "stdlib" and figure is not None:
                text += f" @{row.extra['stdlib']['connections']:,}"
            cells.append(text)
        cells += [format_ratio(row.ratio("stdlib")), format_ratio(row.ratio("redis"))]
        cells.append(", ".join(t.text for t in row.targets))
        cells.append(verdict(row))
        out.append(cells)
    return out


def verdict(row: Row) -> str:
    results = [(t, row.met(t)) for t in row.targets]
    if all(met is None for _, met in results):
        return "n/a"
    failed = [t for t, met in results if met is False]
    unknown = [t for t, met in results if met is None]
    if failed:
        return "NO" if len(results) == 1 else "NO (" + ", ".join(t.text for t in failed) + ")"
    return "yes" + (" (" + ", ".join(f"{t.kind}: n/a" for t in unknown) + ")" if unknown else "")


def print_table(rows: dict[str, Row]) -> None:
    lines = table_rows(rows)
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]
    for n, line in enumerate(lines):
        cells = [
            cell.ljust(widths[i]) if i in (0, 1, 7, 8) else cell.rjust(widths[i])
            for i, cell in enumerate(line)
        ]
        print("  ".join(cells).rstrip())
        if n == 0:
            print("  ".join("-" * w for w in widths))
    notes = [(row.label, note) for row in rows.values() for note in row.notes]
    if notes:
        print("\nnotes:")
        for label, note in notes:
            print(f"  {label}: {note}")


def report(rows: dict[str, Row]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for row in rows.values():
        out[row.key] = {
            "label": row.label,
            "unit": row.unit,
            "figures": {who: row.figure(who) for who in CONTENDERS},
            "samples": {who: values for who, values in row.samples.items()},
            "missing": row.missing,
            "ratio_vs_stdlib": row.ratio("stdlib"),
            "ratio_vs_redis": row.ratio("redis"),
            "targets": [
                {
                    "text": t.text,
                    "kind": t.kind,
                    "value": t.value,
                    "met": row.met(t),
                    "score": row.score(t),
                }
                for t in row.targets
            ],
            "met": verdict(row),
            "notes": row.notes,
            **({"details": row.extra} if row.extra else {}),
        }
    return out


def plot(rows: dict[str, Row], path: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    labels, scores, colours = [], [], []
    for row in rows.values():
        for target in row.targets:
            score = row.score(target)
            if target.kind not in ABSOLUTE:
                shown = format_ratio(row.ratio(target.kind))
            else:
                shown = format_figure(row.figure("aionamespace"), row.unit) + f" {row.unit}"
            if score is None or not math.isfinite(score) or score <= 0:
                continue
            labels.append(f"{row.label}\n{shown} (target {target.text})")
            scores.append(score)
            colours.append("tab:green" if score >= 1 else "tab:red")
    fig, ax = plt.subplots(figsize=(11, 0.6 * len(labels) + 1.5))
    positions = range(len(labels))
    ax.barh(positions, scores, color=colours)
    ax.set_yticks(list(positions), labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ticks = matplotlib.ticker.FuncFormatter(lambda value, _: f"{value:g}")
    ax.xaxis.set_major_formatter(ticks)
    ax.xaxis.set_minor_formatter(ticks)
    ax.tick_params(axis="x", which="minor", labelsize=7)
    ax.axvline(1.0, color="black", linewidth=1)
    ax.set_xlabel("measured / target (log scale; >= 1 means the target is met)")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ---------------------------------------------------------------------------------- main


class _Signals:
    """Ctrl-C reaches every process of the terminal's group, so servers may die first and the
    error we see is theirs (a lost connection): after a signal, any error means interrupted."""

    received: int | None = None

    @classmethod
    def handler(cls, signum: int, frame: object) -> None:
        cls.received = signum
        raise KeyboardInterrupt(f"signal {signum}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n".join(__doc__.splitlines()[2:]),
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="tiny counts: checks that everything runs (< 30 s), no figures",
    )
    parser.add_argument("--rounds", type=int, metavar="N", help="rounds (default 9, quick 1)")
    parser.add_argument("--json", metavar="FILE", help="also write every figure as JSON")
    parser.add_argument(
        "--plot",
        metavar="FILE.png",
        help="also draw the ratios against their targets (needs matplotlib)",
    )
    parser.add_argument("--no-redis", action="store_true", help="leave Redis out")
    parser.add_argument(
        "--growth",
        action="store_true",
        help="then how cost grows with work (growth.py; its chart: FILE-growth.png)",
    )
    args = parser.parse_args(argv)
    if args.rounds is not None and args.rounds < 1:
        parser.error("--rounds must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    command = shlex.join([sys.executable, *sys.argv])
    settings = Settings.make(args.quick, args.rounds)
    info = machine()
    redis = redis_info(args.no_redis)
    plot_problem = ""
    if args.plot:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            plot_problem = "matplotlib is not installed (pip install matplotlib): no plot"

    print(f"$ {command}")
    print(
        f"machine: {info['cpu_count']} CPUs ({info['cpus_usable']} usable) {info['cpu_model']}"
        f", {info['python']}, {info['platform']}, load average {info['load_average']}"
    )
    print(
        f"aionamespace {info['aionamespace']} ({info['aionamespace_source']}); "
        + ", ".join(f"{k} {v}" for k, v in info["packages"].items())
    )
    print(
        "redis: "
        + (
            f"{redis.server_version}; redis-py {redis.client_version} "
            f"(hiredis: {'yes' if redis.hiredis else 'no'})"
            if redis.available
            else f"not measured: {redis.reason}"
        )
    )
    print(
        f"{settings.rounds} round(s); a sample: {settings.slices} slices of "
        f"{settings.sample_seconds / settings.slices * 1e3:g} ms per contender, interleaved"
        f"{' (--quick: the figures mean nothing)' if args.quick else ''}"
    )
    if plot_problem:
        print(plot_problem, file=sys.stderr)

    rows = make_rows(settings)
    previous_sigint = signal.signal(signal.SIGINT, _Signals.handler)
    previous_sigterm = signal.signal(signal.SIGTERM, _Signals.handler)
    stack = contextlib.ExitStack()
    try:
        print("setting up ...", flush=True)
        raise_open_file_limit()  # before any server starts: they inherit it
        bench = Bench(settings, rows, redis, stack)
        bench.setup()
        bench.warm_up()
        print("measuring, interleaved ...", flush=True)
        bench.run_rounds()
        yardstick_rows.finish(rows)
        durable.finish(rows, Target)
        store_rows.finish(rows, Target)
        bench.check_cache_invalidation()
        print("idle connections ...", flush=True)
        measure_idle(rows["idle_connections"], settings, bench.directory, redis)
    except BaseException as exc:
        if not isinstance(exc, KeyboardInterrupt) and _Signals.received is None:
            raise
        print(
            f"\ninterrupted ({type(exc).__name__}): stopping every server and process started here",
            file=sys.stderr,
        )
        return 130
    finally:
        # Nothing interrupts the cleanup: every process started here is stopped.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        try:
            stack.close()
        finally:
            signal.signal(signal.SIGINT, previous_sigint)
            signal.signal(signal.SIGTERM, previous_sigterm)

    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    info["load_average_end"] = load
    print(f"\nload average at the end: {load} (other work on the machine shifts every figure)\n")
    print_table(rows)
    results = {
        "command": command,
        "machine": info,
        "redis": dataclasses.asdict(redis),
        "settings": dataclasses.asdict(settings),
        "quick": args.quick,
        "rows": report(rows),
    }
    if args.growth:
        growth_plot = None
        if args.plot and not plot_problem:
            growth_plot = os.path.splitext(args.plot)[0] + "-growth.png"
        results["growth"] = growth.run(args.quick, growth_plot, command)
    if args.json:
        with open(args.json, "w") as out:
            json.dump(results, out, indent=2)
    if args.plot:
        if plot_problem:
            print(plot_problem, file=sys.stderr)
        else:
            plot(rows, args.plot, f"aionamespace: measured / target\n{command}")
            print(f"plot written to {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
