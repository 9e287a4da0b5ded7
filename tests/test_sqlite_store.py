"""The SQLite store's file: what it refuses, what it costs, and what survives a reopening.

Its behaviour as a store (revisions, history, lists) is the in-memory store's, tested on both
(and across a reopening before every call) by test_store.py and test_store_history.py. Here:
the data file itself, on real files.
"""

from __future__ import annotations

import os
import sqlite3
import stat
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from hypothesis import HealthCheck, given, settings

from aionamespace import DataFileError, HistoryExpired, SQLiteStore
from aionamespace.protocol.codec import decode_value, encode_value
from aionamespace.server.stores import materialised
from aionamespace.server.stores import sqlite as sqlite_module
from aionamespace.server.stores.datafile import FORMAT
from test_codec import assert_same, values


@pytest.fixture
def path(tmp_path: Path) -> str:
    return str(tmp_path / "board.db")


@pytest.fixture
def opened() -> Iterator[list[SQLiteStore]]:
    """Stores a test opened, closed at its end."""
    stores: list[SQLiteStore] = []
    yield stores
    for store in stores:
        store.close()


def reopen(store: SQLiteStore, opened: list[SQLiteStore]) -> SQLiteStore:
    store.commit_now()
    store.close()
    opened.remove(store)
    again = SQLiteStore(store.path)
    opened.append(again)
    return again


def test_a_new_file_is_created_for_its_owner_alone(path: str, opened: list[SQLiteStore]) -> None:
    opened.append(SQLiteStore(path))
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600


def test_a_second_store_on_the_same_file_is_refused(path: str, opened: list[SQLiteStore]) -> None:
    opened.append(SQLiteStore(path))
    with pytest.raises(DataFileError, match="in use by another aionamespace server"):
        SQLiteStore(path)


def test_the_file_is_free_again_once_closed(path: str, opened: list[SQLiteStore]) -> None:
    SQLiteStore(path).close()
    opened.append(SQLiteStore(path))


def test_a_file_that_is_not_ours_is_refused_and_left_alone(path: str) -> None:
    other = sqlite3.connect(path)
    other.execute("CREATE TABLE accounts (name TEXT)")
    other.commit()
    other.close()
    before = Path(path).read_bytes()
    with pytest.raises(DataFileError, match="is not an aionamespace data file"):
        SQLiteStore(path)
    assert Path(path).read_bytes() == before


def test_a_file_that_is_not_sqlite_is_refused_and_left_alone(path: str) -> None:
    Path(path).write_bytes(b"not a database, but a shopping list\n" * 200)
    with pytest.raises(DataFileError, match="cannot be read as a data file"):
        SQLiteStore(path)
    assert Path(path).read_bytes() == b"not a database, but a shopping list\n" * 200


def test_a_newer_format_is_refused(path: str) -> None:
    SQLiteStore(path).close()
    db = sqlite3.connect(path)
    db.execute(f"PRAGMA user_version = {FORMAT + 1}")
    db.commit()
    db.close()
    with pytest.raises(DataFileError, match=f"has format {FORMAT + 1}, newer than"):
        SQLiteStore(path)


def test_a_damaged_file_is_refused_never_an_empty_board(path: str) -> None:
    store = SQLiteStore(path)
    store.update("k", {f"n{i}": encode_value("x" * 1000) for i in range(200)})
    store.commit_now()
    store.close()
    wal = Path(path + "-wal")
    if wal.exists():  # checkpoint, so that the damage below is in the database file itself
        db = sqlite3.connect(path)
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        db.close()
    data = bytearray(Path(path).read_bytes())
    data[4096 : 4096 * 3] = b"\xff" * (4096 * 2)  # pages of the tables, overwritten
    Path(path).write_bytes(bytes(data))
    with pytest.raises(DataFileError):
        SQLiteStore(path)


def test_an_unwritable_place_is_refused(tmp_path: Path) -> None:
    with pytest.raises(DataFileError, match="cannot open the data file"):
        SQLiteStore(str(tmp_path / "no such directory" / "board.db"))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(value=values)
def test_every_value_survives_a_reopening(tmp_path_factory: Any, value: Any) -> None:
    path = str(tmp_path_factory.mktemp("values") / "board.db")
    store = SQLiteStore(path)
    store.set("k", "v", encode_value(value))
    store.commit_now()
    store.close()
    store = SQLiteStore(path)
    try:
        assert_same(value, decode_value(store.get("k", "v")))
    finally:
        store.close()


def test_revisions_epoch_and_history_continue(path: str, opened: list[SQLiteStore]) -> None:
    store = SQLiteStore(path)
    opened.append(store)
    epoch = store.epoch
    for i in range(5):
        store.set("k", "x", encode_value(i))
    store.append("k", "log", [encode_value("a")])
    store = reopen(store, opened)
    assert store.epoch == epoch
    assert store.set("k", "x", encode_value(5)) == 7
    assert [change.revision for change in store.history("k", 4)] == [5, 6, 7]
    assert store.get("k", "log") == encode_value(["a"])


def test_a_new_file_has_a_new_epoch(tmp_path: Path, opened: list[SQLiteStore]) -> None:
    first, second = SQLiteStore(str(tmp_path / "a.db")), SQLiteStore(str(tmp_path / "b.db"))
    opened += [first, second]
    assert first.epoch != second.epoch
    assert len(first.epoch) == 16


def test_the_file_folds_what_the_history_no_longer_keeps(
    path: str, opened: list[SQLiteStore], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A write is one history row; once the file holds FOLD_REVISIONS revisions older than
    the history keeps, a commit writes the attributes they changed and forgets them."""
    from aionamespace import Limits
    from aionamespace.server.stores import sqlite

    monkeypatch.setattr(sqlite, "FOLD_REVISIONS", 4)
    limits = Limits(max_history_revisions=3)
    store = SQLiteStore(path, limits)
    opened.append(store)

    def in_file(table: str) -> list[Any]:
        query = f"SELECT * FROM {table} ORDER BY 1, 2"
        return store._file.db.execute(query).fetchall()

    store.set("k", "x", encode_value(0))
    store.commit_now()
    assert [row[1] for row in in_file("history")] == [1]
    assert in_file("attributes") == []  # not folded yet: the history row is the value
    for i in range(1, 6):  # revisions 2-6: the history keeps 4-6; 1-3 are beyond it
        store.set("k", "x", encode_value(i))
        store.commit_now()
    assert [row[1] for row in in_file("history")] == [1, 2, 3, 4, 5, 6]
    assert in_file("attributes") == []
    store.set("k", "x", encode_value(6))  # revision 7: 1-4 are beyond, 4 of them: folded
    store.commit_now()
    assert [row[1] for row in in_file("history")] == [5, 6, 7]
    assert [(row[1], row[3]) for row in in_file("attributes")] == [("x", encode_value(6))]
    store.set("k", "y", encode_value("y"))  # revision 8
    store.commit_now()
    assert [row[1] for row in in_file("history")] == [5, 6, 7, 8]
    store.close()
    opened.remove(store)
    store = SQLiteStore(path, limits)
    opened.append(store)
    assert store.snapshot("k", None) == (8, {"x": encode_value(6), "y": encode_value("y")})
    with pytest.raises(HistoryExpired):
        store.history("k", 4)
    assert [change.revision for change in store.history("k", 5)] == [6, 7, 8]


def test_an_append_writes_the_items_appended_not_the_list(
    path: str, opened: list[SQLiteStore]
) -> None:
    """A 10 MB log: each committed append of 1 KB adds about its own size to the file."""
    store = SQLiteStore(path)
    opened.append(store)
    store.set("k", "log", encode_value([b"x" * 1000] * 10_000))
    store.append("k", "log", [encode_value(b"first")])
    store.commit_now()
    store._file.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    item = encode_value(b"y" * 1000)
    for _ in range(10):
        store.append("k", "log", [item])
        store.commit_now()
    wal = os.path.getsize(path + "-wal")  # whole pages: a few per commit, whatever they hold
    assert wal < 1_000_000, f"10 appends of 1 KB to a 10 MB list wrote {wal} bytes of log"
    store = reopen(store, opened)
    assert decode_value(store.get("k", "log"))[-11:] == [b"first"] + [b"y" * 1000] * 10


def test_anonymous_namespaces_and_drops_persist(path: str, opened: list[SQLiteStore]) -> None:
    store = SQLiteStore(path)
    opened.append(store)
    store.open("#a1", {})  # created with no value: persisted all the same
    store.open("#a2", {"x": encode_value(1)})
    store.set("named", "x", encode_value(1))
    store = reopen(store, opened)
    assert store.keys() == ["#a1", "#a2", "named"]
    store.drop("#a2")
    store = reopen(store, opened)
    assert store.keys() == ["#a1", "named"]
    tables = ("attributes", "history", "namespaces")
    for table in tables:
        count = store._file.db.execute(f"SELECT count(*) FROM {table} WHERE key = '#a2'")
        assert count.fetchone()[0] == 0, table


def test_attribute_order_survives_a_reopening(path: str, opened: list[SQLiteStore]) -> None:
    store = SQLiteStore(path)
    opened.append(store)
    store.update("k", {"zebra": b"\x01", "apple": b"\x02", "mango": b"\x03"})
    store.delete("k", "apple")
    store.set("k", "apple", b"\x04")  # deleted and set again: now the last
    store.set("k", "zebra", b"\x05")  # set again: keeps its place
    expected = list(store.snapshot("k", None)[1])
    assert expected == ["zebra", "mango", "apple"]
    store = reopen(store, opened)
    assert list(store.snapshot("k", None)[1]) == expected


def test_a_replaced_list_is_kept_while_the_history_replays_it(
    path: str, opened: list[SQLiteStore], monkeypatch: pytest.MonkeyPatch
) -> None:
    from aionamespace import Limits
    from aionamespace.server.stores import sqlite

    monkeypatch.setattr(sqlite, "FOLD_REVISIONS", 1)  # fold as soon as the history forgets

    def chunks(store: SQLiteStore) -> int:
        return store._file.db.execute("SELECT count(*) FROM list_chunks").fetchone()[0]  # type: ignore[no-any-return]

    limits = Limits(max_history_revisions=3)
    store = SQLiteStore(path, limits)
    opened.append(store)
    store.append("k", "log", [encode_value("a")])  # 1
    store.commit_now()
    store.append("k", "log", [encode_value("b")])  # 2
    store.set("k", "log", encode_value("replaced"))  # 3
    store.commit_now()
    assert chunks(store) == 2  # the history replays revisions 1 and 2: the list stays
    store.close()
    opened.remove(store)
    store = SQLiteStore(path, limits)
    opened.append(store)
    assert [decode_value(materialised(change.value)) for change in store.history("k", 0)] == [
        ["a"],
        ["a", "b"],
        "replaced",
    ]
    store.set("k", "x", b"\x01")  # 4
    store.set("k", "x", b"\x02")  # 5: the history keeps 3-5, no append of the list
    store.commit_now()
    assert chunks(store) == 0


@pytest.mark.parametrize("fsync", [False, True])
def test_the_log_is_checkpointed_in_a_thread_and_reused(
    path: str, opened: list[SQLiteStore], monkeypatch: pytest.MonkeyPatch, fsync: bool
) -> None:
    """SQLite's own checkpoints would run inside a commit, on the event loop, with an fsync:
    the store runs them in a thread, once ``CHECKPOINT_PAGES`` were written to the log, which
    is then written from its start again instead of growing."""
    monkeypatch.setattr(sqlite_module, "CHECKPOINT_PAGES", 20)
    store = SQLiteStore(path, fsync=fsync)
    opened.append(store)
    loop_thread = threading.get_ident()
    checkpoints: list[int] = []
    checkpoint = store._file.checkpoint

    def counted() -> None:
        checkpoints.append(threading.get_ident())
        checkpoint()

    monkeypatch.setattr(store._file, "checkpoint", counted)

    async def write(n: int) -> None:
        for i in range(n):
            store.set("board", "x", encode_value(i))
            if not store.commit_inline():
                await store.commit()

    anyio.run(write, 50)
    wal = os.path.getsize(path + "-wal")
    assert checkpoints
    assert loop_thread not in checkpoints
    anyio.run(write, 200)  # ten times as many pages again
    assert len(checkpoints) >= 10
    assert os.path.getsize(path + "-wal") <= wal  # reused, not grown
    assert decode_value(reopen(store, opened).get("board", "x")) == 199


@pytest.mark.parametrize("fsync", [False, True])
def test_a_small_commit_runs_on_the_loop_and_a_large_one_in_a_thread(
    path: str, opened: list[SQLiteStore], monkeypatch: pytest.MonkeyPatch, fsync: bool
) -> None:
    """A commit of a few pages runs on the event loop's thread, however many writes it holds
    and even with fsync (a thread and back would cost it more than it saves); a commit of many
    bytes runs in a thread, so the loop applies the next batches meanwhile."""
    store = SQLiteStore(path, fsync=fsync)
    opened.append(store)
    loop_thread = threading.get_ident()
    writers: list[int] = []
    write = store._file.write

    def recorded(statements: Any) -> None:
        writers.append(threading.get_ident())
        write(statements)

    store.set("board", "made", b"\x01")  # (the namespace made: not a write counted below)
    store.commit_now()
    monkeypatch.setattr(store._file, "write", recorded)

    async def commit(writes: int, size: int) -> None:
        for i in range(writes):
            store.set("board", f"x{i}", encode_value(b"v" * size))
        await store.commit()

    anyio.run(commit, 8, 10)
    assert writers == [loop_thread]
    anyio.run(commit, 64, 10)
    assert writers[-1] == loop_thread
    anyio.run(commit, 1, sqlite_module.INLINE_COMMIT_BYTES + 1)
    assert writers[-1] != loop_thread
    assert len(writers) == 3
    assert decode_value(reopen(store, opened).get("board", "x8")) == b"v" * 10


def test_a_commit_of_one_revision_writes_what_the_general_path_writes(
    tmp_path: Path, opened: list[SQLiteStore], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A commit of one revision is made by ``_lone_revision`` when it can: the same rows,
    table by table, as ``_statements``'s general path writes for it (folds and lists too)."""
    from aionamespace import Limits

    monkeypatch.setattr(sqlite_module, "FOLD_REVISIONS", 4)
    limits = Limits(max_history_revisions=3)
    lone = SQLiteStore(tmp_path / "lone.db", limits)
    general = SQLiteStore(tmp_path / "general.db", limits)
    opened += [lone, general]
    monkeypatch.setattr(general, "_lone_revision", lambda *entry: None)
    taken: list[bool] = []
    lone_revision = lone._lone_revision

    def counted(*entry: Any) -> Any:
        statement = lone_revision(*entry)
        taken.append(statement is not None)
        return statement

    monkeypatch.setattr(lone, "_lone_revision", counted)
    steps: list[Any] = []
    for i in range(12):
        steps.append(lambda store, i=i: store.set("k", "x", encode_value(i)))
        if i % 3 == 0:
            steps.append(lambda store, i=i: store.update("k", {"y": encode_value(i)}))
        if i % 4 == 1:
            steps.append(lambda store: store.delete("k", "y"))
        if i % 5 == 2:
            steps.append(lambda store, i=i: store.append("k", "items", [encode_value(i)]))
    steps.append(lambda store: store.drop("k"))
    steps += [lambda store, i=i: store.set("k", "x", encode_value(i)) for i in range(3)]
    for step in steps:
        for store in (lone, general):
            step(store)
            store.commit_now()
        for table in ("namespaces", "attributes", "list_chunks", "history"):
            query = f"SELECT * FROM {table} ORDER BY 1, 2"
            rows = [store._file.db.execute(query).fetchall() for store in (lone, general)]
            assert rows[0] == rows[1], table
    assert any(taken)  # (both paths were taken by the lone store)
    assert not all(taken)
    assert reopen(lone, opened).snapshot("k", None) == (
        general.snapshot("k", None)[0],
        {"x": encode_value(2)},
    )
