"""``python -m aionamespace serve|demo`` as real subprocesses, stopped by real signals.

A server is ready when it prints its "serving on" line: tests read that line, never sleep.
"""

from __future__ import annotations

import multiprocessing
import os
import re
import selectors
import signal
import stat
import subprocess
import sys
from collections.abc import Iterator, Sequence

import pytest

from aionamespace import AuthenticationError, Namespace
from aionamespace.__main__ import AUTHKEY_ENV

READY_SECONDS = 30.0
EXIT_SECONDS = 10.0
DEMO_SECONDS = 120.0
SERVING = re.compile(r"^aionamespace: serving on (?P<address>.+) \(Ctrl-C stops\)$")


class CliServer:
    """``python -m aionamespace serve ARGS`` in a subprocess, started when it says so."""

    def __init__(self, args: Sequence[str], env: dict[str, str] | None = None) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "aionamespace", "serve", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        line = self.read_line()
        match = SERVING.match(line)
        if match is None:
            out, err = self.kill()
            pytest.fail(f"the server did not start: {line!r}{out}{err}")
        self.address = match["address"]

    def read_line(self) -> str:
        """The next stdout line, waiting at most READY_SECONDS for it to begin."""
        assert self.process.stdout is not None
        with selectors.DefaultSelector() as selector:
            selector.register(self.process.stdout, selectors.EVENT_READ)
            if not selector.select(READY_SECONDS):
                return ""
        return self.process.stdout.readline().rstrip("\n")

    def stop(self, signum: int) -> tuple[int, str, str]:
        """Send ``signum``; return the exit code and the rest of stdout and stderr."""
        self.process.send_signal(signum)
        try:
            out, err = self.process.communicate(timeout=EXIT_SECONDS)
        except subprocess.TimeoutExpired:
            out, err = self.kill()
            pytest.fail(f"the server did not exit within {EXIT_SECONDS}s of signal {signum}")
        return self.process.returncode, out, err

    def kill(self) -> tuple[str, str]:
        if self.process.poll() is None:
            self.process.kill()
        return self.process.communicate(timeout=EXIT_SECONDS)

    def close(self) -> None:
        """Whatever the test did: no process and no pipe left behind."""
        if self.process.returncode is None:
            self.kill()


@pytest.fixture
def servers() -> Iterator[list[CliServer]]:
    """Register the servers a test starts: every one is cleaned up, pass or fail."""
    started: list[CliServer] = []
    yield started
    for server in started:
        server.close()


@pytest.mark.parametrize(
    "signum", [pytest.param(signal.SIGINT, id="SIGINT"), pytest.param(signal.SIGTERM, id="SIGTERM")]
)
def test_serve_unix_until_a_signal(
    servers: list[CliServer], socket_path: str, server_backend: str, signum: int
) -> None:
    server = CliServer(["--unix", socket_path, "--backend", server_backend])
    servers.append(server)
    assert server.address == socket_path
    mode = os.stat(socket_path).st_mode
    assert stat.S_ISSOCK(mode)
    assert stat.S_IMODE(mode) == 0o600

    with Namespace(socket_path, "cli") as ns:
        ns.greeting = "hello"
        assert ns.greeting == "hello"
        assert str(ns) == "Namespace(greeting='hello')"

    code, out, err = server.stop(signum)
    assert code == 0, err
    assert out.strip() == "aionamespace: stopped"
    assert not os.path.exists(socket_path)


def test_signal_right_after_the_ready_line_stops_cleanly(
    short_tmp: str, server_backend: str
) -> None:
    """The ready line is a promise: from then on, Ctrl-C stops the server cleanly.

    The signal is sent the moment the line arrives. A server that installs its signal handler
    before printing passes every time; one that prints first loses the race now and then, so
    the test tries a few times.
    """
    for attempt in range(10):
        path = os.path.join(short_tmp, f"ns{attempt}.sock")
        with subprocess.Popen(
            [
                sys.executable,
                "-m",
                "aionamespace",
                "serve",
                "--unix",
                path,
                "--backend",
                server_backend,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        ) as process:
            assert process.stdout is not None
            line = process.stdout.readline()  # blocking: react as soon as it is printed
            process.send_signal(signal.SIGINT)
            try:
                _, err = process.communicate(timeout=EXIT_SECONDS)
            except subprocess.TimeoutExpired:
                process.kill()
                raise
        assert SERVING.match(line.rstrip("\n")), line
        assert process.returncode == 0, f"attempt {attempt}: exit {process.returncode}\n{err}"
        assert not os.path.exists(path)


def test_serve_tcp_port_zero_prints_the_chosen_port(servers: list[CliServer]) -> None:
    server = CliServer(["--tcp", "127.0.0.1:0"])
    servers.append(server)
    host, _, port_text = server.address.rpartition(":")
    port = int(port_text)
    assert host == "127.0.0.1"
    assert port > 0
    with Namespace((host, port)) as ns:
        ns.port = port
        assert ns.port == port
    code, _, err = server.stop(signal.SIGINT)
    assert code == 0, err


def test_serve_requires_the_authkey_from_the_environment(
    servers: list[CliServer], socket_path: str
) -> None:
    key = "cli secret"
    server = CliServer(["--unix", socket_path], env={**os.environ, AUTHKEY_ENV: key})
    servers.append(server)
    with Namespace(socket_path, "keyed", authkey=key.encode()) as ns:
        ns.x = 1
        assert ns.x == 1
    with pytest.raises(AuthenticationError), Namespace(socket_path, "keyed") as ns:
        _ = ns.x
    code, _, err = server.stop(signal.SIGTERM)
    assert code == 0, err


def test_a_second_server_does_not_steal_a_live_socket(
    servers: list[CliServer], socket_path: str
) -> None:
    """Only a stale socket file may be replaced; a live server keeps its address."""
    first = CliServer(["--unix", socket_path])
    servers.append(first)
    with Namespace(socket_path, "owner") as ns:
        ns.owner = "first"
    second = subprocess.Popen(
        [sys.executable, "-m", "aionamespace", "serve", "--unix", socket_path],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert second.stdout is not None
    with selectors.DefaultSelector() as selector:  # a ready line, or EOF when it refuses
        selector.register(second.stdout, selectors.EVENT_READ)
        selector.select(READY_SECONDS)
    if second.poll() is None:
        second.send_signal(signal.SIGINT)
    out, _ = second.communicate(timeout=EXIT_SECONDS)
    assert second.returncode != 0, f"a second server started on a live socket: {out!r}"
    with Namespace(socket_path, "owner") as ns:
        assert ns.owner == "first"


def test_demo_shows_the_lesson_in_order() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "aionamespace", "demo"],
        capture_output=True,
        text=True,
        timeout=DEMO_SECONDS,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    expected = [
        r"parent sets ns\.item = 'empty'",
        r"child 1 .*reads ns\.item == 'empty'",
        r"child 2 .*reads ns\.item == 'educative'",
        r"parent reads ns\.item == 'educative is awesome !'",
        r"child .*gets AttributeError: .*'_item'",
    ]
    if "fork" in multiprocessing.get_all_start_methods():
        expected.append(r"child .*reads ns\._item == 'empty'")
    expected += [
        r"await ns\.item -> 'educative is awesome !'",
        r"ns\.readers = 1; ns\.note = 'written from asyncio'",
        r"100 concurrent tasks read ns\.item, pipelined on one connection: all 100 read "
        r"'educative is awesome !'",
        r"await ns\._snapshot\(\) -> .*'note': 'written from asyncio'",
        r"woke on the change, no polling: 'done'",
        r"appended to ns\.log .*\['pid \d+ finished'\]",
        r"demo finished",
    ]
    lines = result.stdout.splitlines()
    position = 0
    for pattern in expected:
        found = next((i for i in range(position, len(lines)) if re.search(pattern, lines[i])), None)
        assert found is not None, f"{pattern!r} not found in order in:\n{result.stdout}"
        position = found + 1
