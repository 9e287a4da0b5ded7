"""benchmarks/store_stages.py keeps running: its --quick mode, in a subprocess, over a
redis-server it starts (skipped without one, a failure under AIONAMESPACE_REQUIRE_REDIS=1).

The figures of a quick run mean nothing; what is checked is that every row is printed, that
the calls through the server have each stage measured (the marks the script adds to the
server found their calls), and that the stages fit in the call's wall time.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmark_runs import redis_server_env, run_benchmark

THROUGH_THE_SERVER = ["get", "set", "_snapshot of 100 names", "_update of 100 names"]
DIRECT = ["redis-py GET", "redis-py MGET of 100", "redis-py MSET of 100"]


@pytest.mark.timeout(120)
def test_quick_store_stages_splits_each_call(tmp_path: Path) -> None:
    env = redis_server_env("store_stages.py")
    out = tmp_path / "stages.json"
    output = run_benchmark("store_stages.py", "--quick", "--json", str(out), timeout=100, env=env)
    rows = json.loads(out.read_text())
    assert [row["row"] for row in rows] == THROUGH_THE_SERVER + DIRECT, output
    for row in rows:
        assert row["row"] in output
        assert row["wall"] > 0
        assert min(row["redis_cpu"], row["client_cpu"]) >= 0
        if row["row"] in DIRECT:
            assert "before" not in row
            continue
        stages = [row["before"], row["redis"], row["after"]]
        assert all(stage is not None and stage > 0 for stage in stages), row
        assert sum(stages) < row["wall"], row  # (each call's stages are inside its wall time)
