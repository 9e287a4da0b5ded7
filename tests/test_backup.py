"""``backup ADDRESS FILE`` and ``dump --data FILE``: data files from the command line.

Real server processes, real files, the real commands.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from aionamespace import HistoryExpired, Namespace
from server_processes import ServeProcess


def command(*arguments: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "aionamespace", *arguments],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.fixture
def live(short_tmp: str, tmp_path: Path) -> object:
    """A server on a data file, with a board of named and anonymous namespaces."""
    address = os.path.join(short_tmp, "s.sock")
    server = ServeProcess(address, "asyncio", "--data", str(tmp_path / "live.db"))
    board = Namespace(address, "board")
    board.status = "running"
    board._append("log", "one")
    board._append("log", "two")
    board.big = 10**5000  # a value that takes its own path to print
    anonymous = Namespace(address)
    anonymous.x = {"a": (1, 2)}
    yield address
    server.close()


def test_a_backup_holds_the_board_as_it_was(live: str, tmp_path: Path) -> None:
    file = str(tmp_path / "copy.db")
    board = Namespace(live, "board")
    revision = board._snapshot().revision
    done = command("backup", live, file)
    assert done.returncode == 0, done.stderr
    keys = board._keys()
    assert done.stdout == f"backed up {len(keys)} namespace(s), 4 name(s), to {file}\n"
    assert stat_mode(file) == 0o600
    live_dump = command("dump", live)
    file_dump = command("dump", "--data", file)
    assert file_dump.returncode == 0, file_dump.stderr
    assert file_dump.stdout == live_dump.stdout
    assert command("dump", "--data", file, "board").stdout.startswith("board: Namespace(big=")
    restored = ServeProcess(
        os.path.join(os.path.dirname(live), "r.sock"), "asyncio", "--data", file
    )
    try:
        copy = Namespace(os.path.join(os.path.dirname(live), "r.sock"), "board")
        snapshot = copy._snapshot()
        assert snapshot.revision == revision  # revisions kept...
        assert dict(snapshot) == dict(board._snapshot())
        assert snapshot.revision.epoch != revision.epoch  # ...in a board of its own
        with pytest.raises(HistoryExpired), copy._watch(since=revision):
            pass
    finally:
        restored.close()


def test_a_backup_is_one_instant_of_the_whole_board(live: str, tmp_path: Path) -> None:
    """A writer counts up in namespace 'one', then in 'two', while the backup reads 200
    namespaces that sort between them: in a copy of one instant, two.n <= one.n <= two.n + 1."""
    for number in range(200):
        Namespace(live, f"p{number:03}")._update(**{f"n{i}": "x" * 100 for i in range(20)})
    one, two = Namespace(live, "one"), Namespace(live, "two")
    one.n = two.n = 0
    stop = threading.Event()

    def count() -> None:
        ones, twos = Namespace(live, "one"), Namespace(live, "two")
        while not stop.is_set():
            ones._incr("n")
            twos._incr("n")

    writer = threading.Thread(target=count)
    writer.start()
    try:
        copies = []
        for attempt in range(3):
            file = str(tmp_path / f"copy{attempt}.db")
            assert command("backup", live, file).returncode == 0
            copies.append(file)
    finally:
        stop.set()
        writer.join()
    for file in copies:
        lines = dict(
            line.split(": ", 1) for line in command("dump", "--data", file).stdout.splitlines()
        )
        seen_one = int(lines["one"].removeprefix("Namespace(n=").removesuffix(")"))
        seen_two = int(lines["two"].removeprefix("Namespace(n=").removesuffix(")"))
        assert seen_two <= seen_one <= seen_two + 1, (seen_one, seen_two)


def test_backup_never_overwrites_a_file(live: str, tmp_path: Path) -> None:
    file = tmp_path / "precious.db"
    file.write_text("keep me")
    done = command("backup", live, str(file))
    assert done.returncode == 1
    assert done.stderr == f"aionamespace: {file} exists: a backup is written to a new file\n"
    assert file.read_text() == "keep me"
    assert [name for name in os.listdir(tmp_path) if name.startswith(".backup-")] == []


def test_dump_data_says_what_it_cannot_read(live: str, tmp_path: Path) -> None:
    missing = command("dump", "--data", str(tmp_path / "nothing.db"))
    assert missing.returncode == 1
    assert missing.stderr == (
        f"aionamespace: DataFileError: there is no data file at {tmp_path / 'nothing.db'}\n"
    )
    in_use = command("dump", "--data", str(tmp_path / "live.db"))
    assert in_use.returncode == 1
    assert "in use by another aionamespace server: a data file is read here only while no " in (
        in_use.stderr
    )
    assert "ask the server instead (dump ADDRESS)" in in_use.stderr
    file = str(tmp_path / "copy.db")
    assert command("backup", live, file).returncode == 0
    absent = command("dump", "--data", file, "nosuch")
    assert absent.returncode == 1
    assert absent.stderr == f"aionamespace: {file} holds no namespace 'nosuch'\n"


def stat_mode(path: str) -> int:
    return os.stat(path).st_mode & 0o777
