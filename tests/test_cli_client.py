"""The command-line client against a real ``python -m aionamespace serve`` process.

The server is a subprocess (with and without AIONAMESPACE_AUTHKEY); every client command is a
subprocess too. Output is read line by line as it is printed: the server's first line says it
listens, the watcher's first line says its watch is registered, so nothing here sleeps.
"""

from __future__ import annotations

import ast
import dataclasses
import os
import queue
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from typing import IO, Any

import pytest

from aionamespace import Namespace
from aionamespace.protocol.connection import Address, parse_address

AUTHKEY_ENV = "AIONAMESPACE_AUTHKEY"
TIMEOUT_SECONDS = 30.0
COMMAND = [sys.executable, "-m", "aionamespace"]


class LineReader:
    """Collects a pipe's lines on a thread, so that a test can wait for one with a timeout."""

    def __init__(self, stream: IO[str]) -> None:
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._thread = threading.Thread(target=self._read, args=(stream,))
        self._thread.start()

    def _read(self, stream: IO[str]) -> None:
        for line in stream:
            self._lines.put(line.rstrip("\n"))
        self._lines.put(None)  # end of file

    def next(self, timeout: float = TIMEOUT_SECONDS) -> str:
        try:
            line = self._lines.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no line printed within {timeout} seconds") from None
        assert line is not None, "the process closed its output"
        return line

    def rest(self) -> list[str]:
        """Every remaining line, once the process has exited."""
        self._thread.join(TIMEOUT_SECONDS)
        lines = []
        while (line := self._lines.get_nowait()) is not None:
            lines.append(line)
        return lines


def environment(authkey: str | None) -> dict[str, str]:
    env = {name: value for name, value in os.environ.items() if name != AUTHKEY_ENV}
    if authkey is not None:
        env[AUTHKEY_ENV] = authkey
    return env


@dataclasses.dataclass
class CliServer:
    """A running ``serve`` process and how to reach it."""

    address_text: str
    authkey: str | None

    @property
    def address(self) -> Address:
        return parse_address(self.address_text)

    def run(self, *args: str, authkey: Any = "same") -> subprocess.CompletedProcess[str]:
        """Run a client command (with the server's key unless ``authkey`` says otherwise)."""
        key = self.authkey if authkey == "same" else authkey
        return subprocess.run(
            [*COMMAND, *args],
            env=environment(key),
            capture_output=True,
            text=True,
            timeout=TIMEOUT_SECONDS,
            check=False,
        )

    def ok(self, *args: str) -> str:
        result = self.run(*args)
        assert (result.returncode, result.stderr) == (0, ""), result
        return result.stdout

    def fails(self, *args: str, authkey: Any = "same", status: int = 1) -> str:
        """Run a command that must fail cleanly: exit ``status`` (1; 2 for a wrong command
        line), one error line, no traceback."""
        result = self.run(*args, authkey=authkey)
        assert result.returncode == status, result
        assert result.stdout == ""
        assert "Traceback" not in result.stderr
        assert result.stderr.count("\n") == 1
        return result.stderr.rstrip("\n")

    def proxy(self, namespace: str) -> Namespace:
        key = None if self.authkey is None else self.authkey.encode()
        return Namespace(self.address, namespace, authkey=key)


@dataclasses.dataclass
class Running:
    process: subprocess.Popen[str]
    stdout: LineReader


def start(*args: str, authkey: str | None, sigint_ignored: bool = False) -> Running:
    """Run a command; ``sigint_ignored`` starts it as a shell starts a background job (``&``):
    with SIGINT ignored, which a child inherits (the command must stop on Ctrl-C all the same).
    """
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN) if sigint_ignored else None
    try:
        process = subprocess.Popen(
            [*COMMAND, *args],
            env=environment(authkey),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
    assert process.stdout is not None
    return Running(process, LineReader(process.stdout))


def interrupt(running: Running) -> tuple[int, list[str], str]:
    """Ctrl-C: returns the exit code, the lines not read yet, and stderr."""
    process = running.process
    assert process.stdout is not None
    assert process.stderr is not None
    process.send_signal(signal.SIGINT)
    try:
        process.wait(TIMEOUT_SECONDS)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        rest = running.stdout.rest()  # the reader thread owns stdout until its end
        stderr = process.stderr.read()
        process.stdout.close()
        process.stderr.close()
    return process.returncode, rest, stderr


@pytest.fixture(params=[None, "s3cret key"], ids=["no-authkey", "authkey"])
def cli_server(request: pytest.FixtureRequest, short_tmp: str) -> Iterator[CliServer]:
    """``serve --unix`` in a subprocess, with AIONAMESPACE_AUTHKEY unset or set."""
    path = os.path.join(short_tmp, "cli.sock")
    running = start("serve", "--unix", path, authkey=request.param)
    try:
        assert running.stdout.next() == f"aionamespace: serving on {path} (Ctrl-C stops)"
        yield CliServer(path, request.param)
    finally:
        code, rest, stderr = interrupt(running)
    assert (code, rest, stderr) == (0, ["aionamespace: stopped"], "")
    assert not os.path.exists(path)  # the socket file is removed


# ---------------------------------------------------------------------- get, set, del, dump


LITERALS = [
    "42",
    "'text'",
    "[1, (2, 3.5), None]",
    "{'a': {1, 2}, 'b': b'\\x00'}",
    "1180591620717411303424",
    "-1.5",
    "True",
]


def test_set_then_get_round_trips_python_literals(cli_server: CliServer) -> None:
    for number, literal in enumerate(LITERALS):
        cli_server.ok("set", cli_server.address_text, "board", f"v{number}", literal)
    for number, literal in enumerate(LITERALS):
        printed = cli_server.ok("get", cli_server.address_text, "board", f"v{number}")
        assert printed == repr(ast.literal_eval(literal)) + "\n"
    ns = cli_server.proxy("board")  # a proxy sees what the CLI set, as values, not text
    assert ns.v2 == [1, (2, 3.5), None]
    assert ns.v3 == {"a": {1, 2}, "b": b"\x00"}
    ns._close()


def test_get_shows_what_a_proxy_set(cli_server: CliServer) -> None:
    ns = cli_server.proxy("board")
    ns.item = {"nested": [(1, "x")]}
    ns._close()
    assert (
        cli_server.ok("get", cli_server.address_text, "board", "item") == "{'nested': [(1, 'x')]}\n"
    )


def test_del_removes_and_get_of_a_missing_name_fails(cli_server: CliServer) -> None:
    address = cli_server.address_text
    cli_server.ok("set", address, "board", "item", "1")
    assert cli_server.ok("del", address, "board", "item") == ""
    expected = "aionamespace: AttributeError: 'Namespace' object has no attribute 'item'"
    assert cli_server.fails("get", address, "board", "item") == expected
    assert cli_server.fails("del", address, "board", "item") == expected
    assert cli_server.fails("get", address, "never-used", "item") == expected


@pytest.mark.parametrize(
    ("text", "quoted"),
    [
        ("running", "\"'running'\""),  # the shell took the quotes off: say how to keep them
        ("[1, ", "\"'[1, '\""),
        ("print(1)", "\"'print(1)'\""),
        ("{'a': 1", "'\"{'\"'\"'a'\"'\"': 1\"'"),
        ("it's", "'\"it'\"'\"'s\"'"),
    ],
)
def test_set_of_a_bad_literal_fails_and_sets_nothing(
    cli_server: CliServer, text: str, quoted: str
) -> None:
    address = cli_server.address_text
    cli_server.ok("set", address, "board", "item", "'kept'")
    message = cli_server.fails("set", address, "board", "item", text, status=2)
    assert message == (
        f"python -m aionamespace set: error: not a Python literal: {text} (values are Python "
        "literals, such as 42, 'text' or [1, 2]; the shell takes one pair of quotes off, so a "
        f"string needs two: {quoted})"
    )
    assert cli_server.ok("get", address, "board", "item") == "'kept'\n"
    # what the message suggests, run by a shell, sets the string
    shell = subprocess.run(
        f"{' '.join(COMMAND)} set {address} board item {quoted}",
        shell=True,
        env=environment(cli_server.authkey),
        capture_output=True,
        text=True,
        timeout=TIMEOUT_SECONDS,
        check=False,
    )
    assert (shell.returncode, shell.stderr) == (0, "")
    assert cli_server.ok("get", address, "board", "item") == repr(text) + "\n"


def test_dump_prints_one_namespace_or_all(cli_server: CliServer) -> None:
    address = cli_server.address_text
    cli_server.ok("set", address, "board", "b", "'x'")
    cli_server.ok("set", address, "board", "a", "1")
    cli_server.ok("set", address, "other", "n", "(1, 2)")
    assert cli_server.ok("dump", address, "board") == "board: Namespace(a=1, b='x')\n"
    assert cli_server.ok("dump", address).splitlines() == [
        "board: Namespace(a=1, b='x')",
        "other: Namespace(n=(1, 2))",
    ]
    cli_server.ok("del", address, "other", "n")
    assert cli_server.ok("dump", address, "other") == "other: Namespace()\n"  # empty, but held


def test_dump_of_a_namespace_the_server_does_not_hold(cli_server: CliServer) -> None:
    address = cli_server.address_text
    cli_server.ok("set", address, "board", "a", "1")
    assert cli_server.fails("dump", address, "nosuch") == (
        f"aionamespace: the server at {address} holds no namespace 'nosuch' (dump with no name "
        "lists those it holds)"
    )


def test_dump_of_an_empty_server_says_so(cli_server: CliServer) -> None:
    result = cli_server.run("dump", cli_server.address_text)
    assert (result.returncode, result.stdout) == (0, "")
    assert result.stderr == (
        f"aionamespace: the server at {cli_server.address_text} holds no namespaces\n"
    )


# ---------------------------------------------------------------------- authentication


def test_a_client_without_the_servers_key_is_refused(cli_server: CliServer) -> None:
    address = cli_server.address_text
    if cli_server.authkey is None:
        message = cli_server.fails("get", address, "board", "x", authkey="unexpected")
        assert message.startswith("aionamespace: AuthenticationError: ")
        assert "does not use an authkey" in message
        return
    message = cli_server.fails("set", address, "board", "x", "1", authkey=None)
    assert message == (
        "aionamespace: AuthenticationError: this server requires an authkey; none was given"
    )
    message = cli_server.fails("get", address, "board", "x", authkey="wrong key")
    assert message.startswith("aionamespace: AuthenticationError: authentication failed")
    assert "s3cret" not in message
    assert cli_server.run("dump", address).stdout == ""  # nothing was set, nor created


def test_an_unreachable_server_fails_cleanly(short_tmp: str) -> None:
    missing = os.path.join(short_tmp, "nobody.sock")
    result = subprocess.run(
        [*COMMAND, "get", missing, "board", "x"],
        env=environment(None),
        capture_output=True,
        text=True,
        timeout=TIMEOUT_SECONDS,
        check=False,
    )
    assert result.returncode == 1
    assert result.stderr.startswith("aionamespace: ConnectionLost: cannot connect to")


def test_tcp_server_and_host_port_addresses() -> None:
    running = start("serve", "--tcp", "127.0.0.1:0", authkey="tcp key")
    try:
        first = running.stdout.next()
        match = re.fullmatch(r"aionamespace: serving on (127\.0\.0\.1:\d+) \(Ctrl-C stops\)", first)
        assert match is not None, first
        server = CliServer(match.group(1), "tcp key")
        assert server.address[1] != 0  # the real port, not the one asked for
        server.ok("set", server.address_text, "board", "x", "[1]")
        assert server.ok("get", server.address_text, "board", "x") == "[1]\n"
    finally:
        code, rest, stderr = interrupt(running)
    assert (code, rest, stderr) == (0, ["aionamespace: stopped"], "")


# ---------------------------------------------------------------------- watch


def test_watch_prints_each_change_as_it_happens(cli_server: CliServer) -> None:
    ns = cli_server.proxy("board")
    ns.item = 1
    watcher = start("watch", cli_server.address_text, "board", authkey=cli_server.authkey)
    try:
        assert watcher.stdout.next() == "watching 'board' from revision 1 (Ctrl-C stops)"
        ns.item = 3
        assert watcher.stdout.next() == "       2  item = 3"  # printed before the next write
        ns.text = "it's"
        assert watcher.stdout.next() == '       3  text = "it\'s"'
        del ns.item
        assert watcher.stdout.next() == "       4  item deleted"
        ns._update(a=(1, 2), b=None)
        assert watcher.stdout.next() == "       5  a = (1, 2)"
        assert watcher.stdout.next() == "       5  b = None"
        cli_server.ok("set", cli_server.address_text, "board", "item", "{'k': [1]}")
        assert watcher.stdout.next() == "       6  item = {'k': [1]}"
    finally:
        code, rest, stderr = interrupt(watcher)
        ns._close()
    assert (code, rest, stderr) == (130, [], "")  # Ctrl-C: the shell's 128 + SIGINT


def test_watch_names_and_since(cli_server: CliServer) -> None:
    ns = cli_server.proxy("board")
    ns.a = 1  # revision 1
    ns.b = 1
    ns.a = 2
    ns.c = 1  # revision 4
    watcher = start(
        "watch",
        cli_server.address_text,
        "board",
        "a",
        "c",
        "--since",
        "1",
        authkey=cli_server.authkey,
    )
    try:
        assert watcher.stdout.next() == (
            "watching 'board' since revision 1: the changes up to 4, then live (Ctrl-C stops)"
        )
        assert watcher.stdout.next() == "       3  a = 2"  # replayed: changes after 1
        assert watcher.stdout.next() == "       4  c = 1"
        ns.b = 2  # not watched
        ns.c = 2
        assert watcher.stdout.next() == "       6  c = 2"
    finally:
        code, rest, stderr = interrupt(watcher)
        ns._close()
    assert (code, rest, stderr) == (130, [], "")


def test_watch_since_a_revision_the_server_never_had_fails(cli_server: CliServer) -> None:
    cli_server.ok("set", cli_server.address_text, "board", "a", "1")
    message = cli_server.fails("watch", cli_server.address_text, "board", "--since", "99")
    assert message == (
        "aionamespace: watch --since 99: 'board' is only at revision 1 (was the server "
        "restarted?): watch without --since, or --since 1 or lower"
    )


def test_watch_since_the_current_revision_says_so(cli_server: CliServer) -> None:
    cli_server.ok("set", cli_server.address_text, "board", "a", "1")
    watcher = start(
        "watch", cli_server.address_text, "board", "--since", "1", authkey=cli_server.authkey
    )
    try:
        assert watcher.stdout.next() == "watching 'board' from revision 1 (Ctrl-C stops)"
    finally:
        code, rest, stderr = interrupt(watcher)
    assert (code, rest, stderr) == (130, [], "")


def test_watch_started_with_sigint_ignored_still_stops_on_ctrl_c(cli_server: CliServer) -> None:
    """A shell's background job (``&``) inherits SIGINT ignored: the command restores it."""
    watcher = start(
        "watch", cli_server.address_text, "board", authkey=cli_server.authkey, sigint_ignored=True
    )
    try:
        assert watcher.stdout.next() == "watching 'board' from revision 0 (Ctrl-C stops)"
    finally:
        code, rest, stderr = interrupt(watcher)
    assert (code, rest, stderr) == (130, [], "")
