"""The ``info`` operation and command: a server's figures, checked against known contents.

Raw clients (tests/raw_client.py) make the contents, so that every connection and request is
one the test made: each figure can then be checked exactly.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import socket
import subprocess
import sys
from typing import Any

import anyio
import msgpack
import pytest

import aionamespace
from aionamespace import AsyncNamespace, Limits, Namespace, ServerThread
from aionamespace.protocol.codec import encode_value
from raw_client import exchange, hello_frame, read_frames

LIMITS = Limits(max_namespaces=50, max_history_revisions=20)
TIMEOUT_SECONDS = 30.0


class Raw:
    """A raw connection, past its hello (which it keeps)."""

    def __init__(self, path: str, *, greet: bool = True) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(path)
        self.sock.settimeout(TIMEOUT_SECONDS)
        self.unpacker = msgpack.Unpacker(raw=False)
        self.hello: dict[str, Any] = {}
        if greet:
            self.sock.sendall(hello_frame())
            self.hello = read_frames(self.sock, self.unpacker, until_eof=False)[0]
        self.last_id = 0

    def send(self, op: str, *args: Any) -> None:
        self.last_id += 1
        self.sock.sendall(msgpack.packb([self.last_id, op, *args]))

    def call(self, op: str, *args: Any) -> Any:
        self.last_id += 1
        (reply,) = exchange(self.sock, self.unpacker, [self.last_id, op, *args])
        assert reply[:2] == [self.last_id, 0], reply
        return reply[2]


def test_info_figures_of_a_server_with_known_contents(
    socket_path: str, server_backend: str
) -> None:
    with ServerThread(socket_path, backend=server_backend, limits=LIMITS):
        writer = Raw(socket_path)
        writer.call("set", "board", "x", encode_value(1))  # 1 byte
        writer.call("set", "board", "s", encode_value("abc"))  # 4 bytes
        writer.call("append", "board", "log", [encode_value(1), encode_value(2)])  # 3 bytes
        writer.call("open", "#anonymous", {})
        writer.call("acquire", "board", "L", b"t1", None)
        watch_id, revision, _ = writer.call("watch", "board", ["x"], None)
        assert (watch_id, revision) == (1, 3)
        writer.call("track", True)
        writer.call("get", "board", "x")
        waiter = Raw(socket_path)
        waiter.send("acquire", "board", "L", b"t2", None)  # waits: answered when released
        silent = Raw(socket_path, greet=False)  # in its handshake
        asker = Raw(socket_path)
        figures = asker.call("info")
        silent.sock.close()
        waiter.sock.close()
        writer.sock.close()
        asker.sock.close()

    assert figures.pop("epoch") == asker.hello["epoch"] == writer.hello["epoch"]
    uptime = figures.pop("uptime")
    rate = figures.pop("requests_per_second")
    recent = figures.pop("recent_requests_per_second")
    assert uptime > 0
    assert rate == pytest.approx(figures["requests"] / uptime, rel=0.5)
    assert recent is None or recent >= 0
    assert figures == {
        "version": aionamespace.__version__,
        "protocol": 1,
        "backend": server_backend,
        "loop": server_backend,  # a ServerThread's loop: the backend's own
        "store": "MemoryStore",
        "store_location": None,  # (the server's memory)
        "store_prefix": None,
        "connections": 4,
        "authenticated_connections": 3,
        "handshaking_connections": 1,
        "connections_accepted": 4,
        "namespaces": 2,
        "named_namespaces": 1,
        "anonymous_namespaces": 1,
        "names": 3,
        "value_bytes": 1 + 4 + 3,
        "history_revisions": 3,  # the anonymous namespace's open set nothing: no revision
        "history_bytes": (1 + 64) + (4 + 64) + (2 + 64),  # an append counts its items
        "largest_history_revisions": 3,
        "largest_history_bytes": 199,
        "locks_held": 1,
        "lock_waits": 1,
        "watches": 1,
        "tracking_connections": 1,
        "tracked_names": 1,
        "requests": 10,  # the writer's 8, the waiter's acquire, this info; no hello
        "limits": dataclasses.asdict(LIMITS),
    }


def test_each_server_has_its_own_epoch(socket_path: str, short_tmp: str) -> None:
    other_path = os.path.join(short_tmp, "other.sock")
    with ServerThread(socket_path), ServerThread(other_path):
        first, second = Raw(socket_path), Raw(other_path)
        assert re.fullmatch(r"[0-9a-f]{16}", first.hello["epoch"])
        assert first.hello["epoch"] != second.hello["epoch"]
        first.sock.close()
        second.sock.close()


def test_the_proxies_ask_info(socket_path: str) -> None:
    with ServerThread(socket_path, limits=LIMITS):
        with Namespace(socket_path, "board") as ns:
            ns.x = 1
            before = ns._info()
            after = ns._info()
        assert after["requests"] == before["requests"] + 1  # only the second info came between
        assert after["names"] == 1
        assert after["limits"] == dataclasses.asdict(LIMITS)

        async def ask() -> dict[str, Any]:
            async with AsyncNamespace(socket_path, "board") as ans:
                return await ans._info()

        figures = anyio.run(ask)
        assert figures["epoch"] == before["epoch"]
        assert figures["names"] == 1
        assert set(figures) == set(before)


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "aionamespace", *args],
        capture_output=True,
        text=True,
        timeout=TIMEOUT_SECONDS,
        check=False,
        env={k: v for k, v in os.environ.items() if k != "AIONAMESPACE_AUTHKEY"},
    )


def test_info_command_prints_the_figures(socket_path: str) -> None:
    with ServerThread(socket_path, limits=LIMITS):
        with Namespace(socket_path, "board") as ns:
            ns.x = 1
            ns.s = "abc"
        result = run_cli("info", socket_path)
        as_json = run_cli("info", socket_path, "--json")
    assert (result.returncode, result.stderr) == (0, "")
    lines = result.stdout.splitlines()
    assert lines[0] == f"aionamespace {aionamespace.__version__} at {socket_path} (protocol 1)"
    assert "backend      asyncio (event loop: asyncio)" in lines
    assert "namespaces   1: 1 named, 0 anonymous (at most 50)" in lines
    assert "names        2, holding 5 bytes of values" in lines
    assert "  max_history_revisions    20" in lines
    assert (as_json.returncode, as_json.stderr) == (0, "")
    figures = json.loads(as_json.stdout)
    assert (figures["names"], figures["value_bytes"], figures["namespaces"]) == (2, 5, 1)
    assert figures["limits"]["max_namespaces"] == 50


def test_info_names_a_data_file(socket_path: str, short_tmp: str) -> None:
    path = os.path.join(short_tmp, "board.db")
    store = aionamespace.SQLiteStore(path)
    try:
        with ServerThread(socket_path, store=store), Namespace(socket_path, "board") as ns:
            figures = ns._info()
            result = run_cli("info", socket_path)
    finally:
        store.close()
    assert (figures["store"], figures["store_location"]) == ("SQLiteStore", path)
    assert figures["store_prefix"] is None
    assert f"store        SQLiteStore at {path}" in result.stdout.splitlines()


def test_info_command_of_an_unreachable_server(short_tmp: str) -> None:
    missing = os.path.join(short_tmp, "nobody.sock")
    result = run_cli("info", missing)
    assert result.returncode == 1
    assert result.stderr.startswith("aionamespace: ConnectionLost: cannot connect to")
    assert result.stderr.count("\n") == 1
