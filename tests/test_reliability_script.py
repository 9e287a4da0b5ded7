"""benchmarks/reliability.py keeps running: its --quick mode, end to end, in a subprocess.

It measures load, faults and bad inputs against real servers and exits 1 when any of its own
checks fails, so a quick run passing means every scenario still runs and still holds (it
uses the same probes as the tests, tests/waiting_calls.py: a probe that stops matching the
proxy's code fails here rather than months later).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "reliability.py"
SECTIONS = (
    "## Load held",
    "## Faults survived",
    "## Bad inputs tried",
    "## Updates lost",
    "## Machine and command",
)


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_quick_run_passes_every_check() -> None:
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--output", "-"],
        capture_output=True,
        text=True,
        timeout=200,
        check=False,
    )
    assert done.returncode == 0, f"stdout:\n{done.stdout}\nstderr:\n{done.stderr}"
    for section in SECTIONS:
        assert section in done.stdout, section
    assert "all checks passed" in done.stderr
    assert "**0**: increments lost" in done.stdout
