"""A Manager's server belongs to the process that started it (issue 13.1).

Forked children that exit normally (``sys.exit``, returning, multiprocessing's fork and
forkserver) must leave the server and its socket to their parent; a parent that is SIGKILLed
leaves neither a server nor its private directory. The parents are real programs
(``tests/manager_programs/``) run as scripts, as a pre-fork server is.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from deadlines import NO_HANG_SECONDS, wait_until

PROGRAMS = Path(__file__).parent / "manager_programs"


def process_gone(pid: int) -> bool:
    """Whether ``pid`` no longer runs (an unreaped zombie counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as status:
            return status.read().rpartition(")")[2].split()[0] in ("Z", "X")
    except FileNotFoundError:
        return True


def test_workers_that_exit_normally_leave_the_server_to_the_parent() -> None:
    finished = subprocess.run(
        [sys.executable, str(PROGRAMS / "prefork.py")],
        capture_output=True,
        text=True,
        timeout=4 * NO_HANG_SECONDS,
    )
    assert finished.returncode == 0, finished.stderr
    report = json.loads(finished.stdout)
    socket_path, server_pid = report.pop("socket"), report.pop("server")
    workers = list(report.items())
    assert [how.split()[:2] for how, _ in workers] == [
        ["os.fork", "exit"],
        ["os.fork", "return"],
        ["os.fork", "exit"],
        ["multiprocessing", "fork"],
        ["multiprocessing", "forkserver"],
    ]
    for done, (how, (exit_code, read_by_proxy, read_on_new_connection)) in enumerate(workers, 1):
        # the worker counted and exited cleanly; the parent's proxy and a new connection both
        # still reach the server after it
        assert (exit_code, read_by_proxy, read_on_new_connection) == (0, done, done), how
    # the parent itself exited normally: now its server and private directory are gone
    wait_until(lambda: process_gone(server_pid), "the server process exits")
    assert not os.path.exists(os.path.dirname(socket_path))


def test_a_sigkilled_parent_leaves_no_server_and_no_directory() -> None:
    with subprocess.Popen(
        [sys.executable, str(PROGRAMS / "waiting_parent.py")],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    ) as parent:
        assert parent.stdout is not None
        started = json.loads(parent.stdout.readline())
        assert os.path.exists(started["socket"])
        parent.send_signal(signal.SIGKILL)
        parent.wait(NO_HANG_SECONDS)
    wait_until(lambda: process_gone(started["server"]), "the orphaned server exits")
    wait_until(
        lambda: not os.path.exists(os.path.dirname(started["socket"])),
        "the orphaned server removes the private directory",
    )
