"""The history's bounds and appended lists on real servers (asyncio and trio), real sockets.

* a watch resuming from before what ``max_history_bytes`` kept gets HistoryExpired;
* watchers of a log grown by appends get the whole list at each revision, live and replayed;
* memory, measured on a ``python -m aionamespace serve`` process (RSS from /proc): a log of
  2,000 appends of 1 KB costs about its own size (it took a server to 1.98 GB when every
  revision kept a copy of the whole list), and 600 overwrites of a 1 MiB value cost about
  ``max_history_bytes`` (640 MB when the history was bounded by its count alone).
"""

from __future__ import annotations

import os
from collections.abc import Callable

import pytest

from aionamespace import HistoryExpired, Limits, Namespace, ServerThread
from aionamespace.client.calls import WatchEvent
from server_processes import ServeProcess

MIB = 1024 * 1024
TIMEOUT_SECONDS = 30.0

pytestmark = pytest.mark.usefixtures("collect_garbage")


def test_a_watch_from_before_max_history_bytes_is_expired(
    short_tmp: str, server_backend: str
) -> None:
    limits = Limits(max_history_bytes=3 * (10_000 + 64))
    path = os.path.join(short_tmp, "b.sock")
    with ServerThread(path, backend=server_backend, limits=limits) as server:
        with Namespace(server.address, "board") as ns:
            for i in range(5):
                ns.blob = bytes([i]) * 9_997  # encoded: 10,000 bytes; revisions 1 to 5
            with pytest.raises(HistoryExpired, match=r"older than the history kept \(oldest: 3\)"):
                ns._watch(since=1)
            with ns._watch(since=2) as watch:  # the oldest it can serve
                assert [watch.next(timeout=TIMEOUT_SECONDS) for _ in range(3)] == [
                    WatchEvent("blob", bytes([i]) * 9_997, i + 1) for i in (2, 3, 4)
                ]


def test_watchers_of_a_log_get_the_whole_list_at_each_revision(
    short_tmp: str, server_backend: str
) -> None:
    path = os.path.join(short_tmp, "l.sock")
    with ServerThread(path, backend=server_backend) as server, Namespace(path, "log") as ns:
        ns._append("log", "a")  # revision 1
        with ns._watch("log") as first, ns._watch() as second:
            for item in "bcd":
                ns._append("log", item)  # revisions 2 to 4
            assert ns.log == ["a", "b", "c", "d"]
            ns._append("log", "e", "f")  # revision 5
            ns.log = ["new"]  # revision 6
            ns._append("log", "g")  # revision 7
            expected = [
                WatchEvent("log", ["a", "b"], 2),
                WatchEvent("log", ["a", "b", "c"], 3),
                WatchEvent("log", ["a", "b", "c", "d"], 4),
                WatchEvent("log", ["a", "b", "c", "d", "e", "f"], 5),
                WatchEvent("log", ["new"], 6),
                WatchEvent("log", ["new", "g"], 7),
            ]
            for watch in (first, second):
                assert [watch.next(timeout=TIMEOUT_SECONDS) for _ in expected] == expected
        for since in range(7):  # and replayed from every revision
            with ns._watch(since=since) as watch:
                replayed = [watch.next(timeout=TIMEOUT_SECONDS) for _ in range(7 - since)]
            assert replayed == [WatchEvent("log", ["a"], 1), *expected][since:]
        assert server.server.store.get("log", "log") is server.server.store.get("log", "log")


# ---------------------------------------------------------------------------- memory


def grows_within(
    server: ServeProcess, bound: int, what: str, steps: int, step: Callable[[int], None]
) -> int:
    """Run ``step(i)`` ``steps`` times, failing as soon as the server's RSS has grown by more
    than ``bound`` (an old server would take gigabytes: stop it early). The growth at the end."""
    before = server.memory()["VmRSS"]
    growth = 0
    for i in range(steps):
        step(i)
        if i % 50 == 49 or i == steps - 1:
            growth = server.memory()["VmRSS"] - before
            assert growth < bound, (
                f"{what}: the server grew by {growth / MIB:.0f} MiB after {i + 1} of {steps}, "
                f"over the {bound / MIB:.0f} MiB allowed"
            )
    return growth


@pytest.mark.slow
@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="needs Linux /proc")
def test_a_log_of_2000_appends_costs_about_its_own_size(
    short_tmp: str, server_backend: str
) -> None:
    path = os.path.join(short_tmp, "m.sock")
    server = ServeProcess(path, server_backend)
    try:
        with Namespace(path, "log") as ns:
            ns._ping()
            item = b"x" * 1000
            grows_within(
                server,
                200 * MIB,
                "2,000 appends of 1 KB",
                2000,
                lambda i: ns._append("log", item),
            )
            log = ns.log
            assert len(log) == 2000
            assert log[0] == log[-1] == item
            with ns._watch(since=1990) as watch:  # the history still replays the last ones
                assert [len(watch.next(timeout=TIMEOUT_SECONDS).value) for _ in range(10)] == [
                    *range(1991, 2001)
                ]
    finally:
        server.kill()


@pytest.mark.slow
@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="needs Linux /proc")
def test_600_overwrites_of_1_mib_cost_about_max_history_bytes(
    short_tmp: str, server_backend: str
) -> None:
    path = os.path.join(short_tmp, "o.sock")
    server = ServeProcess(path, server_backend)
    bound = Limits().max_history_bytes + 64 * MIB  # the history, the value, the buffers
    try:
        with Namespace(path, "big") as ns:
            ns._ping()
            value = os.urandom(MIB)

            def overwrite(i: int) -> None:
                ns.value = value

            grows_within(server, bound, "600 overwrites of 1 MiB", 600, overwrite)
            with pytest.raises(HistoryExpired):
                ns._watch(since=0)
            with ns._watch(since=550) as watch:  # about 63 of them fit in 64 MiB
                assert watch.next(timeout=TIMEOUT_SECONDS).value == value
    finally:
        server.kill()
