"""benchmarks/bulk_ab.py keeps running: its --quick mode, in a subprocess, this tree against
itself. The figures of a quick run mean nothing; what is checked is that both rows are
measured for both trees (and the stdlib, for the get) and their ratios printed, positive."""

from __future__ import annotations

import re
from pathlib import Path

from benchmark_runs import run_benchmark

SOURCE = str(Path(__file__).resolve().parent.parent / "src")


def test_quick_bulk_ab_measures_both_rows_for_both_trees() -> None:
    output = run_benchmark("bulk_ab.py", SOURCE, SOURCE, "--quick")
    assert "get: a sync get of 1 MiB of bytes" in output
    assert "update: _update of 100 names" in output
    trees = re.findall(r"(before|after|stdlib): wall ([0-9.]+) µs  CPU ([0-9.]+) µs", output)
    assert [tree for tree, _, _ in trees] == ["before", "after", "stdlib", "before", "after"]
    assert all(float(wall) > 0 and float(cpu) >= 0 for _, wall, cpu in trees)
    ratios = re.findall(r"median over rounds: ([0-9.]+)", output)
    assert len(ratios) == 6
    assert all(float(ratio) > 0 for ratio in ratios)
