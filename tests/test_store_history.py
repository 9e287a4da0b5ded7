"""Any store's history (server/stores/base.py, PROTOCOL.md 10): what it replays, and its bounds.

A store keeps the most recent revisions within ``max_history_revisions`` and
``max_history_bytes``, forgetting the oldest first and each whole; a watch from before them
gets HistoryExpired. An append's revision counts the bytes it appended (not the list's), and
a replay rebuilds every version of a list exactly. The property test holds a store to a model
that follows base.py's rules, with random appends, sets, deletes and watches.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aionamespace import HistoryExpired, Limits
from aionamespace.protocol.codec import encode_value
from aionamespace.protocol.lists import split_list
from aionamespace.server.stores import CHANGE_OVERHEAD_BYTES, Store
from store_rig import STORES, Commits, MakeStore, close_stores, replayed

ONE, TWO, THREE = encode_value(1), encode_value(2), encode_value(3)
OVERHEAD = CHANGE_OVERHEAD_BYTES


@pytest.fixture(params=list(STORES))
def make_store(request: pytest.FixtureRequest) -> Iterator[MakeStore]:
    """How each store under test is made, with the limits a test gives it."""
    yield STORES[request.param]
    close_stores()


def test_history_replays_whole_revisions_after_since(make_store: MakeStore) -> None:
    store = make_store(None)
    store.set("k", "x", ONE)
    store.update("k", {"x": TWO, "y": THREE})
    store.delete("k", "y")
    assert replayed(store, "k", 0) == [
        (1, "x", ONE),
        (2, "x", TWO),
        (2, "y", THREE),
        (3, "y", None),
    ]
    assert replayed(store, "k", 1) == [(2, "x", TWO), (2, "y", THREE), (3, "y", None)]
    assert store.history("k", 3) == []  # since is the current revision: nothing to replay
    assert store.history("never", 0) == []
    assert [change.key for change in store.history("k", 0)] == ["k"] * 4


def test_history_keeps_the_last_max_history_revisions(make_store: MakeStore) -> None:
    store = make_store(Limits(max_history_revisions=2))
    for value in (ONE, TWO, THREE):
        store.set("k", "x", value)
    store.update("k", {"x": ONE, "y": ONE})  # revision 4: two names, one revision
    assert replayed(store, "k", 2) == [(3, "x", THREE), (4, "x", ONE), (4, "y", ONE)]
    with pytest.raises(
        HistoryExpired, match=r"^revision 1 is older than the history kept \(oldest: 3\); resync"
    ):
        store.history("k", 1)


def test_history_ahead_of_the_namespace_is_expired(make_store: MakeStore) -> None:
    store = make_store(None)
    store.set("k", "x", ONE)
    with pytest.raises(HistoryExpired, match=r"revision 2 is ahead of this namespace \(1\)"):
        store.history("k", 2)
    with pytest.raises(HistoryExpired, match=r"revision 1 is ahead of this namespace \(0\)"):
        store.history("never", 1)  # as after a restart: the server forgot the namespace


def test_a_history_of_nothing_serves_only_the_current_revision(make_store: MakeStore) -> None:
    for limits in (Limits(max_history_revisions=0), Limits(max_history_bytes=0)):
        store = make_store(limits)
        store.set("k", "x", ONE)
        assert store.history("k", 1) == []
        with pytest.raises(HistoryExpired):
            store.history("k", 0)


def test_history_keeps_the_last_max_history_bytes(make_store: MakeStore) -> None:
    size = 1000 + OVERHEAD  # a set of a 1000-byte value
    store = make_store(Limits(max_history_bytes=3 * size))
    values = [encode_value(bytes([i]) * 997) for i in range(6)]  # bin 16: 1000 bytes each
    assert {len(value) for value in values} == {1000}
    for value in values:
        store.set("k", "x", value)
    assert replayed(store, "k", 3) == [(r, "x", values[r - 1]) for r in (4, 5, 6)]
    with pytest.raises(HistoryExpired, match=r"older than the history kept \(oldest: 4\)"):
        store.history("k", 2)
    store.delete("k", "x")  # a deletion costs OVERHEAD: the revision 4 no longer fits
    with pytest.raises(HistoryExpired, match=r"\(oldest: 5\)"):
        store.history("k", 3)
    store.update("k", {f"n{i}": b"\xc0" for i in range(3 * size // (1 + OVERHEAD))})
    with pytest.raises(HistoryExpired, match=r"\(oldest: 8\)"):  # each name counts OVERHEAD
        store.history("k", 6)
    store.set("k", "big", encode_value(b"x" * 3 * size))  # alone over the bound: not kept
    assert store.history("k", 9) == []
    with pytest.raises(HistoryExpired, match=r"\(oldest: 10\)"):
        store.history("k", 8)
    assert store.snapshot("k", ["big"])[0] == 9


def test_an_append_counts_the_items_it_appended(make_store: MakeStore) -> None:
    """A growing log keeps as many appends in history as their own bytes allow."""
    item = encode_value(b"x" * 98)  # 100 bytes
    store = make_store(Limits(max_history_bytes=50 * (100 + OVERHEAD)))
    for _ in range(1000):  # a 100 KB list: counted whole per append, none would fit
        store.append("k", "log", [item])
    assert [revision for revision, _, _ in replayed(store, "k", 950)] == list(range(951, 1001))
    assert replayed(store, "k", 999) == [(1000, "log", encode_value([b"x" * 98] * 1000))]
    with pytest.raises(HistoryExpired, match=r"\(oldest: 951\)"):
        store.history("k", 949)


def test_replacing_a_list_the_history_replays_counts_the_list(make_store: MakeStore) -> None:
    item = encode_value(b"x" * 98)  # 100 bytes
    store = make_store(Limits(max_history_bytes=100 * (100 + OVERHEAD)))
    for _ in range(40):  # 4,000 bytes of list, in 40 appends the history holds
        store.append("k", "log", [item])
    store.set("k", "log", ONE)  # the history still replays the old list: it counts 4,000 more
    assert replayed(store, "k", 39) == [
        (40, "log", encode_value([b"x" * 98] * 40)),
        (41, "log", ONE),
    ]
    for _ in range(60):  # 40 * 164 + (4,000 + 65) + 60 * 164 = 100 * 164 + 4,065: 25 appends go
        store.set("k", "n", item)
    with pytest.raises(HistoryExpired, match=r"\(oldest: 26\)"):
        store.history("k", 0)
    assert replayed(store, "k", 25)[0] == (26, "log", encode_value([b"x" * 98] * 26))
    store.delete("k", "n")  # not a list: counts OVERHEAD only
    with pytest.raises(HistoryExpired, match=r"\(oldest: 27\)"):
        store.history("k", 25)


def test_a_list_an_update_replaced_replays_as_its_appends_left_it(make_store: MakeStore) -> None:
    """An append, then an update that replaces the list (with other names): a replay from
    before the append finds the list the update replaced, not the new value. (The Redis
    store's history read took an update's entry for three-by-three changes: a KeyError.)"""
    store = make_store(Limits())
    store.append("k", "log", [ONE])
    store.append("k", "log", [ONE])
    store.update("k", {"a": ONE, "log": encode_value([]), "b": ONE})
    assert replayed(store, "k", 0) == [
        (1, "log", encode_value([1])),
        (2, "log", encode_value([1, 1])),
        (3, "a", ONE),
        (3, "log", encode_value([])),
        (3, "b", ONE),
    ]
    store.append("k", "log", [ONE])
    store.update("k", {"log": ONE})
    assert replayed(store, "k", 3) == [(4, "log", encode_value([1])), (5, "log", ONE)]


# ---------------------------------------------------------------------------- against a model


class Model:
    """base.py's rules, written plainly: the values, every revision, and what the store keeps."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.values: dict[str, Any] = {}
        self.log: list[tuple[int, dict[str, bytes | None]]] = []  # every revision ever
        self.kept: list[tuple[int, int]] = []  # (revision, size) the history holds
        self.appended: dict[str, int] = {}  # list grown by appends -> revision of the last

    @property
    def revision(self) -> int:
        return len(self.log)

    def commit(self, changes: dict[str, Any], sizes: dict[str, int]) -> None:
        """A change other than an append: ``sizes`` holds each new value's encoded length."""
        oldest = self.kept[0][0] if self.kept else self.revision + 1
        size = 0
        for name, value in changes.items():
            size += sizes[name] + OVERHEAD
            last_append = self.appended.pop(name, None)
            if last_append is not None and last_append >= oldest:  # a list the history holds
                size += _elements_bytes(self.values[name])
            if value is None:
                del self.values[name]
            else:
                self.values[name] = value
        self._record({name: _encoded(value) for name, value in changes.items()}, size)

    def append(self, name: str, items: list[Any]) -> None:
        self.values[name] = [*self.values.get(name, []), *items]
        self.appended[name] = self.revision + 1
        appended = sum(len(encode_value(item)) for item in items)
        self._record({name: encode_value(self.values[name])}, appended + OVERHEAD)

    def _record(self, changes: dict[str, bytes | None], size: int) -> None:
        self.log.append((self.revision + 1, changes))
        self.kept.append((self.revision, size))
        while self.kept and (
            len(self.kept) > self.limits.max_history_revisions
            or sum(size for _, size in self.kept) > self.limits.max_history_bytes
        ):
            del self.kept[0]

    def replay(self, since: int) -> list[tuple[int, str, bytes | None]] | None:
        """What history(since) returns, or None for HistoryExpired."""
        oldest = self.kept[0][0] if self.kept else self.revision + 1
        if since > self.revision or (since < self.revision and since < oldest - 1):
            return None
        return [
            (revision, name, value)
            for revision, changes in self.log[since:]
            for name, value in changes.items()
        ]


def _encoded(value: Any) -> bytes | None:
    return None if value is None else encode_value(value)


def _elements_bytes(value: list[Any]) -> int:
    encoded = encode_value(value)
    found = split_list(encoded)
    assert found is not None
    return len(encoded) - found[1]


names = st.sampled_from(["a", "b"])
items = st.lists(st.integers(-(2**40), 2**40) | st.text(max_size=40), max_size=4)
steps = st.lists(
    st.one_of(
        st.tuples(st.just("append"), names, items),
        st.tuples(st.just("append"), names, items),  # twice as likely: lists grow long
        st.tuples(st.just("set"), names, st.one_of(items, st.integers(), st.tuples(st.integers()))),
        st.tuples(st.just("delete"), names, st.none()),
        st.tuples(st.just("update"), names, items),  # sets a and b at once
        st.tuples(st.just("get"), names, st.none()),  # a read between changes
        st.tuples(st.just("watch"), st.none(), st.floats(0, 1)),  # a replay from some revision
    ),
    max_size=40,
)


@settings(max_examples=150, deadline=None)
@given(
    steps=steps,
    max_revisions=st.integers(0, 30),
    max_bytes=st.one_of(st.just(64 * 1024 * 1024), st.integers(0, 1500)),
)
def test_a_store_replays_what_a_model_of_its_rules_does(
    steps: list[tuple[str, Any, Any]], max_revisions: int, max_bytes: int
) -> None:
    limits = Limits(max_history_revisions=max_revisions, max_history_bytes=max_bytes)
    try:
        for make_store in STORES.values():
            store, model = make_store(limits), Model(limits)
            commits = Commits(store)
            for op, name, arg in steps:
                run_step(store, model, op, name, arg)
                assert [(revision, change) for _, revision, change in commits.seen] == model.log
            for since in range(model.revision + 2):
                check_replay(store, model, since)
    finally:
        close_stores()  # (each example makes its own: their files would pile up)


def run_step(store: Store, model: Model, op: str, name: str, arg: Any) -> None:
    if op == "append":
        if not isinstance(model.values.get(name, []), list):
            with pytest.raises(TypeError):
                store.append("k", name, [encode_value(i) for i in arg])
            return
        assert store.append("k", name, [encode_value(i) for i in arg]) == len(
            model.values.get(name, [])
        ) + len(arg)
        model.append(name, arg)
    elif op == "set":
        value = encode_value(arg)
        store.set("k", name, value)
        model.commit({name: arg}, {name: len(value)})
    elif op == "delete":
        if name in model.values:
            store.delete("k", name)
            model.commit({name: None}, {name: 0})
    elif op == "update":
        value = encode_value(arg)
        store.update("k", {"a": value, "b": value})
        model.commit({"a": arg, "b": arg}, {"a": len(value), "b": len(value)})
    elif op == "get":
        if name in model.values:
            assert store.get("k", name) == encode_value(model.values[name])
    else:
        check_replay(store, model, round(arg * model.revision))


def check_replay(store: Store, model: Model, since: int) -> None:
    expected = model.replay(since)
    if expected is None:
        with pytest.raises(HistoryExpired):
            store.history("k", since)
    else:
        assert replayed(store, "k", since) == expected
