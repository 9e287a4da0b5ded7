"""A MemoryError while serving one connection ends that connection, never the server.

Real servers (asyncio and trio, ``ServerThread``), with the server's own code patched to run out
of memory for one connection only: while applying its request (``Dispatcher.answer``: the
connection gets the ConnectionLost refusal, then is closed), or while sending it a value
(``Outbox.take``: perhaps halfway through a frame, so it is just closed). Either way its lock
passes to the client waiting for it and its watch ends, and every other client is served on.
(A trio server used to die of it; an asyncio one dropped the connection without a word.)
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from typing import Any

import pytest

import aionamespace.server.dispatch
from aionamespace import Namespace, ServerThread
from aionamespace.protocol.codec import encode_value
from aionamespace.protocol.connection import ServerConnection
from aionamespace.server.admission import Connections
from aionamespace.server.dispatch import Dispatcher
from aionamespace.server.outbox import Outbox
from deadlines import NO_HANG_SECONDS, wait_until
from dispatch_rig import Rig, invalidation
from raw_client import connect_raw, exchange, read_frames
from waiting_calls import blocked_reading

REFUSAL = [0, 1, "ConnectionLost", "the server could not serve this connection (MemoryError)"]

pytestmark = pytest.mark.usefixtures("collect_garbage")


@pytest.fixture
def server(server_backend: str, short_tmp: str) -> Iterator[ServerThread]:
    with ServerThread(os.path.join(short_tmp, "s.sock"), backend=server_backend) as running:
        yield running


def run_out_of_memory_applying(monkeypatch: pytest.MonkeyPatch) -> None:
    """From now on, a get of ``boom`` raises MemoryError inside the server."""
    answer = Dispatcher.answer

    def answer_or_fail(self: Dispatcher, peer: Any, request_id: int, op: str, args: Any) -> Any:
        if op == "get" and args[1] == "boom":
            raise MemoryError
        return answer(self, peer, request_id, op, args)

    monkeypatch.setattr(Dispatcher, "answer", answer_or_fail)


def run_out_of_memory_sending(monkeypatch: pytest.MonkeyPatch) -> None:
    """From now on, sending bytes that start with ``BOOM`` raises MemoryError."""
    take = Outbox.take

    def take_or_fail(self: Outbox) -> Any:
        data = take(self)
        if data is not None and bytes(data[:4]) == b"BOOM":
            raise MemoryError
        return data

    monkeypatch.setattr(Outbox, "take", take_or_fail)


@pytest.mark.usefixtures("boom_raw")
@pytest.mark.parametrize("where", ["applying", "sending"])
def test_a_memory_error_drops_its_connection_and_the_server_serves_on(
    server: ServerThread, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    path = server.address
    assert isinstance(path, str)
    with Namespace(path, "k") as bystander:
        bystander.boom = b"BOOM" * (512 * 1024)  # 2 MiB: sent from the outbox, in views of it
        victim, unpacker = connect_raw(path)
        with victim:
            assert exchange(victim, unpacker, [1, "acquire", "k", "L", b"v", None]) == [
                [1, 0, None]
            ]
            watch = exchange(victim, unpacker, [2, "watch", "k", None, None])
            assert watch[0][:2] == [2, 0]
            acquired = threading.Event()

            def wait_for_the_lock() -> None:
                with Namespace(path, "k") as waiter, waiter._lock("L", timeout=NO_HANG_SECONDS):
                    acquired.set()

            thread = threading.Thread(target=wait_for_the_lock)
            thread.start()
            wait_until(lambda: blocked_reading(thread, "wait_for_the_lock"), "the waiter waits")
            if where == "applying":
                run_out_of_memory_applying(monkeypatch)
                victim.sendall(exchange_frame([3, "get", "k", "boom"]))
                assert read_frames(victim, unpacker, until_eof=True) == [REFUSAL]
            else:  # perhaps halfway through the frame: no last word can follow, just the end
                run_out_of_memory_sending(monkeypatch)
                victim.sendall(exchange_frame([3, "get", "k", "boom_raw"]))
                assert read_frames(victim, unpacker, until_eof=True) == []
            thread.join(NO_HANG_SECONDS)
            assert acquired.is_set(), "the dropped connection's lock was not handed over"
        wait_until(
            lambda: not server.server.dispatcher.watches.count(), "the dropped watch is forgotten"
        )
        bystander.after = 1  # the server serves on, everyone else included
        assert bystander.after == 1
        assert bystander._snapshot("after") == {"after": 1}


def exchange_frame(frame: list[Any]) -> bytes:
    import msgpack

    packed: bytes = msgpack.packb(frame)
    return packed


@pytest.fixture
def boom_raw(server: ServerThread) -> None:
    """``boom_raw``: a value whose encoding starts with BOOM (it is stored as it was sent)."""
    server.server.store.set("k", "boom_raw", b"BOOM" + encode_value(b"x" * (2 * 1024 * 1024)))


@pytest.mark.parametrize("failing", ["push", "invalidation"])
def test_whoever_may_have_missed_a_push_for_want_of_memory_is_dropped(
    monkeypatch: pytest.MonkeyPatch, failing: str
) -> None:
    """A MemoryError while a committed change is pushed: every watcher of its namespace, and
    every cache that read it and was not told yet, is dropped with a refusal (it resumes from
    the last revision it saw) rather than left with a gap; the writer's connection is dropped
    by its shell (it sees the MemoryError)."""
    rig = Rig()
    writer, watcher, reader, elsewhere = (rig.connect() for _ in range(4))
    rig.watch(watcher, "k")
    rig.watch(elsewhere, "other")
    rig.send(reader, [1, "track", True], [2, "get", "k", "x"])
    if failing == "push":  # the reader is told before the watches are
        monkeypatch.setattr(aionamespace.server.dispatch, "event_tail", out_of_memory)
    else:
        monkeypatch.setattr(ServerConnection, "send_invalidation", out_of_memory)
    with pytest.raises(MemoryError):
        rig.send(writer, [1, "set", "k", "x", encode_value(1)])
    assert rig.store.get("k", "x") == encode_value(1)  # committed: it must not be missed silently
    refusal = [
        0,
        1,
        "ConnectionLost",
        "the server ran out of memory; watch again from the last revision seen",
    ]
    assert watcher.dropped
    assert watcher.written()[-1] == refusal
    if failing == "push":
        assert not reader.dropped
        assert reader.written() == [invalidation("k", "x")]
    else:
        assert reader.dropped
        assert reader.written()[-1] == refusal
    assert not elsewhere.dropped


def out_of_memory(*args: Any) -> Any:
    raise MemoryError


def test_a_memory_error_while_a_connection_is_let_go_leaves_the_server_serving(
    server: ServerThread, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = server.address
    assert isinstance(path, str)
    gone = Connections.gone
    failures: list[int] = []

    def gone_or_fail(self: Connections, connection: Any) -> None:
        if not failures:
            failures.append(1)
            raise MemoryError
        gone(self, connection)

    monkeypatch.setattr(Connections, "gone", gone_or_fail)
    sock, _ = connect_raw(path)
    sock.close()  # its end fails as the server lets it go
    wait_until(lambda: bool(failures), "the connection's end was handled")
    with Namespace(path, "k") as ns:  # and everyone else is served on
        ns.x = 1
        assert ns.x == 1
