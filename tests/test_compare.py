"""benchmarks/compare.py keeps running: its --quick mode, end to end, in a subprocess.

The figures of a quick run mean nothing; what is checked is that every row is measured for
aionamespace and the stdlib (or, for the rows measured against a yardstick of the same run,
that yardstick), that the JSON holds numbers, and that the table is printed. Redis
is measured only when redis-server and redis-py are installed: the test passes either way; with
them, the rows of a server over Redis (and over a cluster) must be measured too. ``--growth``
adds growth.py's sections, checked as tests/test_growth.py checks them.
"""

from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from test_growth import check_sections

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "compare.py"
ROWS = (
    "sync_get",
    "sync_set",
    "async_get",
    "snapshot",
    "update",
    "get_blob",
    "cached_get",
    "processes_get",
    "connections_get",
    "idle_connections",
)
#: Rows whose yardstick is another measurement of the same run (not in the table's columns).
YARDSTICK_ROWS = {"async_get_trio": "asyncio row", "cached_floor": "floor"}
#: A server over Redis (and over a cluster) against redis-py direct: measured with Redis.
STORE_ROWS = tuple(
    f"store_{kind}{suffix}"
    for suffix in ("", "_cluster")
    for kind in ("sync_get", "async_get", "snapshot", "update", "cached_get")
)
TABLE_HEADER = (
    "row",
    "unit",
    "aionamespace",
    "stdlib",
    "redis",
    "ratio vs stdlib",
    "ratio vs redis",
    "target",
    "met?",
)


def is_number(value: Any) -> bool:
    return type(value) in (int, float) and math.isfinite(value) and value > 0


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_quick_run_measures_every_row(tmp_path: Path) -> None:
    out = tmp_path / "compare.json"
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--growth", "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, f"stdout:\n{done.stdout}\nstderr:\n{done.stderr}"

    lines = done.stdout.splitlines()
    assert lines[0].startswith("$ ")  # the exact command comes first
    assert "compare.py --quick --growth --json" in lines[0]
    header = next((line for line in lines if line.startswith("row ")), None)
    assert header is not None, done.stdout
    for column in TABLE_HEADER:
        assert column in header

    results = json.loads(out.read_text())
    assert results["quick"] is True
    for key in ("cpu_count", "python", "platform"):
        assert results["machine"][key]
    rows = results["rows"]
    assert set(ROWS) <= set(rows)
    for key in ROWS:
        row = rows[key]
        assert any(line.startswith(row["label"]) for line in lines), f"{key} not in the table"
        figures = row["figures"]
        assert is_number(figures["stdlib"]), (key, figures)
        if key == "cached_get" and figures["aionamespace"] is None:
            # The client cache is optional: without it the row says so, it is never faked.
            assert row["missing"]["aionamespace"] == "n/a (no cache)"
        else:
            assert is_number(figures["aionamespace"]), (key, figures)
            assert is_number(row["ratio_vs_stdlib"]), (key, row)
        if results["redis"]["available"] and "redis" not in row["missing"]:
            assert is_number(figures["redis"]), (key, figures)
        assert row["targets"]
        assert row["met"] in ("yes", "n/a") or row["met"].startswith(("yes", "NO"))
    for key, yardstick in YARDSTICK_ROWS.items():
        row = rows[key]
        assert any(line.startswith(row["label"]) for line in lines), f"{key} not in the table"
        assert is_number(row["figures"]["aionamespace"]), (key, row)
        assert is_number(row["details"][yardstick]), (key, row)
        assert row["met"] in ("yes", "NO"), (key, row)
    # Each async row says which loop its client ran on (uvloop when it is installed).
    loop = "uvloop" if importlib.util.find_spec("uvloop") else "asyncio"
    notes = rows["async_get"]["notes"]
    assert any(f"client on {loop}" in note for note in notes), notes
    assert any("trio" in note for note in rows["async_get_trio"]["notes"])
    check_sections(results["growth"], done.stdout)  # --growth: growth.py's sections
    if results["redis"]["available"]:
        for key in STORE_ROWS:
            row = rows[key]
            assert is_number(row["figures"]["aionamespace"]), (key, row)
            if key.startswith("store_cached_get"):
                assert row["met"] in ("yes", "NO"), (key, row)  # against the in-memory read
            else:
                assert is_number(row["ratio_vs_redis"]), (key, row)
