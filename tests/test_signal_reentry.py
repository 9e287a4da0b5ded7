"""A signal handler that uses the namespace while its thread is in the middle of a call.

The handler runs inside the interrupted call (a ``recv`` retried after EINTR, PEP 475), on the
same thread, whose connection is busy: it must get a connection of its own, and the call it
interrupted must still get its own reply. Run in a child process, so a hang fails the test
instead of stopping the suite.
"""

from __future__ import annotations

import selectors
import subprocess
import sys
import textwrap

import pytest

from server_processes import ServeProcess

CHILD_SECONDS = 40.0  # under pytest-timeout: a hang fails here, with its reason
#: A child that prints no line for this long is hung (on a crowded machine slow progress is
#: still progress: a bound on the whole run failed once with the suite's workers on 2 cores).
STALL_SECONDS = 15.0


def run_while_progressing(command: list[str]) -> list[str]:
    """Run ``command``, reading its lines as they come: its stdout's lines. AssertionError if
    it prints no line for ``STALL_SECONDS`` (hung), or fails."""
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert process.stdout is not None
    assert process.stderr is not None
    lines: list[str] = []
    try:
        with selectors.DefaultSelector() as selector:
            selector.register(process.stdout, selectors.EVENT_READ)
            while True:
                if not selector.select(STALL_SECONDS):
                    raise AssertionError(
                        "the loop hung: a call lost its reply to the signal handler's "
                        f"(nothing for {STALL_SECONDS} s after {lines[-1:]!r})"
                    )
                line = process.stdout.readline()
                if not line:
                    break
                lines.append(line.strip())
        assert process.wait(STALL_SECONDS) == 0, process.stderr.read()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        process.stdout.close()
        process.stderr.close()
    return lines


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
        if number % 100 == 0:
            print("at", number, flush=True)  # progress: only a stall is a hang
    signal.setitimer(signal.ITIMER_REAL, 0)
    print(written, ns.hits if written else 0)
    """
)


@pytest.mark.parametrize("cache", ["cache", "no cache"])
@pytest.mark.timeout(300)  # slow progress is progress: STALL_SECONDS bounds a hang
def test_a_signal_handler_writing_mid_call_neither_hangs_nor_loses_a_write(
    socket_path: str, cli_servers: list[ServeProcess], cache: str
) -> None:
    """SIGALRM every 5 ms, each handler an ``_incr``, during a tight loop of reads and writes
    (issue 13, item 4: the interrupted call waited for ever for the reply the handler's call
    had thrown away). With a cache, reads go through the process's cache connection, whose
    lock the interrupted thread may hold."""
    cli_servers.append(ServeProcess(socket_path))
    lines = run_while_progressing([sys.executable, "-c", CHILD, socket_path, "20000", cache])
    written, hits = map(int, lines[-1].split())
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
