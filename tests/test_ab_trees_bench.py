"""benchmarks/ab_trees.py keeps running: its --quick mode, in a subprocess, this tree against
itself (a real server thread for the client rows' connections; the trio row's is answered
in process once connected).

The figures of a quick run mean nothing; what is checked is that both rows are measured for
both trees and their ratio printed, every figure a positive number.
"""

from __future__ import annotations

import re
from pathlib import Path

from benchmark_runs import run_benchmark

SOURCE = str(Path(__file__).resolve().parent.parent / "src")


def test_quick_ab_trees_measures_every_row_for_both_trees() -> None:
    output = run_benchmark("ab_trees.py", SOURCE, SOURCE, "--quick")
    assert "server: parse and answer a read of 48 gets" in output
    assert "client: 8 tasks" in output
    assert "trio client: 8 tasks" in output
    assert "durable: a sync client's sets" in output
    medians = re.findall(r"(before|after): median ([0-9.]+)", output)
    assert [tree for tree, _ in medians] == ["before", "after"] * 4
    assert all(float(value) > 0 for _, value in medians)
    ratios = re.findall(r"after/before, median over rounds: ([0-9.]+)", output)
    assert len(ratios) == 4
    assert all(float(ratio) > 0 for ratio in ratios)
