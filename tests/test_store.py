"""Any store, through the ``Store`` interface: revisions, what creates a namespace, the commit
hook, lists grown by appends, and the history.

The store's contract beyond what each op returns (PROTOCOL.md 5.3, 6, 10; server/stores/base.py):
every change is one revision of its namespace, told once to ``on_commit``; an op that changes
nothing, or fails, commits nothing; only the ops the document lists create a namespace; and
``history`` replays whole revisions after ``since``, or raises HistoryExpired when it cannot.
Every test runs on every store of ``store_rig.STORES``; test_store_history.py holds the
history's bounds.
"""

from __future__ import annotations

import decimal
import tracemalloc
from collections.abc import Iterator
from typing import Any

import pytest

from aionamespace.protocol.codec import decode_value, encode_value
from aionamespace.server.stores import Store
from store_rig import STORES, Commits, MakeStore, close_stores, replayed

ONE, TWO, THREE = encode_value(1), encode_value(2), encode_value(3)


@pytest.fixture(params=list(STORES))
def make_store(request: pytest.FixtureRequest) -> Iterator[MakeStore]:
    """How each store under test is made, with the limits a test gives it."""
    yield STORES[request.param]
    close_stores()


@pytest.fixture
def store(make_store: MakeStore) -> Store:
    return make_store(None)


def test_each_change_is_one_revision_of_its_namespace(store: Store) -> None:
    commits = Commits(store)
    assert store.set("a", "x", ONE) == 1
    assert store.set("b", "x", ONE) == 1  # revisions count per namespace
    assert store.set("a", "x", ONE) == 2  # the same value again: still a change
    assert store.update("a", {"y": TWO, "z": THREE}) == 3  # many names, one revision
    assert store.delete("a", "x") == 4
    assert store.pop("a", "y") == TWO
    assert store.incr("a", "n", ONE) == ONE
    assert store.append("a", "log", [ONE, TWO]) == 2
    assert store.cas("a", "n", ONE, TWO) is True
    assert store.setdefault("a", "s", THREE) == THREE
    store.open("a", {"z": ONE, "o": ONE})  # sets only o
    assert commits.seen == [
        ("a", 1, {"x": ONE}),
        ("b", 1, {"x": ONE}),
        ("a", 2, {"x": ONE}),
        ("a", 3, {"y": TWO, "z": THREE}),
        ("a", 4, {"x": None}),
        ("a", 5, {"y": None}),
        ("a", 6, {"n": ONE}),
        ("a", 7, {"log": encode_value([1, 2])}),
        ("a", 8, {"n": TWO}),
        ("a", 9, {"s": THREE}),
        ("a", 10, {"o": ONE}),
    ]
    assert store.snapshot("a", None) == (
        10,
        {"z": THREE, "n": TWO, "log": encode_value([1, 2]), "s": THREE, "o": ONE},
    )


@pytest.mark.parametrize(
    ("op", "args", "error"),
    [
        pytest.param("update", ("k", {}), None, id="update-nothing"),
        pytest.param("open", ("k", {"x": TWO}), None, id="open-a-name-set"),
        pytest.param("setdefault", ("k", "x", TWO), None, id="setdefault-a-name-set"),
        pytest.param("cas", ("k", "x", TWO, THREE), None, id="cas-unequal"),
        pytest.param("cas", ("k", "unset", ONE, TWO), None, id="cas-unset"),
        pytest.param("delete", ("k", "unset"), AttributeError, id="del-unset"),
        pytest.param("pop", ("k", "unset"), AttributeError, id="pop-unset"),
        pytest.param("incr", ("k", "x", encode_value("1")), TypeError, id="incr-by-a-str"),
        pytest.param("incr", ("k", "x", encode_value(True)), TypeError, id="incr-by-a-bool"),
        pytest.param("incr", ("k", "text", ONE), TypeError, id="incr-a-str"),
        pytest.param("incr", ("k", "huge", encode_value(0.5)), OverflowError, id="incr-overflow"),
        pytest.param("append", ("k", "text", [ONE]), TypeError, id="append-to-a-str"),
        pytest.param("append", ("k", "pair", [ONE]), TypeError, id="append-to-a-tuple"),
    ],
)
def test_an_op_that_changes_nothing_commits_nothing(
    store: Store, op: str, args: tuple[Any, ...], error: type[Exception] | None
) -> None:
    store.update(
        "k",
        {
            "x": ONE,
            "text": encode_value("abc"),
            "huge": encode_value(10**400),
            "pair": encode_value((1, 2)),
        },
    )
    before = store.snapshot("k", None)
    commits = Commits(store)
    if error is None:
        getattr(store, op)(*args)
    else:
        with pytest.raises(error):
            getattr(store, op)(*args)
    assert commits.seen == []
    assert store.snapshot("k", None) == before
    assert replayed(store, "k", 0) == [(1, name, value) for name, value in before[1].items()]


@pytest.mark.parametrize(
    ("op", "args"),
    [
        ("open", ("new", {})),
        ("update", ("new", {})),
        ("cas", ("new", "x", ONE, TWO)),
        ("set", ("new", "x", ONE)),
        ("setdefault", ("new", "x", ONE)),
        ("incr", ("new", "x", ONE)),
        ("append", ("new", "x", [])),
    ],
    ids=["open", "update", "cas", "set", "setdefault", "incr", "append"],
)
def test_these_ops_create_the_namespace_even_changing_nothing(
    store: Store, op: str, args: tuple[Any, ...]
) -> None:
    getattr(store, op)(*args)
    assert store.keys() == ["new"]


@pytest.mark.parametrize(
    ("op", "args", "error"),
    [
        ("get", ("new", "x"), AttributeError),
        ("delete", ("new", "x"), AttributeError),
        ("pop", ("new", "x"), AttributeError),
        ("snapshot", ("new", None), None),
        ("history", ("new", 0), None),
    ],
    ids=["get", "del", "pop", "snapshot", "history"],
)
def test_reads_and_failed_removals_create_no_namespace(
    store: Store, op: str, args: tuple[Any, ...], error: type[Exception] | None
) -> None:
    if error is None:
        getattr(store, op)(*args)
    else:
        with pytest.raises(error, match=r"^'Namespace' object has no attribute 'x'$"):
            getattr(store, op)(*args)
    assert store.keys() == []


def test_keys_are_sorted_by_code_point(store: Store) -> None:
    for key in ["b", "#anonymous", "a", "B", "é"]:
        store.open(key, {})
    assert store.keys() == ["#anonymous", "B", "a", "b", "é"]


def test_a_snapshot_is_a_copy_read_at_one_revision(store: Store) -> None:
    store.update("k", {"x": ONE, "y": TWO})
    _, values = store.snapshot("k", None)
    values["x"] = THREE
    del values["y"]
    assert store.snapshot("k", None) == (1, {"x": ONE, "y": TWO})
    assert store.snapshot("k", ["y", "missing"]) == (1, {"y": TWO})
    assert store.snapshot("k", []) == (1, {})
    assert store.snapshot("missing", None) == (0, {})


def test_incr_stores_and_returns_its_own_encoding(store: Store) -> None:
    assert store.incr("k", "n", b"\xd0\x07") == b"\x07"  # 7 as an int 8 comes back as 07
    assert store.get("k", "n") == b"\x07"
    assert decode_value(store.incr("k", "n", encode_value(0.5))) == 7.5
    assert decode_value(store.incr("k", "big", encode_value(2**64))) == 2**64


def test_cas_compares_values_by_type_and_equality(store: Store) -> None:
    store.set("k", "n", ONE)
    assert store.cas("k", "n", encode_value(1.0), TWO) is False  # 1.0 is a float
    assert store.cas("k", "n", encode_value(True), TWO) is False
    assert store.cas("k", "n", b"\xd0\x01", TWO) is True  # 1, encoded longer: equal
    store.set("k", "s", encode_value({1, 2}))
    assert store.cas("k", "s", encode_value(frozenset({1, 2})), ONE) is False
    signalling = encode_value(decimal.Decimal("sNaN"))
    store.set("k", "d", signalling)
    assert store.cas("k", "d", encode_value(decimal.Decimal(1)), ONE) is False  # no exception
    assert store.cas("k", "d", signalling, ONE) is True  # equal to its own bytes only


# ---------------------------------------------------------------------------- lists and appends


def test_append_extends_a_list_and_refuses_anything_else(store: Store) -> None:
    assert store.append("k", "log", []) == 0  # a missing name starts as an empty list
    assert store.get("k", "log") == encode_value([])
    assert store.append("k", "log", [ONE, TWO]) == 2
    store.set("k", "set_list", encode_value(list(range(20))))  # array 16 header
    assert store.append("k", "set_list", [ONE]) == 21
    assert decode_value(store.get("k", "set_list")) == [*range(20), 1]
    for value in [(1, 2), frozenset({1}), {1}, "abc", 5, None, {"a": 1}]:
        store.set("k", "other", encode_value(value))
        with pytest.raises(TypeError, match=r"cannot append to 'other': it holds a "):
            store.append("k", "other", [ONE])
        assert decode_value(store.get("k", "other")) == value
    with pytest.raises(TypeError, match="cannot increment 'log': it holds a list"):
        store.incr("k", "log", ONE)
    assert store.get("k", "log") == encode_value([1, 2])


def test_an_appended_list_reads_as_one_encoded_list_everywhere(store: Store) -> None:
    store.append("k", "log", [encode_value(i) for i in range(3)])
    for i in range(3, 20):  # past 15 items: the header grows to array 16
        store.append("k", "log", [encode_value(i)])
    whole = encode_value(list(range(20)))
    assert store.get("k", "log") == whole
    assert store.snapshot("k", None) == (18, {"log": whole})
    assert store.snapshot("k", ["log"]) == (18, {"log": whole})
    assert store.setdefault("k", "log", ONE) == whole
    assert store.cas("k", "log", encode_value(list(range(19))), ONE) is False
    assert store.cas("k", "log", whole, encode_value([0])) is True
    assert store.append("k", "log", [ONE]) == 2
    assert store.pop("k", "log") == encode_value([0, 1])
    assert store.snapshot("k", None) == (21, {})


def test_each_revision_of_a_list_replays_as_it_was(store: Store) -> None:
    """A replay rebuilds the list at each revision, whatever happened to it afterwards."""
    commits = Commits(store)
    store.set("k", "log", encode_value(["a"]))  # 1
    store.append("k", "log", [encode_value("b")])  # 2
    assert store.get("k", "log") == encode_value(["a", "b"])  # read between two appends
    store.append("k", "log", [encode_value("c"), encode_value("d")])  # 3
    store.append("k", "log", [])  # 4: an empty append is a change too
    store.set("k", "log", encode_value(["new"]))  # 5: replaced
    store.append("k", "log", [encode_value("e")])  # 6
    store.delete("k", "log")  # 7
    expected = [
        (1, "log", encode_value(["a"])),
        (2, "log", encode_value(["a", "b"])),
        (3, "log", encode_value(["a", "b", "c", "d"])),
        (4, "log", encode_value(["a", "b", "c", "d"])),
        (5, "log", encode_value(["new"])),
        (6, "log", encode_value(["new", "e"])),
        (7, "log", None),
    ]
    assert [
        (revision, name, value)
        for _, revision, change in commits.seen
        for name, value in change.items()
    ] == expected
    assert replayed(store, "k", 0) == expected
    assert replayed(store, "k", 2) == expected[2:]


def test_appending_costs_the_items_appended_not_the_list() -> None:
    """A memory regression: every append used to copy the whole list into a new value. (Not
    on "sqlite reopened", which loads the whole list again before every call by design:
    test_sqlite_store.py measures what an append costs that store's file.)"""
    for name, make_store in STORES.items():
        if name.startswith("sqlite reopened"):
            continue
        store = make_store(None)
        store.set("k", "log", encode_value([b"x" * 1000] * 10_000))  # a 10 MB list
        store.append("k", "log", [encode_value(b"first")])
        item = encode_value(b"y" * 1000)
        tracemalloc.start()
        try:
            for _ in range(10):
                store.append("k", "log", [item])
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert peak < 1_000_000, f"10 appends of 1 KB to a 10 MB list allocated {peak} bytes"
        assert (
            decode_value(store.get("k", "log"))[-12:]
            == [b"x" * 1000, b"first"] + [b"y" * 1000] * 10
        )
    close_stores()


def test_a_list_past_the_longest_array_is_refused(store: Store) -> None:
    huge = b"\xdd\xff\xff\xff\xfe" + ONE  # claims 2**32 - 2 items: only its header is read
    store.set("k", "log", huge)
    assert store.append("k", "log", [ONE]) == 2**32 - 1
    with pytest.raises(ValueError, match="a list holds at most 4294967295 items"):
        store.append("k", "log", [ONE])
    assert store.snapshot("k", None)[0] == 2
