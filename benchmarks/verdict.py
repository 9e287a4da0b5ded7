"""Judge compare.py's targets over several runs, as issue 17 defines "met".

One run of compare.py says whether each target was met *in that run*; a shared machine's noise
can tip a borderline row either way from one run to the next. A target is met when the median
of its runs meets it and its worst run is within 10% of it::

    for i in 1 2 3 4 5 6 7; do python benchmarks/compare.py --json run$i.json; done
    python benchmarks/verdict.py run*.json

A target's *score* is what a run measured over what the target asks (compare.py's
``Row.score``: a ratio over the ratio asked, a figure over the figure asked; >= 1 is met), so
one rule serves ratios, absolute figures and "below" bounds alike. A run that could not measure
a target (a contender missing) does not count for it; the table says how many runs did.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections.abc import Sequence
from typing import Any

#: The worst run may miss the target by this much (a fraction of it).
WORST_RUN_SLACK = 0.10


def scores(runs: Sequence[dict[str, Any]]) -> dict[tuple[str, str], list[float]]:
    """Every (row label, target text) with the scores its runs measured, in the runs' order of
    first appearance."""
    return {item: [score for score, _ in pairs] for item, pairs in measured(runs).items()}


def measured(runs: Sequence[dict[str, Any]]) -> dict[tuple[str, str], list[tuple[float, str]]]:
    """Every (row label, target text) with each run's score and what it means in the target's
    own terms (a ratio, or a figure: an absolute target's value may differ from run to run, as
    "10x one sync client" does)."""
    found: dict[tuple[str, str], list[tuple[float, str]]] = {}
    for run in runs:
        for row in run["rows"].values():
            for target in row["targets"]:
                pairs = found.setdefault((row["label"], target["text"]), [])
                score = target.get("score")
                if score is not None:
                    pairs.append((score, shown(target, score)))
    return found


def judge(measured: list[float]) -> str:
    """'met', 'NO (median)', 'NO (worst run)' or 'not measured'."""
    if not measured:
        return "not measured"
    if statistics.median(measured) < 1:
        return "NO (median)"
    if min(measured) < 1 - WORST_RUN_SLACK:
        return "NO (worst run)"
    return "met"


def table(runs: Sequence[dict[str, Any]]) -> list[list[str]]:
    lines = [["row", "target", "runs", "median", "worst", "median score", "verdict"]]
    for (label, text), pairs in measured(runs).items():
        ordered = sorted(pairs)  # by score: the median run's, and the worst run's
        median_run = ordered[(len(ordered) - 1) // 2] if ordered else None
        lines.append(
            [
                label,
                text,
                f"{len(pairs)}/{len(runs)}",
                median_run[1] if median_run else "-",
                ordered[0][1] if ordered else "-",
                f"{statistics.median(score for score, _ in pairs):.2f}" if pairs else "-",
                judge([score for score, _ in pairs]),
            ]
        )
    return lines


def shown(target: dict[str, Any], score: float) -> str:
    """What ``score`` means in ``target``'s own terms: a ratio, or a figure."""
    if target["kind"] == "below":
        return f"{target['value'] / score:,.1f}"
    if target["kind"] == "at_least":
        return f"{target['value'] * score:,.0f}"
    return f"{target['value'] * score:.2f}x"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", metavar="RUN.json", help="compare.py --json files")
    args = parser.parse_args(argv)
    runs = []
    for path in args.runs:
        try:
            with open(path, encoding="utf-8") as file:
                run = json.load(file)
        except (OSError, ValueError) as exc:
            parser.error(f"cannot read {path}: {exc}")
        if not isinstance(run, dict) or "rows" not in run:
            parser.error(f"{path} is not the output of compare.py --json")
        if run.get("quick"):
            parser.error(f"{path} is a --quick run: its figures mean nothing")
        runs.append(run)
    lines = table(runs)
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]
    for n, line in enumerate(lines):
        cells = (cell.ljust(width) for cell, width in zip(line, widths, strict=True))
        print("  ".join(cells).rstrip())
        if n == 0:
            print("  ".join("-" * width for width in widths))
    print(
        f"\na score is measured / asked (>= 1: met in that run); met over {len(runs)} run(s): "
        f"median score >= 1 and worst >= {1 - WORST_RUN_SLACK:g}"
    )
    return 0 if all(judge(m) == "met" for m in scores(runs).values()) else 1


if __name__ == "__main__":
    sys.exit(main())
