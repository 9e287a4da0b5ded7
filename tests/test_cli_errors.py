"""What a newcomer meets on the command line: help texts, and ``serve``'s errors as one line.

Every command here runs for real, as a subprocess: a usage error (a wrong command line) exits
with status 2, a command that cannot be carried out with status 1, each with one line on
stderr that says what to do, and no traceback.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Sequence

import pytest

from aionamespace.cli.parser import make_parser

COMMAND = [sys.executable, "-m", "aionamespace"]
TIMEOUT_SECONDS = 30.0
SCRIPT = os.path.join(os.path.dirname(sys.executable), "aionamespace")


def run(
    args: Sequence[str], *, env: dict[str, str] | None = None, command: Sequence[str] = COMMAND
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*command, *args],
        capture_output=True,
        text=True,
        timeout=TIMEOUT_SECONDS,
        check=False,
        env=env,
    )


def one_line_error(result: subprocess.CompletedProcess[str], status: int) -> str:
    """The one line a failed command printed (checked: that status, nothing else printed)."""
    assert result.returncode == status, result
    assert result.stdout == ""
    assert "Traceback" not in result.stderr, result.stderr
    assert result.stderr.count("\n") == 1, result.stderr
    return result.stderr.rstrip("\n")


# ---------------------------------------------------------------------- help


def test_help_names_the_program_as_it_was_run() -> None:
    as_module = run(["--help"])
    assert as_module.returncode == 0
    assert as_module.stdout.splitlines()[0] == "usage: python -m aionamespace [-h] COMMAND ..."
    assert os.path.exists(SCRIPT), "pip install -e . makes the aionamespace script"
    as_script = run(["serve", "--help"], command=[SCRIPT])
    assert as_script.returncode == 0
    assert as_script.stdout.splitlines()[0].startswith("usage: aionamespace serve [-h]")


@pytest.mark.parametrize(
    "command", ["", "serve", "demo", "get", "set", "del", "dump", "watch", "info"]
)
def test_help_is_plain_text_and_describes_everything(command: str) -> None:
    result = run([command, "--help"] if command else ["--help"])
    assert result.returncode == 0
    assert "``" not in result.stdout  # no reStructuredText
    assert "AIONAMESPACE_AUTHKEY" in result.stdout or command == "demo"
    if command == "":
        for name in ("serve", "demo", "get", "set", "del", "dump", "watch", "info"):
            assert f"\n    {name} " in result.stdout, name  # listed, with its summary


def test_every_command_and_argument_has_a_description() -> None:
    parser = make_parser()
    (commands,) = [a for a in parser._actions if a.dest == "command"]
    summaries = {choice.dest: choice.help for choice in commands._choices_actions}  # type: ignore[attr-defined]
    for name, subparser in commands.choices.items():  # type: ignore[union-attr]
        assert summaries[name], name
        assert subparser.description, name
        for action in subparser._actions:
            assert action.help, f"{name} {action.dest}"


# ---------------------------------------------------------------------- serve: usage errors

USAGE = "python -m aionamespace serve: error: "


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--tcp", "localhost"],
            "--tcp wants HOST:PORT, not 'localhost' (for example 127.0.0.1:7000, or "
            "localhost:0 for any free port)",
        ),
        (
            ["--tcp", "127.0.0.1:99999"],
            "--tcp 127.0.0.1:99999: port 99999 is out of range (0 to 65535; 0 picks any free port)",
        ),
        (
            ["--tcp", "127.0.0.1:0", "--tls-key", "key.pem"],
            "--tls-key needs --tls-cert (the certificate it is the key of); without both the "
            "server would not use TLS",
        ),
        (
            ["--tcp", "127.0.0.1:0", "--backend", "trio", "--loop", "uvloop"],
            "--loop applies to --backend asyncio, not trio",
        ),
        (
            ["--tcp", "127.0.0.1:0", "--backend", "trio", "--busy-poll-us", "10"],
            "--busy-poll-us applies to --backend asyncio, not trio",
        ),
        (
            ["--tcp", "127.0.0.1:0", "--loop", "uvloop", "--busy-poll-us", "10"],
            "--busy-poll-us applies to the asyncio loop: uvloop cannot poll",
        ),
        (
            ["--tcp", "127.0.0.1:0", "--busy-poll-us", "-1"],
            "--busy-poll-us wants microseconds (0 or more), not -1",
        ),
        (
            ["--backend", "trio"],
            "one of the arguments --unix --tcp is required "
            "(see python -m aionamespace serve --help)",
        ),
    ],
    ids=[
        "tcp-without-port",
        "port-out-of-range",
        "tls-key-without-cert",
        "loop-with-trio",
        "busy-poll-with-trio",
        "busy-poll-with-uvloop",
        "negative-busy-poll",
        "no-address",
    ],
)
def test_serve_refuses_a_wrong_command_line_in_one_line(args: list[str], message: str) -> None:
    assert one_line_error(run(["serve", *args]), 2) == USAGE + message


# ---------------------------------------------------------------------- serve: runtime errors


def test_serve_on_a_tcp_port_in_use(short_tmp: str) -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        result = run(["serve", "--tcp", f"127.0.0.1:{port}"])
    assert one_line_error(result, 1) == (
        f"aionamespace: cannot listen on 127.0.0.1:{port}: the address is in use (stop what "
        "listens there, choose another port, or port 0 for any free one)"
    )


def test_serve_on_a_unix_socket_a_live_server_holds(socket_path: str) -> None:
    with socket.socket(socket.AF_UNIX) as live:
        live.bind(socket_path)
        live.listen()
        result = run(["serve", "--unix", socket_path])
    assert one_line_error(result, 1) == (
        f"aionamespace: cannot listen on {socket_path}: another server listens there (stop it, "
        "or choose another path)"
    )


def test_serve_on_a_path_taken_by_a_file(socket_path: str) -> None:
    with open(socket_path, "w") as file:
        file.write("kept")
    result = run(["serve", "--unix", socket_path])
    assert one_line_error(result, 1) == (
        f"aionamespace: cannot listen on {socket_path}: a file that is not a socket is there "
        "(remove it, or choose another)"
    )
    with open(socket_path) as file:
        assert file.read() == "kept"  # nothing lost


def test_serve_in_a_missing_directory(short_tmp: str) -> None:
    path = os.path.join(short_tmp, "missing", "ns.sock")
    assert one_line_error(run(["serve", "--unix", path]), 1) == (
        f"aionamespace: cannot listen on {path}: the directory "
        f"{os.path.join(short_tmp, 'missing')} does not exist (create it first)"
    )


def test_serve_with_a_missing_certificate(short_tmp: str) -> None:
    cert = os.path.join(short_tmp, "cert.pem")
    result = run(["serve", "--tcp", "127.0.0.1:0", "--tls-cert", cert])
    assert one_line_error(result, 1) == (
        f"aionamespace: cannot load the TLS certificate and key from {cert}: "
        "No such file or directory"
    )


@pytest.mark.parametrize(
    ("module", "args", "message"),
    [
        ("trio", ["--backend", "trio"], "--backend trio needs trio"),
        ("uvloop", ["--loop", "uvloop"], "--loop uvloop needs uvloop"),
    ],
)
def test_serve_on_a_library_that_is_not_installed(
    short_tmp: str, module: str, args: list[str], message: str
) -> None:
    """A ``sitecustomize`` on the path hides the module, as a plain install lacks it."""
    with open(os.path.join(short_tmp, "sitecustomize.py"), "w") as file:
        file.write(f"import sys\nsys.modules[{module!r}] = None  # import {module}: ImportError\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([short_tmp, *sys.path])}
    result = run(["serve", "--tcp", "127.0.0.1:0", *args], env=env)
    assert one_line_error(result, 1) == (
        f"aionamespace: {message}, which is not installed here: "
        f"pip install 'aionamespace[{module}]'"
    )
