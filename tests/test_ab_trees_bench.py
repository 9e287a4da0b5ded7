"""benchmarks/ab_trees.py keeps running: its --quick mode, in a subprocess, this tree against
itself (a real server thread for the client rows' connections; the trio row's is answered
in process once connected).

The figures of a quick run mean nothing; what is checked is that both rows are measured for
both trees and their ratio printed, every figure a positive number.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "ab_trees.py"


def test_quick_ab_trees_measures_every_row_for_both_trees() -> None:
    source = str(ROOT / "src")
    done = subprocess.run(
        [sys.executable, str(SCRIPT), source, source, "--quick"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "server: parse and answer a read of 48 gets" in done.stdout
    assert "client: 8 tasks" in done.stdout
    assert "trio client: 8 tasks" in done.stdout
    medians = re.findall(r"(before|after): median ([0-9.]+)", done.stdout)
    assert [tree for tree, _ in medians] == ["before", "after"] * 3
    assert all(float(value) > 0 for _, value in medians)
    ratios = re.findall(r"after/before, median over rounds: ([0-9.]+)", done.stdout)
    assert len(ratios) == 3
    assert all(float(ratio) > 0 for ratio in ratios)
