"""Ctrl-C and the Manager's server; ``start(initializer, initargs)`` (issue 13.2).

A terminal's Ctrl-C sends SIGINT to the whole foreground process group: the program's
shutdown handler then runs, and may still need the namespace, so the server a Manager started
must not stop on it. The programs run in a session of their own, so that ``os.killpg`` reaches
them and the server exactly as a terminal's Ctrl-C would, and nothing else.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from aionamespace import ConnectionLost, Manager
from deadlines import NO_HANG_SECONDS, wait_until
from manager_programs import initializers
from test_manager_fork import process_gone

PROGRAMS = Path(__file__).parent / "manager_programs"


@pytest.mark.parametrize("how", ["default", "initializer"])
def test_ctrl_c_leaves_the_server_to_the_programs_shutdown_handler(
    how: str, short_tmp: str
) -> None:
    record = os.path.join(short_tmp, "initializer.json")
    errors = os.path.join(short_tmp, "stderr.txt")
    with (
        open(errors, "w") as stderr,
        subprocess.Popen(
            [sys.executable, str(PROGRAMS / "ctrl_c.py"), how, record],
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
            start_new_session=True,  # a process group of its own, as a terminal's job
        ) as program,
    ):
        assert program.stdout is not None
        try:
            server_pid = json.loads(program.stdout.readline())["server"]
            os.killpg(program.pid, signal.SIGINT)  # Ctrl-C
            report = json.loads(_line_or_stacks(program, errors))
            assert program.wait(NO_HANG_SECONDS) == 0
        finally:
            if program.poll() is None:
                os.killpg(program.pid, signal.SIGKILL)
    assert report == {"jobs": 3, "stopped": True, "new connection": 3}
    wait_until(lambda: process_gone(server_pid), "the server stops with its Manager")
    if how == "initializer":  # it ran in the server, found in the script's __main__
        with open(record) as ran:
            assert json.load(ran) == {"pid": server_pid, "main": "__mp_main__"}


def _line_or_stacks(program: subprocess.Popen[str], errors: str) -> str:
    """The program's next line; if none comes in time, a failure that shows where each of its
    threads is (faulthandler, on SIGUSR1, into its stderr file ``errors``)."""
    assert program.stdout is not None
    if select.select([program.stdout], [], [], 3 * NO_HANG_SECONDS)[0]:
        return program.stdout.readline()
    os.kill(program.pid, signal.SIGUSR1)

    def stacks() -> str:
        with open(errors) as written:
            return written.read()

    wait_until(lambda: "most recent call first" in stacks(), "the program dumped its stacks")
    pytest.fail(f"no report after Ctrl-C; the program's stderr and threads:\n{stacks()}")


def test_the_initializer_runs_in_the_server_before_it_serves(short_tmp: str) -> None:
    record = os.path.join(short_tmp, "initializer.json")
    with Manager().start(initializers.record, [record, "hello"]) as manager:
        with open(record) as ran:  # written before the server listened
            seen = json.load(ran)
        process = manager._process
        assert process is not None
        assert seen == {"pid": process.pid, "word": "hello", "sigint ignored": True}
        assert manager.Namespace(a=1).a == 1


def test_an_initializer_that_fails_is_reported_and_leaves_nothing(
    capfd: pytest.CaptureFixture[str],
) -> None:
    manager = Manager()
    with pytest.raises(ConnectionLost, match="initializer failed: ZeroDivisionError"):
        manager.start(initializers.fail)
    assert "the initializer divided by zero" in capfd.readouterr().err  # its traceback
    with pytest.raises(RuntimeError, match=r"call manager\.start\(\)"):
        _ = manager.address
    assert manager.start() is manager  # nothing left behind: it can start again
    manager.shutdown()


def test_an_initializer_must_be_a_picklable_callable() -> None:
    manager = Manager()
    with pytest.raises(TypeError, match="module-level function"):
        manager.start(lambda: None)
    with pytest.raises(TypeError, match="callable"):
        manager.start(42)  # type: ignore[arg-type]
    with pytest.raises(RuntimeError, match="not started"):
        manager.Namespace()
