"""Two source trees of aionamespace, measured in one process, alternated round by round.

On a machine that other jobs share, an A/B across processes or across minutes measures the
load more than the change: a get's CPU cost moves by a third from one run to the next. Here
both trees are imported into one process, as two packages (the package imports itself only
relatively, so a copy under another name is a second, independent aionamespace), and each
round measures one after the other, so what the machine does falls on both alike; the
figure to read is the median over rounds of after/before.

Rows: ``server``, a read of ``--batch`` gets parsed (``ServerConnection``) and answered
(``Dispatcher.respond_some``) with no socket; ``client``, ``--tasks`` tasks awaiting ``ns.x``
on one AsyncNamespace on the fastest loop installed, whose connection is real but whose
replies are made in this process (packed as a server packs them), so only the client's
part of a get is timed (and that packing, the same for both); ``trio``, the same tasks on
trio, whose socket is wrapped so that each write is answered at once, in this process, on a
second socket the reader then reads (``trio`` installed). CPU time per get. Rows not run
unless asked: ``update``, an ``_update`` of ``--names`` small ints parsed and answered by the
server (no socket), ``update_cached`` the same while another connection caches a name of
that namespace (as in compare.py's run). CPU time per update. ``durable``, a sync client's
sets, one per read, received and answered (``Connections.received``) by a server over a data
file (the SQLite store without fsync, as ``--data``), each committed before its reply, with
no socket. CPU time per set.

    python benchmarks/ab_trees.py /work/main/src src            # before, after
    python benchmarks/ab_trees.py A/src B/src --rounds 41 --rows server
    python benchmarks/ab_trees.py /work/main/src src --rows trio
    python benchmarks/ab_trees.py /work/main/src src --rows update,update_cached
    python benchmarks/ab_trees.py /work/main/src src --rows durable --rounds 15
    python benchmarks/ab_trees.py src src --quick               # a smoke test
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import os
import shutil
import statistics
import sys
import tempfile
import time
import timeit
from collections.abc import Awaitable, Callable
from types import ModuleType
from typing import Any

import msgpack

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import yardstick_rows

TREES = ("before", "after")


def import_trees(sources: list[str], into: str) -> dict[str, ModuleType]:
    """Each ``source``'s aionamespace package, copied under ``into`` as ``tree_<name>``."""
    sys.path.insert(0, into)
    trees = {}
    for name, source in zip(TREES, sources, strict=True):
        shutil.copytree(
            os.path.join(source, "aionamespace"),
            os.path.join(into, f"tree_{name}"),
            ignore=shutil.ignore_patterns("__pycache__"),
        )
        trees[name] = importlib.import_module(f"tree_{name}")
    return trees


class _Peer:
    """What ``Dispatcher.respond_some`` asks of a connection that reads all it is sent."""

    def __init__(self, protocol: Any) -> None:
        self.protocol = protocol

    def backlog(self) -> int:
        return 0


def server_run(tree: ModuleType, batch: int) -> Callable[[], None]:
    """Parse and answer one read of ``batch`` gets, as a server shell does."""
    connection = importlib.import_module(f"{tree.__name__}.protocol.connection")
    dispatch = importlib.import_module(f"{tree.__name__}.server.dispatch")
    codec = importlib.import_module(f"{tree.__name__}.protocol.codec")
    store = tree.MemoryStore()
    dispatcher = dispatch.Dispatcher(store, lambda *args: None, None)
    peer = _Peer(connection.ServerConnection())
    hello = {"protocol": connection.PROTOCOL_NAME, "version": connection.PROTOCOL_VERSION}
    dispatcher.respond(peer, peer.protocol.receive_data(msgpack.packb(hello)))
    store.set("k", "x", codec.encode_value(1))
    first = 70_000  # (ids past 65,535, as on a connection that has served a while)
    data = b"".join(msgpack.packb([i, "get", "k", "x"]) for i in range(first, first + batch))

    def run() -> None:
        dispatcher.respond_some(peer, peer.protocol.receive_data(data), 1 << 20)

    run()
    return run


def update_run(tree: ModuleType, names: int, cached: bool) -> Callable[[], None]:
    """Parse and answer one ``_update`` of ``names`` small ints, read alone, as a server shell
    does; ``cached``: while another connection caches a name of that namespace (tracks it, as
    compare.py's cached proxy does), so that every commit is looked at for invalidations."""
    connection = importlib.import_module(f"{tree.__name__}.protocol.connection")
    dispatch = importlib.import_module(f"{tree.__name__}.server.dispatch")
    calls = importlib.import_module(f"{tree.__name__}.client.calls")
    dispatcher = dispatch.Dispatcher(tree.MemoryStore(), lambda *args: None, None)
    hello = {"protocol": connection.PROTOCOL_NAME, "version": connection.PROTOCOL_VERSION}
    peer, other = _Peer(connection.ServerConnection()), _Peer(connection.ServerConnection())
    for each in (peer, other):
        dispatcher.respond(each, each.protocol.receive_data(msgpack.packb(hello)))
    dispatcher.respond(peer, peer.protocol.receive_data(msgpack.packb([1, "set", "k", "c", b"\1"])))
    if cached:
        track = msgpack.packb([1, "track", True]) + msgpack.packb([2, "get", "k", "c"])
        dispatcher.respond(other, other.protocol.receive_data(track))
    _, args = calls.update("k", {f"n{i}": i for i in range(names)})
    frame = msgpack.packb([70_000, "update", *args])

    def run() -> None:
        dispatcher.respond_some(peer, peer.protocol.receive_data(frame), 1 << 20)

    run()
    return run


def update_row(
    trees: dict[str, ModuleType], args: argparse.Namespace, cached: bool
) -> dict[str, list[float]]:
    runs = {name: update_run(tree, args.names, cached) for name, tree in trees.items()}
    per_update: dict[str, list[float]] = {name: [] for name in runs}
    number = max(1, args.gets // args.names)
    for _ in range(args.rounds):
        for name, run in runs.items():
            best = min(timeit.repeat(run, timer=time.process_time, number=number, repeat=3))
            per_update[name].append(best / number * 1e6)
    return per_update


def server_row(trees: dict[str, ModuleType], args: argparse.Namespace) -> dict[str, list[float]]:
    runs = {name: server_run(tree, args.batch) for name, tree in trees.items()}
    per_get: dict[str, list[float]] = {name: [] for name in runs}
    number = max(1, args.gets // args.batch)
    for _ in range(args.rounds):
        for name, run in runs.items():
            best = min(timeit.repeat(run, timer=time.process_time, number=number, repeat=3))
            per_get[name].append(best / number / args.batch * 1e6)
    return per_get


class _Writer(_Peer):
    """A sync client's connection, as ``Connections.received`` sees it: replies counted."""

    def __init__(self, protocol: Any) -> None:
        super().__init__(protocol)
        self.pending: list[Any] = []
        self.closed = False
        self.replies = 0

    def write(self, data: Any) -> None:
        self.replies += 1

    def write_all(self, outputs: list[Any]) -> None:
        self.replies += len(outputs)


def durable_run(tree: ModuleType, directory: str) -> Callable[[int], None]:
    """Receive and answer ``n`` sets, one per read (a sync client's), by a server over a data
    file (the SQLite store, without fsync), each committed before its reply, as ``--data``
    does; the checkpoints the committer task would run (in a thread) run here, when due."""
    name = tree.__name__
    connection = importlib.import_module(f"{name}.protocol.connection")
    admission = importlib.import_module(f"{name}.server.admission")
    dispatch = importlib.import_module(f"{name}.server.dispatch")
    durability = importlib.import_module(f"{name}.server.durability")
    codec = importlib.import_module(f"{name}.protocol.codec")
    sqlite = importlib.import_module(f"{name}.server.stores.sqlite")
    store = tree.SQLiteStore(os.path.join(directory, f"{name}.db"))
    call_later = lambda *args: lambda: None  # noqa: E731 (no timer is due)
    dispatcher = dispatch.Dispatcher(store, call_later)
    connections = admission.Connections(
        tree.Limits(), dispatcher, call_later, connection.ServerConnection,
        durability.Durability(store),
    )  # fmt: skip
    peer = _Writer(connection.ServerConnection())
    connections.open.add(peer)
    hello = {"protocol": connection.PROTOCOL_NAME, "version": connection.PROTOCOL_VERSION}
    connections.received(peer, msgpack.packb(hello))
    first = 70_000
    frames = [
        msgpack.packb([first + i, "set", "k", "x", codec.encode_value(i)]) for i in range(999)
    ]

    def run(n: int) -> None:
        for i in range(n):
            connections.received(peer, frames[i % 999])
            if store._logged >= sqlite.CHECKPOINT_PAGES:
                store._file.checkpoint()
                store._logged = 0
        assert not store.dirty  # (every set was committed before its reply)

    run(10)
    return run


def durable_row(trees: dict[str, ModuleType], args: argparse.Namespace) -> dict[str, list[float]]:
    number = max(1, args.gets // 10)
    per_set: dict[str, list[float]] = {name: [] for name in trees}
    with tempfile.TemporaryDirectory(prefix="ab-durable-") as directory:
        runs = {name: durable_run(tree, directory) for name, tree in trees.items()}
        for _ in range(args.rounds):
            for name, run in runs.items():
                start = time.process_time()
                run(number)
                per_set[name].append((time.process_time() - start) / number * 1e6)
    return per_set


async def _answered_here(tree: ModuleType, address: str) -> Any:
    """An AsyncNamespace of ``tree``, connected, whose replies are then made in-process."""
    tree.Namespace(address, "ab").x = 1
    ns = tree.AsyncNamespace(address, "ab")
    await ns.x  # connect
    transport = ns._aionamespace.transport
    link = transport.link
    loop = asyncio.get_running_loop()
    answered = [transport.table.sent_through]
    pack = msgpack.Packer(use_bin_type=True).pack

    def deliver(replies: bytes) -> None:
        link.buffer[: len(replies)] = replies
        link.buffer_updated(len(replies))

    class AnswersHere:
        """Stands in for the link's asyncio transport: every write is answered."""

        def write(self, data: bytes) -> None:
            first, last = answered[0] + 1, transport.table.sent_through
            answered[0] = last
            replies = b"".join([pack([i, 0, b"\x01"]) for i in range(first, last + 1)])
            loop.call_soon(deliver, replies)

        def get_extra_info(self, *args: Any) -> None:
            return None

        def abort(self) -> None:
            pass

    link.transport = AnswersHere()
    return ns


async def _client_rounds(
    trees: dict[str, ModuleType], address: str, args: argparse.Namespace
) -> dict[str, list[float]]:
    proxies = {name: await _answered_here(tree, address) for name, tree in trees.items()}
    return await _rounds(proxies, args, _gathered)


async def _rounds(
    proxies: dict[str, Any],
    args: argparse.Namespace,
    run: Callable[[Callable[[], Awaitable[None]], int], Awaitable[None]],
) -> dict[str, list[float]]:
    """CPU µs per get of each proxy, round by round: ``args.tasks`` tasks, run together by
    ``run(task, count)`` (on asyncio or trio), share ``args.gets`` gets."""
    per_get: dict[str, list[float]] = {name: [] for name in proxies}
    for _ in range(args.rounds):
        for name, ns in proxies.items():
            done = 0

            async def task(ns: Any = ns) -> None:
                nonlocal done
                while done < args.gets:
                    for _ in range(8):
                        await ns.x
                    done += 8

            start = time.process_time()
            await run(task, args.tasks)
            per_get[name].append((time.process_time() - start) / done * 1e6)
    return per_get


async def _gathered(task: Callable[[], Awaitable[None]], count: int) -> None:
    await asyncio.gather(*(task() for _ in range(count)))


def client_row(trees: dict[str, ModuleType], args: argparse.Namespace) -> dict[str, list[float]]:
    loop, _ = yardstick_rows.fastest_loop()
    with tempfile.TemporaryDirectory(prefix="ab-") as directory:
        address = os.path.join(directory, "s.sock")
        with trees["after"].ServerThread(address):
            try:
                return loop.run_until_complete(_client_rounds(trees, address, args))
            finally:
                loop.close()


class _AnsweredSocket:
    """Stands in for a trio link's socket: a write is answered at once, in this process, by
    replies sent on ``peer``, the other end of the socket (``sock``) the reader reads."""

    def __init__(self, sock: Any, peer: Any, table: Any) -> None:
        self.sock, self.peer, self.table = sock, peer, table
        self.answered = table.sent_through
        self.pack = msgpack.Packer(use_bin_type=True).pack

    def fileno(self) -> int:
        return int(self.sock.fileno())

    def send(self, data: bytes) -> int:
        first, last = self.answered + 1, self.table.sent_through
        self.answered = last
        pack = self.pack
        self.peer.sendall(b"".join([pack([i, 0, b"\x01"]) for i in range(first, last + 1)]))
        return len(data)

    def __getattr__(self, name: str) -> Any:  # recv_into, recv, shutdown, close
        return getattr(self.sock, name)


async def _trio_answered_here(tree: ModuleType, address: str) -> Any:
    import socket

    tree.Namespace(address, "ab").x = 1
    ns = tree.AsyncNamespace(address, "ab")
    transport = ns._aionamespace.bound()
    open_link, sockets = transport.open_link, []

    async def answered_link() -> Any:
        # Swapped before the reader task first runs: it waits on the wrapper's socket.
        link = await open_link()
        mine, peer = socket.socketpair()
        mine.setblocking(False)
        sockets.extend([mine, peer, link.sock])
        link.sock = _AnsweredSocket(mine, peer, transport.table)
        return link

    transport.open_link = answered_link
    await ns.x  # connect
    return ns, sockets


async def _trio_client_rounds(
    trees: dict[str, ModuleType], address: str, args: argparse.Namespace
) -> dict[str, list[float]]:
    import trio

    proxies, sockets = {}, []
    for name, tree in trees.items():
        proxies[name], opened = await _trio_answered_here(tree, address)
        sockets.extend(opened)

    async def in_nursery(task: Callable[[], Awaitable[None]], count: int) -> None:
        async with trio.open_nursery() as nursery:
            for _ in range(count):
                nursery.start_soon(task)

    try:
        return await _rounds(proxies, args, in_nursery)
    finally:
        for ns in proxies.values():
            await ns._close()
        for sock in sockets:
            sock.close()


def trio_client_row(
    trees: dict[str, ModuleType], args: argparse.Namespace
) -> dict[str, list[float]]:
    import trio

    with tempfile.TemporaryDirectory(prefix="ab-") as directory:
        address = os.path.join(directory, "s.sock")
        with trees["after"].ServerThread(address):
            return trio.run(_trio_client_rounds, trees, address, args)


def report(title: str, per_get: dict[str, list[float]], unit: str = "get") -> float:
    ratios = [after / before for before, after in zip(*per_get.values(), strict=True)]
    print(f"\n{title} (CPU µs per {unit}, {len(ratios)} rounds)")
    for name, values in per_get.items():
        print(f"  {name:>6}: median {statistics.median(values):.3f}  best {min(values):.3f}")
    ratio = statistics.median(ratios)
    print(f"  after/before, median over rounds: {ratio:.3f}")
    return ratio


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("before", help="a source tree holding aionamespace/ (say main's src)")
    parser.add_argument("after", help="another (say this branch's src)")
    parser.add_argument("--rows", default="server,client,trio,durable")
    parser.add_argument("--rounds", type=int, default=21)
    parser.add_argument("--batch", type=int, default=48, help="gets per read (server row)")
    parser.add_argument("--names", type=int, default=100, help="names per _update (update rows)")
    parser.add_argument("--tasks", type=int, default=64, help="tasks (client row)")
    parser.add_argument("--gets", type=int, default=30_000, help="gets per round and tree")
    parser.add_argument("--quick", action="store_true", help="tiny counts: a smoke test")
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.gets, args.tasks = 2, 400, 8
    wanted = args.rows.split(",")
    with tempfile.TemporaryDirectory(prefix="ab-trees-") as into:
        trees = import_trees([args.before, args.after], into)
        if "server" in wanted:
            report(f"server: parse and answer a read of {args.batch} gets", server_row(trees, args))
        for row, cached in (("update", False), ("update_cached", True)):
            if row in wanted:
                title = f"server: parse and answer an _update of {args.names} names"
                title += ", a name of it cached elsewhere" if cached else ""
                report(title, update_row(trees, args, cached), "update")
        if "client" in wanted:
            report(f"client: {args.tasks} tasks, replies made in process", client_row(trees, args))
        if "trio" in wanted:
            title = f"trio client: {args.tasks} tasks, replies made in process"
            report(title, trio_client_row(trees, args))
        if "durable" in wanted:
            title = "durable: a sync client's sets, each committed to a data file"
            report(title, durable_row(trees, args), "set")
    return 0


if __name__ == "__main__":
    sys.exit(main())
