"""A sync call polls its socket for the reply before it sleeps (client/busypoll.py).

The poll's state machine on a real socket pair (a reply caught polling, polls that catch
nothing, polling given up and taken up again), and which transports poll at all.
"""

from __future__ import annotations

import socket
import struct
import threading
import time

import pytest

import aionamespace
from aionamespace import Limits
from aionamespace.client.blocking import SocketTransport
from aionamespace.client.busypoll import ReplyPoll
from aionamespace.client.proxy import Target


@pytest.fixture
def pair():
    ours, theirs = socket.socketpair()
    yield ours, theirs
    ours.close()
    theirs.close()


def _receive_timeout(sock: socket.socket, seconds: float) -> None:
    """A kernel receive timeout, as a sync proxy's call_timeout is (liveness.py)."""
    whole = int(seconds)
    interval = struct.pack("@ll", whole, int((seconds - whole) * 1_000_000))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, interval)


def test_a_reply_already_there_is_read_by_the_poll(pair):
    ours, theirs = pair
    theirs.sendall(b"reply")
    poll, buffer = ReplyPoll(0.001), memoryview(bytearray(64))
    assert poll.receive(ours, buffer) == 5
    assert bytes(buffer[:5]) == b"reply"
    assert poll.misses == 0


def test_a_reply_that_comes_while_polling_is_caught_there(pair):
    ours, theirs = pair
    window = 30.0  # a blocking read would follow only after it: the test's bound shows which
    poll, buffer = ReplyPoll(window), memoryview(bytearray(64))
    sender = threading.Thread(target=theirs.sendall, args=(b"late",))
    started = time.monotonic()
    sender.start()
    assert poll.receive(ours, buffer) == 4
    sender.join()
    assert time.monotonic() - started < window / 2
    assert poll.misses == 0


def test_polls_that_catch_nothing_stop_and_a_quick_reply_restarts_them(pair):
    ours, theirs = pair
    _receive_timeout(ours, 0.05)  # the blocking read after each poll gives up: EAGAIN
    poll, buffer = ReplyPoll(0.0005), memoryview(bytearray(64))
    for misses in range(1, ReplyPoll.MAX_MISSES + 1):
        with pytest.raises(BlockingIOError):
            poll.receive(ours, buffer)
        assert poll.misses == misses
    # No longer polling: a read with nothing to read just blocks (and times out), and counts
    # nothing more.
    with pytest.raises(BlockingIOError):
        poll.receive(ours, buffer)
    assert poll.misses == ReplyPoll.MAX_MISSES
    # A reply there at once: the blocking read returns within the window, so polling pays
    # again.
    theirs.sendall(b"x")
    poll.seconds = 5.0  # (a window no blocking read of a waiting byte can miss)
    assert poll.receive(ours, buffer) == 1
    assert poll.misses == 0


def test_a_closed_peer_reads_as_the_end_while_polling(pair):
    ours, theirs = pair
    theirs.close()
    assert ReplyPoll(0.001).receive(ours, memoryview(bytearray(8))) == 0


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
