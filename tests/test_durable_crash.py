"""An acknowledged write survives a SIGKILL of the server: real processes, a real data file.

Four spawned processes increment a counter, append to a log and set a value of their own on a
``serve --data`` server, recording each write the server acknowledged; the server is
SIGKILLed in the middle of it all and started again on the same file. Every acknowledged write
must be there: the counter at least the increments acknowledged (and at most those sent), each
worker's acknowledged appends in the log in order, each worker's value the last one
acknowledged or the one in flight.
"""

from __future__ import annotations

import json
import multiprocessing
import os
from pathlib import Path

import pytest

from aionamespace import ConnectionLost, Namespace
from deadlines import NO_HANG_SECONDS, wait_while_rising
from server_processes import ServeProcess

WORKERS = 4


def write_until_the_server_dies(address: str, number: int, report: str) -> None:
    """Write until a write fails; then report what was acknowledged, and what was sent."""
    ns = Namespace(address, "board")
    acknowledged = {"incr": 0, "sent": 0, "appends": [], "set": None, "setting": None}
    try:
        for i in range(1_000_000):
            acknowledged["sent"] += 1  # type: ignore[operator]
            ns._incr("count")
            acknowledged["incr"] += 1  # type: ignore[operator]
            ns._append("log", f"{number}:{i}")
            acknowledged["appends"].append(f"{number}:{i}")  # type: ignore[attr-defined]
            acknowledged["setting"] = i
            setattr(ns, f"last{number}", i)
            acknowledged["set"] = i
    except ConnectionLost:
        pass
    Path(report).write_text(json.dumps(acknowledged))


@pytest.mark.parametrize("fsync", [False, True], ids=["synchronous=NORMAL", "--fsync"])
def test_every_acknowledged_write_survives_a_sigkill(
    short_tmp: str, tmp_path: Path, server_backend: str, fsync: bool
) -> None:
    address = os.path.join(short_tmp, "s.sock")
    data = str(tmp_path / "board.db")
    options = ["--data", data, *(["--fsync"] if fsync else [])]
    server = ServeProcess(address, server_backend, *options)
    context = multiprocessing.get_context("spawn")
    reports = [str(tmp_path / f"worker{n}.json") for n in range(WORKERS)]
    workers = [
        context.Process(target=write_until_the_server_dies, args=(address, n, reports[n]))
        for n in range(WORKERS)
    ]
    try:
        for worker in workers:
            worker.start()
        watcher = Namespace(address, "board")
        # Four spawned writers beside other work: slow on a busy machine, but never still.
        wait_while_rising(lambda: watcher._setdefault("count", 0), 200, "the load is under way")
        server.kill()  # SIGKILL, mid-load
        for worker in workers:
            worker.join(NO_HANG_SECONDS)
            assert worker.exitcode == 0
    finally:
        for worker in workers:
            if worker.is_alive():
                worker.kill()
        server.close()
    done = [json.loads(Path(report).read_text()) for report in reports]
    server = ServeProcess(address, server_backend, *options)  # the same file
    try:
        board = Namespace(address, "board")._snapshot()
    finally:
        server.close()
    acknowledged = sum(report["incr"] for report in done)
    sent = sum(report["sent"] for report in done)
    assert acknowledged >= 50
    assert acknowledged <= board["count"] <= sent
    for number, report in enumerate(done):
        mine = [item for item in board["log"] if item.startswith(f"{number}:")]
        assert mine[: len(report["appends"])] == report["appends"]  # all, in order
        assert len(mine) <= len(report["appends"]) + 1  # and at most the one in flight
        if report["set"] is not None:
            assert board[f"last{number}"] in (report["set"], report["setting"])
