"""Runs a benchmark script of benchmarks/ in a subprocess, for the tests that keep each one's
``--quick`` mode running: the script's standard output, once it has exited with 0."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from redis_processes import find_binary

__all__ = ["BENCHMARKS", "redis_server_env", "run_benchmark"]

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def run_benchmark(
    script: str, *args: str, timeout: float = 120, env: dict[str, str] | None = None
) -> str:
    """``python benchmarks/SCRIPT ARGS...``'s output; fails the test with its stderr if it
    exits with anything but 0 (a hang past ``timeout`` seconds raises TimeoutExpired)."""
    done = subprocess.run(
        [sys.executable, str(BENCHMARKS / script), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def redis_server_env(script: str) -> dict[str, str]:
    """The environment for a benchmark that starts compare.py's "redis-server" from PATH: the
    binary the tests found first on PATH; a skip without one or without redis-py (a failure
    under AIONAMESPACE_REQUIRE_REDIS=1), or when the binary found is not a redis-server."""
    binary = find_binary()
    pytest.importorskip("redis")
    if Path(binary).name != "redis-server":
        pytest.skip(f"{script} starts a redis-server (compare.py's), not {binary}")
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(Path(binary).parent), env.get("PATH", "")])
    return env
