"""Reliability run: load, faults and bad inputs against real spawned servers -> docs/RELIABILITY.md.

    python benchmarks/reliability.py                 # full size: 1,000 clients for 10 s (~1 min)
    python benchmarks/reliability.py --clients 1000 --seconds 10 --fuzz-frames 20000
    python benchmarks/reliability.py --quick         # < 20 s; prints, writes no file
    python benchmarks/reliability.py --quick --output /tmp/reliability.md
    python benchmarks/reliability.py --only attacks  # the attacks alone (~4 min); stdout
    python benchmarks/reliability.py --only attacks --attack 8 --attack 14

What it does, each part against server processes it starts (``Manager`` or
``python -m aionamespace serve``), on each server backend (asyncio and trio):

1. **Load**: ``--clients`` concurrent clients for ``--seconds``: spawned processes, each running
   sync ``Namespace`` proxies in threads and ``AsyncNamespace`` proxies in tasks (asyncio in
   half of the processes, trio in the others), one connection per client, doing random
   get / set / ``_incr`` on one namespace after meeting at a start line. Checked: no errors, no
   lost increments (the server's counter equals the sum the clients report), every get returns
   a value some client set.
2. **Faults**: server SIGKILL under waiting calls of every kind (ConnectionLost latency);
   a client SIGKILLed in the middle of sending a frame (its lock passes on, its half-sent
   write is not applied); a server killed and restarted at the same path (reads ride through,
   writes never sent are applied once, a write of unknown fate is never re-sent); graceful
   shutdown (SIGTERM) with ``--shutdown-clients`` clients connected (its duration, and the
   goodbye every client must get).
3. **Fuzz**: ``--fuzz-frames`` random and mutated frames of several kinds on live servers, then
   a normal client must work and values set before the fuzz must be intact.
4. **Attacks**: each hole of issue 12 reproduced at the issue's magnitudes against fresh
   ``serve`` processes, its figure (memory growth, stall, latency, CPU time) beside the bound
   it must stay under (``benchmarks/attacks/``: one function per attack; ``--attack N`` runs
   item N alone, ``--attack-scale`` shrinks them). Not part of ``--quick``.

``--only PART`` (load, faults, fuzz, attacks; repeatable) runs some parts alone.

The report (Markdown) goes to ``--output`` (default docs/RELIABILITY.md; with ``--quick``,
``--only`` or ``--attack``, stdout only unless ``--output`` is given). The exit status is 1 if
any check failed.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import datetime
import functools
import multiprocessing
import os
import platform
import queue
import random
import resource
import secrets
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

import anyio
import msgpack

import aionamespace
from aionamespace import AsyncNamespace, ConnectionLost, Manager, Namespace, Retry
from aionamespace.protocol.codec import encode_value

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))  # what the tests use (none of it needs pytest)
import attacks  # noqa: E402 - beside this script: the attacks of issue 12, one per function
import deadlines  # noqa: E402
from raw_client import read_frames  # noqa: E402
from server_processes import ServeProcess  # noqa: E402
from waiting_calls import blocked_reading, request_waiting  # noqa: E402
from workload import INITIAL, plan, run_process  # noqa: E402

DEFAULT_OUTPUT = ROOT / "docs" / "RELIABILITY.md"
BACKENDS = ("asyncio", "trio")
NO_HANG = 30.0  # any single wait longer than this is a failure, not a hang
GOODBYE = [0, 1, "ConnectionLost", "the server is shutting down"]
HELLO = msgpack.packb({"protocol": "aionamespace", "version": 1})
RESTART_RETRY = Retry(attempts=50, backoff=0.02, max_backoff=0.1)
PARTS = ("load", "faults", "fuzz", "attacks")


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def percentile(values: list[float], fraction: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


def raise_open_file_limit() -> None:
    """This process holds one end of every raw client: lift the soft limit to the hard one."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = hard if hard != resource.RLIM_INFINITY else 1 << 20
    if soft != resource.RLIM_INFINITY and soft < wanted:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))


class Checks:
    """Every pass/fail check made, for the exit status and the report."""

    def __init__(self) -> None:
        self.failed: list[str] = []

    def expect(self, ok: bool, what: str) -> bool:
        if not ok:
            self.failed.append(what)
            log(f"CHECK FAILED: {what}")
        return ok


# ====================================================================== servers and raw clients


@contextlib.contextmanager
def scratch_dir() -> Iterator[str]:
    path = tempfile.mkdtemp(prefix="ans-rel-")
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def raw_clients(path: str, count: int) -> list[tuple[socket.socket, msgpack.Unpacker]]:
    """``count`` raw connections that completed the hello."""
    clients: list[tuple[socket.socket, msgpack.Unpacker]] = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            clients.append((sock, msgpack.Unpacker(raw=False)))
            sock.connect(path)
            sock.settimeout(NO_HANG)
            sock.sendall(HELLO)
        for sock, unpacker in clients:
            hello = read_frames(sock, unpacker, until_eof=False)[0]
            if "error" in hello:
                raise RuntimeError(f"a raw client was refused: {hello['error']}")
    except BaseException:
        for sock, _ in clients:
            sock.close()
        raise
    return clients


wait_until = functools.partial(deadlines.wait_until, seconds=NO_HANG)
async_wait_until = functools.partial(deadlines.async_wait_until, seconds=NO_HANG)


# ====================================================================== 1. load


def run_load(
    server_backend: str, clients: int, seconds: float, processes: int, checks: Checks
) -> dict[str, Any]:
    log(f"load: {clients} clients for {seconds} s on a {server_backend} server ...")
    spawn = multiprocessing.get_context("spawn")
    plans = plan(clients, processes, per_thread=3)  # a third threads, the rest tasks
    with Manager(backend=server_backend) as manager:
        assert manager.authkey is not None
        ns = manager.Namespace("load", shared=INITIAL, counter=0)
        reports = spawn.Queue()
        procs = [
            spawn.Process(
                target=run_process,
                args=(
                    manager.address,
                    manager.authkey,
                    "load",
                    backend,
                    first,
                    threads,
                    tasks,
                    clients,
                    seconds,
                    NO_HANG * 4,
                    reports,
                ),
            )
            for backend, first, threads, tasks in plans
        ]
        results: list[list[dict[str, Any]]] = []
        try:
            for proc in procs:
                proc.start()
            deadline = time.monotonic() + seconds + NO_HANG * 6
            while len(results) < len(procs):
                try:
                    results.append(reports.get(timeout=0.2))
                except queue.Empty:
                    if time.monotonic() > deadline or any(
                        p.exitcode not in (None, 0) for p in procs
                    ):
                        raise RuntimeError("a load process died or hangs") from None
            for proc in procs:
                proc.join(NO_HANG)
        finally:
            for proc in procs:
                if proc.is_alive():
                    proc.kill()
                    proc.join()
            reports.close()
            reports.join_thread()
        final = ns._snapshot()
        ns._close()
    tallies = [tally for result in results for tally in result]
    ops = sum(t["ops"] for t in tallies)
    errors = [e for t in tallies for e in t["errors"]]
    increments = sum(t["increments"] for t in tallies)
    lost = increments - final["counter"]
    sets = {t["client"]: t["sets"] for t in tallies}
    phantom = sum(
        1 for t in tallies for writer, seq in t["seen"].items() if seq >= sets.get(writer, 0)
    )
    bad = sum(len(t["bad_values"]) for t in tallies) + phantom
    latencies = [x for t in tallies for x in t["latencies"]]
    threads = sum(p[2] for p in plans)
    checks.expect(len(tallies) == clients, f"load ({server_backend}): every client reported")
    checks.expect(not errors, f"load ({server_backend}): {len(errors)} errors, e.g. {errors[:3]}")
    checks.expect(lost == 0, f"load ({server_backend}): {lost} increments lost")
    checks.expect(bad == 0, f"load ({server_backend}): {bad} gets returned unset values")
    checks.expect(
        all(t["ops"] > 0 for t in tallies), f"load ({server_backend}): a client never ran"
    )
    return {
        "server": server_backend,
        "clients": clients,
        "processes": len(plans),
        "threads": threads,
        "tasks": clients - threads,
        "seconds": seconds,
        "ops": ops,
        "ops_per_s": ops / seconds,
        "errors": len(errors),
        "lost": lost,
        "bad_reads": bad,
        "counter": final["counter"],
        "increments": increments,
        "p50": percentile(latencies, 0.5),
        "p99": percentile(latencies, 0.99),
        "max": max(latencies, default=float("nan")),
    }


# ====================================================================== 2. faults


def server_kill(
    backend: str, sync_threads: int, async_tasks: int, checks: Checks
) -> dict[str, Any]:
    """SIGKILL a server under waiting calls of every kind; how soon each raises."""
    log(f"fault: server SIGKILL ({backend} server) ...")
    once = Retry(attempts=1)  # measure detection, not retries
    outcomes: list[tuple[str, BaseException | None, float]] = []
    lock = threading.Lock()

    def record(kind: str, error: BaseException | None) -> None:
        with lock:
            outcomes.append((kind, error, time.monotonic()))

    with scratch_dir() as tmp:
        path = os.path.join(tmp, "ns.sock")
        server = ServeProcess(path, backend)
        try:
            ns = Namespace(path, "kill", retry=once)
            ns.w = "probe"
            holder = ns._lock("L")
            holder.__enter__()
            watching = threading.Semaphore(0)
            go = threading.Barrier(sync_threads + 1)

            def seen(value: Any) -> bool:
                watching.release()
                return False

            def sync_call(kind: str) -> None:
                try:
                    if kind == "lock":
                        with ns._lock("L"):
                            pass
                    elif kind == "wait_for":
                        ns._wait_for("w", seen)
                    else:
                        go.wait(NO_HANG)
                        for i in range(10**9):
                            ns.x = i
                            ns.x  # noqa: B018 - the read is the point
                except BaseException as exc:  # recorded
                    record(f"sync {kind}", exc)
                else:
                    record(f"sync {kind}", None)

            kinds = ["lock", "lock", "wait_for", "wait_for"] + ["read/write"] * sync_threads
            threads = [threading.Thread(target=sync_call, args=(kind,)) for kind in kinds]
            loops = [
                AsyncKillClients(path, loop_backend, async_tasks, record)
                for loop_backend in BACKENDS
            ]
            for thread in threads + loops:
                thread.start()
            for thread, kind in zip(threads, kinds, strict=True):
                if kind == "lock":
                    wait_until(
                        functools.partial(blocked_reading, thread, "__enter__"), "lock waits"
                    )
            for _ in range(2):
                watching.acquire(timeout=NO_HANG)
            for loop in loops:
                if not loop.ready.wait(NO_HANG):
                    raise RuntimeError(f"async clients not ready: {loop.error!r}")
            go.wait(NO_HANG)
            killed_at = server.kill()
        finally:
            server.close()
        for thread in threads + loops:
            thread.join(NO_HANG)
        hung = sum(thread.is_alive() for thread in threads + loops)
    latencies = [at - killed_at for _, _, at in outcomes]
    wrong = [
        (kind, repr(error)) for kind, error, _ in outcomes if not isinstance(error, ConnectionLost)
    ]
    expected = len(kinds) + sum(loop.calls for loop in loops)
    checks.expect(hung == 0, f"server SIGKILL ({backend}): {hung} threads hang")
    checks.expect(
        len(outcomes) == expected,
        f"server SIGKILL ({backend}): {len(outcomes)}/{expected} calls returned",
    )
    checks.expect(not wrong, f"server SIGKILL ({backend}): not ConnectionLost: {wrong[:3]}")
    checks.expect(
        max(latencies, default=0) < 1.0,
        f"server SIGKILL ({backend}): slowest ConnectionLost after "
        f"{max(latencies, default=0):.3f}s",
    )
    return {
        "calls": len(outcomes),
        "connection_lost": len(outcomes) - len(wrong),
        "p50": percentile(latencies, 0.5),
        "max": max(latencies, default=float("nan")),
    }


class AsyncKillClients(threading.Thread):
    """On their own event loop: lock waiters, a watch, and ``tasks`` read/write tasks sharing
    four proxies; every call's outcome goes to ``record``."""

    def __init__(
        self,
        path: str,
        backend: str,
        tasks: int,
        record: Callable[[str, BaseException | None], None],
    ) -> None:
        super().__init__(name=f"kill-{backend}", daemon=True)
        self.path, self.backend, self.tasks, self.record = path, backend, tasks, record
        self.ready = threading.Event()
        self.calls = 3 + tasks
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            anyio.run(self.main, backend=self.backend)
        except BaseException as exc:  # reported through ``error``
            self.error = exc

    async def call(self, kind: str, function: Callable[[], Any]) -> None:
        try:
            await function()
        except BaseException as exc:  # recorded
            self.record(f"{self.backend} {kind}", exc)
            if not isinstance(exc, Exception):
                raise
        else:
            self.record(f"{self.backend} {kind}", None)

    async def main(self) -> None:
        once = Retry(attempts=1)
        waiters = AsyncNamespace(self.path, "kill", retry=once)
        watcher = AsyncNamespace(self.path, "kill", retry=once)
        shared = [AsyncNamespace(self.path, "kill", retry=once) for _ in range(4)]
        watching, running = anyio.Event(), anyio.Event()

        def seen(value: Any) -> bool:
            watching.set()
            return False

        async def read_write(ns: AsyncNamespace, index: int) -> None:
            name = f"{self.backend}{index}"
            for i in range(10**9):
                setattr(ns, name, i)
                await getattr(ns, name)
                running.set()

        async with anyio.create_task_group() as group:
            for _ in range(2):
                group.start_soon(self.call, "lock", lambda: waiters._lock("L").__aenter__())
            group.start_soon(self.call, "wait_for", lambda: watcher._wait_for("w", seen))
            for index in range(self.tasks):
                group.start_soon(
                    self.call, "read/write", lambda i=index: read_write(shared[i % 4], i)
                )
            await async_wait_until(request_waiting(waiters, 2), "both waiters wait")
            await watching.wait()
            await running.wait()
            self.ready.set()
        for ns in (waiters, watcher, *shared):
            with contextlib.suppress(ConnectionLost):
                await ns._close()


CLIENT_MID_FRAME = r"""
import socket, sys, msgpack
from aionamespace.protocol.codec import encode_value
path, key = sys.argv[1], sys.argv[2]
sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
sock.connect(path)
unpacker = msgpack.Unpacker(raw=False)
def frame():
    while True:
        for item in unpacker:
            return item
        unpacker.feed(sock.recv(65536))
sock.sendall(msgpack.packb({"protocol": "aionamespace", "version": 1}))
frame()
sock.sendall(msgpack.packb([1, "acquire", key, "L", b"doomed", None]))
assert frame() == [1, 0, None]
request = msgpack.packb([2, "set", key, "half", encode_value("x" * 1_000_000)])
sock.sendall(request[: len(request) // 2])
print("mid-frame", flush=True)
sys.stdin.read()
"""


def take_lock(ns: Namespace, got: list[float]) -> None:
    """Wait for lock "L" (kept until this thread's connection closes); note when it came."""
    ns._lock("L").__enter__()
    got.append(time.monotonic())


def client_kill(backend: str, rounds: int, checks: Checks) -> dict[str, Any]:
    """A client holding a lock is SIGKILLed halfway through sending a 1 MB set."""
    log(f"fault: client SIGKILL mid-frame ({backend} server, {rounds} rounds) ...")
    handovers: list[float] = []
    intact = applied = 0
    with scratch_dir() as tmp:
        path = os.path.join(tmp, "ns.sock")
        server = ServeProcess(path, backend)
        try:
            for round_ in range(rounds):
                key = f"victim{round_}"
                ns = Namespace(path, key)
                ns._update(a=1, b=[1, 2, 3])
                child = subprocess.Popen(
                    [sys.executable, "-c", CLIENT_MID_FRAME, path, key],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                )
                try:
                    assert child.stdout is not None
                    if child.stdout.readline() != b"mid-frame\n":
                        raise RuntimeError("the client did not start")
                    got: list[float] = []
                    waiter = threading.Thread(target=take_lock, args=(ns, got))
                    waiter.start()
                    wait_until(
                        functools.partial(blocked_reading, waiter, "__enter__"), "the lock waits"
                    )
                    killed_at = time.monotonic()
                    child.kill()
                    waiter.join(NO_HANG)
                finally:
                    if child.poll() is None:
                        child.kill()
                    child.wait()
                    for stream in (child.stdin, child.stdout):
                        if stream is not None:
                            stream.close()
                if got:
                    handovers.append(got[0] - killed_at)
                snapshot = ns._snapshot()
                intact += snapshot == {"a": 1, "b": [1, 2, 3]}
                applied += "half" in snapshot
                ns._close()
            alive = server.process.poll() is None
        finally:
            server.close()
    checks.expect(
        len(handovers) == rounds,
        f"client SIGKILL ({backend}): the lock passed on in {len(handovers)}/{rounds}",
    )
    checks.expect(
        intact == rounds and applied == 0,
        f"client SIGKILL ({backend}): half-sent write applied {applied} times",
    )
    checks.expect(alive, f"client SIGKILL ({backend}): the server died")
    return {
        "rounds": rounds,
        "handed_over": len(handovers),
        "half_writes_applied": applied,
        "p50": percentile(handovers, 0.5),
        "max": max(handovers, default=float("nan")),
    }


class Reader(threading.Thread):
    """Reads through a restart with a patient Retry; records the longest call and errors."""

    def __init__(self, path: str, backend: str | None) -> None:
        super().__init__(daemon=True)
        self.path, self.backend = path, backend
        self.stop = threading.Event()
        self.running = threading.Event()
        self.longest = 0.0
        self.reads = 0
        self.errors: list[str] = []

    def run(self) -> None:
        if self.backend is None:
            ns = Namespace(self.path, "restart", retry=RESTART_RETRY)
            try:
                while not self.stop.is_set():
                    start = time.monotonic()
                    ns._snapshot()
                    self.note(start)
            except Exception as exc:  # reported
                self.errors.append(repr(exc))
            finally:
                ns._close()
        else:
            anyio.run(self.read_async, backend=self.backend)

    async def read_async(self) -> None:
        ns = AsyncNamespace(self.path, "restart", retry=RESTART_RETRY)
        try:
            while not self.stop.is_set():
                start = time.monotonic()
                await ns._snapshot()
                self.note(start)
        except Exception as exc:  # reported
            self.errors.append(repr(exc))
        finally:
            with contextlib.suppress(ConnectionLost):
                await ns._close()

    def note(self, start: float) -> None:
        self.longest = max(self.longest, time.monotonic() - start)
        self.reads += 1
        self.running.set()


def read_again(readers: list[Reader]) -> Callable[[], bool]:
    """Whether every reader has completed a read since now."""
    counts = {reader: reader.reads for reader in readers}
    return lambda: all(reader.reads > count for reader, count in counts.items())


def fake_dying_server(path: str, ready: threading.Event, requests: list[Any]) -> None:
    """Greet one client, read its request, close without answering."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)  # the socket file a killed server left
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
        try:
            listener.bind(path)
            listener.listen(4)
            listener.settimeout(NO_HANG)
        finally:
            ready.set()
        conn, _ = listener.accept()
        with conn:
            conn.settimeout(NO_HANG)
            unpacker = msgpack.Unpacker(raw=False)
            frames = read_frames(conn, unpacker, until_eof=False)
            conn.sendall(
                msgpack.packb(
                    {"protocol": "aionamespace", "version": 1, "max_frame_bytes": 1 << 26}
                )
            )
            frames = frames[1:] or read_frames(conn, unpacker, until_eof=False)
            requests.append(frames[0])
        # a proxy that re-sent would connect again: give it the chance, bounded
        listener.settimeout(0.3)
        with contextlib.suppress(TimeoutError):
            again, _ = listener.accept()
            again.close()
            requests.append("reconnected")
    os.unlink(path)


def unknown_fate_writes(path: str, backend: str) -> dict[str, tuple[bool, bool]]:
    """(request_sent reported, applied or re-sent) for writes whose server died unanswered."""
    results: dict[str, tuple[bool, bool]] = {}

    def attempt(name: str, write: Callable[[], Any], check: Callable[[], bool]) -> None:
        ready, requests = threading.Event(), list[Any]()
        fake = threading.Thread(target=fake_dying_server, args=(path, ready, requests))
        fake.start()
        ready.wait(NO_HANG)
        sent = False
        try:
            write()
        except ConnectionLost as exc:
            sent = exc.request_sent
        fake.join(NO_HANG)
        server = ServeProcess(path, backend)
        try:
            results[name] = (sent, len(requests) != 1 or check())
        finally:
            server.close()

    ns = Namespace(path, "fate", retry=RESTART_RETRY)

    def sync_set() -> None:
        ns.x = 1

    attempt("sync `ns.x = 1`", sync_set, lambda: "x" in Namespace(path, "fate")._snapshot())

    async def async_incr() -> None:
        await AsyncNamespace(path, "fate", retry=RESTART_RETRY)._incr("n")

    async def async_flush() -> None:
        proxy = AsyncNamespace(path, "fate", retry=RESTART_RETRY)
        proxy.y = 1
        try:
            await proxy._flush()
        finally:
            await proxy._close()

    attempt(
        "async `await ns._incr('n')`",
        lambda: anyio.run(async_incr),
        lambda: "n" in Namespace(path, "fate")._snapshot(),
    )
    attempt(
        "async `ns.y = 1; await ns._flush()`",
        lambda: anyio.run(async_flush),
        lambda: "y" in Namespace(path, "fate")._snapshot(),
    )
    ns._close()
    return results


def restart(backend: str, rounds: int, checks: Checks) -> dict[str, Any]:
    """kill -9 and restart at the same path while readers and writers keep going."""
    log(f"fault: restart + retry ({backend} server, {rounds} rounds) ...")
    downtimes: list[float] = []
    longest = 0.0
    reader_errors: list[str] = []
    once_ok = 0
    with scratch_dir() as tmp:
        path = os.path.join(tmp, "ns.sock")
        for _ in range(rounds):
            server = ServeProcess(path, backend)
            readers = [Reader(path, None), Reader(path, "asyncio"), Reader(path, "trio")]
            writer = Namespace(path, "restart", retry=RESTART_RETRY)
            try:
                writer._ping()  # connected: the kill breaks this connection
                for reader in readers:
                    reader.start()
                for reader in readers:
                    reader.running.wait(NO_HANG)
                killed_at = server.kill()
                server = ServeProcess(path, backend)
                downtimes.append(time.monotonic() - killed_at)
                # Written after the restart through a connection the kill broke: never sent
                # on it, so retried, and applied exactly once.
                once_ok += writer._incr("once") == 1
                wait_until(read_again(readers), "every reader read again")
            finally:
                for reader in readers:
                    reader.stop.set()
                for reader in readers:
                    reader.join(NO_HANG)
                writer._close()
                server.close()
            longest = max([longest, *(reader.longest for reader in readers)])
            reader_errors += [e for reader in readers for e in reader.errors]
        fates = unknown_fate_writes(path, backend)
    checks.expect(not reader_errors, f"restart ({backend}): readers saw {reader_errors[:3]}")
    checks.expect(once_ok == rounds, f"restart ({backend}): a retried write was not applied once")
    for name, (sent, resent) in fates.items():
        checks.expect(not resent, f"restart ({backend}): {name} was applied or re-sent")
        checks.expect(
            sent,
            f"restart ({backend}): {name} raised ConnectionLost with "
            "request_sent=False for a write the server had received",
        )
    return {
        "rounds": rounds,
        "downtime": statistics.median(downtimes),
        "longest_read": longest,
        "reader_errors": len(reader_errors),
        "written_once": once_ok,
        "fates": fates,
    }


class ShutdownProxies(threading.Thread):
    """Async proxies waiting (for a lock, for a watch) when the server shuts down."""

    def __init__(self, path: str, backend: str) -> None:
        super().__init__(daemon=True)
        self.path, self.backend = path, backend
        self.ready = threading.Event()
        self.outcomes: list[str] = []

    def run(self) -> None:
        anyio.run(self.main, backend=self.backend)

    async def main(self) -> None:
        once, key = Retry(attempts=1), f"bye-{self.backend}"
        holder, waiters, watcher = (AsyncNamespace(self.path, key, retry=once) for _ in range(3))
        watching = anyio.Event()

        def seen(value: Any) -> bool:
            watching.set()
            return False

        async def call(function: Callable[[], Any]) -> None:
            try:
                await function()
                self.outcomes.append("returned")
            except Exception as exc:  # recorded
                self.outcomes.append(str(exc) if isinstance(exc, ConnectionLost) else repr(exc))

        watcher.w = "probe"
        await watcher._flush()
        await holder._lock("L").__aenter__()
        async with anyio.create_task_group() as group:
            for _ in range(2):
                group.start_soon(call, lambda: waiters._lock("L").__aenter__())
            group.start_soon(call, lambda: watcher._wait_for("w", seen))
            await async_wait_until(request_waiting(waiters, 2), "both waiters wait")
            await watching.wait()
            self.ready.set()
        for ns in (holder, waiters, watcher):
            with contextlib.suppress(ConnectionLost):
                await ns._close()


def shutdown(backend: str, clients: int, checks: Checks) -> dict[str, Any]:
    """SIGTERM a server with ``clients`` raw clients and a few waiting proxies connected."""
    log(f"fault: graceful shutdown with {clients} clients ({backend} server) ...")
    with scratch_dir() as tmp:
        path = os.path.join(tmp, "ns.sock")
        server = ServeProcess(path, backend)
        raw: list[tuple[socket.socket, msgpack.Unpacker]] = []
        try:
            raw = raw_clients(path, clients)
            proxies = [ShutdownProxies(path, loop) for loop in BACKENDS]
            for group in proxies:
                group.start()
                group.ready.wait(NO_HANG)
            start = time.monotonic()
            server.process.send_signal(signal.SIGTERM)
            code = server.process.wait(timeout=NO_HANG)
            duration = time.monotonic() - start
            received = [read_frames(sock, unpacker, until_eof=True) for sock, unpacker in raw]
            for group in proxies:
                group.join(NO_HANG)
        finally:
            for sock, _ in raw:
                sock.close()
            server.close()
    goodbyes = sum(frames == [GOODBYE] for frames in received)
    outcomes = [o for group in proxies for o in group.outcomes]
    told = sum(o == "the server is shutting down" for o in outcomes)
    checks.expect(code == 0, f"shutdown ({backend}): exit code {code}")
    checks.expect(duration < 1.5, f"shutdown ({backend}): took {duration:.2f}s")
    checks.expect(goodbyes == clients, f"shutdown ({backend}): {goodbyes}/{clients} goodbyes")
    checks.expect(
        told == len(outcomes) == 6, f"shutdown ({backend}): waiting proxies got {outcomes}"
    )
    return {
        "clients": clients,
        "duration": duration,
        "goodbyes": goodbyes,
        "proxies_told": told,
        "proxies": len(outcomes),
    }


# ====================================================================== 3. fuzz


VALID_REQUESTS: list[list[Any]] = [
    [1, "ping"],
    [2, "keys"],
    [3, "open", "fz", {"a": encode_value(1)}],
    [4, "get", "fz", "a"],
    [5, "set", "fz", "a", encode_value([1, (2, 3), {"k": b"v"}])],
    [6, "del", "fz", "b"],
    [7, "dump", "fz"],
    [8, "snapshot", "fz", ["a"]],
    [9, "update", "fz", {"a": encode_value(2.5), "c": encode_value("text")}],
    [10, "setdefault", "fz", "d", encode_value(None)],
    [11, "pop", "fz", "d"],
    [12, "incr", "fz", "n", encode_value(3)],
    [13, "append", "fz", "l", [encode_value(1)]],
    [14, "cas", "fz", "a", encode_value(2.5), encode_value(3)],
    [15, "watch", "fz", None, None],
    [16, "unwatch", 1],
    [17, "acquire", "fz", "L", b"fuzz-token", 0.01],
    [18, "release", "fz", "L", b"fuzz-token"],
]
OPS = [*sorted({request[1] for request in VALID_REQUESTS}), "nope", ""]


def random_object(rng: random.Random, depth: int = 0) -> Any:
    choice = rng.randrange(12 if depth < 4 else 8)
    if choice == 0:
        return None
    if choice == 1:
        return rng.choice([True, False])
    if choice == 2:
        return rng.choice([0, -1, 1, 2**63 - 1, -(2**63), 2**64 - 1, rng.randrange(-999, 999)])
    if choice == 3:
        return rng.choice([0.0, -0.0, float("inf"), float("nan"), 1e308, rng.random()])
    if choice == 4:
        return rng.choice(["", "fz", "a", "_hidden", "x" * 300, "\u00e9\u4e2d", *OPS])
    if choice == 5:
        return rng.randbytes(rng.randrange(0, 40))
    if choice == 6:
        if rng.random() < 0.2:
            return msgpack.Timestamp(rng.randrange(0, 2**32))  # extension type -1
        return msgpack.ExtType(rng.randrange(0, 128), rng.randbytes(rng.randrange(0, 10)))
    if choice == 7:
        return encode_value(rng.choice([1, "s", (1,), {1, 2}, b"b", None]))
    if choice in (8, 9):
        return [random_object(rng, depth + 1) for _ in range(rng.randrange(0, 6))]
    keys: list[Any] = [None, 1, -1, 2.5, b"k", True]  # mostly str keys; some of other types
    return {
        rng.choice(keys) if rng.random() < 0.2 else f"k{i}": random_object(rng, depth + 1)
        for i in range(rng.randrange(0, 4))
    }


def pack_any(obj: Any) -> bytes:
    try:
        packed: bytes = msgpack.packb(obj, use_bin_type=True)
    except (TypeError, ValueError):  # e.g. an integer too large for msgpack
        packed = msgpack.packb(repr(obj))
    return packed


def mutate(rng: random.Random, original: bytes) -> bytes:
    data = bytearray(original)
    for _ in range(rng.randrange(1, 4)):
        how = rng.randrange(5)
        position = rng.randrange(len(data)) if data else 0
        if how == 0 and data:
            data[position] ^= 1 << rng.randrange(8)
        elif how == 1 and data:
            data[position] = rng.randrange(256)
        elif how == 2:
            data[position:position] = rng.randbytes(rng.randrange(1, 5))
        elif how == 3 and data:
            del data[position : position + rng.randrange(1, 5)]
        else:
            data = data[:position]
    return bytes(data)


def fuzz_frame(rng: random.Random, kind: str) -> bytes:
    if kind in ("random bytes", "random bytes before hello"):
        return rng.randbytes(rng.randrange(1, 64))
    if kind == "mutated hello":
        return mutate(rng, HELLO)
    if kind == "mutated request":
        return mutate(rng, msgpack.packb(rng.choice(VALID_REQUESTS)))
    if kind == "random msgpack object":
        return pack_any(random_object(rng))
    if kind == "valid op, random arguments":
        request = [rng.randrange(1, 2**31), rng.choice(OPS)]
        request += [random_object(rng) for _ in range(rng.randrange(0, 6))]
        return pack_any(request)
    if kind == "bad request id":
        return pack_any(
            [rng.choice([0, -1, "1", None, 1.5, 2**64 - 1]), *rng.choice(VALID_REQUESTS)[1:]]
        )
    if kind == "invalid encoded value":
        return pack_any(
            [rng.randrange(1, 999), "set", "fz", "v", mutate(rng, encode_value([1, (2, {3}), "x"]))]
        )
    if kind == "deep nesting":
        depth = rng.choice([300, 5000, 100000])
        return b"\x91" * depth + b"\xc0"
    if kind == "huge declared length":
        header = rng.choice(
            [
                b"\xc6\xff\xff\xff\xff",
                b"\xdb\x7f\xff\xff\xff",
                b"\xdd\xff\xff\xff\xff",
                b"\xdf\xff\xff\xff\xff",
            ]
        )
        return header + rng.randbytes(16)
    raise ValueError(kind)


FUZZ_KINDS = [
    "random bytes before hello",
    "mutated hello",
    "random bytes",
    "mutated request",
    "random msgpack object",
    "valid op, random arguments",
    "bad request id",
    "invalid encoded value",
    "deep nesting",
    "huge declared length",
]


PROBE = msgpack.packb([2**31 - 1, "ping"])  # follows every fuzz frame: is the connection usable?


def fuzz_connection(path: str, kind: str, frame: bytes) -> str:
    """One bad frame on a connection of its own (after a hello, unless the kind replaces the
    hello), then a ping, then EOF: how the server dealt with the frame."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(10)
        sock.connect(path)
        greeting = b"" if kind in ("random bytes before hello", "mutated hello") else HELLO
        replies: list[Any] = []
        try:
            sock.sendall(greeting + frame + PROBE)
            sock.shutdown(socket.SHUT_WR)
            unpacker = msgpack.Unpacker(raw=False, strict_map_key=False)
            while data := sock.recv(65536):
                unpacker.feed(data)
                replies.extend(unpacker)
        except TimeoutError:
            return "hung"
        except (ConnectionResetError, BrokenPipeError):
            return "refused early"  # closed while we were still sending (a refusal)
    answers = [r for r in replies if type(r) is list and r[:1] != [2**31 - 1]]
    if any(type(r) is dict and "error" in r for r in replies) or any(
        r[:2] == [0, 1] for r in answers
    ):
        return "refused"
    if any(r[1:2] == [1] for r in answers):
        return "error reply"
    return "answered" if answers else "no reply"


def fuzz(backend: str, frames_total: int, seed: int, checks: Checks) -> dict[str, Any]:
    log(f"fuzz: {frames_total} frames ({backend} server) ...")
    rng = random.Random(seed)
    counts: dict[str, dict[str, int]] = {kind: {} for kind in FUZZ_KINDS}
    frames_by_kind = dict.fromkeys(FUZZ_KINDS, 0)
    intact_key = f"intact-{secrets.token_hex(8)}"
    intact_values = {
        "i": 2**70,
        "t": (1, "two", b"3"),
        "s": {1, 2},
        "f": 0.5,
        "d": {"nested": [None, True]},
    }
    jobs: list[tuple[str, bytes]] = []
    for index in range(frames_total):
        kind = FUZZ_KINDS[index % len(FUZZ_KINDS)]
        jobs.append((kind, fuzz_frame(rng, kind)))
        frames_by_kind[kind] += 1
    sent = len(jobs)
    with scratch_dir() as tmp:
        path = os.path.join(tmp, "ns.sock")
        server = ServeProcess(path, backend)
        try:
            with Namespace(path, intact_key) as ns:
                ns._update(**intact_values)
                revision = ns._snapshot().revision
            with concurrent.futures.ThreadPoolExecutor(16) as pool:
                for (kind, _), outcome in zip(
                    jobs, pool.map(lambda job: fuzz_connection(path, *job), jobs), strict=True
                ):
                    counts[kind][outcome] = counts[kind].get(outcome, 0) + 1
            alive = server.process.poll() is None
            with Namespace(path, intact_key) as ns:
                after = ns._snapshot()
                ns.check = "works"
                works = ns.check == "works" and ns._incr("n") == 1

            async def async_check() -> bool:
                proxy = AsyncNamespace(path, intact_key)
                value = await proxy.check
                await proxy._close()
                return bool(value == "works")

            works = works and anyio.run(async_check) and anyio.run(async_check, backend="trio")
        finally:
            server.close()
    hung = sum(c.get("hung", 0) for c in counts.values())
    intact = dict(after) == intact_values and after.revision == revision
    checks.expect(alive, f"fuzz ({backend}): the server died")
    checks.expect(hung == 0, f"fuzz ({backend}): {hung} connections hung")
    checks.expect(works, f"fuzz ({backend}): a normal client failed afterwards")
    checks.expect(intact, f"fuzz ({backend}): values changed: {dict(after)}")
    return {
        "frames": sent,
        "by_kind": frames_by_kind,
        "outcomes": counts,
        "alive": alive,
        "works": works,
        "intact": intact,
    }


# ====================================================================== report


def machine() -> dict[str, str]:
    def version(package: str) -> str:
        try:
            return metadata.version(package)
        except metadata.PackageNotFoundError:
            return "-"

    return {
        "CPUs": str(os.cpu_count()),
        "Python": f"{platform.python_version()} ({platform.python_implementation()})",
        "Platform": platform.platform(),
        "aionamespace": aionamespace.__version__,
        "anyio / trio / msgpack": " / ".join(version(p) for p in ("anyio", "trio", "msgpack")),
        "Open-file limit (soft)": str(resource.getrlimit(resource.RLIMIT_NOFILE)[0]),
        "Load average (1 / 5 / 15 min), at the end": " / ".join(
            f"{load:.1f}" for load in os.getloadavg()
        ),
    }


def report(
    args: argparse.Namespace, command: str, results: dict[str, Any], checks: Checks, elapsed: float
) -> str:
    out: list[str] = []
    add = out.append
    add("# Reliability\n")
    add(
        "Generated by `benchmarks/reliability.py` against real server processes (a `Manager`, or "
        "`python -m aionamespace serve`), on both server backends. Re-run it to refresh this "
        "file; the exit status is 1 if any check fails.\n"
    )
    status = (
        "**All checks passed.**"
        if not checks.failed
        else (
            f"**{len(checks.failed)} check(s) FAILED:**\n\n"
            + "\n".join(f"- {failure}" for failure in checks.failed)
        )
    )
    add(f"{status}\n")

    if "load" in results:
        add("## Load held\n")
        add(
            "Spawned processes (asyncio in half, trio in the others) each running sync proxies in "
            "threads and async proxies in tasks, one connection per client, random get / set / "
            "`_incr` on one namespace. *Lost increments*: the sum of the increments the clients "
            "made minus the server's final counter. *Bad reads*: gets returning a value no "
            "client had set.\n"
        )
        add(
            "| server | clients | processes / threads / tasks | seconds | ops | ops/s "
            "| latency p50 / p99 / max | errors | lost increments | bad reads |"
        )
        add("|---|---:|---|---:|---:|---:|---|---:|---:|---:|")
        for load in results["load"]:
            add(
                f"| {load['server']} | {load['clients']:,} | {load['processes']} / "
                f"{load['threads']} / {load['tasks']} | {load['seconds']:g} | {load['ops']:,} | "
                f"{load['ops_per_s']:,.0f} | {ms(load['p50'])} / {ms(load['p99'])} / "
                f"{ms(load['max'])} | {load['errors']} | {load['lost']} | {load['bad_reads']} |"
            )
        add("")

    if "server_kill" in results:
        add("## Faults survived\n")
        add("| fault | server | what was measured | result |")
        add("|---|---|---|---|")
        for backend, kill in results["server_kill"].items():
            add(
                f"| server SIGKILL under {kill['calls']} waiting calls (sync threads and asyncio / "
                f"trio tasks: reads, writes, lock waits, watches) | {backend} | time from the "
                f"kill to each call's `ConnectionLost` (no retries) | {kill['connection_lost']}/"
                f"{kill['calls']} raised ConnectionLost; median {ms(kill['p50'])}, max "
                f"{ms(kill['max'])} |"
            )
        for backend, kill in results["client_kill"].items():
            add(
                f"| client SIGKILLed halfway through sending a 1 MB `set`, holding a lock "
                f"({kill['rounds']} rounds) | {backend} | time from the kill to a waiting client "
                f"getting the lock | handed over {kill['handed_over']}/{kill['rounds']}; median "
                f"{ms(kill['p50'])}, max {ms(kill['max'])}; half-sent writes applied: "
                f"{kill['half_writes_applied']} |"
            )
        for backend, restart_ in results["restart"].items():
            fates = "; ".join(
                f"{name}: request_sent={sent}, {'re-sent or applied' if resent else 'not re-sent'}"
                for name, (sent, resent) in restart_["fates"].items()
            )
            add(
                f"| kill -9 and restart at the same path ({restart_['rounds']} rounds) while a "
                f"sync, an asyncio and a trio proxy read (`Retry(attempts=50, backoff=0.02, "
                f"max_backoff=0.1)`) | {backend} | kill to new server listening; longest read "
                f"seen by a caller; errors | downtime {ms(restart_['downtime'])} (median), longest "
                f"read {ms(restart_['longest_read'])}, {restart_['reader_errors']} errors; a write "
                f"made across the restart applied exactly once in {restart_['written_once']}/"
                f"{restart_['rounds']} |"
            )
            add(
                f"| a write reaching a server that dies before answering (fake server) | "
                f"{backend} | the error, and whether the write was re-sent | {fates} |"
            )
        for backend, bye in results["shutdown"].items():
            add(
                f"| graceful shutdown (SIGTERM) with {bye['clients']:,} raw clients + "
                f"{bye['proxies']} waiting async calls | {backend} | signal to exit; goodbyes "
                f"received | {bye['duration'] * 1000:.0f} ms; {bye['goodbyes']:,}/"
                f"{bye['clients']:,} raw clients got `{GOODBYE}` and nothing else; "
                f"{bye['proxies_told']}/{bye['proxies']} waiting calls raised ConnectionLost "
                f'"the server is shutting down" |'
            )
        add("")

    if "fuzz" in results:
        add("## Bad inputs tried\n")
        add(
            "Every frame goes on a connection of its own: a hello (except for the two before-hello "
            "kinds, where the frame replaces it), the frame, a `ping`, then EOF; the kinds take "
            f"turns, from a seeded generator (`--seed {args.seed}`). *Outcomes*: `refused` (the "
            "server sent a connection-level error and closed), `refused early` (it closed while "
            "the frame was still being sent), `error reply` (the frame got an error reply and the "
            "connection went on), `answered` (the mutation still made a valid request), `no "
            "reply` (an incomplete frame, waiting for bytes until EOF), `hung` (no EOF from the "
            "server within 10 s; must be 0). Afterwards the server must be alive, a sync, an "
            "asyncio and a trio client must work, and values set before the fuzz must be "
            "unchanged (same revision).\n"
        )
        add("| kind | server | frames | outcomes |")
        add("|---|---|---:|---|")
        for backend, fz in results["fuzz"].items():
            for kind, frames in fz["by_kind"].items():
                outcome = ", ".join(
                    f"{name} {count:,}" for name, count in sorted(fz["outcomes"][kind].items())
                )
                add(f"| {kind} | {backend} | {frames:,} | {outcome} |")
        for backend, fz in results["fuzz"].items():
            add(
                f"| **total** | {backend} | **{fz['frames']:,}** | server alive: {fz['alive']}; "
                f"normal clients work: {fz['works']}; values intact: {fz['intact']} |"
            )
        add("")

    if "attacks" in results:
        out.extend(attacks.render(results["attacks"]))

    if {"load", "fuzz", "restart"} <= results.keys():
        lost = sum(load["lost"] for load in results["load"])
        lost += sum(not fz["intact"] for fz in results["fuzz"].values())
        lost += sum(r["rounds"] - r["written_once"] for r in results["restart"].values())
        add("## Updates lost\n")
        add(
            f"**{lost}**: increments lost under load, writes retried across a restart not applied "
            "exactly once, and values changed by the fuzz, all counted.\n"
        )

    add("## Machine and command\n")
    add("| | |")
    add("|---|---|")
    for name, value in machine().items():
        add(f"| {name} | {value} |")
    add(f"| Run took | {elapsed:.0f} s |")
    add(f"| Date (UTC) | {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} |")
    add("")
    add("```")
    add(command)
    add("```")
    return "\n".join(out) + "\n"


# ====================================================================== main


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=1000, help="load clients (1000)")
    parser.add_argument("--seconds", type=float, default=10.0, help="load duration (10)")
    parser.add_argument("--processes", type=int, default=8, help="load processes (8)")
    parser.add_argument(
        "--shutdown-clients",
        type=int,
        default=1000,
        help="clients connected at the graceful shutdown (1000)",
    )
    parser.add_argument(
        "--fuzz-frames", type=int, default=20000, help="bad frames per server backend (20000)"
    )
    parser.add_argument("--seed", type=int, default=1, help="fuzz seed (1)")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="small sizes, < 20 s, no attacks; writes no file unless --output",
    )
    parser.add_argument(
        "--only",
        action="append",
        choices=PARTS,
        help="run this part alone (repeatable); writes no file unless --output",
    )
    parser.add_argument(
        "--attack",
        action="append",
        metavar="N",
        help="with the attacks part: only issue 12's item N (repeatable)",
    )
    parser.add_argument(
        "--attack-scale",
        type=float,
        default=1.0,
        help="multiply the attacks' magnitudes (1.0: the sizes the report states)",
    )
    parser.add_argument(
        "--output",
        help="where to write the report (default docs/RELIABILITY.md; '-' for stdout only)",
    )
    args = parser.parse_args()
    given = set(sys.argv[1:])
    if args.quick:  # small unless sizes were given explicitly
        args.clients = args.clients if "--clients" in given else 100
        args.seconds = args.seconds if "--seconds" in given else 2.0
        args.processes = args.processes if "--processes" in given else 2
        args.shutdown_clients = args.shutdown_clients if "--shutdown-clients" in given else 300
        args.fuzz_frames = args.fuzz_frames if "--fuzz-frames" in given else 1500
    partial = args.quick or args.only or args.attack or args.attack_scale != 1.0
    output = args.output or ("-" if partial else str(DEFAULT_OUTPUT))
    parts = set(args.only or PARTS)
    if args.quick and not args.only:
        parts.discard("attacks")  # minutes of work: run them with --only attacks
    command = shlex.join(["python", "benchmarks/reliability.py", *sys.argv[1:]])
    raise_open_file_limit()
    checks = Checks()
    started = time.monotonic()
    rounds = 2 if args.quick else 10
    load_backends = ("asyncio",) if args.quick else BACKENDS
    results: dict[str, Any] = {}
    if "load" in parts:
        results["load"] = [
            run_load(backend, args.clients, args.seconds, args.processes, checks)
            for backend in load_backends
        ]
    if "faults" in parts:
        results["server_kill"] = {
            b: server_kill(b, 4 if args.quick else 16, 8 if args.quick else 32, checks)
            for b in BACKENDS
        }
        results["client_kill"] = {b: client_kill(b, rounds, checks) for b in BACKENDS}
        results["restart"] = {b: restart(b, 1 if args.quick else 3, checks) for b in BACKENDS}
        results["shutdown"] = {b: shutdown(b, args.shutdown_clients, checks) for b in BACKENDS}
    if "fuzz" in parts:
        results["fuzz"] = {b: fuzz(b, args.fuzz_frames, args.seed, checks) for b in BACKENDS}
    if "attacks" in parts:
        results["attacks"] = attacks.run(
            BACKENDS,
            args.attack_scale,
            args.attack,
            lambda failure: checks.expect(False, failure),
        )
    text = report(args, command, results, checks, time.monotonic() - started)
    if output == "-":
        print(text)
    else:
        Path(output).write_text(text)
        log(f"wrote {output}")
    log(
        f"{'all checks passed' if not checks.failed else f'{len(checks.failed)} checks FAILED'}"
        f" in {time.monotonic() - started:.1f} s"
    )
    return 1 if checks.failed else 0


if __name__ == "__main__":
    sys.exit(main())
