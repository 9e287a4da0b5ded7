"""The attacks of issue 12, each reproduced against real server processes, measured, and put
beside the bound it must stay under: the "Attacks" part of docs/RELIABILITY.md.

One function per attack, ``measure(backend, scale) -> list[Row]``, registered in ``ATTACKS``
with the text of its section (what is done, what is measured, where the bound comes from).
``scale`` multiplies the attack's magnitudes: 1.0 is the issue's own (or the stated scaled-down
size), the test of this package runs one attack at a tiny scale. To add the section of another
attack, write its function in a module of this package and append an ``Attack`` to
``ATTACKS``: ``run`` and ``render`` do the rest (and the report's exit status counts its rows).
"""

from __future__ import annotations

import dataclasses
import sys
import time
from collections.abc import Callable, Iterable

__all__ = ["ATTACKS", "Attack", "Outcome", "Row", "render", "run"]


@dataclasses.dataclass(frozen=True)
class Row:
    """One measurement: what was done, the figure measured, its bound, and whether it held."""

    variant: str
    measured: str
    figure: str
    bound: str
    ok: bool


@dataclasses.dataclass(frozen=True)
class Attack:
    """A section of the report: issue 12's item, a title, the text, and the measurement."""

    item: str
    title: str
    text: str
    measure: Callable[[str, float], list[Row]]


@dataclasses.dataclass
class Outcome:
    attack: Attack
    rows: list[tuple[str, Row]]  # (server backend, row)
    seconds: float


def _registry() -> list[Attack]:
    from . import (
        client_attacks,
        frozen_attacks,
        handshake_attacks,
        lock_attacks,
        memory_attacks,
        restart_attacks,
        value_attacks,
    )

    every = [
        *lock_attacks.ATTACKS,
        *value_attacks.ATTACKS,
        *memory_attacks.ATTACKS,
        *handshake_attacks.ATTACKS,
        *client_attacks.ATTACKS,
        *restart_attacks.ATTACKS,
        *frozen_attacks.ATTACKS,
    ]
    return sorted(every, key=lambda attack: int(attack.item))  # in the order


ATTACKS: list[Attack] = _registry()


def run(
    backends: Iterable[str],
    scale: float = 1.0,
    items: Iterable[str] | None = None,
    on_failure: Callable[[str], None] | None = None,
) -> list[Outcome]:
    """Every attack (or those of ``items``) on each backend; ``on_failure`` is told of each
    row over its bound, and of each attack that raised (which counts as a failed row)."""
    wanted = set(items) if items is not None else None
    outcomes = []
    for attack in ATTACKS:
        if wanted is not None and attack.item not in wanted:
            continue
        started = time.monotonic()
        rows: list[tuple[str, Row]] = []
        for backend in backends:
            print(f"attack {attack.item}: {attack.title} ({backend}) ...", file=sys.stderr)
            try:
                measured = attack.measure(backend, scale)
            except Exception as exc:  # a broken measurement is a failed check, not a crash
                measured = [Row("(the attack raised)", "-", repr(exc)[:200], "-", False)]
            for row in measured:
                rows.append((backend, row))
                if not row.ok and on_failure is not None:
                    on_failure(
                        f"attack {attack.item} ({backend}), {row.variant}: {row.measured} "
                        f"{row.figure}, bound {row.bound}"
                    )
        outcomes.append(Outcome(attack, rows, time.monotonic() - started))
    return outcomes


def render(outcomes: list[Outcome]) -> list[str]:
    """The Markdown of the attacks part: one section per attack, a table row per figure."""
    out = [
        "## Attacks (issue 12)\n",
        "Each hole of issue 12 that outside testing found, reproduced as the issue describes it "
        "against a real server process (`python -m aionamespace serve`, or the same `Server` "
        "with other `Limits` where the attack needs them: `benchmarks/attacks/"
        "limited_server.py`) on each backend, and measured as the issue measured it: the "
        "server's RSS (VmRSS, sampled every 20 ms, and VmHWM, from /proc/PID/status), the "
        "longest round trip of an innocent client doing gets meanwhile, the server's CPU time "
        "(/proc/PID/stat). Each figure stands beside the bound it must stay under, derived "
        "from the documented `Limits` where there is one. `python benchmarks/reliability.py "
        "--only attacks` runs this part alone (`--attack N` one item).\n",
    ]
    for outcome in outcomes:
        attack = outcome.attack
        out.append(f"### {attack.item}. {attack.title}\n")
        out.append(f"{attack.text} (Took {outcome.seconds:.0f} s.)\n")
        out.append("| attack | server | measured | figure | bound | held |")
        out.append("|---|---|---|---:|---|---|")
        for backend, row in outcome.rows:
            held = "yes" if row.ok else "**NO**"
            out.append(
                f"| {row.variant} | {backend} | {row.measured} | {row.figure} | {row.bound} "
                f"| {held} |"
            )
        out.append("")
    return out
