"""Scaling out: ``serve --store URL`` processes over one Redis (or Redis Cluster), for real.

Two servers over one board, 8 spawned processes split between them: exact totals, every
append once and in each writer's order; a watch resumed on one server replays the writes made
through the other, from the history kept in Redis. A Redis stopped and started again under
load, and one SIGSTOPped: every call fails promptly with StoreUnavailable naming the store
(never a hang, never a raw redis exception), the connections stay open, and the same proxies
work again once Redis answers. A server started while its Redis is down refuses to start
(cli/serve_store.py).

Across servers: a watcher on one server sees every revision written through the other, in
order and without gaps; a cached reader on one is invalidated by writes through the other; a
lock held through one blocks a waiter on the other, and passes on at once when its holder is
SIGKILLed, within the lease (``--store-lock-lease``) when the holder's server is.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

import redis_rig
from aionamespace import Namespace, StoreUnavailable
from aionamespace.protocol.codec import encode_value
from deadlines import NO_HANG_SECONDS, wait_until
from raw_client import connect_raw, exchange
from server_processes import ServeProcess

pytestmark = pytest.mark.usefixtures("collect_garbage")

CTX = multiprocessing.get_context("spawn")
WRITERS = 8
WRITES = 150
#: ``--store-timeout`` of the servers whose Redis fails under them, and what a failing call
#: may take beyond it on a loaded machine (a hang would take NO_HANG_SECONDS or forever).
STORE_TIMEOUT = 1.0
SLACK_SECONDS = 2.0


def serve_over(store_url: str, prefix: str, path: str, *options: str) -> ServeProcess:
    return ServeProcess(path, "asyncio", "--store", store_url, "--store-prefix", prefix, *options)


def probe(server: ServeProcess) -> str:
    """The server's address (a Unix socket path, as every server here listens on)."""
    assert isinstance(server.address, str)
    return server.address


def addresses_of(servers: list[ServeProcess]) -> list[str]:
    return [probe(server) for server in servers]


@pytest.fixture(params=["redis", "redis-cluster"])
def two_servers(
    request: pytest.FixtureRequest, short_tmp: str, redis_prefix: str
) -> Iterator[list[ServeProcess]]:
    """Two ``serve --store`` processes over one board: on the session's Redis, or Cluster."""
    engine = redis_rig.standalone() if request.param == "redis" else redis_rig.cluster()
    servers: list[ServeProcess] = []
    try:
        for index in range(2):
            path = os.path.join(short_tmp, f"s{index}.sock")
            servers.append(serve_over(engine.url, redis_prefix, path))
        yield servers
    finally:
        for server in servers:
            server.close()


# ---------------------------------------------------------------------- children (module level)


def write_many(address: str, worker: int, times: int) -> None:
    with Namespace(address, "board") as ns:
        for k in range(times):
            ns._incr("count")
            ns._append("log", [worker, k])
            ns._update(**{f"last{worker}": k, f"double{worker}": 2 * k})


def test_eight_processes_over_two_servers_lose_nothing(two_servers: list[ServeProcess]) -> None:
    addresses = addresses_of(two_servers)
    processes = [
        CTX.Process(target=write_many, args=(addresses[worker % 2], worker, WRITES))
        for worker in range(WRITERS)
    ]
    try:
        for process in processes:
            process.start()
        deadline = time.monotonic() + 60
        for process in processes:
            process.join(max(0.0, deadline - time.monotonic()))
        assert [process.exitcode for process in processes] == [0] * WRITERS
    finally:
        for process in processes:
            if process.is_alive():
                process.kill()
                process.join()
            process.close()
    for address in addresses:  # each server reads the one board
        with Namespace(address, "board") as ns:
            board = dict(ns._snapshot())
            assert board["count"] == WRITERS * WRITES
            log = [tuple(item) for item in board["log"]]
            assert len(log) == len(set(log)) == WRITERS * WRITES
            for worker in range(WRITERS):
                assert [k for w, k in log if w == worker] == list(range(WRITES))
                assert (board[f"last{worker}"], board[f"double{worker}"]) == (
                    WRITES - 1,
                    2 * (WRITES - 1),
                )


def test_a_watch_resumes_on_the_other_server_from_the_history_in_redis(
    two_servers: list[ServeProcess],
) -> None:
    first, second = (probe(server) for server in two_servers)
    with Namespace(first, "resumed") as writer, Namespace(second, "resumed") as reader:
        for value in range(5):
            writer.x = value
        revisions = writer._snapshot().revision
        with reader._watch(since=0) as watch:
            events = [watch.next(timeout=NO_HANG_SECONDS) for _ in range(revisions)]
        assert [event.revision for event in events] == list(range(1, revisions + 1))
        assert [event.value for event in events if event.name == "x"] == list(range(5))


# ---------------------------------------------------------------------- across servers (follow)


def test_a_watcher_on_one_server_sees_every_write_through_the_other(
    two_servers: list[ServeProcess],
) -> None:
    first, second = addresses_of(two_servers)
    with Namespace(first, "watched") as writer, Namespace(second, "watched") as watcher:
        writer.x = -1
        with watcher._watch() as watch:
            for value in range(WRITES):
                writer._update(x=value, y=-value)
            events = [watch.next(timeout=NO_HANG_SECONDS) for _ in range(2 * WRITES)]
        revisions = [event.revision for event in events]
        assert revisions == sorted(revisions)
        assert sorted(set(revisions)) == list(range(revisions[0], revisions[0] + WRITES))
        assert [event.value for event in events if event.name == "x"] == list(range(WRITES))


def test_a_cached_reader_on_one_server_is_invalidated_by_the_other(
    two_servers: list[ServeProcess],
) -> None:
    first, second = addresses_of(two_servers)
    with Namespace(first, "cached") as writer, Namespace(second, "cached", cache=True) as reader:
        writer.x = 0
        assert reader.x == 0
        for value in range(1, 20):
            writer.x = value
            deadline = time.monotonic() + NO_HANG_SECONDS
            while reader.x != value:  # served from the cache until the invalidation lands
                assert time.monotonic() < deadline


# ---------------------------------------------------------------------- across servers (locks)


LEASE_SECONDS = 1.0


def hold_forever(address: str, holding: Any, never: Any) -> None:
    with Namespace(address, "locks") as ns, ns._lock("L"):
        holding.set()
        never.wait()


def test_a_lock_through_one_server_blocks_the_other_until_its_holder_dies(
    two_servers: list[ServeProcess],
) -> None:
    first, second = addresses_of(two_servers)
    holding, never = CTX.Event(), CTX.Event()
    holder = CTX.Process(target=hold_forever, args=(first, holding, never))
    holder.start()
    try:
        assert holding.wait(NO_HANG_SECONDS * 3)
        with Namespace(second, "locks") as ns:
            lock = ns._lock("L")
            assert not lock.acquire(timeout=0.3)  # held through the other server
            holder.kill()
            killed = time.monotonic()
            assert lock.acquire(timeout=NO_HANG_SECONDS)
            assert time.monotonic() - killed < 2.0  # at once: its server released it
            lock.release()
    finally:
        holder.kill()
        holder.join()
        holder.close()


def test_a_lock_passes_on_within_the_lease_when_the_holders_server_dies(
    redis_standalone: redis_rig.RedisServer, redis_prefix: str, short_tmp: str
) -> None:
    servers = [
        serve_over(
            redis_standalone.url,
            redis_prefix,
            os.path.join(short_tmp, f"l{index}.sock"),
            "--store-lock-lease",
            str(LEASE_SECONDS),
        )
        for index in range(2)
    ]
    first, second = addresses_of(servers)
    holding, never = CTX.Event(), CTX.Event()
    holder = CTX.Process(target=hold_forever, args=(first, holding, never))
    holder.start()
    try:
        assert holding.wait(NO_HANG_SECONDS * 3)
        with Namespace(second, "locks") as ns:
            lock = ns._lock("L")
            assert not lock.acquire(timeout=0.3)
            killed = servers[0].kill()
            assert lock.acquire(timeout=NO_HANG_SECONDS)
            assert time.monotonic() - killed < LEASE_SECONDS + SLACK_SECONDS
            lock.release()
    finally:
        holder.kill()
        holder.join()
        holder.close()
        for server in servers:
            server.close()


# ---------------------------------------------------------------------- Redis failing under load


class Load:
    """Threads calling ``_incr`` through servers over a Redis that fails, each with its own
    sync proxy (kept for the whole test: nothing reconnects by hand), recording every call's
    outcome and how long it took."""

    def __init__(self, addresses: list[str]) -> None:
        self.proxies = [Namespace(address, "load") for address in addresses * 2]
        self.outcomes: list[list[tuple[float, float, BaseException | None]]] = [
            [] for _ in self.proxies
        ]
        self.stop = threading.Event()
        self.threads = [
            threading.Thread(target=self._run, args=(index,), daemon=True)
            for index in range(len(self.proxies))
        ]
        for thread in self.threads:
            thread.start()

    def _run(self, index: int) -> None:
        proxy, outcomes = self.proxies[index], self.outcomes[index]
        while not self.stop.is_set():
            began = time.monotonic()
            try:
                proxy._incr("n")
            except Exception as exc:
                outcomes.append((began, time.monotonic(), exc))
            else:
                outcomes.append((began, time.monotonic(), None))

    def each_saw(self, failed: bool, after: float) -> bool:
        """Whether every thread has a call begun after ``after`` that failed (or succeeded)."""
        return all(
            any(began > after and (error is not None) is failed for began, _, error in calls)
            for calls in self.outcomes
        )

    def finish(self) -> list[tuple[float, float, BaseException | None]]:
        self.stop.set()
        for thread in self.threads:
            thread.join(NO_HANG_SECONDS)
            assert not thread.is_alive()
        for proxy in self.proxies:
            proxy._close()
        return [outcome for calls in self.outcomes for outcome in calls]


def assert_prompt_store_failures(
    outcomes: list[tuple[float, float, BaseException | None]], store: str
) -> None:
    """Every failure is StoreUnavailable naming the store, within the store's timeout."""
    failures = [(ended - began, error) for began, ended, error in outcomes if error is not None]
    assert failures
    for took, error in failures:
        assert isinstance(error, StoreUnavailable), repr(error)
        assert store in str(error)
        assert took < STORE_TIMEOUT + SLACK_SECONDS, (took, error)
    for began, ended, _ in outcomes:
        assert ended - began < STORE_TIMEOUT + SLACK_SECONDS  # successes never hang either


@pytest.fixture
def over_private(
    redis_private: redis_rig.RedisServer, short_tmp: str, redis_prefix: str
) -> Iterator[list[ServeProcess]]:
    """Two servers over a Redis of the test's own, calls bounded by STORE_TIMEOUT."""
    servers: list[ServeProcess] = []
    try:
        for index in range(2):
            path = os.path.join(short_tmp, f"p{index}.sock")
            servers.append(
                serve_over(
                    redis_private.url,
                    redis_prefix,
                    path,
                    "--store-timeout",
                    str(STORE_TIMEOUT),
                )
            )
        yield servers
    finally:
        for server in servers:
            server.close()


def test_redis_stopped_and_started_again_under_load(
    over_private: list[ServeProcess], redis_private: redis_rig.RedisServer
) -> None:
    addresses = addresses_of(over_private)
    raw, frames = connect_raw(addresses[0])  # a connection of its own, kept throughout
    one = encode_value(1)
    load = Load(addresses)
    try:
        wait_until(lambda: load.each_saw(False, 0.0), "every thread has written")
        redis_private.stop()
        stopped = time.monotonic()
        wait_until(lambda: load.each_saw(True, stopped), "every thread has seen Redis gone")
        [(request, status, kind, message)] = exchange(raw, frames, [1, "get", "load", "n"])
        assert (request, status, kind) == (1, 1, "StoreUnavailable")
        assert redis_private.url in message
        redis_private.start()  # (empty: nothing is saved)
        started = time.monotonic()
        wait_until(lambda: load.each_saw(False, started), "every thread writes again")
        [(request, status, _revision)] = exchange(raw, frames, [2, "set", "load", "x", one])
        assert (request, status) == (2, 0)
        assert exchange(raw, frames, [3, "get", "load", "x"]) == [[3, 0, one]]
    finally:
        outcomes = load.finish()
        raw.close()
    assert_prompt_store_failures(outcomes, redis_private.url)
    with Namespace(addresses[1], "load") as ns:  # the board, begun again, is one board
        assert ns.n >= 1
        assert ns.x == 1


def test_a_sigstopped_redis_fails_calls_within_the_store_timeout(
    over_private: list[ServeProcess], redis_private: redis_rig.RedisServer
) -> None:
    addresses = addresses_of(over_private)
    load = Load(addresses)
    assert redis_private.pid is not None
    try:
        wait_until(lambda: load.each_saw(False, 0.0), "every thread has written")
        os.kill(redis_private.pid, signal.SIGSTOP)  # the socket stays open, nothing answers
        try:
            frozen = time.monotonic()
            wait_until(
                lambda: load.each_saw(True, frozen),
                "every thread has seen Redis frozen",
                STORE_TIMEOUT + NO_HANG_SECONDS,
            )
        finally:
            os.kill(redis_private.pid, signal.SIGCONT)
        thawed = time.monotonic()
        wait_until(lambda: load.each_saw(False, thawed), "every thread writes again")
    finally:
        outcomes = load.finish()
    assert_prompt_store_failures(outcomes, redis_private.url)
    with Namespace(addresses[0], "check") as ns:  # no reply read for another request
        for value in range(50):
            ns.x = value
            assert ns.x == value
            assert ns._incr("n") == value + 1


# ---------------------------------------------------------------------- starting without Redis


def run_serve(*arguments: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "aionamespace", "serve", *arguments],
        capture_output=True,
        text=True,
        timeout=NO_HANG_SECONDS * 2,
        check=False,
    )


def test_a_server_refuses_to_start_while_its_redis_is_down(
    redis_private: redis_rig.RedisServer, short_tmp: str
) -> None:
    redis_private.stop()
    url = f"unix://:s3cret@{redis_private.socket_path}"
    done = run_serve("--unix", os.path.join(short_tmp, "s.sock"), "--store", url)
    assert done.returncode == 1
    assert done.stdout == ""
    [line] = done.stderr.splitlines()  # one line, no traceback
    assert line.startswith("aionamespace: cannot serve: the store (unix://:***@")
    assert "is unavailable" in line
    assert "s3cret" not in line
    assert not os.path.exists(os.path.join(short_tmp, "s.sock"))  # it never listened
