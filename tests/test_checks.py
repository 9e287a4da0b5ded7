"""The checks a contributor runs before pushing, held by the suite so that CI holds them.

``ruff check`` (lint), ``ruff format --check`` (one style, the formatter's) and ``mypy``
(strict, on src/) run exactly as a contributor runs them, from the repository's root, with
the versions pinned in the test extra. A failure prints what the tool said.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize(
    "command",
    [
        ["ruff", "check", "."],
        ["ruff", "format", "--check", "."],
        ["mypy"],  # strict, on src/ ([tool.mypy] in pyproject.toml)
    ],
    ids=["ruff-check", "ruff-format", "mypy"],
)
def test_the_tree_passes(command: list[str]) -> None:
    done = subprocess.run(
        [sys.executable, "-m", *command],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, f"{' '.join(command)} failed:\n{done.stdout}\n{done.stderr}"
