"""The attacks part of the reliability report (benchmarks/attacks/) keeps running.

It is a benchmark (minutes of work, run by ``benchmarks/reliability.py --only attacks``), not
a test; this runs one cheap attack end to end at a tiny size, on a real trio server, and
renders its section, so that the package cannot rot unnoticed.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import attacks  # beside the reliability script (benchmarks/, on the path above)

pytestmark = pytest.mark.skipif(not os.path.exists("/proc/self/stat"), reason="needs Linux /proc")


def test_every_attack_has_its_own_item_in_the_issues_order() -> None:
    items = [int(attack.item) for attack in attacks.ATTACKS]
    assert items == sorted(set(items))
    assert set(range(1, 16)) <= set(items)


@pytest.mark.timeout(60)
def test_one_attack_runs_end_to_end_at_a_tiny_size() -> None:
    failures: list[str] = []
    outcomes = attacks.run(["trio"], scale=0.01, items=["1"], on_failure=failures.append)
    assert failures == []
    [outcome] = outcomes
    assert [row.measured for _, row in outcome.rows] == [
        "kill to the waiter's grant",
        "server CPU time per second, over 2 s after",
    ]
    text = "\n".join(attacks.render(outcomes))
    assert "### 1. A dead client with unread replies" in text
    assert "| trio |" in text
