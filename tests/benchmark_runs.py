"""Runs a benchmark script of benchmarks/ in a subprocess, for the tests that keep each one's
``--quick`` mode running: the script's standard output, once it has exited with 0."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

__all__ = ["BENCHMARKS", "run_benchmark"]

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
