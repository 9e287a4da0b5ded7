"""``FrameDecoder``: bytes in, whole frames out, however the bytes are cut.

``max_frame_bytes`` bounds one frame, not one read; bad bytes break the decoder for good, after
the frames completed before them. Checked by example and by fuzzing: ``feed`` returns frames or
raises ``RemoteProtocolError``, never anything else, and feeding whole or byte by byte agree.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aionamespace import RemoteProtocolError
from aionamespace.protocol.connection import PROTOCOL_NAME, FrameDecoder, Limits
from handmade_frames import HELLO, ONE, frames, pack

SAMPLE_FRAMES: list[Any] = [
    {"protocol": PROTOCOL_NAME, "version": 1},
    [1, "get", "key", "name"],
    [2, "set", "key", "name", ONE],
    "just a string",
    2**64 - 1,
    -(2**63),
    None,
    True,
    1.5,
    b"\x00" * 300,
    {"nested": [1, [2, [3, {"deep": b"bytes"}]]]},
    "é" * 70000,  # str 32, longer than one 64 KiB read
    [],
    {},
]
SAMPLE_BYTES = b"".join(pack(frame) for frame in SAMPLE_FRAMES)


def feed_bytewise(decoder: FrameDecoder, data: bytes) -> list[Any]:
    frames_out: list[Any] = []
    for index in range(len(data)):
        frames_out += decoder.feed(data[index : index + 1])
    return frames_out


def test_frames_fed_whole() -> None:
    assert FrameDecoder(Limits().max_frame_bytes).feed(SAMPLE_BYTES) == SAMPLE_FRAMES


def test_frames_fed_one_byte_at_a_time() -> None:
    decoder = FrameDecoder(Limits().max_frame_bytes)
    assert feed_bytewise(decoder, SAMPLE_BYTES) == SAMPLE_FRAMES


def test_a_frame_comes_out_only_when_complete() -> None:
    decoder = FrameDecoder(1000)
    frame = pack([7, "get", "key", "name"])
    for index in range(len(frame) - 1):
        assert decoder.feed(frame[index : index + 1]) == []
    assert decoder.feed(frame[-1:]) == [[7, "get", "key", "name"]]


def test_feed_accepts_memoryview() -> None:
    buffer = bytearray(SAMPLE_BYTES)
    decoder = FrameDecoder(Limits().max_frame_bytes)
    assert decoder.feed(memoryview(buffer)) == SAMPLE_FRAMES


def test_many_frames_in_one_chunk_all_come_out() -> None:
    chunk = b"".join(pack([request_id, "ping"]) for request_id in range(1, 5001))
    frames_out = FrameDecoder(Limits().max_frame_bytes).feed(chunk)
    assert frames_out == [[request_id, "ping"] for request_id in range(1, 5001)]


@settings(max_examples=200, deadline=None)
@given(st.lists(frames, min_size=1, max_size=8), st.data())
def test_frames_survive_any_split(frames_in: list[Any], data: st.DataObject) -> None:
    stream = b"".join(pack(frame) for frame in frames_in)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=10)))
    decoder = FrameDecoder(Limits().max_frame_bytes)
    frames_out: list[Any] = []
    start = 0
    for cut in [*cuts, len(stream)]:
        frames_out += decoder.feed(stream[start:cut])
        start = cut
    assert frames_out == frames_in


def test_frame_larger_than_max_frame_bytes_fed_whole() -> None:
    decoder = FrameDecoder(100)
    with pytest.raises(RemoteProtocolError, match="max_frame_bytes"):
        decoder.feed(pack(b"x" * 200))


def test_frame_larger_than_max_frame_bytes_fed_bytewise() -> None:
    decoder = FrameDecoder(100)
    frame = pack(b"x" * 200)
    with pytest.raises(RemoteProtocolError, match="max_frame_bytes"):
        feed_bytewise(decoder, frame)
    with pytest.raises(RemoteProtocolError):
        decoder.feed(pack(1))


def test_frame_of_exactly_max_frame_bytes_is_accepted() -> None:
    frame = pack(b"x" * 98)
    assert len(frame) == 100
    assert FrameDecoder(100).feed(frame) == [b"x" * 98]


def test_many_small_frames_in_a_read_larger_than_max_frame_bytes() -> None:
    """max_frame_bytes bounds one frame, not one read: pipelined small frames all pass."""
    chunk = b"".join(pack([request_id, "get", "key", "name"]) for request_id in range(1, 101))
    assert len(chunk) > 1000
    frames_out = FrameDecoder(100).feed(chunk)
    assert frames_out == [[request_id, "get", "key", "name"] for request_id in range(1, 101)]


def test_frame_within_documented_margin_survives_pipelined_followers() -> None:
    """PROTOCOL.md 8: a frame of up to max_frame_bytes - 65536 bytes is always accepted,
    even when a full 64 KiB read completes it together with frames pipelined behind it."""
    limit = 65536 + 4096
    big = pack(b"b" * 4000)
    followers = b"".join(pack([n, "ping"]) for n in range(1, 20000))
    stream = big + followers
    decoder = FrameDecoder(limit)
    frames_out = decoder.feed(stream[:2000])
    for start in range(2000, len(stream), 65536):
        frames_out += decoder.feed(stream[start : start + 65536])
    assert frames_out == [b"b" * 4000, *([n, "ping"] for n in range(1, 20000))]


@pytest.mark.parametrize(
    "garbage",
    [
        b"\xc1",  # never used
        b"\xa2\xff\xfe",  # str with invalid UTF-8
        b"\x81\x01\x02",  # frame-level map with an int key
        b"\x81\x91\x01\x02",  # frame-level map with an array key
        b"\x91" * 2000 + b"\x01",  # nested deeper than msgpack's stack
    ],
    ids=["c1", "bad-utf8", "int-map-key", "array-map-key", "too-deep"],
)
def test_garbage_breaks_the_decoder_for_good(garbage: bytes) -> None:
    decoder = FrameDecoder(Limits().max_frame_bytes)
    with pytest.raises(RemoteProtocolError, match="malformed frame"):
        decoder.feed(garbage)
    with pytest.raises(RemoteProtocolError):
        decoder.feed(HELLO)
    with pytest.raises(RemoteProtocolError):
        decoder.feed(b"")


def test_frames_before_garbage_come_out_then_the_decoder_is_broken() -> None:
    """The frames completed before the bad bytes deserve their answers; nothing after them."""
    decoder = FrameDecoder(Limits().max_frame_bytes)
    assert decoder.feed(pack([1, "ping"]) + pack([2, "ping"]) + b"\xc1" + pack([3, "ping"])) == [
        [1, "ping"],
        [2, "ping"],
    ]
    with pytest.raises(RemoteProtocolError, match="malformed frame"):
        decoder.feed(pack([4, "ping"]))
    with pytest.raises(RemoteProtocolError):
        decoder.feed(b"")


def feed_all(decoder: FrameDecoder, chunks: list[bytes]) -> tuple[list[Any], bool]:
    """Every frame that came out, and whether the decoder ended up broken.

    Only RemoteProtocolError may come out of ``feed``: anything else fails the test.
    """
    frames_out: list[Any] = []
    for chunk in chunks:
        try:
            frames_out += decoder.feed(chunk)
        except RemoteProtocolError:
            return frames_out, True
    try:
        decoder.feed(b"")
    except RemoteProtocolError:
        return frames_out, True
    return frames_out, False


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_fuzz_frame_decoder(data: bytes) -> None:
    whole = feed_all(FrameDecoder(Limits().max_frame_bytes), [data])
    bytewise = feed_all(
        FrameDecoder(Limits().max_frame_bytes), [data[i : i + 1] for i in range(len(data))]
    )
    # Both ways of feeding agree on the frames (compared packed, as nan != nan) and on the end.
    assert whole[1] == bytewise[1]
    assert pack(whole[0]) == pack(bytewise[0])


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200), st.integers(1, 300))
def test_fuzz_frame_decoder_with_a_small_limit(data: bytes, limit: int) -> None:
    whole = feed_all(FrameDecoder(limit), [data])
    bytewise = feed_all(FrameDecoder(limit), [data[i : i + 1] for i in range(len(data))])
    assert whole[1] == bytewise[1]
    assert pack(whole[0]) == pack(bytewise[0])


# ---------------------------------------------------------------------------- the idle pool


def test_decoders_pool_only_small_idle_unpackers(monkeypatch: pytest.MonkeyPatch) -> None:
    """msgpack never shrinks an Unpacker's buffer: one that held a large frame is let go, and
    the pool keeps at most MAX_IDLE_UNPACKERS (it kept every grown buffer for good)."""
    from aionamespace.protocol import frames as frames_module

    limit = 12_345_678  # a pool of its own
    monkeypatch.setitem(frames_module._IDLE_UNPACKERS, limit, [])
    idle = frames_module._IDLE_UNPACKERS[limit]
    big = pack(b"x" * (frames_module.POOLED_BUFFER_BYTES + 1))
    decoders = [FrameDecoder(limit) for _ in range(frames_module.MAX_IDLE_UNPACKERS + 5)]
    for decoder in decoders:  # each holds an unfinished frame: one Unpacker each
        assert decoder.feed(big[:10]) == []
    for decoder in decoders:
        assert decoder.feed(big[10:]) == [b"x" * (frames_module.POOLED_BUFFER_BYTES + 1)]
    assert idle == []  # all held a large frame
    small = pack([1, "set", "key", "name", b"y" * 1000])
    for decoder in decoders:
        assert decoder.feed(small[:10]) == []
    assert idle == []
    for decoder in decoders:
        assert decoder.feed(small[10:]) == [[1, "set", "key", "name", b"y" * 1000]]
    assert len(idle) == frames_module.MAX_IDLE_UNPACKERS
    assert decoders[0].feed(small[:10]) == []  # borrowed from the pool again
    assert len(idle) == frames_module.MAX_IDLE_UNPACKERS - 1
