"""The document's tables and limits list what the library has: operations and their argument
kinds, extension codes, error types, the ops safe to resend, and every documented limit; and
README.md's "Limits and failures" table and "Errors" tree list every field of ``Limits`` and
every error of the tree.
"""

from __future__ import annotations

import dataclasses
import re

import aionamespace
from aionamespace import Limits
from protocol_md import DOC, doc_table

README = DOC.parents[1] / "README.md"


def test_operation_table_matches_the_library() -> None:
    from aionamespace.protocol.ops import DEFERRED_OPS, OPS

    rows = doc_table("operations")
    assert [row[0].strip("`") for row in rows] == list(OPS)
    for op, arguments, _result, _errors, deferred in rows:
        op = op.strip("`")
        assert tuple(re.findall(r"`([\w?]+)`", arguments)) == OPS[op], op
        assert deferred == ("**yes**" if op in DEFERRED_OPS else "no"), op
    kinds = [row[0].strip("`") for row in doc_table("argument-kinds")]
    assert sorted(kinds) == sorted({kind for op_kinds in OPS.values() for kind in op_kinds})


def test_doc_tables_list_what_the_library_has() -> None:
    from aionamespace.protocol.codec import ExtCode
    from aionamespace.protocol.events import REMOTE_TYPES

    assert {int(row[0]): row[1].strip("`") for row in doc_table("ext-codes")} == {
        code.value: code.name for code in ExtCode
    }
    names = [row[0].strip("`") for row in doc_table("error-types")]
    assert names[-1] == "any other name"
    assert sorted(names[:-1]) == sorted(REMOTE_TYPES)


def test_safe_to_resend_table_matches_the_library() -> None:
    from aionamespace.protocol.ops import OPS, SAFE_TO_RESEND

    ops = [row[0].strip("`") for row in doc_table("safe-to-resend")]
    assert sorted(ops) == sorted(SAFE_TO_RESEND)
    assert ops == [op for op in OPS if op in SAFE_TO_RESEND]  # in the order of 5.2


def test_documented_limits_match_the_library() -> None:

    text = " ".join(DOC.read_text(encoding="utf-8").split())
    limits = Limits()
    assert f"| `max_frame_bytes` | {limits.max_frame_bytes} (64 MiB) |" in text
    assert f"| `max_name_length` | {limits.max_name_length} characters |" in text
    assert f"| `max_keys_per_hash` | {limits.max_keys_per_hash} keys |" in text
    assert f"| `max_connections` | {limits.max_connections:,} connections at once |" in text
    assert f"| `max_handshakes` | {limits.max_handshakes:,} connections in their handshake" in text
    assert f"| `handshake_timeout` | {limits.handshake_timeout:g} seconds |" in text
    assert f"| `max_handshake_bytes` | {limits.max_handshake_bytes} bytes |" in text
    assert f"| `max_handshake_depth` | {limits.max_handshake_depth} levels of arrays" in text
    assert (
        f"| `max_history_revisions` | {limits.max_history_revisions:,} revisions per namespace |"
        in text
    )
    assert f"| `max_history_bytes` | {limits.max_history_bytes} (64 MiB) per namespace |" in text
    assert f"| `max_reply_backlog_bytes` | {limits.max_reply_backlog_bytes} (1 MiB) |" in text
    assert f"| `max_push_backlog_bytes` | {limits.max_push_backlog_bytes} (16 MiB) |" in text
    assert (
        f"| `max_namespaces` | {limits.max_namespaces:,} namespaces, named and anonymous |" in text
    )
    assert f"| `anonymous_grace` | {limits.anonymous_grace:g} seconds |" in text
    for message in (
        f"the server is at its limit of {limits.max_connections} connections",
        f"the server is at its limit of {limits.max_handshakes} connections in their handshake, "
        "and this one, still in its handshake, had waited longest",
        f"no hello and authentication within {limits.handshake_timeout} seconds",
        f"more than {limits.max_push_backlog_bytes} bytes of events went unread",
        f"handshake frame larger than max_handshake_bytes ({limits.max_handshake_bytes})",
        f"handshake frame nested deeper than max_handshake_depth ({limits.max_handshake_depth})",
        f"`anonymous_grace` seconds starts ({limits.anonymous_grace:g} on the reference server)",
    ):
        assert message in text


def test_readme_lists_every_limit_and_every_error() -> None:
    text = README.read_text(encoding="utf-8")
    limits = Limits()
    table = re.search(r"\| field \| default \| what happens at the bound \|\n((?:\|.*\n)+)", text)
    assert table is not None
    rows = [row.strip("|").split("|") for row in table.group(1).splitlines()[1:]]
    assert sorted(row[0].strip().strip("`") for row in rows) == sorted(
        field.name for field in dataclasses.fields(Limits)
    )
    for field, default, _ in rows:
        value = getattr(limits, field.strip().strip("`"))
        shown = default.strip()
        if shown.endswith(" s"):
            assert float(shown[:-2]) == value, field
        elif shown.endswith(" MiB"):
            assert int(shown[:-4]) * 1024 * 1024 == value, field
        elif shown.endswith(" KiB"):
            assert int(shown[:-4]) * 1024 == value, field
        else:
            assert int(shown.replace(",", "")) == value, field
    tree = text[text.index("## Errors") :].split("```")[1]
    drawn = re.findall(r"(\w+) {2,}|^(NamespaceError)$", tree, re.MULTILINE)
    names = sorted(name or root for name, root in drawn)
    errors = sorted(
        name
        for name in aionamespace.__all__
        if isinstance(getattr(aionamespace, name), type)
        and issubclass(getattr(aionamespace, name), aionamespace.NamespaceError)
    )
    assert names == errors
