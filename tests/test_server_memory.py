"""What a server holds for its peers, measured on a ``python -m aionamespace serve`` process (RSS
from /proc), on asyncio and trio: memory a peer made it take is given back once the peer and
its data are gone.

* Decoders: eight 40 MiB sets decoded at once left 380 MB held by the pool of idle msgpack
  Unpackers (their buffers never shrink).
"""

from __future__ import annotations

import contextlib
import os

import msgpack
import pytest

from aionamespace.protocol.codec import encode_value
from raw_client import connect_raw, read_frames
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
