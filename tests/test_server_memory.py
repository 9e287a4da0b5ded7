"""What a server holds for its peers, measured on a ``python -m aionamespace serve`` process (RSS
from /proc), on asyncio and trio: memory a peer made it take is given back once the peer and
its data are gone.

* Decoders: eight 40 MiB sets decoded at once left 380 MB held by the pool of idle msgpack
  Unpackers (their buffers never shrink).
* Peers that never authenticate: a hello of 5 KB of nested array headers cost ~65 MB per
  connection, an unfinished 60 MiB hello ~70 MiB, and junk hellos left memory held for good.
  Before its handshake completes a peer may send frames of ``max_handshake_bytes`` nesting
  ``max_handshake_depth`` deep, no more.
"""

from __future__ import annotations

import contextlib
import os
import socket

import msgpack
import pytest

from aionamespace.protocol.codec import encode_value
from deadlines import NO_HANG_SECONDS
from raw_client import connect_raw, exchange, read_frames
from server_processes import ServeProcess

MIB = 1024 * 1024

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="needs Linux /proc"),
]


def test_large_frames_leave_no_decoder_buffers_behind(short_tmp: str, server_backend: str) -> None:
    path = os.path.join(short_tmp, "d.sock")
    server = ServeProcess(path, server_backend)
    try:
        with contextlib.ExitStack() as stack:
            clients = [connect_raw(path) for _ in range(8)]
            for sock, _ in clients:
                stack.enter_context(sock)
            value = encode_value(b"x" * (40 * MIB))
            before = server.memory()["VmRSS"]
            frames = [msgpack.packb([1, "set", "big", f"v{i}", value]) for i in range(8)]
            for (sock, _), frame in zip(clients, frames, strict=True):  # eight decoders at once
                sock.sendall(frame[: 39 * MIB])
            for (sock, _), frame in zip(clients, frames, strict=True):
                sock.sendall(frame[39 * MIB :])
            revisions = set()
            for sock, unpacker in clients:
                ((request_id, status, revision),) = read_frames(sock, unpacker, until_eof=False)
                assert (request_id, status) == (1, 0)
                revisions.add(revision)
            assert revisions == set(range(1, 9))
            del frames, value
            sock, unpacker = clients[0]
            for i in range(8):
                sock.sendall(msgpack.packb([2 + i, "del", "big", f"v{i}"]))
                assert read_frames(sock, unpacker, until_eof=False) == [[2 + i, 0, 9 + i]]
        growth = server.memory()["VmRSS"] - before
        # What stays: the history's last 40 MiB value (its default keeps one), and heap the
        # allocator does not hand back. The eight buffers took 350 MiB more.
        assert growth < 192 * MIB, (
            f"after eight 40 MiB sets were deleted, the {server_backend} server still held "
            f"{growth / MIB:.0f} MiB more than before them"
        )
    finally:
        server.kill()


# ---------------------------------------------------------------------------- before the hello

#: What a connection that never authenticates may cost the server, measured: its socket, its
#: shell and protocol state, at most max_handshake_bytes of frame, and RSS's granularity.
PER_PEER_BYTES = 512 * 1024


def ping(path: str) -> None:
    """One round trip on a new connection: the server has dealt with what was sent before."""
    sock, unpacker = connect_raw(path)
    with sock:
        assert exchange(sock, unpacker, [1, "ping"]) == [[1, 0, None]]


def attack_cost(path: str, server: ServeProcess, peers: int, data: bytes) -> tuple[int, int]:
    """RSS growth per peer while ``peers`` connections have sent ``data`` as their hello, and
    in all once they are gone. Fails early when a peer costs over PER_PEER_BYTES * 4."""
    before = server.memory()["VmRSS"]
    with contextlib.ExitStack() as stack:
        for count in range(1, peers + 1):
            sock = stack.enter_context(socket.socket(socket.AF_UNIX))
            sock.connect(path)
            sock.settimeout(NO_HANG_SECONDS)
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                for start in range(0, len(data), MIB):  # the server may refuse it part way
                    sock.sendall(data[start : start + MIB])
            ping(path)
            growth = server.memory()["VmRSS"] - before
            assert growth < PER_PEER_BYTES * 4 * count, (
                f"{count} peers sending {len(data):,} bytes of hello made the server grow by "
                f"{growth / MIB:.0f} MiB"
            )
        during = (server.memory()["VmRSS"] - before) // peers
    ping(path)
    return during, server.memory()["VmRSS"] - before


@pytest.mark.parametrize(
    ("peers", "data"),
    [
        (32, b"\xdc\xff\xff" * 1000),  # 3 KB of nested array headers, each of 65,535
        (32, b"\xde\xff\xff" * 1000),  # ... of nested map headers
        (4, b"\xc6\x03\xc0\x00\x00" + b"x" * (60 * MIB - 16)),  # a 60 MiB hello, unfinished
        (4, msgpack.packb("x" * (30 * MIB))),  # junk: a whole frame, not a hello
        (64, bytes(range(256)) * 16),  # junk: bytes that are not msgpack at all
        (64, msgpack.packb({"protocol": "aionamespace", "version": 1, "x": "y" * 4000})[:-1]),
    ],
    ids=["nested-arrays", "nested-maps", "unfinished-60-mib", "junk-30-mib", "junk", "held"],
)
def test_a_peer_that_never_authenticates_costs_the_server_little(
    short_tmp: str, server_backend: str, peers: int, data: bytes
) -> None:
    path = os.path.join(short_tmp, "h.sock")
    server = ServeProcess(path, server_backend)
    try:
        ping(path)
        during, after = attack_cost(path, server, peers, data)
        assert during < PER_PEER_BYTES, (
            f"each of {peers} peers cost the {server_backend} server {during / 1024:.0f} KiB"
        )
        assert after < PER_PEER_BYTES * peers // 4, (
            f"once {peers} peers were gone, the {server_backend} server still held "
            f"{after / MIB:.1f} MiB more than before them"
        )
    finally:
        server.kill()
