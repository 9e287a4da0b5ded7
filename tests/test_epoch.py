"""Epochs: a revision counts in one lifetime of a board, and says which.

A store's data gets a random epoch when it is made (an SQLite data file keeps it; an in-memory
store's lasts as long as the store). The server announces it in its hello; the revisions the
proxies hand out carry it (``Revision``); a watch given one resumes only on a board of the same
epoch, even once the other board's revisions have passed that number. A plain int keeps the
rules it always had.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest

from aionamespace import (
    AsyncNamespace,
    HistoryExpired,
    MemoryStore,
    Namespace,
    Server,
    ServerThread,
    SQLiteStore,
)
from aionamespace.client.calls import Revision
from aionamespace.protocol.connection import ClientConnection, Hello, ServerConnection
from aionamespace.protocol.ops import check_args
from deadlines import wait_until


def test_the_server_hello_announces_its_epoch() -> None:
    client = ClientConnection()
    client.start()
    (hello,) = client.receive_data(ServerConnection(epoch="0123456789abcdef").send_hello())
    assert isinstance(hello, Hello)
    assert client.epoch == "0123456789abcdef"
    client = ClientConnection()
    client.start()
    client.receive_data(ServerConnection().send_hello())
    assert client.epoch is None  # a server that does not say: revisions stay plain ints


@pytest.mark.parametrize(
    ("since", "valid"),
    [
        (None, True),
        (3, True),
        (["0123456789abcdef", 3], True),
        (["e" * 64, 0], True),
        (["", 3], False),
        (["e" * 65, 3], False),
        (["epoch", -1], False),
        (["epoch", 3, 4], False),
        ([3, "epoch"], False),
        ("epoch", False),
    ],
)
def test_a_watch_since_is_an_int_or_an_epoch_and_an_int(since: object, valid: bool) -> None:
    problem = check_args(ServerConnection().limits, "watch", ("key", None, since))
    assert (problem is None) is valid, problem


def test_a_revision_is_an_int_that_knows_its_epoch() -> None:
    revision = Revision(7, "0123456789abcdef")
    assert revision == 7
    assert revision + 1 == 8
    assert {revision: "x"}[7] == "x"
    again = pickle.loads(pickle.dumps(revision))
    assert type(again) is Revision
    assert again == 7
    assert again.epoch == "0123456789abcdef"
    assert repr(revision) == "Revision(7, epoch='0123456789abcdef')"


@pytest.fixture
def data(tmp_path: Path) -> str:
    return str(tmp_path / "board.db")


@pytest.fixture
def serve(short_tmp: str, server_backend: str) -> Iterator[object]:
    """Starts a server on one address, over the store given, and stops it at the end."""
    started: list[tuple[ServerThread, object]] = []
    address = os.path.join(short_tmp, "s.sock")

    def start(store: object) -> ServerThread:
        server = ServerThread(address, backend=server_backend, store=store)
        server.start()
        started.append((server, store))
        return server

    yield start
    for server, store in started:
        server.stop()
        close = getattr(store, "close", None)
        if close is not None:
            close()


def stop(server: ServerThread, store: SQLiteStore | MemoryStore) -> None:
    server.stop()
    store.close()


def test_revisions_handed_out_carry_the_epoch(serve: object, data: str) -> None:
    store = SQLiteStore(data)
    server = serve(store)  # type: ignore[operator]
    ns = Namespace(server.address, "board")
    revision = ns._update(x=1)
    snapshot = ns._snapshot()
    with ns._watch() as watch:
        ns.x = 2
        event = watch.next(timeout=10)
    for handed_out in (revision, snapshot.revision, watch.revision, event.revision):
        assert type(handed_out) is Revision
        assert handed_out.epoch == store.epoch
    assert (revision, snapshot.revision, watch.revision, event.revision) == (1, 1, 1, 2)


def test_a_watch_resumes_across_a_restart_on_the_same_file(serve: object, data: str) -> None:
    store = SQLiteStore(data)
    server = serve(store)  # type: ignore[operator]
    ns = Namespace(server.address, "board")
    ns.x = 1
    last = ns._snapshot().revision
    ns.x = 2
    server.stop()
    store.close()
    store = SQLiteStore(data)  # the same board, restarted
    server = serve(store)  # type: ignore[operator]
    ns.x = 3
    with ns._watch(since=last) as watch:
        assert [watch.next(timeout=10).value for _ in range(2)] == [2, 3]


def test_a_revision_of_another_epoch_expires_even_once_passed(
    serve: object, tmp_path: Path
) -> None:
    store = SQLiteStore(str(tmp_path / "one.db"))
    server = serve(store)  # type: ignore[operator]
    ns = Namespace(server.address, "board")
    ns.x = "old"
    seen = ns._snapshot().revision  # 1, of the first board
    server.stop()
    store.close()
    store = SQLiteStore(str(tmp_path / "two.db"))  # another board at the same address
    server = serve(store)  # type: ignore[operator]
    ns.x = "new 1"
    ns.x = "new 2"  # revision 2 here: past the 1 seen
    with (
        pytest.raises(HistoryExpired, match="another lifetime of this board"),
        ns._watch(since=seen),
    ):
        pass
    with ns._watch(since=int(seen)) as watch:  # a plain int: today's rule, it replays
        assert watch.next(timeout=10).value == "new 2"


@pytest.mark.anyio
async def test_the_async_proxy_hands_out_revisions_with_their_epoch(short_tmp: str) -> None:
    store = MemoryStore()
    async with Server(os.path.join(short_tmp, "s.sock"), store=store) as server:
        async with AsyncNamespace(server.address, "board") as ns:
            revision = await ns._update(x=1)
            snapshot = await ns._snapshot()
            async with ns._watch(since=revision) as watch:
                ns.x = 2
                with anyio.fail_after(10):
                    event = await watch.__anext__()
            for handed_out in (revision, snapshot.revision, watch.revision, event.revision):
                assert type(handed_out) is Revision
                assert handed_out.epoch == store.epoch
            assert event.revision == 2


def test_a_cache_starts_empty_on_a_board_of_another_epoch(serve: object, tmp_path: Path) -> None:
    """A cache lives on its connection: a server gone takes it along, so a proxy that reaches
    the next board (another epoch, the same revision numbers) never reads the last one's."""
    store = SQLiteStore(str(tmp_path / "one.db"))
    server = serve(store)  # type: ignore[operator]
    cached = Namespace(server.address, "board", cache=True)
    Namespace(server.address, "board").x = "old board"
    assert cached.x == "old board"  # cached now
    server.stop()
    state = cached._aionamespace
    wait_until(lambda: state.cache is None or not state.cache.usable, "the cache sees the end")
    store = SQLiteStore(str(tmp_path / "two.db"))
    server = serve(store)  # type: ignore[operator]
    Namespace(server.address, "board").x = "new board"  # revision 1 again, another epoch
    assert cached.x == "new board"


def test_a_revision_prints_as_the_int_it_is() -> None:
    revision = Revision(7, "0123456789abcdef")
    assert (str(revision), f"{revision}", f"{revision:>4}", repr(int(revision))) == (
        "7",
        "7",
        "   7",
        "7",
    )
