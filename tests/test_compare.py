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
VERDICT = SCRIPT.with_name("verdict.py")
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
    for row in rows.values():  # each target's score: what benchmarks/verdict.py judges
        for target in row["targets"]:
            if target["met"] is not None:
                assert is_number(target["score"]), (row["label"], target)
                assert target["met"] == (target["score"] >= 1), (row["label"], target)
    check_verdict(results, out)
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


def load_verdict() -> Any:
    spec = importlib.util.spec_from_file_location("verdict", VERDICT)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def check_verdict(results: dict[str, Any], out: Path) -> None:
    """verdict.py reads compare.py's JSON: a line per target, and it refuses a --quick run."""
    verdict = load_verdict()
    lines = verdict.table([results, results])
    targets = [(r["label"], t["text"]) for r in results["rows"].values() for t in r["targets"]]
    assert [tuple(line[:2]) for line in lines[1:]] == list(dict.fromkeys(targets))
    for line in lines[1:]:
        assert line[2] in ("2/2", "0/2"), line
    refused = subprocess.run(
        [sys.executable, str(VERDICT), str(out)], capture_output=True, text=True, timeout=60
    )
    assert refused.returncode == 2
    assert "--quick run" in refused.stderr


@pytest.mark.parametrize(
    ("scores", "verdict"),
    [
        ([1.3, 1.1, 1.0, 0.95, 1.2, 1.05, 1.4], "met"),  # a run below, within 10%: met
        ([1.3, 1.1, 1.0, 0.85, 1.2, 1.05, 1.4], "NO (worst run)"),  # one run 15% short
        ([0.9, 0.95, 1.5], "NO (median)"),
        ([], "not measured"),
    ],
)
def test_verdict_over_runs(scores: list[float], verdict: str) -> None:
    assert load_verdict().judge(scores) == verdict


def test_verdict_exit_status_says_whether_every_target_is_met(tmp_path: Path) -> None:
    def run(score: float) -> dict[str, Any]:
        target = {"text": ">= 2x stdlib", "kind": "stdlib", "value": 2, "score": score}
        return {"quick": False, "rows": {"r": {"label": "a row", "targets": [target]}}}

    for name, scores, status in (("met", [1.1, 1.0, 0.95], 0), ("missed", [1.1, 0.8, 0.99], 1)):
        paths = []
        for i, score in enumerate(scores):
            paths.append(tmp_path / f"{name}{i}.json")
            paths[-1].write_text(json.dumps(run(score)))
        done = subprocess.run(
            [sys.executable, str(VERDICT), *map(str, paths)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == status, done.stdout + done.stderr
        assert "a row" in done.stdout
