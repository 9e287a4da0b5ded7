"""benchmarks/costs.py keeps running: its --quick mode, in a subprocess, against real servers.

The figures of a quick run mean nothing; what is checked is that every row is measured,
printed and written to the JSON, every figure a finite count, the gets counted non-zero
(CPU is read in clock ticks: a quick run's samples are too short for it to be more).
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest

from benchmark_runs import run_benchmark


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_quick_costs_prints_and_writes_every_row(tmp_path: Path) -> None:
    out = tmp_path / "costs.json"
    output = run_benchmark("costs.py", "--quick", "--json", str(out))
    rows = json.loads(out.read_text())["rows"]
    assert set(rows) == {"async", "trio", "processes"}
    for row in rows.values():
        assert row["title"] in output
        assert len(row["samples"]) == 2
        for sample in [*row["samples"], row["median"]]:
            assert len(sample) == len(row["columns"]) == 7
            assert all(math.isfinite(value) and value >= 0 for value in sample)
        assert row["median"][0] > 0  # gets/s
