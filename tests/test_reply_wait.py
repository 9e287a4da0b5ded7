"""A sync call sleeps until its reply, and is not woken when the server reads its request.

On a Unix socket, the server's reading of a request frees the client's send buffer, and the
kernel then wakes whoever sleeps on the client's socket for "writable": a thread asleep in
``recv`` wakes, finds nothing and sleeps again (client/busypoll.py, "Sleeping in poll"). Here
the server is played by hand, so that it reads the request only once the client sleeps: the
client (a real process, a real SocketTransport) counts its own voluntary context switches
over the call.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time

import msgpack
import pytest

from aionamespace.protocol.connection import PROTOCOL_NAME, PROTOCOL_VERSION
from deadlines import NO_HANG_SECONDS, wait_until

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")

_CLIENT = """
import sys
from aionamespace import Limits
from aionamespace.client import calls
from aionamespace.client.blocking import SocketTransport
from aionamespace.client.proxy import Target

def sleeps():
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("voluntary_ctxt_switches:"):
                return int(line.split()[1])

limits = Limits(reply_poll=float(sys.argv[2]))
transport = SocketTransport(Target.create(sys.argv[1], "ns", limits=limits))
before = sleeps()
value = transport.call(calls.GET, ("ns", "x"))
print(value, sleeps() - before, flush=True)
"""

#: How long the server waits, after reading the request, for the client to be woken by that
#: read and fall asleep again (it happens within microseconds when it happens at all).
WOKEN_WITHIN_SECONDS = 0.5


def _state_and_sleeps(pid: int) -> tuple[str, int]:
    with open(f"/proc/{pid}/stat") as stat:
        state = stat.read().rsplit(")", 1)[1].split()[0]
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("voluntary_ctxt_switches:"):
                return state, int(line.split()[1])
    raise AssertionError("no voluntary_ctxt_switches in /proc")


def _read_frames(conn: socket.socket, unpacker: msgpack.Unpacker) -> list[object]:
    while True:
        data = conn.recv(65536)
        assert data, "the client closed the connection"
        unpacker.feed(data)
        frames = list(unpacker)
        if frames:
            return frames


@pytest.mark.parametrize("reply_poll", [0.0, 0.0002], ids=["sleeping", "polling first"])
def test_a_call_is_woken_once_by_its_reply_not_by_its_request_being_read(reply_poll):
    directory = tempfile.mkdtemp()
    path = os.path.join(directory, "s")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(1)
    listener.settimeout(NO_HANG_SECONDS)
    client = subprocess.Popen(
        [sys.executable, "-c", _CLIENT, path, str(reply_poll)], stdout=subprocess.PIPE, text=True
    )
    try:
        conn, _ = listener.accept()
        with conn:
            conn.settimeout(NO_HANG_SECONDS)
            unpacker = msgpack.Unpacker(raw=False)
            _read_frames(conn, unpacker)  # the hello
            conn.sendall(
                msgpack.packb(
                    {
                        "protocol": PROTOCOL_NAME,
                        "version": PROTOCOL_VERSION,
                        "max_frame_bytes": 1 << 20,
                    }
                )
            )
            # The get has arrived (peeked: not read, so the client's buffer is not freed yet)...
            conn.recv(1, socket.MSG_PEEK)
            # ...and the client sleeps, waiting for its reply.
            wait_until(lambda: _state_and_sleeps(client.pid)[0] == "S", "the client sleeps")
            _, asleep = _state_and_sleeps(client.pid)
            request = _read_frames(conn, unpacker)[0]  # (what used to wake the client)
            assert isinstance(request, list)
            assert request[1] == "get"
            deadline = time.monotonic() + WOKEN_WITHIN_SECONDS
            while time.monotonic() < deadline:  # a wake-up shows as a sleep more, or none
                state, sleeps = _state_and_sleeps(client.pid)
                if sleeps > asleep and state == "S":
                    break
                time.sleep(0.005)
            conn.sendall(msgpack.packb([request[0], 0, msgpack.packb(1)]))
            assert client.stdout is not None
            value, sleeps_in_call = client.stdout.readline().split()
        assert value == "1"
        # One sleep: until the reply. (Two when the read of the request woke it.)
        assert sleeps_in_call == "1"
        assert client.wait(NO_HANG_SECONDS) == 0
    finally:
        client.kill()
        client.wait()
        if client.stdout is not None:
            client.stdout.close()
        listener.close()
        os.unlink(path)
        os.rmdir(directory)
