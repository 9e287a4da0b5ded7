"""``MemoryStore`` alone: revisions, what creates a namespace, the commit hook, and the history.

The store's contract beyond what each op returns (PROTOCOL.md 5.3, 6, 10): every change is one
revision of its namespace, told once to ``on_commit``; an op that changes nothing, or fails,
commits nothing; only the ops the document lists create a namespace; and ``history`` replays
whole revisions after ``since``, or raises HistoryExpired when it cannot.
"""

from __future__ import annotations

import decimal
from typing import Any

import pytest

from aionamespace import HistoryExpired
from aionamespace.protocol.codec import decode_value, encode_value
from aionamespace.server.stores import Change, MemoryStore

ONE, TWO, THREE = encode_value(1), encode_value(2), encode_value(3)


class Commits:
    """What ``on_commit`` was told, in order."""

    def __init__(self, store: MemoryStore) -> None:
        self.seen: list[tuple[str, int, dict[str, bytes | None]]] = []
        store.on_commit = lambda key, revision, changes: self.seen.append(
            (key, revision, dict(changes))
        )


@pytest.fixture
def store() -> MemoryStore:
    return MemoryStore()


def test_each_change_is_one_revision_of_its_namespace(store: MemoryStore) -> None:
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
    store: MemoryStore, op: str, args: tuple[Any, ...], error: type[Exception] | None
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
    assert store.history("k", 0) == [
        Change("k", 1, name, value) for name, value in before[1].items()
    ]


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
    store: MemoryStore, op: str, args: tuple[Any, ...]
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
    store: MemoryStore, op: str, args: tuple[Any, ...], error: type[Exception] | None
) -> None:
    if error is None:
        getattr(store, op)(*args)
    else:
        with pytest.raises(error, match=r"^'Namespace' object has no attribute 'x'$"):
            getattr(store, op)(*args)
    assert store.keys() == []


def test_keys_are_sorted_by_code_point(store: MemoryStore) -> None:
    for key in ["b", "#anonymous", "a", "B", "é"]:
        store.open(key, {})
    assert store.keys() == ["#anonymous", "B", "a", "b", "é"]


def test_a_snapshot_is_a_copy_read_at_one_revision(store: MemoryStore) -> None:
    store.update("k", {"x": ONE, "y": TWO})
    _, values = store.snapshot("k", None)
    values["x"] = THREE
    del values["y"]
    assert store.snapshot("k", None) == (1, {"x": ONE, "y": TWO})
    assert store.snapshot("k", ["y", "missing"]) == (1, {"y": TWO})
    assert store.snapshot("k", []) == (1, {})
    assert store.snapshot("missing", None) == (0, {})


def test_incr_stores_and_returns_its_own_encoding(store: MemoryStore) -> None:
    assert store.incr("k", "n", b"\xd0\x07") == b"\x07"  # 7 as an int 8 comes back as 07
    assert store.get("k", "n") == b"\x07"
    assert decode_value(store.incr("k", "n", encode_value(0.5))) == 7.5
    assert decode_value(store.incr("k", "big", encode_value(2**64))) == 2**64


def test_cas_compares_values_by_type_and_equality(store: MemoryStore) -> None:
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


def test_history_replays_whole_revisions_after_since(store: MemoryStore) -> None:
    store.set("k", "x", ONE)
    store.update("k", {"x": TWO, "y": THREE})
    store.delete("k", "y")
    assert store.history("k", 0) == [
        Change("k", 1, "x", ONE),
        Change("k", 2, "x", TWO),
        Change("k", 2, "y", THREE),
        Change("k", 3, "y", None),
    ]
    assert store.history("k", 1) == [
        Change("k", 2, "x", TWO),
        Change("k", 2, "y", THREE),
        Change("k", 3, "y", None),
    ]
    assert store.history("k", 3) == []  # since is the current revision: nothing to replay
    assert store.history("never", 0) == []


def test_history_keeps_the_last_revisions_it_was_given(store: MemoryStore) -> None:
    short = MemoryStore(history=2)
    for value in (ONE, TWO, THREE):
        short.set("k", "x", value)
    short.update("k", {"x": ONE, "y": ONE})  # revision 4: two names, one revision
    assert short.history("k", 2) == [
        Change("k", 3, "x", THREE),
        Change("k", 4, "x", ONE),
        Change("k", 4, "y", ONE),
    ]  # the oldest it can serve
    with pytest.raises(
        HistoryExpired,
        match=r"revision 1 is older than the history kept "
        r"\(oldest: 3\)",
    ):
        short.history("k", 1)


def test_history_ahead_of_the_namespace_is_expired(store: MemoryStore) -> None:
    store.set("k", "x", ONE)
    with pytest.raises(HistoryExpired, match=r"revision 2 is ahead of this namespace \(1\)"):
        store.history("k", 2)
    with pytest.raises(HistoryExpired, match=r"revision 1 is ahead of this namespace \(0\)"):
        store.history("never", 1)  # as after a restart: the server forgot the namespace


def test_a_history_of_nothing_serves_only_the_current_revision() -> None:
    store = MemoryStore(history=0)
    store.set("k", "x", ONE)
    assert store.history("k", 1) == []
    with pytest.raises(HistoryExpired):
        store.history("k", 0)
