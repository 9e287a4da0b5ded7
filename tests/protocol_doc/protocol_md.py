"""docs/PROTOCOL.md read as data: its hex examples and its tables, by name.

The document marks them (``<!-- example: name -->`` before a hex block, ``<!-- table: name -->``
before a table's header) so that tests can hold them against what the library does.
"""

from __future__ import annotations

import re
from pathlib import Path

DOC = Path(__file__).resolve().parents[2] / "docs" / "PROTOCOL.md"


def doc_examples() -> dict[str, str]:
    """Every ``<!-- example: name -->`` hex block of PROTOCOL.md, by name."""
    text = DOC.read_text(encoding="utf-8")
    blocks = re.findall(r"<!-- example: ([\w-]+) -->\n```hex\n(.*?)```", text, re.DOTALL)
    assert len(blocks) == len(set(dict(blocks))), "duplicate example names"
    return dict(blocks)


def hex_bytes(block: str) -> bytes:
    return bytes.fromhex("".join(line.partition("#")[0] for line in block.splitlines()))


def doc_table(name: str) -> list[list[str]]:
    """The body rows of the table after ``<!-- table: name -->``, as lists of cells."""
    text = DOC.read_text(encoding="utf-8")
    match = re.search(rf"<!-- table: {name} -->\n((?: *\|.*\n)+)", text)  # maybe in a list
    assert match is not None, name
    rows = match.group(1).splitlines()[2:]
    return [[cell.strip() for cell in row.strip().strip("|").split("|")] for row in rows]
