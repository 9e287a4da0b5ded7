"""The server over a store it awaits (``RemoteStore``), with ``AwaitedStore`` in Redis's place.

Real servers on real sockets, on asyncio and on trio: a batch's store calls go in one
``apply``, replies keep request order whatever the batch mixes, a connection's next chunk waits
for its batch while other connections go on; two servers over one board see each other's
writes (watches, caches), with nothing lost between a read and what it starts; the store's
losses and new epochs end what cannot go on; a store that does not answer is an error reply,
not a lost connection; a store that cannot run on trio is refused there.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import anyio
import msgpack
import pytest

from aionamespace import (
    HistoryExpired,
    Limits,
    Namespace,
    ServerThread,
    StoreUnavailable,
)
from aionamespace.client.calls import WatchEvent
from aionamespace.protocol.codec import decode_value, encode_value
from aionamespace.protocol.events import PUSH_EVENT, PUSH_INVALIDATE
from aionamespace.server.locks import LockTable
from awaited_store import AwaitedStore, Board, servers_on_one_loop
from deadlines import NO_HANG_SECONDS, wait_until
from raw_client import connect_raw, exchange, hello_frame, pack

WRITERS = 3
WRITES = 100


def read_frames(sock: socket.socket, unpacker: msgpack.Unpacker, count: int) -> list[Any]:
    """The next ``count`` frames (or fewer, if the server closes first)."""
    frames: list[Any] = list(unpacker)
    while len(frames) < count:
        data = sock.recv(65536)
        if not data:
            break
        unpacker.feed(data)
        frames.extend(unpacker)
    return frames


def read_to_the_end(sock: socket.socket, unpacker: msgpack.Unpacker) -> list[Any]:
    """Every frame until the server closes the connection."""
    frames: list[Any] = list(unpacker)
    while data := sock.recv(65536):
        unpacker.feed(data)
        frames.extend(unpacker)
    return frames


def eventually(read: Callable[[], Any], expected: Any) -> None:
    deadline = time.monotonic() + NO_HANG_SECONDS
    while (seen := read()) != expected:
        assert time.monotonic() < deadline, f"still {seen!r}, not {expected!r}"


@pytest.fixture
def awaited(server_backend: str, short_tmp: str) -> Iterator[tuple[ServerThread, AwaitedStore]]:
    """A server over an AwaitedStore of its own."""
    store = AwaitedStore()
    address = os.path.join(short_tmp, "r.sock")
    with ServerThread(address, backend=server_backend, store=store) as server:
        assert store.started
        yield server, store
    assert store.closed  # (awaited as the server stopped)


@pytest.fixture
def two_servers(
    server_backend: str, short_tmp: str
) -> Iterator[tuple[Board, list[AwaitedStore], list[str]]]:
    """Two servers over one board (as two servers over one Redis): the board, their stores,
    their addresses."""
    board = Board()
    stores = [AwaitedStore(board), AwaitedStore(board)]
    with servers_on_one_loop(stores, server_backend, short_tmp) as servers:
        yield board, stores, [str(server.address) for server in servers]


# ---------------------------------------------------------------------- batches


def test_a_batch_of_store_calls_is_one_apply(awaited: tuple[ServerThread, AwaitedStore]) -> None:
    server, store = awaited
    sock, unpacker = connect_raw(str(server.address))
    before = len(store.applies)
    requests = [[i, "set", "board", f"n{i}", encode_value(i)] for i in range(1, 51)]
    sock.sendall(b"".join(map(pack, requests)))  # one write: one chunk, one batch
    frames = read_frames(sock, unpacker, 50)
    assert frames == [[i, 0, i] for i in range(1, 51)]  # revisions 1..50, in order
    assert store.applies[before:] == [[("set", tuple(r[2:])) for r in requests]]
    sock.close()


def test_replies_keep_request_order_in_a_batch_of_every_kind(
    awaited: tuple[ServerThread, AwaitedStore],
) -> None:
    """Store calls, ops answered at once and ops served in turn, in one batch: replies in
    request order, pushes after them; the store calls between two ops served in turn go in
    one apply."""
    server, store = awaited
    sock, unpacker = connect_raw(str(server.address))
    one, two, five = encode_value(1), encode_value(2), encode_value(5)
    requests = [
        [1, "set", "b", "a", one],
        [2, "ping"],
        [3, "get", "b", "a"],
        [4, "keys"],
        [5, "incr", "b", "n", five],
        [6, "track", True],
        [7, "get", "b", "a"],  # tracked: read with its revision
        [8, "snapshot", "b", None],
        [9, "get", "b", "ghost"],
        [10, "acquire", "b", "lock", b"token", None],
        [11, "release", "b", "lock", b"token"],
        [12, "dump", "b"],
        [13, "watch", "b", None, None],
        [14, "set", "b", "a", two],
        [15, "unwatch", 1],
        [16, "info"],
    ]
    before = len(store.applies)
    sock.sendall(b"".join(map(pack, requests)))
    frames = read_frames(sock, unpacker, len(requests) + 2)
    replies = [frame for frame in frames if frame[0] != 0]
    assert [reply[0] for reply in replies] == list(range(1, 17))
    assert frames[: len(replies)] == replies  # the pushes follow every reply
    by_id = {reply[0]: reply[1:] for reply in replies}
    assert by_id[1] == [0, 1]
    assert by_id[2] == [0, None]
    assert by_id[3] == [0, one]
    assert by_id[4] == [0, ["b"]]
    assert decode_value(by_id[5][1]) == 5
    assert by_id[7] == [0, one]
    assert by_id[8] == [0, [2, {"a": one, "n": five}]]
    assert by_id[9][:2] == [1, "AttributeError"]
    assert by_id[10] == [0, None]
    assert by_id[11] == [0, True]
    assert by_id[12] == [0, {"a": one, "n": five}]
    assert by_id[13] == [0, [1, 2, {"a": one, "n": five}]]
    assert by_id[14] == [0, 3]
    assert by_id[15] == [0, True]
    assert by_id[16][1]["store"] == "AwaitedStore"
    assert by_id[16][1]["epoch"] == store.epoch
    pushes = frames[len(replies) :]
    assert sorted(pushes, key=lambda push: push[1]) == [
        [0, PUSH_EVENT, 1, 3, "a", two],  # the watch saw the set after it
        [0, PUSH_INVALIDATE, "b", "a"],  # the tracked read went stale
    ]
    assert [[op for op, _ in calls] for calls in store.applies[before:]] == [
        ["set", "get"],  # (ping answered at once; keys in turn, awaiting keys())
        ["incr", "snapshot", "snapshot", "snapshot"],  # (tracked gets: with their revisions)
        ["snapshot", "snapshot", "set"],  # dump, watch, set (then unwatch, info in turn)
    ]
    sock.close()


def test_a_connection_waits_for_its_batch_while_the_others_go_on(
    awaited: tuple[ServerThread, AwaitedStore],
) -> None:
    server, store = awaited
    slow, slow_frames = connect_raw(str(server.address))
    fast, fast_frames = connect_raw(str(server.address))
    store.hold("slow")
    slow.sendall(pack([1, "set", "slow", "x", encode_value(1)]))
    wait_until(lambda: store.held == 1, "the slow batch is in the store")
    slow.sendall(pack([2, "get", "slow", "x"]))  # its next chunk: must wait, then see x
    assert exchange(fast, fast_frames, [1, "set", "fast", "y", encode_value(2)]) == [[1, 0, 1]]
    assert exchange(fast, fast_frames, [2, "get", "fast", "y"]) == [[2, 0, encode_value(2)]]
    assert not any(call == ("get", ("slow", "x")) for calls in store.applies for call in calls)
    store.release("slow")
    assert read_frames(slow, slow_frames, 2) == [[1, 0, 1], [2, 0, encode_value(1)]]
    slow.close()
    fast.close()


# ---------------------------------------------------------------------- two servers, one board


def test_a_watcher_on_one_server_sees_every_write_through_another(
    two_servers: tuple[Board, list[AwaitedStore], list[str]],
) -> None:
    _, _, (a, b) = two_servers
    watcher = Namespace(b, "shared")

    def write(worker: int) -> None:
        writer = Namespace(a, "shared")
        for value in range(WRITES):
            setattr(writer, f"w{worker}", value)
        writer._close()

    with watcher._watch() as watch:
        threads = [threading.Thread(target=write, args=(w,)) for w in range(WRITERS)]
        for thread in threads:
            thread.start()
        events = [watch.next(timeout=NO_HANG_SECONDS) for _ in range(WRITERS * WRITES)]
        for thread in threads:
            thread.join(NO_HANG_SECONDS)
    assert [event.revision for event in events] == list(range(1, WRITERS * WRITES + 1))
    for worker in range(WRITERS):
        assert [e.value for e in events if e.name == f"w{worker}"] == list(range(WRITES))
    watcher._close()


def test_a_cached_reader_on_one_server_is_invalidated_by_writes_through_another(
    two_servers: tuple[Board, list[AwaitedStore], list[str]],
) -> None:
    _, stores, (a, b) = two_servers
    writer = Namespace(a, "cached")
    reader = Namespace(b, "cached", cache=True)
    writer.x = 1
    assert reader.x == 1
    assert "cached" in stores[1].following  # its cache's name: followed on B only
    assert "cached" not in stores[0].following
    for value in range(2, 30):
        writer.x = value
        eventually(lambda: reader.x, value)
    del writer.x
    eventually(lambda: hasattr(reader, "x"), False)
    writer._close()
    reader._close()


def test_a_write_while_a_tracked_read_is_out_invalidates_what_it_read(
    two_servers: tuple[Board, list[AwaitedStore], list[str]],
) -> None:
    """B reads x (tracked), and before B has the answer A changes x: B's reader must not keep
    the old value (it gets it, then its invalidation)."""
    _, (store_a, store_b), (a, b) = two_servers
    writer = Namespace(a, "race")
    writer.x = 1
    reader, frames = connect_raw(b)
    assert exchange(reader, frames, [1, "track", True]) == [[1, 0, None]]
    store_b.hold("race", after=True)  # B's read has read x = 1; its answer waits
    reader.sendall(pack([2, "get", "race", "x"]))
    wait_until(lambda: store_b.held == 1, "B's read is out")
    writer.x = 2  # through A, while B's read is out
    store_b.release("race")
    assert read_frames(reader, frames, 2) == [
        [2, 0, encode_value(1)],
        [0, PUSH_INVALIDATE, "race", "x"],
    ]
    assert exchange(reader, frames, [3, "get", "race", "x"]) == [[3, 0, encode_value(2)]]
    writer.x = 3  # tracked again by that read: invalidated again
    assert read_frames(reader, frames, 1) == [[0, PUSH_INVALIDATE, "race", "x"]]
    assert store_a.applies  # (A served the writes)
    reader.close()
    writer._close()


def test_a_write_while_a_watch_starts_is_pushed_once(
    two_servers: tuple[Board, list[AwaitedStore], list[str]],
) -> None:
    """B's watch reads its snapshot; A's write lands before B has the answer: the watch starts
    at the snapshot's revision and gets the write as its first push, neither lost nor twice."""
    _, (_, store_b), (a, b) = two_servers
    writer = Namespace(a, "start")
    writer.x = 1
    watcher, frames = connect_raw(b)
    store_b.hold("start", after=True)
    watcher.sendall(pack([1, "watch", "start", None, None]))
    wait_until(lambda: store_b.held == 1, "B's watch read its snapshot")
    writer.x = 2
    store_b.release("start")
    (reply, push) = read_frames(watcher, frames, 2)
    watch_id, revision, values = reply[2]
    assert (revision, values) == (1, {"x": encode_value(1)})
    assert push == [0, PUSH_EVENT, watch_id, 2, "x", encode_value(2)]
    writer.x = 3
    assert read_frames(watcher, frames, 1) == [[0, PUSH_EVENT, watch_id, 3, "x", encode_value(3)]]
    watcher.close()
    writer._close()


# ---------------------------------------------------------------------- losses and epochs


def test_a_lost_key_ends_its_watches_and_invalidates_its_cached_names(
    awaited: tuple[ServerThread, AwaitedStore],
) -> None:
    server, store = awaited
    address = str(server.address)
    ns = Namespace(address, "lost")
    ns.x = 1
    reader, reader_frames = connect_raw(address)
    assert exchange(reader, reader_frames, [1, "track", True], [2, "get", "lost", "x"]) == [
        [1, 0, None],
        [2, 0, encode_value(1)],
    ]
    watcher, watcher_frames = connect_raw(address)
    assert exchange(watcher, watcher_frames, [1, "watch", "lost", None, None])[0][:2] == [1, 0]
    assert "lost" in store.following
    store.call(lambda: store.board.lose("lost"))
    (refusal,) = read_to_the_end(watcher, watcher_frames)
    assert refusal[:3] == [0, 1, "ConnectionLost"]
    assert "watch again from the last revision seen" in refusal[3]
    assert read_frames(reader, reader_frames, 1) == [[0, PUSH_INVALIDATE, "lost", "x"]]
    assert exchange(reader, reader_frames, [3, "ping"]) == [[3, 0, None]]  # it goes on
    wait_until(lambda: "lost" not in store.following, "nothing follows the lost key")
    reader.close()
    watcher.close()
    ns._close()


def test_a_read_in_the_store_when_a_new_epoch_ends_its_connection_is_no_internal_error(
    awaited: tuple[ServerThread, AwaitedStore], caplog: pytest.LogCaptureFixture
) -> None:
    """A cached connection's read is in the store when a new epoch ends the connection: the
    read's answer is moot (the connection is gone), which is no internal error to log."""
    server, store = awaited
    address = str(server.address)
    Namespace(address, "moot").x = 1
    cacher, cacher_frames = connect_raw(address)
    assert exchange(cacher, cacher_frames, [1, "track", True]) == [[1, 0, None]]
    store.hold("moot")
    with caplog.at_level(logging.WARNING, logger="aionamespace.server"):
        cacher.sendall(pack([2, "get", "moot", "x"]))
        wait_until(lambda: store.held == 1, "the tracked read is in the store")
        new = store.call(store.board.lose_data)
        store.release("moot")
        (refusal,) = read_to_the_end(cacher, cacher_frames)
        assert refusal[:3] == [0, 1, "ConnectionLost"]
        assert new in refusal[3]
        wait_until(lambda: store.held == 0, "the read came back from the store")
        plain, plain_frames = connect_raw(address)
        assert exchange(plain, plain_frames, [1, "ping"]) == [[1, 0, None]]  # served after
    assert "a new epoch" in caplog.text
    assert "internal error" not in caplog.text
    plain.close()
    cacher.close()


def test_a_new_epoch_ends_watches_and_caches_and_is_announced(
    awaited: tuple[ServerThread, AwaitedStore],
) -> None:
    server, store = awaited
    address = str(server.address)
    ns = Namespace(address, "epoch")
    ns.x = 1
    old = ns._snapshot().revision
    assert old.epoch == store.epoch
    watcher, watcher_frames = connect_raw(address)
    assert exchange(watcher, watcher_frames, [1, "watch", "epoch", None, None])[0][:2] == [1, 0]
    cacher, cacher_frames = connect_raw(address)
    assert exchange(cacher, cacher_frames, [1, "track", True]) == [[1, 0, None]]
    plain, plain_frames = connect_raw(address)
    new = store.call(store.board.lose_data)
    assert new != old.epoch
    assert server.server.epoch == new
    for sock, frames in ((watcher, watcher_frames), (cacher, cacher_frames)):
        (refusal,) = read_to_the_end(sock, frames)
        assert refusal[:3] == [0, 1, "ConnectionLost"]
        assert new in refusal[3]
    assert exchange(plain, plain_frames, [1, "ping"]) == [[1, 0, None]]  # nothing to drop
    fresh = socket.socket(socket.AF_UNIX)
    fresh.connect(address)
    fresh.settimeout(NO_HANG_SECONDS)
    fresh.sendall(hello_frame())
    (hello,) = read_frames(fresh, msgpack.Unpacker(), 1)
    assert hello["epoch"] == new  # the hello of a new connection says the new epoch
    with pytest.raises(HistoryExpired, match="another lifetime"):
        Namespace(address, "epoch")._watch(since=old)
    for sock in (plain, fresh, watcher, cacher):
        sock.close()
    ns._close()


# ---------------------------------------------------------------------- failures


def test_a_store_that_does_not_answer_is_an_error_reply_and_the_connection_goes_on(
    awaited: tuple[ServerThread, AwaitedStore],
) -> None:
    server, store = awaited
    sock, frames = connect_raw(str(server.address))
    store.fail()
    sock.sendall(
        b"".join(
            map(
                pack,
                [
                    [1, "set", "k", "x", encode_value(1)],
                    [2, "ping"],
                    [3, "keys"],
                    [4, "watch", "k", None, 0],
                    [5, "info"],
                ],
            )
        )
    )
    replies = read_frames(sock, frames, 5)
    assert [reply[:3] for reply in replies] == [
        [1, 1, "StoreUnavailable"],
        [2, 0, None],
        [3, 1, "StoreUnavailable"],
        [4, 1, "StoreUnavailable"],
        [5, 1, "StoreUnavailable"],
    ]
    assert "AwaitedStore" in replies[0][3]  # the message names the store
    store.recover()
    assert exchange(sock, frames, [6, "set", "k", "x", encode_value(2)]) == [[6, 0, 1]]
    ns = Namespace(str(server.address), "k")
    store.fail()
    with pytest.raises(StoreUnavailable):
        _ = ns.x
    store.recover()
    assert ns.x == 2  # the same proxy, served again
    sock.close()
    ns._close()


def test_a_trio_server_refuses_a_store_that_works_on_asyncio_only(short_tmp: str) -> None:
    store = AwaitedStore(backends=("asyncio",))
    address = os.path.join(short_tmp, "a.sock")
    with pytest.raises(
        RuntimeError, match="AwaitedStore works on asyncio only, and this server runs on trio"
    ):
        ServerThread(address, backend="trio", store=store).start()
    assert not store.started  # refused before it was started
    with ServerThread(address, backend="asyncio", store=store) as server:
        assert store.started
        assert dict(Namespace(str(server.address), "ok")._snapshot()) == {}
    assert store.closed


def test_anonymous_namespaces_are_dropped_in_the_background_even_after_a_failure(
    server_backend: str, short_tmp: str, caplog: pytest.LogCaptureFixture
) -> None:
    store = AwaitedStore()
    address = os.path.join(short_tmp, "anon.sock")
    limits = Limits(anonymous_grace=0.05)
    with ServerThread(address, backend=server_backend, store=store, limits=limits):
        kept = Namespace(address, "named")
        kept.x = 1
        ns = Namespace(address)
        ns.x = 1
        key = ns._aionamespace.target.key
        assert key in store.board.memory.keys()
        store.fail()
        with caplog.at_level(logging.WARNING, logger="aionamespace.server"):
            ns._close()
            wait_until(lambda: "could not free" in caplog.text, "the failed drop is logged")
        assert key in store.board.memory.keys()  # not freed: tried again
        store.recover()
        wait_until(lambda: key not in store.board.memory.keys(), "the namespace is freed")
        assert store.board.memory.keys() == ["named"]
        kept._close()


def test_watches_from_since_replay_through_the_awaited_history(
    awaited: tuple[ServerThread, AwaitedStore],
) -> None:
    server, _ = awaited
    ns = Namespace(str(server.address), "since")
    for value in range(5):
        ns.n = value
    with ns._watch(since=2) as watch:
        ns.n = "live"
        assert [watch.next(timeout=NO_HANG_SECONDS) for _ in range(3)] == [
            WatchEvent("n", 2, 3),
            WatchEvent("n", 3, 4),
            WatchEvent("n", 4, 5),
        ]
        assert watch.next(timeout=NO_HANG_SECONDS) == WatchEvent("n", "live", 6)
    ns._close()


def test_a_client_that_stops_sending_gets_every_reply_of_its_batches_in_the_store(
    awaited: tuple[ServerThread, AwaitedStore],
) -> None:
    """Requests, then a half-close while the batch is in the store: every reply still
    comes (the end of stream is read only once the batch is answered), then the close."""
    server, store = awaited
    sock, unpacker = connect_raw(str(server.address))
    store.hold("half")
    sock.sendall(pack([1, "set", "half", "x", encode_value(1)]) + pack([2, "ping"]))
    wait_until(lambda: store.held == 1, "the batch is in the store")
    sock.sendall(pack([3, "get", "half", "x"]))
    sock.shutdown(socket.SHUT_WR)
    store.release("half")
    assert read_to_the_end(sock, unpacker) == [[1, 0, 1], [2, 0, None], [3, 0, encode_value(1)]]
    sock.close()


def test_a_key_is_followed_from_its_first_watch_or_cached_name_to_its_last(
    awaited: tuple[ServerThread, AwaitedStore],
) -> None:
    server, store = awaited
    address = str(server.address)
    first, first_frames = connect_raw(address)
    second, second_frames = connect_raw(address)
    assert exchange(first, first_frames, [1, "watch", "f", None, None])[0][2][0] == 1
    assert exchange(second, second_frames, [1, "watch", "f", ["x"], None])[0][2][0] == 2
    assert store.follows == ["f"]  # once, for both
    assert exchange(first, first_frames, [2, "unwatch", 1]) == [[2, 0, True]]
    assert store.follows == ["f"]  # the other watch still needs it
    assert exchange(second, second_frames, [2, "track", True]) == [[2, 0, None]]
    assert exchange(second, second_frames, [3, "get", "f", "x"])[0][:2] == [3, 1]  # missing
    assert exchange(second, second_frames, [4, "unwatch", 2]) == [[4, 0, True]]
    assert store.follows == ["f"]  # its cached name still needs it
    assert exchange(first, first_frames, [3, "set", "f", "x", encode_value(1)]) == [[3, 0, 1]]
    assert read_frames(second, second_frames, 1) == [[0, PUSH_INVALIDATE, "f", "x"]]
    wait_until(lambda: store.follows == ["f", "-f"], "the last reason to follow went")
    second.sendall(pack([5, "get", "f", "x"]))  # cached again: followed again
    assert read_frames(second, second_frames, 1) == [[5, 0, encode_value(1)]]
    second.close()  # its cached name goes with it
    wait_until(lambda: store.follows == ["f", "-f", "f", "-f"], "unfollowed as it closed")
    first.close()


def test_an_export_reads_every_namespace_through_the_store(
    awaited: tuple[ServerThread, AwaitedStore],
) -> None:
    server, store = awaited
    with Namespace(str(server.address), "one") as one, Namespace(str(server.address), "two") as two:
        one.x, two.y = 1, 2
    sock, frames = connect_raw(str(server.address))
    assert exchange(sock, frames, [1, "export"]) == [[1, 0, [store.epoch, ["one", "two"]]]]
    assert store.applies[-1] == [("snapshot", ("one", None)), ("snapshot", ("two", None))]
    assert exchange(sock, frames, [2, "export_read", "two"], [3, "export_read", "one"]) == [
        [2, 0, [1, {"y": encode_value(2)}]],
        [3, 0, [1, {"x": encode_value(1)}]],
    ]
    sock.close()


class _SettlingLocks(LockTable):
    """A lock table shared through its store, as a RedisStore's is: a ``release`` is answered
    once ``settled`` returns, which here waits at a gate the test opens."""

    def __init__(self, call_later: Any) -> None:
        super().__init__(call_later)
        self.gate: anyio.Event | None = None
        self.settling = 0

    async def settled(self) -> None:
        if self.gate is not None:
            self.settling += 1
            await self.gate.wait()


class _StoreSharingLocks(AwaitedStore):
    def __init__(self) -> None:
        super().__init__()
        self.locks: _SettlingLocks | None = None

    def lock_table(self, call_later: Any) -> _SettlingLocks:
        self.locks = _SettlingLocks(call_later)
        return self.locks


def test_a_connection_ended_while_its_release_settles_is_no_internal_error(
    server_backend: str, short_tmp: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A release is answered once the store has it (``settled``); the connection is ended
    meanwhile (here: a new epoch ends a cached connection; over Redis, a lease that ran out).
    Its batch stops there: no error is logged, and the server serves on. (Before, the batch
    went on over the emptied requests and the server logged an IndexError.)"""
    store = _StoreSharingLocks()
    address = os.path.join(short_tmp, "r.sock")
    with ServerThread(address, backend=server_backend, store=store) as server:
        locks = store.locks
        assert locks is not None
        holder, holder_frames = connect_raw(str(server.address))
        assert exchange(holder, holder_frames, [1, "track", True]) == [[1, 0, None]]
        acquire = [2, "acquire", "k", "L", b"h", None]
        assert exchange(holder, holder_frames, acquire) == [[2, 0, None]]
        store.call(lambda: setattr(locks, "gate", anyio.Event()))
        with caplog.at_level(logging.WARNING, logger="aionamespace.server"):
            holder.sendall(pack([3, "release", "k", "L", b"h"]))
            wait_until(lambda: locks.settling == 1, "the release waits until it settles")
            store.call(store.board.lose_data)  # ends the cached connection
            store.call(lambda: locks.gate.set())  # type: ignore[union-attr]
            (refusal,) = read_to_the_end(holder, holder_frames)
            assert refusal[:3] == [0, 1, "ConnectionLost"]
            plain, plain_frames = connect_raw(str(server.address))
            assert exchange(plain, plain_frames, [1, "ping"]) == [[1, 0, None]]  # served on
        assert "a new epoch" in caplog.text
        assert "could not be served" not in caplog.text
        assert "IndexError" not in caplog.text
        plain.close()
        holder.close()
