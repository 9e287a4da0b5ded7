"""``copy SOURCE DESTINATION``: a board moved between running servers and data files.

Real server processes, real files, the real command (and, for the chunking of a large
namespace, its entry point in this process against a real server thread).
"""

from __future__ import annotations

import os
import stat
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from aionamespace import Namespace, ServerThread, SQLiteStore
from aionamespace.cli import copy as copy_module
from aionamespace.cli import main
from aionamespace.protocol.codec import encode_value
from server_processes import ServeProcess
from test_backup import command

BOARD: dict[str, Any] = {
    "status": "running",
    "log": ["one", "two"],
    "big": 10**500,
    "price": Decimal("1.10"),
    "blob": b"\x00\xff" * 1000,
    "nested": {"a": (1, 2.5, None)},
}


def fill(address: str) -> str:
    """The same board on any server: a named namespace, an empty one, an anonymous one;
    returns the anonymous one's key."""
    board = Namespace(address, "board")
    board._update(**BOARD)
    empty = Namespace(address, "empty")
    empty.x = 1
    del empty.x
    anonymous = Namespace(address)
    anonymous.x = 1
    key: str = anonymous._aionamespace.target.key
    for proxy in (board, empty, anonymous):
        proxy._close()
    return key


def board_of(address: str, key: str) -> dict[str, Any]:
    proxy = Namespace(address, key)
    try:
        return dict(proxy._snapshot())
    finally:
        proxy._close()


@pytest.fixture
def servers(short_tmp: str) -> Any:
    started: list[ServeProcess] = []

    def start(name: str, *options: str) -> str:
        address = os.path.join(short_tmp, f"{name}.sock")
        started.append(ServeProcess(address, "asyncio", *options))
        return address

    yield start
    for server in started:
        server.close()


def test_a_server_to_a_server_then_to_a_file_and_back(servers: Any, tmp_path: Path) -> None:
    source = servers("source")
    anonymous = fill(source)
    destination = servers("destination")
    done = command("copy", source, destination)
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"copied 3 namespace(s), 7 name(s), into {destination}\n"
    assert board_of(destination, "board") == BOARD
    assert board_of(destination, "empty") == {}
    assert board_of(destination, anonymous) == {"x": 1}
    file = str(tmp_path / "board.db")
    assert command("copy", destination, "--to-data", file).returncode == 0
    assert stat.S_IMODE(os.stat(file).st_mode) == 0o600
    third = servers("third")
    done = command("copy", "--from-data", file, third)
    assert done.returncode == 0, done.stderr
    assert command("dump", third).stdout == command("dump", source).stdout
    again = str(tmp_path / "again.db")
    assert command("copy", "--from-data", file, "--to-data", again).returncode == 0
    assert command("dump", "--data", again).stdout == command("dump", source).stdout


def test_a_namespace_the_destination_holds_is_refused_unless_overwrite(servers: Any) -> None:
    source, destination = servers("source"), servers("destination")
    fill(source)
    kept = Namespace(destination, "board")
    kept.status = "stopped"
    kept.only_here = True
    refused = command("copy", source, destination)
    assert refused.returncode == 1
    assert "already holds the namespace 'board'" in refused.stderr
    assert "--overwrite" in refused.stderr
    assert board_of(destination, "board") == {"status": "stopped", "only_here": True}
    done = command("copy", source, destination, "--overwrite")
    assert done.returncode == 0, done.stderr
    assert board_of(destination, "board") == {**BOARD, "only_here": True}
    kept._close()


def test_a_large_namespace_goes_in_requests_of_bounded_size(
    short_tmp: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    values = {f"n{i}": "x" * 100 for i in range(500)}
    with (
        ServerThread(os.path.join(short_tmp, "a.sock")) as a,
        ServerThread(os.path.join(short_tmp, "b.sock")) as b,
    ):
        source = Namespace(a.address, "wide")
        source._update(**values)
        sent: list[int] = []
        chunks = copy_module._chunks

        def counted(given: dict[str, bytes]) -> Any:
            for chunk in chunks(given):
                sent.append(sum(map(len, chunk.values())))
                yield chunk

        monkeypatch.setattr(copy_module, "CHUNK_BYTES", 2000)
        monkeypatch.setattr(copy_module, "_chunks", counted)
        assert main(["copy", str(a.address), str(b.address)]) == 0
        assert len(sent) > 20
        assert max(sent) <= 2000
        assert board_of(str(b.address), "wide") == values
        source._close()
    assert "copied 1 namespace(s), 500 name(s)" in capsys.readouterr().out


def test_chunks_keep_every_value_and_a_large_one_alone() -> None:
    values = {"a": b"x" * 10, "huge": b"y" * 50, "b": b"z" * 10, "c": b"w" * 10}
    chunks = list(copy_module._chunks(values)) if copy_module.CHUNK_BYTES >= 50 else []
    assert chunks == [values]  # all fit the default bound
    original = copy_module.CHUNK_BYTES
    try:
        copy_module.CHUNK_BYTES = 25
        chunks = list(copy_module._chunks(values))
    finally:
        copy_module.CHUNK_BYTES = original
    assert chunks == [{"a": b"x" * 10}, {"huge": b"y" * 50}, {"b": b"z" * 10, "c": b"w" * 10}]


def test_wrong_command_lines_say_what_copy_wants(servers: Any, tmp_path: Path) -> None:
    address = servers("one")
    for arguments in (
        ["copy", address],
        ["copy", address, address, address],
        ["copy", "--from-data", "a.db", "--to-data", "b.db", address],
    ):
        done = command(*arguments)
        assert done.returncode == 2, arguments
        assert "copy wants a source and a destination" in done.stderr
    done = command("copy", address, "--to-data", str(tmp_path / "x.db"), "--overwrite")
    assert done.returncode == 2
    assert "--overwrite is for a destination server" in done.stderr
    existing = tmp_path / "exists.db"
    existing.write_bytes(b"")
    done = command("copy", address, "--to-data", str(existing))
    assert done.returncode == 1
    assert "exists" in done.stderr
    assert existing.read_bytes() == b""


def test_a_data_file_a_server_has_open_is_refused(servers: Any, tmp_path: Path) -> None:
    file = str(tmp_path / "live.db")
    address = servers("live", "--data", file)
    other = servers("other")
    done = command("copy", "--from-data", file, other)
    assert done.returncode == 1
    assert "in use" in done.stderr
    assert "ask the server instead (copy ADDRESS DESTINATION)" in done.stderr
    assert address


def test_a_data_file_is_copied_value_for_value(tmp_path: Path, servers: Any) -> None:
    """Values go as encoded, never decoded on the way (a value only the server can hold)."""
    file = str(tmp_path / "made.db")
    store = SQLiteStore(file)
    store.update("made", {"n": encode_value(10**4000), "s": encode_value("é")})
    store.commit_now()
    store.close()
    address = servers("into")
    assert command("copy", "--from-data", file, address).returncode == 0
    assert board_of(address, "made") == {"n": 10**4000, "s": "é"}
