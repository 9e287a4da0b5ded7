"""benchmarks/store_pairs.py keeps running: its --quick mode, in a subprocess, over a
redis-server it starts (skipped without one, a failure under AIONAMESPACE_REQUIRE_REDIS=1).

The figures of a quick run mean nothing; what is checked is that each of the three rows is
measured on both sides and printed with its ratios, every figure a positive number.
"""

from __future__ import annotations

import re

import pytest

from benchmark_runs import redis_server_env, run_benchmark


@pytest.mark.timeout(120)
def test_quick_store_pairs_measures_the_three_rows() -> None:
    env = redis_server_env("store_pairs.py")
    output = run_benchmark("store_pairs.py", "--quick", timeout=100, env=env)
    rows = re.findall(
        r"^(get|snapshot|update) +([0-9.]+) +([0-9.]+) +([0-9.]+) +([0-9,]+) +([0-9,]+) +(\d+)$",
        output,
        re.MULTILINE,
    )
    assert [row[0] for row in rows] == ["get", "snapshot", "update"], output
    for _, *figures, misses in rows:
        assert all(float(figure.replace(",", "")) > 0 for figure in figures)
        assert 0 <= int(misses) <= 1000
