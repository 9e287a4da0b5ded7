"""A pre-fork parent, as gunicorn's: a Manager, then workers that exit normally.

Run as a script by tests/test_manager_fork.py. Each worker uses the namespace and exits the
way real workers do: ``sys.exit(0)`` under ``os.fork``, returning from the function that
forked it (so the Manager, a local of that function, is collected in the worker), and
multiprocessing's fork and forkserver start methods. After each, the parent checks that its
proxy and a new connection (from a new thread: the sync proxy keeps one per thread) still
work, and prints one JSON line of what it saw.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import sys
import threading
from typing import Any

from aionamespace import Manager, Namespace


def count(ns: Namespace) -> None:
    """A multiprocessing worker: it returns normally."""
    ns._incr("done")


def read_on_a_new_connection(address: Any, authkey: bytes | None) -> object:
    seen: list[object] = []

    def read() -> None:
        try:
            seen.append(Namespace(address, "board", authkey=authkey).done)
        except Exception as exc:  # reported, not raised: the parent prints what it saw
            seen.append(f"{type(exc).__name__}: {exc}")

    thread = threading.Thread(target=read)
    thread.start()
    thread.join()
    return seen[0]


def run() -> dict[str, Any] | None:
    """The parent's work; None in a forked worker that returned."""
    manager = Manager()
    manager.start()
    ns = manager.Namespace("board", done=0)
    report: dict[str, Any] = {"socket": manager.address, "server": manager._process.pid}  # type: ignore[union-attr]
    for how in ("exit", "return", "exit"):
        pid = os.fork()
        if pid == 0:
            ns._incr("done")
            if how == "exit":
                sys.exit(0)
            return None  # the worker returns, then ends at the end of the script
        _, status = os.waitpid(pid, 0)
        report[f"os.fork {how} {pid}"] = [
            os.waitstatus_to_exitcode(status),
            ns.done,
            read_on_a_new_connection(manager.address, manager.authkey),
        ]
    for method in ("fork", "forkserver"):
        process = multiprocessing.get_context(method).Process(target=count, args=(ns,))
        process.start()
        process.join(60)
        report[f"multiprocessing {method}"] = [
            process.exitcode,
            ns.done,
            read_on_a_new_connection(manager.address, manager.authkey),
        ]
    return report


if __name__ == "__main__":
    result = run()
    if result is not None:
        print(json.dumps(result), flush=True)
