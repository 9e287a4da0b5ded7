"""``CacheTable``, the client cache's rules, alone: what a reply to a cached read leaves in the
cache, what empties it, and read-your-writes.

Replies and invalidations are handed to the table in stream order, as the proxies' readers do.
``expect`` notes a read on its way with its name's generation; ``forget`` (the caller's own
write) moves the generation on, so a reply to a read sent before the write is returned to its
caller but not kept.
"""

from __future__ import annotations

import datetime
import decimal
import tracemalloc
import uuid
from typing import Any

import pytest

from aionamespace import ConnectionLost
from aionamespace.client.cache import ABSENT, CacheTable, entry_value
from aionamespace.protocol.codec import encode_value

ITEM = ("k", "x")


def cached(table: CacheTable, item: tuple[str, str] = ITEM) -> Any:
    """What a read of ``item`` would be served from the cache (ABSENT: it asks the server)."""
    entry = table.entry(*item)
    return entry if entry is ABSENT else entry_value(entry, item[1])


@pytest.fixture
def table() -> CacheTable:
    return CacheTable()


IMMUTABLE_VALUES = [
    None, True, 7, 2**70, 1.5, "text", b"bytes", 1 - 2j,
    (1, "a"), frozenset({1, (2, 3)}), decimal.Decimal("1.5"), uuid.UUID(int=7),
    datetime.datetime(2026, 1, 2, 3, 4, tzinfo=datetime.timezone.utc), datetime.date(2026, 1, 2),
    datetime.time(3, 4), datetime.timedelta(seconds=5),
]  # fmt: skip


@pytest.mark.parametrize("value", IMMUTABLE_VALUES)
def test_an_immutable_value_is_kept_as_it_is(table: CacheTable, value: Any) -> None:
    table.expect(1, ITEM)
    entry = table.answered(1, encode_value(value), None)
    assert entry == value
    assert type(entry) is type(value)
    assert table.namespace("k")["x"] is entry  # the same object for every read: it cannot change


MUTABLE_VALUES = [
    [1, 2],
    ["a", (1, 2)],
    {"a": 1},
    {"a": [1]},
    {1, 2},
    bytearray(b"ab"),
    (1, [2]),
    [[1], 2],
]


@pytest.mark.parametrize("value", MUTABLE_VALUES)
def test_a_mutable_value_is_a_fresh_copy_for_each_read(table: CacheTable, value: Any) -> None:
    table.expect(1, ITEM)
    table.answered(1, encode_value(value), None)
    first, second = cached(table), cached(table)
    assert first == second == value
    assert type(first) is type(value)
    assert first is not second  # a caller changing its copy changes nobody else's


def _mutate(value: Any) -> None:
    """Change a read value, and every mutable value it holds, in place."""
    if isinstance(value, (list, bytearray)):
        for item in value:
            _mutate(item)
        value.append(9)
    elif isinstance(value, dict):
        for item in value.values():
            _mutate(item)
        value["new"] = 9
    elif isinstance(value, set):
        value.add(9)
    elif isinstance(value, tuple):
        for item in value:
            _mutate(item)


@pytest.mark.parametrize("value", MUTABLE_VALUES)
def test_changing_a_read_value_changes_no_later_read(table: CacheTable, value: Any) -> None:
    """Whatever the cache keeps (a container to copy, or the encoding to decode again), a
    caller changing what it read, however deep, changes nobody else's value."""
    table.expect(1, ITEM)
    table.answered(1, encode_value(value), None)
    _mutate(cached(table))
    assert cached(table) == value


def test_a_large_value_received_into_a_bytearray_is_kept(table: CacheTable) -> None:
    table.expect(1, ITEM)
    table.answered(1, bytearray(encode_value(42)), None)
    assert cached(table) == 42


def test_no_such_attribute_is_kept_too(table: CacheTable) -> None:
    table.expect(1, ITEM)
    table.answered(1, None, AttributeError("'Namespace' object has no attribute 'x'"))
    with pytest.raises(AttributeError, match=r"^'Namespace' object has no attribute 'x'$"):
        cached(table)


@pytest.mark.parametrize(
    ("result", "error"),
    [
        (None, ConnectionLost("gone")),
        (None, KeyError("x")),
        (None, None),
        (5, None),
    ],
    ids=["connection-lost", "another-error", "nil", "not-bin"],
)
def test_other_replies_leave_nothing(
    table: CacheTable, result: Any, error: BaseException | None
) -> None:
    table.expect(1, ITEM)
    assert table.answered(1, result, error) is None
    assert cached(table) is ABSENT


def test_a_reply_to_a_request_that_was_no_cached_read_leaves_nothing(table: CacheTable) -> None:
    assert table.answered(3, encode_value(1), None) is None  # e.g. a set's reply
    table.expect(4, ITEM)
    assert table.answered(5, encode_value(1), None) is None
    assert table.namespaces == {}
    assert table.answered(4, encode_value(2), None) == 2  # the expected read is still expected
    assert table.answered(4, encode_value(3), None) is None  # and answered only once
    assert cached(table) == 2


def test_an_invalidation_empties_one_entry(table: CacheTable) -> None:
    for request_id, item in enumerate([ITEM, ("k", "y"), ("other", "x")], start=1):
        table.expect(request_id, item)
        table.answered(request_id, encode_value(request_id), None)
    table.invalidate("k", "x")
    table.invalidate("k", "never read")
    assert cached(table) is ABSENT
    assert cached(table, ("k", "y")) == 2
    assert cached(table, ("other", "x")) == 3


def test_a_reply_after_an_invalidation_is_newer_and_kept(table: CacheTable) -> None:
    """Stream order: an invalidation that arrives before a read's reply was sent before it, so
    the reply already holds the change."""
    table.expect(1, ITEM)
    table.invalidate("k", "x")
    table.answered(1, encode_value("new"), None)
    assert cached(table) == "new"


def test_own_write_drops_the_entry(table: CacheTable) -> None:
    table.expect(1, ITEM)
    table.answered(1, encode_value("old"), None)
    table.forget("k", ("x", "y"))
    assert cached(table) is ABSENT


def test_a_read_sent_before_an_own_write_is_answered_but_not_kept(table: CacheTable) -> None:
    table.expect(1, ITEM)
    table.forget("k", ("x",))  # our write of x, sent after the read
    assert table.answered(1, encode_value("before"), None) == "before"  # the read's own answer
    assert cached(table) is ABSENT  # but not kept: the write may have changed x since
    table.expect(2, ITEM)  # a read sent after the write
    table.answered(2, encode_value("after"), None)
    assert cached(table) == "after"


def test_reads_in_flight_across_an_own_write_keep_only_the_later(table: CacheTable) -> None:
    table.expect(1, ITEM)
    table.forget("k", ("x",))
    table.expect(2, ITEM)
    table.forget("k", ("x",))
    table.expect(3, ITEM)
    table.answered(1, encode_value(1), None)
    table.answered(2, encode_value(2), None)
    assert cached(table) is ABSENT
    table.answered(3, encode_value(3), None)
    assert cached(table) == 3


def test_a_forget_after_the_acknowledgement_drops_a_reply_kept_meanwhile(
    table: CacheTable,
) -> None:
    """The sync proxy's case: its write goes on another connection than the cache's reads,
    so a read sent after the first forget can reach the server before the write and be kept;
    forgetting again once the write is acknowledged drops it, and a read still in flight."""
    table.forget("k", ("x",))  # before the write leaves
    table.expect(1, ITEM)  # another thread's read, answered before the write was applied
    table.answered(1, encode_value("before"), None)
    table.expect(2, ITEM)
    assert cached(table) == "before"
    table.forget("k", ("x",))  # the write is acknowledged
    assert cached(table) is ABSENT
    table.answered(2, encode_value("before"), None)
    assert cached(table) is ABSENT


def test_generations_are_kept_only_for_reads_in_flight(table: CacheTable) -> None:
    """Writing a new name each time leaves nothing behind (issue 12, item 10: the table once
    kept a generation for every name ever written, for the life of the process)."""
    table.expect(1, ITEM)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for number in range(50_000):
            table.forget("k", (f"name-{number}",))
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert grown < 100_000, f"forgetting 50,000 names kept {grown:,} bytes"
    table.forget("k", ("x",))
    table.answered(1, encode_value(1), None)
    assert cached(table) is ABSENT  # the read in flight was outdated all the same


def test_a_write_of_another_name_keeps_a_read_in_flight(table: CacheTable) -> None:
    table.expect(1, ITEM)
    table.forget("k", ("y",))
    table.forget("other", ("x",))
    table.answered(1, encode_value(1), None)
    assert cached(table) == 1


def test_clear_forgets_the_entries_and_the_reads_in_flight(table: CacheTable) -> None:
    table.expect(1, ITEM)
    table.answered(1, encode_value(1), None)
    table.expect(2, ("k", "y"))
    table.clear()
    assert table.namespaces == {}
    assert table.answered(2, encode_value(2), None) is None  # its connection is gone
    assert cached(table, ("k", "y")) is ABSENT


def fill(table: CacheTable, request_id: int, item: tuple[str, str], value: Any) -> None:
    table.expect(request_id, item)
    table.answered(request_id, encode_value(value), None)


def test_a_namespace_dict_holds_what_reads_serve(table: CacheTable) -> None:
    """A proxy holds its namespace's dict and reads it with one lookup (no tuple, no table)."""
    values = table.namespace("k")
    fill(table, 1, ITEM, 1)
    fill(table, 2, ("other", "x"), 2)
    assert values == {"x": 1}
    assert table.namespace("k") is values
    table.invalidate("k", "x")
    assert values == {}


def test_a_dict_let_go_once_emptied_is_never_filled_again(table: CacheTable) -> None:
    """An emptied namespace's dict is dropped (a table keeps no dict per namespace ever read)
    and the next reply fills a new one: a proxy still holding the old one finds nothing there,
    never a value an invalidation has since removed."""
    fill(table, 1, ITEM, 1)
    held = table.namespace("k")
    table.invalidate("k", "x")
    assert table.namespaces == {}
    fill(table, 2, ITEM, 2)
    assert held == {}
    assert table.namespace("k") == {"x": 2}
    table.forget("k", ("x",))
    assert table.namespaces == {}


def test_clear_empties_the_dicts_proxies_hold(table: CacheTable) -> None:
    """The connection is lost: every dict a proxy may hold is emptied in place, so that no read
    is served from it (no flag checked per read)."""
    fill(table, 1, ITEM, 1)
    fill(table, 2, ("other", "y"), 2)
    held = [table.namespace("k"), table.namespace("other")]
    table.clear()
    assert held == [{}, {}]
