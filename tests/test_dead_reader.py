"""A client that stopped reading and then died costs the server nothing once it is gone.

A client takes a lock, sends 2,000 gets of a 64 KiB value without reading one reply (the server
stops applying its requests once its backlog passes the reply budget), and is SIGKILLed: a
client already waiting for the lock must get it at once, and the server must go back to
sleep (its CPU time, read from /proc, stays low). On both server backends, in a real ``serve``
process; the trio shell used to spin at 100% CPU for ever here, with the lock never released.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

import pytest

from aionamespace import Namespace
from deadlines import NO_HANG_SECONDS, wait_until
from server_processes import ServeProcess
from waiting_calls import blocked_reading

HANDOVER_SECONDS = 5.0  # generous: asyncio hands the lock over in milliseconds
IDLE_CPU_SECONDS = 0.25  # CPU time an idle server may use in one second (a spinning one: ~1)

pytestmark = pytest.mark.skipif(not os.path.exists("/proc/self/stat"), reason="needs Linux /proc")

# The client that dies: a raw socket, so that nothing reads for it.
GREEDY_CLIENT = """
import msgpack, socket, sys, time
sock = socket.socket(socket.AF_UNIX)
sock.connect(sys.argv[1])
unpacker = msgpack.Unpacker(raw=False)

def frame():
    while True:
        for frame in unpacker:
            return frame
        unpacker.feed(sock.recv(65536))

sock.sendall(msgpack.packb({"protocol": "aionamespace", "version": 1}))
frame()
sock.sendall(msgpack.packb([1, "acquire", "k", "L", b"greedy", None]))
assert frame() == [1, 0, None]
sock.settimeout(2.0)
try:  # the server stops reading us once our unread replies pass its budget
    sock.sendall(b"".join(msgpack.packb([i, "get", "k", "v"]) for i in range(2, 2002)))
except TimeoutError:
    pass
print("holding the lock, reading nothing", flush=True)
time.sleep(3600)
"""


def cpu_seconds(pid: int) -> float:
    """User and system CPU time of process ``pid`` so far (/proc/PID/stat)."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_a_killed_client_with_unread_replies_frees_its_lock_and_the_server_idles(
    short_tmp: str, server_backend: str
) -> None:
    path = os.path.join(short_tmp, "s.sock")
    server = ServeProcess(path, server_backend)
    greedy = subprocess.Popen(
        [sys.executable, "-c", GREEDY_CLIENT, path], stdout=subprocess.PIPE, text=True
    )
    try:
        with Namespace(path, "k") as ns:
            ns.v = os.urandom(64 * 1024)
            assert greedy.stdout is not None
            assert greedy.stdout.readline() == "holding the lock, reading nothing\n"
            acquired: list[float] = []

            def wait_for_the_lock() -> None:
                with Namespace(path, "k") as waiter:
                    try:
                        with waiter._lock("L", timeout=NO_HANG_SECONDS):
                            acquired.append(time.monotonic())
                    except TimeoutError:
                        pass  # never handed over: the assertion below says so

            thread = threading.Thread(target=wait_for_the_lock)
            thread.start()
            wait_until(
                lambda: blocked_reading(thread, "wait_for_the_lock") or not thread.is_alive(),
                "the waiter waits for the lock",
            )
            killed_at = time.monotonic()
            greedy.kill()
            greedy.wait()
            thread.join(NO_HANG_SECONDS + 1)
            assert acquired, "the dead client's lock was never handed over"
            assert acquired[0] - killed_at < HANDOVER_SECONDS
            before = cpu_seconds(server.process.pid)
            time.sleep(1.0)  # the window measured, not a synchronisation
            used = cpu_seconds(server.process.pid) - before
            assert used < IDLE_CPU_SECONDS, f"the server used {used:.2f} s of CPU in 1 s"
            assert ns.v is not None  # and it still serves
    finally:
        if greedy.poll() is None:
            greedy.kill()
            greedy.wait()
        assert greedy.stdout is not None
        greedy.stdout.close()
        server.kill()
