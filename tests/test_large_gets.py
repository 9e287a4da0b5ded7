"""A sync get of large bytes read straight into the bytes returned (client/large_gets.py).

The head of such a reply is recognised from its exact bytes alone (every id width, nothing
else taken for it); a proxy reading a name that held large bytes takes that path and still
reads whatever the name holds next, of any type and size; a server dying mid-value is a lost
connection, not a hang or a short value.
"""

from __future__ import annotations

import os
from typing import Any

import msgpack
import pytest

from aionamespace import ConnectionLost, Namespace, Retry, ServerThread
from aionamespace._errors import RemoteProtocolError
from aionamespace.client import large_gets
from aionamespace.client.blocking import POOL
from aionamespace.protocol.codec import encode_value
from aionamespace.protocol.frames import (
    LARGE_VALUE_BYTES,
    bytes_head_coming,
    bytes_reply_head,
    bytes_reply_size,
)
from fake_server import fake_server

IDS = [1, 127, 128, 255, 256, 65_535, 65_536, 2**32 - 1, 2**32, 2**63]
LIMIT = 64 * 1024 * 1024


def head_of(frame: bytes, request_id: int) -> memoryview:
    return memoryview(frame)[: bytes_reply_head(request_id)]


@pytest.mark.parametrize("request_id", IDS)
def test_the_head_of_a_reply_carrying_large_bytes_gives_their_length(request_id: int) -> None:
    value = os.urandom(LARGE_VALUE_BYTES + 7)
    frame = msgpack.packb([request_id, 0, encode_value(value)])
    head = head_of(frame, request_id)
    assert bytes_reply_size(head, request_id, LIMIT) == len(value)
    assert frame[len(head) :] == value  # what follows the head is the value itself
    assert bytes_reply_size(head, request_id + 1, LIMIT) == 0  # another request's reply
    assert bytes_reply_size(head[:-1], request_id, LIMIT) == 0  # cut short


@pytest.mark.parametrize("request_id", IDS)
def test_a_head_cut_short_is_waited_for_only_when_its_rest_must_come(request_id: int) -> None:
    large = msgpack.packb([request_id, 0, encode_value(b"v" * LARGE_VALUE_BYTES)])
    head = bytes_reply_head(request_id)
    assert all(bytes_head_coming(large[:cut], request_id) for cut in range(1, head))
    small = msgpack.packb([request_id, 0, encode_value(5)])
    assert not bytes_head_coming(small, request_id)  # a whole reply, shorter than a head
    assert not bytes_head_coming(large[: head - 6], request_id + 1)
    short_bin32 = b"\x93" + msgpack.packb(request_id) + b"\x00\xc6\x00\x00\x00\x02"
    assert not bytes_head_coming(short_bin32, request_id)  # (as no msgpack packs it)


@pytest.mark.parametrize(
    "result",
    [
        encode_value(bytearray(LARGE_VALUE_BYTES)),  # an extension, not bytes
        encode_value("s" * LARGE_VALUE_BYTES),
        encode_value(b"b" * (LARGE_VALUE_BYTES - 6)),  # bin 16 inside: not this path
        encode_value([b"b" * LARGE_VALUE_BYTES]),
        encode_value(5),
        b"\xc6" + (LARGE_VALUE_BYTES + 1).to_bytes(4, "big") + b"\0" * LARGE_VALUE_BYTES,
    ],
)
def test_anything_else_is_left_to_the_usual_read(result: bytes) -> None:
    frame = msgpack.packb([9, 0, result]) + b"\0" * 16  # (long enough to cut a head from)
    assert bytes_reply_size(head_of(frame, 9), 9, LIMIT) == 0


def test_an_error_reply_is_left_to_the_usual_read() -> None:
    frame = msgpack.packb([9, 1, "AttributeError", "x" * 40])
    assert bytes_reply_size(head_of(frame, 9), 9, LIMIT) == 0


def test_large_bytes_over_the_frame_limit_are_refused_from_their_head() -> None:
    frame = msgpack.packb([3, 0, encode_value(b"v" * LARGE_VALUE_BYTES)])
    with pytest.raises(RemoteProtocolError, match="max_frame_bytes"):
        bytes_reply_size(head_of(frame, 3), 3, LARGE_VALUE_BYTES)


def test_a_name_holding_large_bytes_is_read_straight_then_whatever_it_holds(
    server: ServerThread, monkeypatch: pytest.MonkeyPatch
) -> None:
    straight: list[int] = []

    def counted(sock: Any, size: int, address: Any) -> bytes:
        straight.append(size)
        return receive_exactly(sock, size, address)

    receive_exactly = large_gets.receive_exactly
    monkeypatch.setattr(large_gets, "receive_exactly", counted)
    blob, other = os.urandom(1 << 20), os.urandom(3 * LARGE_VALUE_BYTES)
    turns: list[Any] = [
        blob,
        blob,
        5,
        other,
        other,
        "t" * 300,  # a small reply longer than the head read first
        blob,
        bytearray(blob),
        "é" * LARGE_VALUE_BYTES,
        blob,
        blob,
        None,
    ]
    with Namespace(server.address, "straight") as ns:
        for value in turns:
            ns.v = value
            for _ in range(2):
                got = ns.v
                assert got == value
                assert type(got) is type(value)
            ns.small = 1
            assert ns.small == 1  # nothing left half-read behind
    # Straight once a get returned large bytes, until a reply that is not them and does not
    # fit in the head read first ("t" * 300, the bytearray): small ones fitting it keep the
    # guess (5, None), and large bytes after them are read straight at once (other).
    big, more = len(blob), len(other)
    assert straight == [big, big, big, more, more, more, more, big, big, big, big]


def test_a_server_dying_mid_value_loses_the_connection(socket_path: str) -> None:
    value = os.urandom(LARGE_VALUE_BYTES * 2)

    def half_a_reply(request: list[Any]) -> bytes:
        frame = msgpack.packb([request[0], 0, encode_value(value)])
        return frame[: len(frame) - len(value) // 2]

    ns = Namespace(socket_path, "k", retry=Retry(attempts=1))
    with fake_server(socket_path, half_a_reply) as fake:
        transport = POOL.transport(ns._aionamespace.target)
        transport._large_gets.args = ("k", "blob")  # as after a get of large bytes
        with pytest.raises(ConnectionLost) as caught:
            ns.blob  # noqa: B018 - the read is the point
        assert caught.value.request_sent is True
        assert [request[1:] for request in fake.requests] == [["get", "k", "blob"]]
    ns._close()
