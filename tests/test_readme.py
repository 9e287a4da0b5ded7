"""README's Python code blocks run, so that they never rot (README.md, "Development").

Each block runs as a script of its own in a fresh process, from an empty directory: once as
installed for the tests, once as on a plain install (trio and uvloop hidden by a
``sitecustomize`` on the path). A block marked ``<!-- fragment -->`` on the line before it is
part of a longer program (it uses an ``ns`` made elsewhere): it is compiled, not run.
"""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"
RUN_SECONDS = 120.0
BLOCK = re.compile(r"(?P<mark><!-- fragment -->\n)?(?P<indent> *)```python\n(?P<code>.*?)```", re.S)


def blocks() -> list[tuple[int, bool, str]]:
    """(line, is a fragment, code) of every Python block."""
    text = README.read_text(encoding="utf-8")
    found = []
    for match in BLOCK.finditer(text):
        line = text.count("\n", 0, match.start("code"))
        code = textwrap.dedent(match["code"])
        found.append((line, match["mark"] is not None, code))
    return found


BLOCKS = blocks()
WHOLE = [(line, code) for line, fragment, code in BLOCKS if not fragment]


def test_the_readme_has_whole_examples_and_fragments() -> None:
    assert len(WHOLE) >= 2  # the two quick starts
    assert any(fragment for _, fragment, _ in BLOCKS)


@pytest.mark.parametrize(
    ("line", "code"),
    [(line, code) for line, fragment, code in BLOCKS if fragment],
    ids=[f"line-{line}" for line, fragment, _ in BLOCKS if fragment],
)
def test_fragments_compile(line: int, code: str) -> None:
    compile(code, f"README.md:{line}", "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)


@pytest.mark.slow
@pytest.mark.parametrize("install", ["test-install", "plain-install"])
@pytest.mark.parametrize(("line", "code"), WHOLE, ids=[f"line-{line}" for line, _ in WHOLE])
def test_whole_examples_run(short_tmp: str, line: int, code: str, install: str) -> None:
    script = Path(short_tmp, "example.py")
    script.write_text(code, encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if k != "AIONAMESPACE_AUTHKEY"}
    if install == "plain-install":  # the optional dependencies hidden
        Path(short_tmp, "sitecustomize.py").write_text(
            "import sys\nsys.modules['trio'] = sys.modules['uvloop'] = None\n", encoding="utf-8"
        )
        env["PYTHONPATH"] = os.pathsep.join([short_tmp, *sys.path])
    result = subprocess.run(
        [sys.executable, str(script)],
        cwd=short_tmp,
        env=env,
        capture_output=True,
        text=True,
        timeout=RUN_SECONDS,
        check=False,
    )
    assert (result.returncode, result.stderr) == (0, ""), f"README.md:{line}\n{result}"
