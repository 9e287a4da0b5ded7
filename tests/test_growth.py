"""benchmarks/growth.py keeps running: its --quick mode, alone, in a subprocess.

The figures of a quick run mean nothing (every size is shrunk); what is checked is that every
section is measured and printed as a table of numbers with its figure and bound, that the
JSON holds the same numbers, and that the chart is drawn. compare.py's --growth runs the same
sections (tests/test_compare.py).
"""

from __future__ import annotations

import importlib.util
import json
import math
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "growth.py"
SECTIONS = ("names", "namespaces", "watchers", "snapshot", "memory")


def check_sections(results: dict[str, Any], stdout: str) -> None:
    """Every section printed (title, header, a line per size, its bound) and in the JSON."""
    sections = results["sections"]
    assert tuple(sections) == SECTIONS
    for key, section in sections.items():
        assert section["title"] in stdout, key
        header = r"\s+".join(re.escape(column) for column in section["columns"])
        assert re.search(header, stdout), key
        assert len(section["rows"]) >= 2, (key, section)
        for row in section["rows"]:
            assert len(row) == len(section["columns"]), (key, row)
            assert all(type(v) in (int, float) and math.isfinite(v) and v >= 0 for v in row)
        assert row[-1] > 0, (key, row)  # the largest size costs something
        assert section["figure"], (key, section)
        assert section["bound"], (key, section)
        assert f"bound: {section['bound']}:" in stdout, key
        assert section["within"] in (True, False), (key, section)


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_quick_growth_prints_every_section(tmp_path: Path) -> None:
    out, chart = tmp_path / "growth.json", tmp_path / "growth.png"
    command = [sys.executable, str(SCRIPT), "--quick", "--json", str(out)]
    drawn = importlib.util.find_spec("matplotlib") is not None  # the bench extra
    if drawn:
        command += ["--plot", str(chart)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=100, check=False)
    assert done.returncode == 0, f"stdout:\n{done.stdout}\nstderr:\n{done.stderr}"
    assert done.stdout.startswith("$ ")  # the exact command comes first
    results = json.loads(out.read_text())
    assert results["quick"] is True
    check_sections(results, done.stdout)
    if drawn:
        assert chart.read_bytes().startswith(b"\x89PNG")
