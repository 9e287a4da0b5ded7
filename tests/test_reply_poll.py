"""A sync call polls its socket for the reply before it sleeps (client/busypoll.py).

The poll's state machine on a real socket pair (a reply caught polling, polls that catch
nothing, polling given up and taken up again), and which transports poll at all.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable

import pytest

import aionamespace
from aionamespace import Limits
from aionamespace.client import busypoll
from aionamespace.client.blocking import SocketTransport
from aionamespace.client.busypoll import ReplyPoll, reply_wait
from aionamespace.client.proxy import Target


def _own_cpu_clocks() -> tuple[Callable[[], float], Callable[[], float]]:
    """(wall clock, thread time) for a poll whose thread has the CPU to itself: its thread
    time grows faster than the wall clock, so the busy-CPU rule cannot fire, however the real
    scheduler treats the test (a deschedule between two real readings once made a caught
    reply count as a miss)."""
    ticks = [0]

    def wall() -> float:
        ticks[0] += 1
        return ticks[0] * 1e-6

    def thread() -> float:
        ticks[0] += 1
        return 2 * ticks[0] * 1e-6

    return wall, thread


def _no_sleep() -> list[tuple[int, int]]:
    raise AssertionError("the poll slept: the reply already there was not read by polling")


@pytest.fixture
def own_cpu(monkeypatch):
    wall, thread = _own_cpu_clocks()
    monkeypatch.setattr(busypoll, "perf_counter", wall)
    monkeypatch.setattr(busypoll, "thread_time", thread)


@pytest.fixture
def pair():
    ours, theirs = socket.socketpair()
    yield ours, theirs
    ours.close()
    theirs.close()


def test_a_reply_already_there_is_read_by_the_poll(pair, own_cpu):
    ours, theirs = pair
    theirs.sendall(b"reply")
    poll, buffer = ReplyPoll(0.001, _no_sleep), memoryview(bytearray(64))
    poll.misses = ReplyPoll.MAX_MISSES - 1  # a caught reply with the CPU to itself resets it
    assert poll.receive(ours, buffer) == 5
    assert bytes(buffer[:5]) == b"reply"
    assert poll.misses == 0


def test_a_reply_that_comes_while_polling_is_caught_there(pair):
    ours, theirs = pair
    window = 30.0  # a blocking read would follow only after it: the test's bound shows which
    poll, buffer = ReplyPoll(window, reply_wait(ours, None)), memoryview(bytearray(64))
    sender = threading.Thread(target=theirs.sendall, args=(b"late",))
    started = time.monotonic()
    sender.start()
    assert poll.receive(ours, buffer) == 4
    sender.join()
    assert time.monotonic() - started < window / 2


def test_polls_that_catch_nothing_stop_for_ever_longer_and_a_caught_reply_resets(pair):
    ours, theirs = pair
    # the sleep after each poll gives up, as a call's after its call timeout
    poll, buffer = ReplyPoll(0.0005, reply_wait(ours, 0.02)), memoryview(bytearray(64))

    def miss(times: int) -> None:
        for _ in range(times):
            with pytest.raises(TimeoutError):
                poll.receive(ours, buffer)

    miss(ReplyPoll.MAX_MISSES - 1)
    assert (poll.misses, poll.skip) == (ReplyPoll.MAX_MISSES - 1, 0)
    miss(1)  # the third miss in a row: no polling for the next call
    assert (poll.misses, poll.skip, poll.backoff) == (0, 1, 2)
    miss(1)  # that call slept at once: not counted
    assert (poll.misses, poll.skip) == (0, 0)
    miss(ReplyPoll.MAX_MISSES)  # polling again, missing again: a stop twice as long
    assert (poll.skip, poll.backoff) == (2, 4)
    miss(2)
    theirs.sendall(b"x")  # a reply there at once: caught by a poll with the CPU to itself
    poll.seconds = 5.0
    wall, thread = _own_cpu_clocks()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(busypoll, "perf_counter", wall)
        patch.setattr(busypoll, "thread_time", thread)
        assert poll.receive(ours, buffer) == 1
    assert (poll.misses, poll.skip, poll.backoff) == (0, 0, 1)


_STOPPED_POLL = """
import socket, sys
from aionamespace.client import busypoll
from aionamespace.client.busypoll import ReplyPoll, reply_wait
ours = socket.socket(fileno=int(sys.argv[1]))
poll = ReplyPoll(60.0, reply_wait(ours, None))
print("polling", flush=True)
received = poll.receive(ours, memoryview(bytearray(8)))
print(received, poll.misses, flush=True)
"""


def _cpu_ticks(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_a_reply_caught_while_the_cpus_were_busy_counts_as_a_miss(pair):
    """A poll during which the thread ran for less than half the time (here: the whole
    process stopped, as a crowded machine's scheduler would leave it waiting) took a CPU
    another process wanted: it counts as a miss, although it caught the reply."""
    ours, theirs = pair
    child = subprocess.Popen(
        [sys.executable, "-c", _STOPPED_POLL, str(ours.fileno())],
        pass_fds=[ours.fileno()],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline() == "polling\n"
        deadline, started = time.monotonic() + 30, _cpu_ticks(child.pid)
        while _cpu_ticks(child.pid) == started:  # until it is seen spinning
            assert time.monotonic() < deadline
        child.send_signal(signal.SIGSTOP)
        stopped = time.monotonic()
        # (not synchronisation: the stopped spell is what is measured; it outlasts many
        # times over the CPU the child had polled for before the stop, a tick or two)
        time.sleep(0.3)
        theirs.sendall(b"reply")
        child.send_signal(signal.SIGCONT)
        assert child.stdout.readline().split() == ["5", "1"]
        assert time.monotonic() - stopped < 30
    finally:
        child.kill()
        child.wait()
        child.stdout.close()


def test_a_closed_peer_reads_as_the_end_while_polling(pair):
    ours, theirs = pair
    theirs.close()
    assert ReplyPoll(0.001, reply_wait(ours, None)).receive(ours, memoryview(bytearray(8))) == 0


@pytest.fixture(scope="module")
def server_address():
    with aionamespace.Manager() as manager:
        yield manager.address, manager.authkey


def _transport(address: object, authkey: bytes | None, limits: Limits) -> SocketTransport:
    return SocketTransport(Target.create(address, "poll", authkey=authkey, limits=limits))


def test_a_sync_transport_polls_by_default_and_not_when_told(server_address):
    address, authkey = server_address
    polling = _transport(address, authkey, Limits())
    sleeping = _transport(address, authkey, Limits(reply_poll=0))
    try:
        assert isinstance(polling._poll, ReplyPoll)
        assert polling._poll.seconds == Limits().reply_poll > 0
        assert sleeping._poll is None
    finally:
        polling.close()
        sleeping.close()


def test_calls_answer_the_same_polling_or_not(server_address):
    address, authkey = server_address
    for poll in (0.0, 0.01):
        ns = aionamespace.Namespace(
            address, "poll", authkey=authkey, limits=Limits(reply_poll=poll)
        )
        for i in range(200):
            ns.x = i
            assert ns.x == i
        ns._update(y=[poll])
        assert dict(ns._snapshot("y")) == {"y": [poll]}
