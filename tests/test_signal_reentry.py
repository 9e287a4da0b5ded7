"""A signal handler that uses the namespace while its thread is in the middle of a call.

The handler runs inside the interrupted call (a ``recv`` retried after EINTR, PEP 475), on the
same thread, whose connection is busy: it must get a connection of its own, and the call it
interrupted must still get its own reply. Run in a child process, so a hang fails the test
instead of stopping the suite.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from server_processes import ServeProcess

CHILD_SECONDS = 40.0  # under pytest-timeout: a hang fails here, with its reason

CHILD = textwrap.dedent(
    """
    import signal, sys
    from aionamespace import Namespace

    ns = Namespace(sys.argv[1], "signals", cache=sys.argv[3] == "cache")
    ns.x = "value"
    written = 0

    def on_alarm(signum, frame):
        global written
        # Alarms during the handler wait until it returns: on a loaded machine a call can take
        # longer than the interval, and handlers would nest without end (any Python handler).
        signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGALRM])
        try:
            written += 1
            ns._incr("hits")  # the thread's connection may be waiting for a reply right now
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, [signal.SIGALRM])

    signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, 0.005, 0.005)
    for number in range(int(sys.argv[2])):
        assert ns.x == "value"
        ns.y = number
        assert ns.y == number
    signal.setitimer(signal.ITIMER_REAL, 0)
    print(written, ns.hits if written else 0)
    """
)


@pytest.mark.parametrize("cache", ["cache", "no cache"])
def test_a_signal_handler_writing_mid_call_neither_hangs_nor_loses_a_write(
    socket_path: str, cli_servers: list[ServeProcess], cache: str
) -> None:
    """SIGALRM every 5 ms, each handler an ``_incr``, during a tight loop of reads and writes
    (issue 13, item 4: the interrupted call waited for ever for the reply the handler's call
    had thrown away). With a cache, reads go through the process's cache connection, whose
    lock the interrupted thread may hold."""
    cli_servers.append(ServeProcess(socket_path))
    try:
        done = subprocess.run(
            [sys.executable, "-c", CHILD, socket_path, "20000", cache],
            capture_output=True,
            timeout=CHILD_SECONDS,
            text=True,
        )
    except subprocess.TimeoutExpired as hung:
        raise AssertionError(
            "the loop hung: a call lost its reply to the signal handler's"
        ) from hung
    assert done.returncode == 0, done.stderr
    written, hits = map(int, done.stdout.split())
    assert written > 100  # the handler really ran, many times
    assert hits == written  # every write landed, once


REGISTERING = textwrap.dedent(
    """
    import sys
    from aionamespace import Namespace
    from aionamespace.client.cache import CacheTable

    ns = Namespace(sys.argv[1], "signals", cache=True)
    ns.x, ns.y = "x", "y"
    expect = CacheTable.expect
    handled = []

    def expect_then_a_signal(table, request_id, item):
        expect(table, request_id, item)
        if not handled:  # a signal lands here, its handler reads through the cache too
            handled.append("the handler runs")
            handled[0] = ns.y

    CacheTable.expect = expect_then_a_signal
    assert ns.x == "x"
    print(handled)
    """
)


def test_a_handler_reading_while_its_thread_registers_a_cached_read(
    socket_path: str, cli_servers: list[ServeProcess]
) -> None:
    """The handler runs while its thread holds the cache connection's lock, registering a
    read: its own read must not wait for a reply the reader thread cannot hand over until that
    lock is free (it hung so, for ever). Placed there by hand: a timer would hit it rarely."""
    cli_servers.append(ServeProcess(socket_path))
    try:
        done = subprocess.run(
            [sys.executable, "-c", REGISTERING, socket_path],
            capture_output=True,
            timeout=CHILD_SECONDS / 4,
            text=True,
        )
    except subprocess.TimeoutExpired as hung:
        raise AssertionError("the handler's read waited for ever") from hung
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["['y']"]
