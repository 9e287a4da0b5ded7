"""``python -m aionamespace demo``: the stdlib Namespace lesson, then the same board from asyncio.

The child functions live in this module (not in ``__main__``) so that spawned children can
import them by name.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
from typing import Any

from ._manager import Manager
from .client.asynchronous import AsyncNamespace
from .client.sync import Namespace

__all__ = ["run_demo"]


def process1(ns: Namespace) -> None:
    print(f"   child 1 (pid {os.getpid()}) reads ns.item == {ns.item!r}, sets 'educative'")
    ns.item = "educative"


def process2(ns: Namespace) -> None:
    print(
        f"   child 2 (pid {os.getpid()}) reads ns.item == {ns.item!r}, "
        "sets 'educative is awesome !'"
    )
    ns.item = "educative is awesome !"


def read_underscore(ns: Namespace) -> None:
    try:
        print(f"   child (pid {os.getpid()}) reads ns._item == {ns._item!r}")
    except AttributeError as exc:
        print(f"   child (pid {os.getpid()}) gets AttributeError: {exc}")


def count_up(ns: Namespace, times: int) -> None:
    for _ in range(times):
        ns._incr("counter")


def finish_later(ns: Namespace) -> None:
    ns._append("log", f"pid {os.getpid()} finished")
    ns.status = "done"


def _run_child(context: Any, target: Any, ns: Namespace) -> None:
    process = context.Process(target=target, args=(ns,))
    process.start()
    process.join()


async def _read_from_asyncio(ns: AsyncNamespace) -> None:
    async with ns:
        print(f"   await ns.item -> {await ns.item!r}")
        ns.readers = 1  # queued without blocking, sent by the proxy's pump task
        ns.note = "written from asyncio"
        await ns._flush()
        print(
            "   ns.readers = 1; ns.note = 'written from asyncio' (queued without blocking);"
            " await ns._flush() waits until both are stored"
        )
        tasks = [asyncio.ensure_future(_get(ns, "item")) for _ in range(100)]
        values = await asyncio.gather(*tasks)
        if len(set(values)) == 1:
            read = f"all {len(values)} read {values[0]!r}"
        else:
            read = f"they read {len(set(values))} different values"
        print(f"   100 concurrent tasks read ns.item, pipelined on one connection: {read}")
        print(f"   await ns._snapshot() -> {await ns._snapshot()!r}")


async def _get(ns: AsyncNamespace, name: str) -> Any:
    return await getattr(ns, name)


def run_demo() -> None:
    spawn = multiprocessing.get_context("spawn")
    print("aionamespace demo: the stdlib Namespace lesson on an embedded server\n")
    with Manager() as manager:
        print(f"server process started: {manager!r}\n")
        shared_vars = manager.Namespace()
        print("1. spawned processes share attributes")
        shared_vars.item = "empty"
        print("   parent sets ns.item = 'empty'")
        _run_child(spawn, process1, shared_vars)
        _run_child(spawn, process2, shared_vars)
        print(f"   parent reads ns.item == {shared_vars.item!r}")
        print(f"   str(ns) == {str(shared_vars)!r}\n")

        print("2. _underscore attributes stay on the proxy")
        shared_vars._item = "empty"
        print("   parent sets ns._item = 'empty'; with start method 'spawn':")
        _run_child(spawn, read_underscore, shared_vars)
        if "fork" in multiprocessing.get_all_start_methods():
            print("   with start method 'fork' (the child copies the parent's memory):")
            _run_child(multiprocessing.get_context("fork"), read_underscore, shared_vars)
        print()

        print("3. the same board from asyncio: await, never blocking the event loop")
        key = shared_vars._aionamespace.target.key
        board = manager.AsyncNamespace(key)  # the same board, by its key
        asyncio.run(_read_from_asyncio(board))
        print(f"\n   back in sync code: {shared_vars}\n")

        print("4. correct under concurrency (what the stdlib's ns.counter += 1 gets wrong)")
        workers = [spawn.Process(target=count_up, args=(shared_vars, 500)) for _ in range(4)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        print(f"   4 spawned processes x 500 ns._incr('counter') -> {shared_vars.counter}")
        shared_vars.status = "working"
        helper = spawn.Process(target=finish_later, args=(shared_vars,))
        helper.start()
        status = shared_vars._wait_for("status", lambda value: value == "done", timeout=30)
        helper.join()
        print(f"   ns._wait_for('status', ...) woke on the change, no polling: {status!r}")
        print(
            "   the child had first appended to ns.log on the server (ns._append, no lost "
            f"items): {shared_vars.log!r}"
        )
    print("\nserver shut down; demo finished")
