"""The server's output, sans-IO: frames as pieces (protocol/pieces.py) and the Outbox that sends
them (server/outbox.py).

Whatever the pieces, the bytes a connection sends are msgpack's frame, byte for byte; a stored
value of LARGE_VALUE_BYTES or more travels as the very object the store holds; a reply over the
budget is a Producer that makes nothing before it is asked; and an Outbox hands out its pieces
in order, small ones joined, large ones as they are or as views, never copied.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from aionamespace.protocol.frames import LARGE_VALUE_BYTES
from aionamespace.protocol.pieces import (
    CHUNK_BYTES,
    Output,
    Producer,
    event_head,
    event_tail,
    list_reply,
    replay,
    unfold,
    values_reply,
)
from aionamespace.server.outbox import SEND_BYTES, Outbox
from aionamespace.server.stores import Change

BIG = LARGE_VALUE_BYTES


def pieces_of(output: Output) -> list[bytes]:
    return list(unfold(output))


def values(small: int, large: int) -> dict[str, bytes]:
    found = {f"s{i}": os.urandom(i % 50) for i in range(small)}
    found.update({f"L{i}": os.urandom(BIG + i) for i in range(large)})
    return found


# ------------------------------------------------------------------------------ pushes


@pytest.mark.parametrize("watch_id", [1, 127, 128, 70_000, 2**40])
@pytest.mark.parametrize("value", [None, b"", b"v" * 10, b"v" * (BIG - 1), b"v" * BIG])
def test_a_push_is_its_watchs_head_and_its_changes_tail(watch_id: int, value: bytes | None) -> None:
    tail = event_tail(2**33, "name", value)
    assert event_head(watch_id) + b"".join(tail) == msgpack.packb(
        [0, 2, watch_id, 2**33, "name", value]
    )
    if value is not None and len(value) >= BIG:
        assert tail[-1] is value  # the stored value itself: one object for every watcher


@pytest.mark.parametrize("budget", [10**9, 1000, 0])
@pytest.mark.parametrize("names", [None, frozenset({"b", "L"})])
def test_a_replay_is_its_pushes_whatever_the_budget(
    budget: int, names: frozenset[str] | None
) -> None:
    large = os.urandom(BIG + 5)
    changes = [
        Change("k", r, name, value)
        for r, name, value in [
            (1, "a", b"1"),
            (2, "b", None),
            (3, "L", large),
            (4, "b", os.urandom(3000)),
            *((r, "a", os.urandom(r)) for r in range(5, 300)),
        ]
    ]
    expected = b"".join(
        msgpack.packb([0, 2, 9, c.revision, c.name, c.value])
        for c in changes
        if names is None or c.name in names
    )
    output = replay(9, changes, names, budget)
    assert output is not None
    assert isinstance(output, Producer) == (budget < len(expected))
    pieces = pieces_of(output)
    assert b"".join(pieces) == expected
    if isinstance(output, Producer):
        assert any(piece is large for piece in pieces)
    assert replay(9, changes, frozenset({"nothing"}), budget) is None


# ------------------------------------------------------------------------------ replies


@pytest.mark.parametrize("head", [(), (7,), (3, 2**40)], ids=["dump", "snapshot", "watch"])
@pytest.mark.parametrize(("small", "large"), [(0, 0), (5, 0), (0, 2), (4000, 3)])
def test_a_values_reply_is_msgpacks_frame_at_once_or_made_as_sent(
    head: tuple[int, ...], small: int, large: int
) -> None:
    table = values(small, large)
    expected = msgpack.packb([5, 0, [*head, table] if head else table])
    at_once = values_reply(5, head, table, 10**9)
    assert at_once == expected
    made = values_reply(5, head, table, 0)
    assert isinstance(made, Producer) == bool(table)  # (an empty table costs nothing)
    pieces = pieces_of(made)
    assert b"".join(pieces) == expected
    assert not isinstance(made, Producer) or made.remaining == 0
    stored = [value for value in table.values() if len(value) >= BIG]
    assert sum(any(piece is value for piece in pieces) for value in stored) == len(stored)
    assert all(len(piece) < CHUNK_BYTES + 64 or piece in stored for piece in pieces)


def test_a_producer_makes_nothing_before_it_is_asked() -> None:
    made: list[int] = []

    def pieces() -> Iterator[bytes]:
        for i in range(3):
            made.append(i)
            yield b"x" * 10

    producer = Producer(pieces(), 25)
    assert made == []
    assert producer.next() == b"x" * 10
    assert (made, producer.remaining) == ([0], 15)
    assert pieces_of(producer) == [b"x" * 10] * 2
    assert producer.remaining == 0


def test_a_list_reply_is_msgpacks_frame_at_once_or_made_as_sent() -> None:
    names = [f"namespace-{i}" * 3 for i in range(20_000)]
    expected = msgpack.packb([3, 0, names])
    assert list_reply(3, names, 10**9) == expected
    made = list_reply(3, names, 1000)
    assert isinstance(made, Producer)
    assert b"".join(pieces_of(made)) == expected
    assert list_reply(3, [], 0) == msgpack.packb([3, 0, []])


# ------------------------------------------------------------------------------ the outbox


def drain(outbox: Outbox) -> list[bytes | memoryview]:
    taken = []
    while (piece := outbox.take()) is not None:
        taken.append(piece)
    assert outbox.size == 0
    assert not outbox
    return taken


def test_small_pieces_are_joined_and_large_ones_handed_out_as_they_are() -> None:
    outbox = Outbox()
    large = os.urandom(BIG)
    outbox.put_all([b"a", b"b", large, b"c", b"", b"d"])
    assert outbox.size == 4 + BIG
    taken = drain(outbox)
    assert taken == [b"ab", large, b"cd"]
    assert taken[1] is large


def test_a_piece_larger_than_send_bytes_goes_as_views_of_itself() -> None:
    outbox = Outbox()
    huge = os.urandom(2 * SEND_BYTES + 10)
    outbox.put(huge)
    outbox.put(b"after")
    taken = drain(outbox)
    assert [len(piece) for piece in taken] == [SEND_BYTES, SEND_BYTES, 15]
    assert all(isinstance(piece, memoryview) and piece.obj is huge for piece in taken[:2])
    assert b"".join(taken) == huge + b"after"


def test_joined_pieces_stay_about_one_chunk() -> None:
    outbox = Outbox()
    outbox.put_all([b"x" * 1000] * 200)
    taken = drain(outbox)
    assert all(CHUNK_BYTES <= len(piece) < CHUNK_BYTES + 1000 for piece in taken[:-1])
    assert sum(map(len, taken)) == 200_000


def test_a_producer_is_asked_only_when_its_turn_comes() -> None:
    asked: list[int] = []

    def pieces() -> Iterator[bytes]:
        for i in range(3):
            asked.append(i)
            yield bytes([i]) * CHUNK_BYTES

    outbox = Outbox()
    outbox.put(b"before")
    outbox.put(Producer(pieces(), 3 * CHUNK_BYTES))
    outbox.put(b"after")
    assert outbox.size == 3 * CHUNK_BYTES + 11
    assert outbox.take() == b"before"  # the Producer's first piece is made to see it is large
    assert asked == [0]
    assert outbox.take() == b"\x00" * CHUNK_BYTES
    assert asked == [0]
    assert outbox.size == 2 * CHUNK_BYTES + 5
    assert drain(outbox) == [b"\x01" * CHUNK_BYTES, b"\x02" * CHUNK_BYTES, b"after"]


def test_a_producer_that_said_too_little_or_too_much_leaves_the_size_right() -> None:
    outbox = Outbox()
    outbox.put(Producer(iter([b"a" * 100, b"b" * 100]), 50))  # said too little
    outbox.put(Producer(iter([b"c"]), 1000))  # said too much
    assert b"".join(drain(outbox)) == b"a" * 100 + b"b" * 100 + b"c"


@given(
    st.lists(
        st.one_of(
            st.binary(max_size=300),
            st.integers(min_value=BIG, max_value=SEND_BYTES + 5000).map(lambda n: b"L" * n),
            st.lists(st.binary(min_size=1, max_size=CHUNK_BYTES), max_size=4).map(tuple),
        ),
        max_size=30,
    )
)
def test_an_outbox_sends_everything_in_order_and_counts_it(items: list[Any]) -> None:
    outbox = Outbox()
    expected = b""
    for item in items:
        if isinstance(item, tuple):
            outbox.put(Producer(iter(item), sum(map(len, item))))
            expected += b"".join(item)
        else:
            outbox.put(item)
            expected += item
    assert outbox.size == len(expected)
    sent = b""
    while (piece := outbox.take()) is not None:
        sent += piece
        assert outbox.size == len(expected) - len(sent)
        assert len(piece) <= max(SEND_BYTES, 2 * CHUNK_BYTES)
    assert sent == expected


def test_an_idle_outbox_holds_no_deque() -> None:
    """An empty deque holds a block of slots (about 600 bytes): most of what an idle
    connection cost the server. An outbox makes one only while something waits."""
    box = Outbox()
    assert box.items == ()
    box.put(b"one")
    box.put(b"two")
    assert box.take() == b"onetwo"
    assert box.items == ()
    box.put(b"three")
    box.clear()
    assert box.items == ()
