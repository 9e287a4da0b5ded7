"""Printing a namespace whose values hold integers too long for ``str()`` (issue 12, item 15),
and the time zones a value cannot carry.

Python refuses to write an int of more than ``sys.get_int_max_str_digits()`` decimal digits
(4300 by default) and raised ValueError from ``str(ns)`` and the CLI's ``dump``; such ints are
now written in hexadecimal, which ``ast.literal_eval`` reads back, and the limit is left alone.
"""

from __future__ import annotations

import ast
import datetime as dt
import os
import subprocess
import sys
import zoneinfo
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aionamespace import Namespace, ServerThread
from aionamespace.client.proxy import format_namespace, literal_repr
from aionamespace.protocol.codec import decode_value, encode_value
from server_processes import ServeProcess

HUGE = 7**10_000  # 8451 digits: too long for str() under the default limit
NEGATIVE_HUGE = -(10**5000) - 1

LONG = [HUGE, NEGATIVE_HUGE, 2**100_000, -(2**14_300)]


def long_int(index: int) -> int:
    return LONG[index]


ints = st.integers() | st.integers(0, len(LONG) - 1).map(long_int)  # (sampled_from reprs them)
literals = st.recursive(
    ints | st.text(max_size=5) | st.booleans() | st.none(),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.lists(inner, max_size=4).map(tuple)
        | st.dictionaries(ints | st.text(max_size=3), inner, max_size=3)
        | st.sets(ints, max_size=3)
    ),
    max_leaves=10,
)


@settings(max_examples=300, deadline=None)
@given(literals)
def test_literal_repr_reads_back_whatever_the_length_of_its_ints(value: Any) -> None:
    text = literal_repr(value)
    assert ast.literal_eval(text) == value
    try:
        expected = repr(value)
    except ValueError:
        return
    assert text == expected  # what fits is printed exactly as repr() prints it


def test_long_ints_are_written_in_hexadecimal_at_any_depth() -> None:
    limit = sys.get_int_max_str_digits()
    assert literal_repr(HUGE) == hex(HUGE)
    assert literal_repr(NEGATIVE_HUGE) == hex(NEGATIVE_HUGE)  # '-0x...'
    assert literal_repr([1, (HUGE,)]) == f"[1, ({hex(HUGE)},)]"
    assert literal_repr({HUGE: {HUGE}}) == f"{{{hex(HUGE)}: {{{hex(HUGE)}}}}}"
    assert literal_repr(frozenset({HUGE})) == f"frozenset({{{hex(HUGE)}}})"
    assert (
        literal_repr((set(), frozenset(), (), [HUGE])) == f"(set(), frozenset(), (), [{hex(HUGE)}])"
    )
    assert sys.get_int_max_str_digits() == limit  # untouched


def test_str_of_a_namespace_holding_a_long_int(server: ServerThread) -> None:
    ns = Namespace(server.address, "big")
    ns.n = HUGE
    ns.nested = {"k": [HUGE, 1]}
    ns.small = 12
    text = str(ns)
    assert text == f"Namespace(n={hex(HUGE)}, nested={{'k': [{hex(HUGE)}, 1]}}, small=12)"
    assert format_namespace({"n": encode_value(HUGE)}) == f"Namespace(n={hex(HUGE)})"


def test_cli_dump_prints_a_namespace_holding_a_long_int(short_tmp: str) -> None:
    path = os.path.join(short_tmp, "dump.sock")
    server = ServeProcess(path)
    try:
        Namespace(path, "board").big = [HUGE]
        result = subprocess.run(
            [sys.executable, "-m", "aionamespace", "dump", path, "board"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    finally:
        server.close()
    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout == f"board: Namespace(big=[{hex(HUGE)}])\n"
    assert ast.literal_eval(result.stdout.partition("big=")[2][:-2]) == [HUGE]


# ---------------------------------------------------------------------------- time zones

PARIS = zoneinfo.ZoneInfo("Europe/Paris")


def test_a_time_whose_zone_gives_no_offset_is_refused() -> None:
    """A time of day in a zone with daylight saving time has no UTC offset (``utcoffset()``
    is None): it used to be sent as a naive time, without a word."""
    with pytest.raises(TypeError, match=r"gives no UTC offset.*datetime"):
        encode_value(dt.time(12, tzinfo=PARIS))
    with pytest.raises(TypeError, match="gives no UTC offset"):
        encode_value({"when": [dt.time(12, tzinfo=PARIS)]})
    fixed = dt.time(12, tzinfo=dt.timezone(dt.timedelta(hours=2)))
    assert decode_value(encode_value(fixed)).utcoffset() == dt.timedelta(hours=2)


class NoOffset(dt.tzinfo):
    def utcoffset(self, when: dt.datetime | None) -> dt.timedelta | None:
        return None


def test_a_datetime_whose_zone_gives_no_offset_is_refused() -> None:
    with pytest.raises(TypeError, match="gives no UTC offset"):
        encode_value(dt.datetime(2024, 7, 1, 12, tzinfo=NoOffset()))


def test_a_datetime_in_a_named_zone_keeps_its_instant_and_offset() -> None:
    """README, "Supported values": the zone comes back as its fixed offset."""
    for month, hours in ((7, 2), (1, 1)):  # summer and winter time
        when = dt.datetime(2024, month, 1, 12, tzinfo=PARIS)
        back = decode_value(encode_value(when))
        assert back == when
        assert back.utcoffset() == when.utcoffset() == dt.timedelta(hours=hours)
        assert back.tzinfo == dt.timezone(dt.timedelta(hours=hours))
