"""A value built to be slow to check never stalls the server (issue 12, item 2).

A set of integers that all hash alike (multiples of 2**61 - 1) takes Python quadratic time to
build, and so did the server's old value check: a 400 KB one froze every client of a server
process for seconds. An int of a few hundred KB next to a Decimal of the same hash froze it for
longer (Python compares them by converting the int to decimal). Both are refused now, at once,
while another client's pings keep being answered; on both server backends. (The figures, old
and new, are in the commit that added this test.)
"""

from __future__ import annotations

import os
import select
import socket
import time
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import msgpack
import pytest

from aionamespace.protocol.codec import encode_value
from deadlines import NO_HANG_SECONDS
from raw_client import connect_raw, pack, read_frames
from server_processes import ServeProcess

P = 2**61 - 1

#: Every ping must be answered within this while the server checks a flood: generous for a
#: check that is linear in the value's size, and still far below the old check's stall.
PING_BOUND_SECONDS = 3.0


def _set_of(encoded: list[bytes]) -> bytes:
    """A SET value of already encoded items (an array 32 led by the SET marker)."""
    return b"\xdd" + (len(encoded) + 1).to_bytes(4, "big") + b"\xc7\x00\x03" + b"".join(encoded)


def equal_hashes() -> bytes:
    """~400 KB: 32,000 distinct integers, every one hashing to 0."""
    return _set_of([encode_value(k * P) for k in range(1, 32_000)])


def big_int_beside_a_decimal() -> bytes:
    """~400 KB: an int of 3.2 million bits and Decimal(7), which hash alike."""
    base = 1 << 3_200_000
    big = base + (7 - base) % P
    return _set_of([encode_value(big), encode_value(Decimal(7))])


@pytest.fixture
def serve(server_backend: str, short_tmp: str) -> Iterator[str]:
    path = os.path.join(short_tmp, "flood.sock")
    server = ServeProcess(path, server_backend)
    try:
        yield path
    finally:
        server.close()


def ping_while_waiting(pinger: socket.socket, unpacker: Any, flooder: socket.socket) -> float:
    """Ping until ``flooder`` has a reply to read; return the slowest ping's round trip."""
    slowest, request_id = 0.0, 100
    deadline = time.monotonic() + 4 * NO_HANG_SECONDS
    while not select.select([flooder], [], [], 0)[0]:
        assert time.monotonic() < deadline, "the flood was never answered"
        request_id += 1
        started = time.monotonic()
        pinger.sendall(pack([request_id, "ping"]))
        assert read_frames(pinger, unpacker, until_eof=False) == [[request_id, 0, None]]
        slowest = max(slowest, time.monotonic() - started)
    return slowest


@pytest.mark.parametrize("make", [equal_hashes, big_int_beside_a_decimal])
def test_a_value_built_to_be_slow_is_refused_while_others_are_served(serve: str, make: Any) -> None:
    value = make()
    assert 300_000 < len(value) < 500_000
    pinger, ping_unpacker = connect_raw(serve)
    flooder, flood_unpacker = connect_raw(serve)
    with pinger, flooder:
        flooder.sendall(msgpack.packb([1, "set", "board", "x", value], use_bin_type=True))
        slowest = ping_while_waiting(pinger, ping_unpacker, flooder)
        assert slowest < PING_BOUND_SECONDS
        [reply] = read_frames(flooder, flood_unpacker, until_eof=False)
        assert reply[:3] == [1, 1, "RemoteProtocolError"], reply
        assert "share" in reply[3], reply
        assert "hash" in reply[3], reply
        pinger.sendall(pack([1, "get", "board", "x"]))
        [missing] = read_frames(pinger, ping_unpacker, until_eof=False)
        assert missing[:3] == [1, 1, "AttributeError"]  # nothing was stored


def test_a_cas_comparing_a_huge_int_with_a_decimal_never_stalls_the_server(serve: str) -> None:
    """``cas`` decodes the stored value and the expected one and compares them: Python would
    convert a 2.6-million-bit int to a Decimal to compare it with ``Decimal(1)``, quadratic in
    its length (the server stalled for seconds). Such values are simply not equal."""
    stored = encode_value([10**800_000])
    expected = encode_value([Decimal(1)])
    pinger, ping_unpacker = connect_raw(serve)
    writer, writer_unpacker = connect_raw(serve)
    with pinger, writer:
        writer.sendall(msgpack.packb([1, "set", "board", "n", stored], use_bin_type=True))
        assert read_frames(writer, writer_unpacker, until_eof=False)[0][:2] == [1, 0]
        request = [2, "cas", "board", "n", expected, encode_value("swapped")]
        writer.sendall(msgpack.packb(request, use_bin_type=True))
        slowest = ping_while_waiting(pinger, ping_unpacker, writer)
        assert slowest < PING_BOUND_SECONDS
        assert read_frames(writer, writer_unpacker, until_eof=False) == [[2, 0, False]]
