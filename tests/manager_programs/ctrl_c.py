"""A Manager program with a shutdown handler, as the stdlib's documentation has people write.

Run as a script, in a session of its own, by tests/test_manager_signals.py, which then sends
SIGINT to the whole process group (what a terminal's Ctrl-C does). The handler must still
reach the namespace: on its connection, and on a new one. With ``initializer`` the Manager is
started with the stdlib idiom, an initializer (defined here, in ``__main__``) that ignores
SIGINT in the server, and that records where it ran in the file named by the next argument.
"""

from __future__ import annotations

import faulthandler
import json
import os
import signal
import sys
import threading
import time
from typing import Any

from aionamespace import Manager, Namespace


def ignore_ctrl_c(path: str) -> None:
    """The stdlib idiom's initializer; it also says where it ran."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    with open(path, "w") as record:
        json.dump({"pid": os.getpid(), "main": __name__}, record)


def read_on_a_new_connection(address: Any, authkey: bytes | None) -> object:
    seen: list[object] = []

    def read() -> None:
        try:
            seen.append(Namespace(address, "board", authkey=authkey).jobs)
        except Exception as exc:  # reported: the test says what went wrong
            seen.append(f"{type(exc).__name__}: {exc}")

    thread = threading.Thread(target=read)
    thread.start()
    thread.join()
    return seen[0]


if __name__ == "__main__":
    faulthandler.register(signal.SIGUSR1, all_threads=True)  # the test's view of a hang
    manager = Manager()
    if sys.argv[1] == "initializer":
        manager.start(ignore_ctrl_c, (sys.argv[2],))
    else:
        manager.start()
    ns = manager.Namespace("board", jobs=3)
    process = manager._process
    assert process is not None
    try:  # (the test's Ctrl-C may come as soon as this line is out: while it is flushed)
        print(json.dumps({"server": process.pid}), flush=True)
        while True:  # the program's work, until Ctrl-C
            # (not signal.pause(): a Ctrl-C between the last check of signals and pause()
            # blocking would never be seen; here the next bytecode after a sleep sees it)
            time.sleep(0.05)
    except KeyboardInterrupt:
        try:  # the shutdown handler: save what it can
            ns.stopped = True
            report = {"jobs": ns.jobs, "stopped": ns.stopped}
            report["new connection"] = read_on_a_new_connection(manager.address, manager.authkey)
        except Exception as exc:
            report = {"error": f"{type(exc).__name__}: {exc}"}
        print(json.dumps(report), flush=True)
    manager.shutdown()
