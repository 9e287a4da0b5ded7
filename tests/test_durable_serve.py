"""``serve --data`` and ``Manager(data=...)``: a board that outlives its server process."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from aionamespace import DataFileError, Manager, Namespace
from server_processes import ServeProcess


def serve(*arguments: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "aionamespace", "serve", *arguments],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def test_a_manager_with_a_data_file_finds_its_board_again(tmp_path: Path) -> None:
    data = tmp_path / "board.db"
    with Manager(data=data) as manager:
        ns = manager.Namespace("board")
        ns.jobs = ["a", "b"]
        ns._incr("done", 2)
        anonymous = manager.Namespace(x=1)
        key = anonymous._key
    with Manager(data=data, fsync=True) as manager:
        ns = manager.Namespace("board")
        assert (ns.jobs, ns.done) == (["a", "b"], 2)
        assert key in ns._keys()  # an anonymous namespace too, within its grace


def test_a_second_manager_on_the_same_file_is_refused(tmp_path: Path) -> None:
    data = tmp_path / "board.db"
    with Manager(data=data):
        second = Manager(data=data)
        with pytest.raises(DataFileError, match="in use by another aionamespace server"):
            second.start()


def test_fsync_without_a_data_file_is_refused() -> None:
    with pytest.raises(ValueError, match="fsync=True needs a data file"):
        Manager(fsync=True)


def test_serve_refuses_a_file_that_is_not_ours_in_one_line(short_tmp: str, tmp_path: Path) -> None:
    data = tmp_path / "notes.db"
    data.write_text("my notes\n" * 1000)
    done = serve("--unix", os.path.join(short_tmp, "s.sock"), "--data", str(data))
    assert done.returncode == 1
    assert done.stderr.splitlines() == [
        f"aionamespace: {data} cannot be read as a data file: file is not a database"
    ]
    assert data.read_text() == "my notes\n" * 1000


def test_serve_refuses_fsync_without_data(short_tmp: str) -> None:
    done = serve("--unix", os.path.join(short_tmp, "s.sock"), "--fsync")
    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        "python -m aionamespace serve: error: --fsync needs --data FILE (it says how the data"
        " file is written)"
    ]


def test_serve_refuses_a_file_another_server_has(short_tmp: str, tmp_path: Path) -> None:
    data = str(tmp_path / "board.db")
    first = ServeProcess(os.path.join(short_tmp, "one.sock"), "asyncio", "--data", data)
    try:
        Namespace(os.path.join(short_tmp, "one.sock"), "board").x = 1
        done = serve("--unix", os.path.join(short_tmp, "two.sock"), "--data", data)
        assert done.returncode == 1
        assert done.stderr.splitlines() == [
            f"aionamespace: {data} is in use by another aionamespace server"
        ]
    finally:
        first.close()
