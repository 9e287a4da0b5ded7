"""The exact grammar of the extension payloads (PROTOCOL.md 9.4), the same on every Python.

The decoder (``decode_value``) and the server's check (``check_value``) read payloads by one
grammar, written here a second time, independently, as plain character tests (``*_oracle``):
hypothesis holds the library against it on what Python writes, on mutations of it and on
random text. What Python's own ``fromisoformat`` and ``Decimal()`` accept varies by version
(3.11 reads ``...Z``, 3.10 does not); none of that leniency may leak through, so this file runs
on 3.10 and 3.13 as well (see the commit that added it).
"""

from __future__ import annotations

import datetime as dt
import decimal
import struct
import uuid
from typing import Any

import msgpack
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from aionamespace.protocol.codec import ExtCode, ValueDecodeError, decode_value, encode_value
from aionamespace.protocol.values import check_value

DIGITS = "0123456789"


def ext(code: int, payload: bytes) -> bytes:
    """One encoded extension value (msgpack picks the header)."""
    packed: bytes = msgpack.packb(msgpack.ExtType(code, payload))
    return packed


def outcome(code: int, payload: bytes) -> Any:
    """What the decoder makes of a payload, after checking the server's check agrees."""
    blob = ext(code, payload)
    try:
        value = decode_value(blob)
    except ValueDecodeError:
        with pytest.raises(ValueDecodeError):
            check_value(blob)
        return None
    check_value(blob)
    return value


def assert_same_time(actual: Any, expected: Any) -> None:
    assert type(actual) is type(expected)
    assert actual == expected
    if isinstance(expected, (dt.datetime, dt.time)):
        assert actual.utcoffset() == expected.utcoffset()
        assert (actual.tzinfo is None) == (expected.tzinfo is None)
        assert actual.replace(tzinfo=None) == expected.replace(tzinfo=None)


# ---------------------------------------------------------------------------- the oracle


def _digits(text: str, width: int) -> int | None:
    return int(text) if len(text) == width and all(c in DIGITS for c in text) else None


def date_oracle(text: str) -> dt.date | None:
    """YYYY-MM-DD, a real day."""
    if len(text) != 10 or text[4] != "-" or text[7] != "-":
        return None
    year, month, day = _digits(text[:4], 4), _digits(text[5:7], 2), _digits(text[8:], 2)
    if year is None or month is None or day is None:
        return None
    try:
        return dt.date(year, month, day)
    except ValueError:
        return None


def _offset_oracle(text: str) -> dt.timezone | bool | None:
    """±HH:MM[:SS[.ffffff]] -> a timezone; "" -> None; anything else -> False."""
    if not text:
        return None
    if text[0] not in "+-" or len(text) not in (6, 9, 16) or text[3] != ":":
        return False
    if (len(text) >= 9 and text[6] != ":") or (len(text) == 16 and text[9] != "."):
        return False
    fields = [_digits(text[1:3], 2), _digits(text[4:6], 2)]
    fields.append(_digits(text[7:9], 2) if len(text) >= 9 else 0)
    fields.append(_digits(text[10:], 6) if len(text) == 16 else 0)
    hours, minutes, seconds, micros = fields
    if hours is None or minutes is None or seconds is None or micros is None:
        return False
    if hours > 23 or minutes > 59 or seconds > 59:
        return False
    offset = dt.timedelta(hours=hours, minutes=minutes, seconds=seconds, microseconds=micros)
    return dt.timezone(-offset if text[0] == "-" else offset)


def time_oracle(text: str) -> dt.time | None:
    """HH:MM:SS[.ffffff][offset]."""
    if len(text) < 8 or text[2] != ":" or text[5] != ":":
        return None
    hour, minute, second = _digits(text[:2], 2), _digits(text[3:5], 2), _digits(text[6:8], 2)
    rest, micro = text[8:], 0
    if rest.startswith("."):
        micro, rest = _digits(rest[1:7], 6), rest[7:]  # type: ignore[assignment]
    zone = _offset_oracle(rest)
    if hour is None or minute is None or second is None or micro is None:
        return None
    if zone is False or zone is True:
        return None
    try:
        return dt.time(hour, minute, second, micro, zone)
    except ValueError:
        return None


def datetime_oracle(text: str) -> dt.datetime | None:
    """A date, "T", a time."""
    day, clock = date_oracle(text[:10]), time_oracle(text[11:])
    if text[10:11] != "T" or day is None or clock is None:
        return None
    return dt.datetime.combine(day, clock, clock.tzinfo)


def decimal_oracle(text: str) -> decimal.Decimal | None:
    """[-] then Infinity, [s]NaN[digits], or digits[.digits][E±digits], in range."""
    body = text[1:] if text.startswith("-") else text
    if body == "Infinity":
        return decimal.Decimal(text)
    for nan in ("sNaN", "NaN"):
        if body.startswith(nan) and all(c in DIGITS for c in body[len(nan) :]):
            return decimal.Decimal(text)
    number, _, exponent = body.partition("E")
    whole, point, fraction = number.partition(".")
    if not whole or not all(c in DIGITS for c in whole):
        return None
    if point and (not fraction or not all(c in DIGITS for c in fraction)):
        return None
    if "E" in body:
        if len(exponent) < 2 or exponent[0] not in "+-":
            return None
        if not all(c in DIGITS for c in exponent[1:]):
            return None
    shift = int(exponent[0] + exponent[1:].lstrip("0")[:30].rjust(1, "0")) if exponent else 0
    scale = shift - len(fraction)
    significant = len((whole + fraction).lstrip("0")) or 1
    if scale < -1999999999999999997 or scale + significant - 1 > 999999999999999999:
        return None
    return decimal.Decimal(text)


ORACLES = {
    ExtCode.DATE: date_oracle,
    ExtCode.TIME: time_oracle,
    ExtCode.DATETIME: datetime_oracle,
    ExtCode.DECIMAL: decimal_oracle,
}


def assert_follows_the_oracle(code: int, text: str) -> None:
    expected = ORACLES[code](text) if text.isascii() else None
    decoded = outcome(code, text.encode())
    if expected is None:
        assert decoded is None, f"{text!r} should be refused, became {decoded!r}"
    elif code == ExtCode.DECIMAL:
        assert type(decoded) is decimal.Decimal, f"{text!r} refused"
        assert decoded.as_tuple() == expected.as_tuple()
    else:
        assert decoded is not None, f"{text!r} refused"
        assert_same_time(decoded, expected)


# ---------------------------------------------------------------------------- what Python writes

offsets = st.timedeltas(
    min_value=dt.timedelta(hours=-24) + dt.timedelta(microseconds=1),
    max_value=dt.timedelta(hours=24) - dt.timedelta(microseconds=1),
).map(dt.timezone)
zones = st.none() | st.just(dt.timezone.utc) | offsets
decimals = st.one_of(
    st.decimals(allow_nan=True, allow_infinity=True),
    st.builds(
        lambda sign, digits, exponent: decimal.Decimal((sign, tuple(digits), exponent)),
        st.integers(0, 1),
        st.lists(st.integers(0, 9), min_size=1, max_size=40),
        st.integers(-1999999999999999997, 999999999999999999 - 40),
    ),
    st.sampled_from(["sNaN", "-sNaN7", "NaN123", "-NaN", "-0", "0E-1999999999999999997"]).map(
        decimal.Decimal
    ),
)


@settings(max_examples=400, deadline=None)
@given(st.datetimes(timezones=zones))
@example(dt.datetime(1, 1, 1))
@example(dt.datetime(9999, 12, 31, 23, 59, 59, 999999, dt.timezone(dt.timedelta(hours=-23))))
@example(dt.datetime(2024, 1, 1, tzinfo=dt.timezone(dt.timedelta(microseconds=1))))
def test_every_datetime_python_writes_is_valid(value: dt.datetime) -> None:
    text = value.isoformat()
    assert_same_time(outcome(ExtCode.DATETIME, text.encode()), value)
    assert_follows_the_oracle(ExtCode.DATETIME, text)
    assert_same_time(decode_value(encode_value(value)), value)


@settings(max_examples=300, deadline=None)
@given(st.times(timezones=zones))
def test_every_time_python_writes_is_valid(value: dt.time) -> None:
    assert_same_time(outcome(ExtCode.TIME, value.isoformat().encode()), value)
    assert_same_time(decode_value(encode_value(value)), value)


@settings(max_examples=200, deadline=None)
@given(st.dates())
def test_every_date_python_writes_is_valid(value: dt.date) -> None:
    assert outcome(ExtCode.DATE, value.isoformat().encode()) == value


@settings(max_examples=400, deadline=None)
@given(decimals)
def test_every_decimal_python_writes_is_valid(value: decimal.Decimal) -> None:
    decoded = outcome(ExtCode.DECIMAL, str(value).encode())
    assert decoded.as_tuple() == value.as_tuple()
    assert_follows_the_oracle(ExtCode.DECIMAL, str(value))


# ---------------------------------------------------------------------------- what it does not

REFUSED = {
    ExtCode.DATETIME: [
        "2024-05-17T13:45:30Z",  # 3.11 reads it
        "2024-05-17T13:45:30.123Z",
        "2024-05-17 13:45:30",  # a space for the T
        "2024-05-17t13:45:30",
        "20240517T134530",  # basic format
        "2024-05-17T134530",
        "2024-W20-5T13:45:30",  # a week date
        "2024-138T13:45:30",  # an ordinal date
        "2024-05-17T13:45",  # no seconds
        "2024-05-17T13",
        "2024-05-17",  # a date alone
        "2024-05-17T13:45:30.123",  # three fractional digits
        "2024-05-17T13:45:30,123456",  # a comma
        "2024-05-17T13:45:30.1234567",
        "2024-05-17T13:45:30+02",  # offset without minutes
        "2024-05-17T13:45:30+0200",
        "2024-05-17T13:45:30+24:00",  # out of range
        "2024-05-17T13:45:30+02:60",
        "2024-05-17T13:45:30+02:00:60",
        "2024-05-17T13:45:30+02:00.123456",  # fraction without seconds
        "2024-05-17T24:00:00",
        "2024-05-17T13:45:60",  # no leap second
        "2024-02-30T00:00:00",
        "0000-01-01T00:00:00",
        "+2024-05-17T13:45:30",
        " 2024-05-17T13:45:30",
        "2024-05-17T13:45:30\n",
        "\uff12\uff10\uff12\uff14-05-17T13:45:30",  # fullwidth digits
        "2024-05-17T13:45:3\u0660",  # an Arabic-Indic zero
        "2024-5-17T13:45:30",
        "",
    ],
    ExtCode.DATE: [
        "2024-05-17T00:00:00",
        "20240517",
        "2024-W20-5",
        "2024-138",
        "2024-05",
        "2024-5-7",
        "2024-02-30",
        "0000-12-31",
        " 2024-05-17",
        "2024-05-17 ",
        "2024/05/17",
        "\uff12\uff10\uff12\uff14-05-17",  # fullwidth digits
        "",
    ],
    ExtCode.TIME: [
        "13:45:30Z",
        "134530",
        "T13:45:30",
        "13:45",
        "13",
        "13:45:30.123",
        "13:45:30+02",
        "24:00:00",
        "13:45:30.123456+02:00:30.5",
        "13:45:30 +02:00",
        "1:45:30",
        "",
    ],
    ExtCode.DECIMAL: [
        " 1.5 ",
        "1.5 ",
        "1_000",
        "+1",
        ".5",
        "5.",
        "1e3",
        "1E3",  # the exponent's sign is required
        "1E+",
        "E+3",
        "inf",
        "Inf",
        "INFINITY",
        "+Infinity",
        "nan",
        "NAN",
        "snan",
        "-",
        "",
        "\u0661\u0662\u0663",  # Arabic-Indic digits
        "\uff11\uff12",  # fullwidth digits
        "1.2.3",
        "1,5",
        "0x10",
        "1E+1000000000000000000",  # beyond the exponent range
        "10E+999999999999999999",
        "0.1E-1999999999999999997",
        "1E+" + "9" * 40,
        "NaN-1",
        "Infinity1",
    ],
}


@pytest.mark.parametrize(
    ("code", "text"),
    [(code, text) for code, texts in REFUSED.items() for text in texts],
    ids=lambda item: repr(item),
)
def test_forms_outside_the_grammar_are_refused(code: int, text: str) -> None:
    with pytest.raises(ValueDecodeError):
        decode_value(ext(code, text.encode()))
    with pytest.raises(ValueDecodeError):
        check_value(ext(code, text.encode()))
    assert ORACLES[code](text) is None or not text.isascii()


ACCEPTED = {
    ExtCode.DATETIME: [
        ("2024-05-17T13:45:30", dt.datetime(2024, 5, 17, 13, 45, 30)),
        ("2024-05-17T13:45:30.000000", dt.datetime(2024, 5, 17, 13, 45, 30)),
        ("2024-05-17T13:45:30-00:00", dt.datetime(2024, 5, 17, 13, 45, 30, tzinfo=dt.timezone.utc)),
        (
            "2024-05-17T13:45:30+00:00:00.000001",  # 3.10-3.13's fromisoformat: UTC (wrong)
            dt.datetime(2024, 5, 17, 13, 45, 30, tzinfo=dt.timezone(dt.timedelta(microseconds=1))),
        ),
        (
            "2024-05-17T13:45:30+05:30:00",
            dt.datetime(2024, 5, 17, 13, 45, 30, tzinfo=dt.timezone(dt.timedelta(hours=5.5))),
        ),
    ],
    ExtCode.DECIMAL: [
        ("007", decimal.Decimal(7)),
        ("-0.000", decimal.Decimal("-0.000")),
        ("1E+999999999999999999", decimal.Decimal("1E+999999999999999999")),
        ("1E+0000000000000000000000000003", decimal.Decimal("1E+3")),
        ("NaN007", decimal.Decimal("NaN7")),
    ],
}


@pytest.mark.parametrize(
    ("code", "text", "value"),
    [(code, text, value) for code, pairs in ACCEPTED.items() for text, value in pairs],
    ids=repr,
)
def test_forms_inside_the_grammar_that_python_does_not_write(
    code: int, text: str, value: Any
) -> None:
    decoded = outcome(code, text.encode())
    if code == ExtCode.DECIMAL:
        assert decoded.as_tuple() == value.as_tuple()
    else:
        assert_same_time(decoded, value)


# Characters that make the forms other parsers accept, and the ones the grammar is made of.
NOISE = "0123456789:-+.TZ tEe_,W/\u0661\uff10\n" + "InfinitysNa"  # Arabic-Indic, fullwidth


@st.composite
def mutated(draw: st.DrawFn, base: st.SearchStrategy[str]) -> str:
    text = list(draw(base))
    for _ in range(draw(st.integers(1, 3))):
        how = draw(st.sampled_from(["replace", "insert", "delete"]))
        at = draw(st.integers(0, len(text)))
        char = draw(st.sampled_from(NOISE))
        if how == "insert" or not text:
            text.insert(at, char)
        elif how == "replace":
            text[min(at, len(text) - 1)] = char
        else:
            del text[min(at, len(text) - 1)]
    return "".join(text)


TEXTS = {
    ExtCode.DATETIME: st.datetimes(timezones=zones).map(dt.datetime.isoformat),
    ExtCode.DATE: st.dates().map(dt.date.isoformat),
    ExtCode.TIME: st.times(timezones=zones).map(dt.time.isoformat),
    ExtCode.DECIMAL: decimals.map(str),
}


@settings(max_examples=1500, deadline=None)
@given(
    st.sampled_from(sorted(TEXTS)).flatmap(
        lambda code: st.tuples(st.just(code), mutated(TEXTS[code]))
    )
)
def test_mutated_texts_are_read_exactly_as_the_grammar_says(case: tuple[int, str]) -> None:
    code, text = case
    assert_follows_the_oracle(code, text)


@settings(max_examples=500, deadline=None)
@given(st.sampled_from(sorted(TEXTS)), st.text(NOISE, max_size=30))
def test_random_texts_are_read_exactly_as_the_grammar_says(code: int, text: str) -> None:
    assert_follows_the_oracle(code, text)


def test_payloads_that_are_not_utf8_or_ascii_are_refused() -> None:
    for code in ORACLES:
        for payload in (b"\xff2024-01-01", "2024-01-01T00:00:00é".encode(), b"\xc3\x28"):
            assert outcome(code, payload) is None


# ---------------------------------------------------------------------------- numbers


def minimal_bigint(number: int) -> bytes:
    return number.to_bytes(
        (number if number >= 0 else ~number).bit_length() // 8 + 1, "big", signed=True
    )


@pytest.mark.parametrize(
    ("payload", "problem"),
    [
        (b"", "minimal"),
        (b"\x05", "msgpack int"),  # 5: fits a msgpack int
        (minimal_bigint(2**64 - 1), "msgpack int"),  # 9 bytes, minimal, but a uint 64
        (minimal_bigint(-(2**63)), "msgpack int"),
        (b"\x00" + minimal_bigint(2**64), "minimal"),  # a needless sign byte
        (b"\xff" + minimal_bigint(-(2**64)), "minimal"),
        (b"\x00\x00" + minimal_bigint(2**100), "minimal"),
    ],
    ids=repr,
)
def test_bigint_payloads_are_minimal_and_only_for_what_msgpack_cannot_carry(
    payload: bytes, problem: str
) -> None:
    with pytest.raises(ValueDecodeError, match=problem):
        decode_value(ext(ExtCode.BIGINT, payload))
    with pytest.raises(ValueDecodeError, match=problem):
        check_value(ext(ExtCode.BIGINT, payload))


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=20))
@example(minimal_bigint(2**64))
@example(minimal_bigint(-(2**63) - 1))
def test_bigint_payloads_follow_the_rule(payload: bytes) -> None:
    number = int.from_bytes(payload, "big", signed=True)
    valid = (
        bool(payload)
        and payload == minimal_bigint(number)
        and not (-(2**63) <= number <= 2**64 - 1)
    )
    assert outcome(ExtCode.BIGINT, payload) == (number if valid else None)


def float64s(*parts: float) -> bytes:
    return b"".join(b"\xcb" + struct.pack(">d", part) for part in parts)


@pytest.mark.parametrize(
    ("payload", "value"),
    [
        (b"\x92" + float64s(1.5, -2.0), complex(1.5, -2)),
        (b"\xdc\x00\x02" + float64s(0.0, 1.0), 1j),  # any array header width
        (b"\xdd\x00\x00\x00\x02" + float64s(-0.0, 0.0), complex(-0.0, 0.0)),
        (b"\x92\xca" + struct.pack(">f", 1.5) + b"\xca" + struct.pack(">f", 2.0), None),  # float 32
        (b"\x92\xca" + struct.pack(">f", 1.5) + float64s(2.0), None),
        (b"\x92\x01\x02", None),
        (b"\x91" + float64s(1.0), None),
        (b"\x93" + float64s(1.0, 2.0, 3.0), None),
        (b"\x92" + float64s(1.0, 2.0) + b"\xc0", None),  # trailing bytes
        (b"\x92" + float64s(1.0) + b"\xcb\x00", None),  # truncated
        (float64s(1.0), None),
    ],
    ids=repr,
)
def test_complex_payloads_are_two_float64(payload: bytes, value: complex | None) -> None:
    decoded = outcome(ExtCode.COMPLEX, payload)
    assert decoded == value
    if value is not None:
        assert struct.pack(">dd", decoded.real, decoded.imag) == struct.pack(
            ">dd", value.real, value.imag
        )


@settings(max_examples=500, deadline=None)
@given(
    st.lists(
        st.integers(-(2**40), 2**40)
        | st.sampled_from([0, 86399, 86400, 10**6 - 1, 10**6, -1, 999999999, -999999999, 10**9]),
        min_size=3,
        max_size=3,
    )
)
def test_timedelta_payloads_are_normalised(parts: list[int]) -> None:
    days, seconds, micros = parts
    valid = -999999999 <= days <= 999999999 and 0 <= seconds < 86400 and 0 <= micros < 10**6
    decoded = outcome(ExtCode.TIMEDELTA, msgpack.packb(parts))
    if valid:
        assert (decoded.days, decoded.seconds, decoded.microseconds) == (days, seconds, micros)
    else:
        assert decoded is None


@pytest.mark.parametrize(
    "parts",
    [[0, 0, 0.5], [True, 0, 0], [0, 0], [0, 0, 0, 0], {"days": 1}, "x", [0, 0, None]],
    ids=repr,
)
def test_timedelta_payloads_are_three_ints(parts: Any) -> None:
    assert outcome(ExtCode.TIMEDELTA, msgpack.packb(parts)) is None


@pytest.mark.parametrize("size", [0, 1, 15, 17, 32])
def test_uuid_payloads_are_16_bytes(size: int) -> None:
    assert outcome(ExtCode.UUID, bytes(size)) is None
    assert outcome(ExtCode.UUID, bytes(range(16))) == uuid.UUID(bytes=bytes(range(16)))
