"""What clients that do not read can make a server hold, measured: RSS of a real ``serve``
process (asyncio and trio), read from /proc, while the attack is on.

Each attack once grew the server by hundreds of megabytes to gigabytes (issue 12, items 4 and
7); with replies, replays and pushes counted against each connection's output budget, and
stored values referenced instead of copied, each now stays within RSS_GROWTH_LIMIT:

* ``dump``: non-reading clients each ask three times for a namespace holding 32 MB (large
  values and thousands of small ones);
* ``watch(since=0)``: one write of 20 such requests, on a namespace whose history holds 16 MB,
  from a client that reads nothing (it reads it all at the end, and every replay is whole);
* fan-out: 2,000 watches on one connection that does not read, then one ordinary 256 KiB write.

Meanwhile another client is answered at once. The bound is generous (the old code went past it
several times over); docs/RELIABILITY.md has the figures.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable, Iterator
from typing import Any

import msgpack
import pytest

from aionamespace import Namespace
from deadlines import NO_HANG_SECONDS
from raw_client import connect_raw, read_frames
from server_processes import ServeProcess

MIB = 1024 * 1024
RSS_GROWTH_LIMIT = 96 * MIB
SAMPLE_SECONDS = 1.5
QUICK_ANSWER_SECONDS = 2.0

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="needs Linux /proc"),
]


@pytest.fixture
def path(short_tmp: str) -> str:
    return os.path.join(short_tmp, "s.sock")


@pytest.fixture
def server(path: str, server_backend: str) -> Iterator[ServeProcess]:
    running = ServeProcess(path, server_backend)
    try:
        yield running
    finally:
        running.kill()


def blast(sock: socket.socket, *requests: list[Any]) -> None:
    """Send requests in one write, as far as the server reads them (it may stop reading us)."""
    sock.settimeout(1.0)
    try:
        sock.sendall(b"".join(msgpack.packb(request) for request in requests))
    except TimeoutError:
        pass
    sock.settimeout(NO_HANG_SECONDS)


def growth_during(server: ServeProcess, attack: Callable[[], None]) -> tuple[int, int]:
    """How much the server's RSS grew, at its peak, while ``attack`` runs and for
    SAMPLE_SECONDS after (sampled), and how much its peak (VmHWM) grew."""
    before = server.memory()
    attack()
    peak = before["VmRSS"]
    deadline = time.monotonic() + SAMPLE_SECONDS
    while time.monotonic() < deadline:
        peak = max(peak, server.memory()["VmRSS"])
        time.sleep(0.02)  # the sampling interval of a bounded measurement
    after = server.memory()
    return peak - before["VmRSS"], after["VmHWM"] - before["VmHWM"]


def assert_bounded(what: str, path: str, grown: tuple[int, int]) -> None:
    report = (
        f"{what} grew the server by {grown[0] / MIB:.0f} MiB RSS "
        f"(its peak by {grown[1] / MIB:.0f} MiB)"
    )
    assert max(grown) < RSS_GROWTH_LIMIT, report
    started = time.monotonic()
    with Namespace(path, "other") as ns:  # everyone else is served at once
        ns.x = 1
        assert ns.x == 1
    assert time.monotonic() - started < QUICK_ANSWER_SECONDS


def test_unread_dumps_of_a_big_namespace(server: ServeProcess, path: str) -> None:
    with Namespace(path, "big") as ns:
        for i in range(24):
            setattr(ns, f"large{i}", os.urandom(MIB))
        for start in range(0, 8000, 1000):
            ns._update(**{f"small{i}": os.urandom(1000) for i in range(start, start + 1000)})
    clients: list[socket.socket] = []

    def attack() -> None:
        for _ in range(10):
            sock, _ = connect_raw(path)
            clients.append(sock)
            blast(sock, *([i, "dump", "big"] for i in (1, 2, 3)))

    try:
        grown = growth_during(server, attack)
        assert_bounded("10 clients not reading 3 dumps of a 32 MB namespace", path, grown)
    finally:
        for sock in clients:
            sock.close()


def test_unread_watch_replays_of_a_long_history(server: ServeProcess, path: str) -> None:
    with Namespace(path, "log") as ns:
        for _ in range(400):
            ns.entry = os.urandom(40_000)
    sock, unpacker = connect_raw(path)
    with sock:
        grown = growth_during(
            server, lambda: blast(sock, *([i, "watch", "log", None, 0] for i in range(1, 21)))
        )
        assert_bounded("20 unread watch(since=0) of a 16 MB history", path, grown)
        frames = []
        while len(frames) < 20 * 401:  # and every replay is there, whole
            more = read_frames(sock, unpacker, until_eof=False)
            assert more, "the server closed the connection"
            frames.extend(more)
    replies = [frame for frame in frames if frame[0] != 0]
    assert [frame[:2] for frame in replies] == [[i, 0] for i in range(1, 21)]
    watch_ids = [reply[2][0] for reply in replies]
    for watch_id in watch_ids:
        revisions = [frame[3] for frame in frames if frame[:3] == [0, 2, watch_id]]
        assert revisions == list(range(1, 401))


def test_a_write_fanned_out_to_2000_unread_watches(server: ServeProcess, path: str) -> None:
    watcher, unpacker = connect_raw(path)
    with watcher:
        watcher.sendall(
            b"".join(msgpack.packb([i, "watch", "k", None, None]) for i in range(1, 2001))
        )
        replies = []
        while len(replies) < 2000:
            more = read_frames(watcher, unpacker, until_eof=False)
            assert more, "the server closed the connection"
            replies.extend(more)
        assert all(reply[:2] == [i, 0] for i, reply in enumerate(replies, 1))

        def attack() -> None:
            with Namespace(path, "k") as ns:
                ns.x = os.urandom(256 * 1024)

        grown = growth_during(server, attack)
        assert_bounded("a 256 KiB write pushed to 2,000 unread watches", path, grown)
