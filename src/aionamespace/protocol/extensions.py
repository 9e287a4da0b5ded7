"""The value extensions: their codes, and exactly which payloads are valid (PROTOCOL.md 9.4).

Everything a namespace may hold that msgpack cannot carry natively travels as a msgpack
extension. This module says, for each code, which payload bytes are valid and what value they
stand for; the decoder (``codec``) and the server's check (``values``) both parse payloads
here, so both refuse the same bytes, on every Python version.

Text payloads (DATETIME, DATE, TIME, DECIMAL) are read by the grammar below, written as bytes
regular expressions (so a digit is one of the ASCII bytes 0-9 and nothing else), then built
with the types' constructors. ``fromisoformat`` and ``Decimal(text)`` alone would not do: their
leniency differs between versions (3.11 reads ``2024-05-17T13:45:30Z``, ``20240517T134530`` and
week dates, 3.10 reads none of them) and goes far beyond what any encoder writes (``Decimal``
reads ``" 1_000 "``, ``inf`` and Arabic-Indic digits). Python's ``isoformat()`` and
``str(Decimal)`` write only text the grammar accepts.

Numbers payloads (COMPLEX, TIMEDELTA, BIGINT, UUID) must be the one form that says what they
say: two float 64, a normalised timedelta, a minimal BIGINT that no msgpack int could carry,
exactly 16 bytes.
"""

from __future__ import annotations

import datetime as _dt
import decimal
import enum
import re
import struct
import uuid
from collections.abc import Callable
from typing import Any

import msgpack

__all__ = ["MAX_DEPTH", "PAYLOAD_PARSERS", "ExtCode", "ValueDecodeError", "parse_payload"]

#: Values nested deeper than this are refused when encoding (a self-referencing list, say) and
#: by the server's check. Decoding is bounded by msgpack's own stack instead, deeper than this,
#: so any value we encode decodes.
MAX_DEPTH = 256


class ExtCode(enum.IntEnum):
    """msgpack extension type codes used for values (docs/PROTOCOL.md, "Values")."""

    BIGINT = 1  # two's complement, big-endian, minimal length
    TUPLE = 2  # zero-length marker: first element of an array holding the items
    SET = 3  # zero-length marker, as TUPLE
    FROZENSET = 4  # zero-length marker, as TUPLE
    BYTEARRAY = 5  # data: the raw bytes
    COMPLEX = 6  # data: msgpack array [real, imag] of two float 64
    DATETIME = 7  # data: ISO 8601 text, the grammar below
    DATE = 8  # data: ISO 8601 text, YYYY-MM-DD
    TIME = 9  # data: ISO 8601 text, the grammar below
    TIMEDELTA = 10  # data: msgpack array [days, seconds, microseconds], normalised
    DECIMAL = 11  # data: the decimal's text, the grammar below
    UUID = 12  # data: the 16 bytes


class ValueDecodeError(ValueError):
    """Bytes that are not a valid encoded value."""


def _shown(data: bytes) -> str:
    """A payload in an error message: a long one cut short."""
    return repr(data) if len(data) <= 48 else f"{data[:40]!r}... ({len(data)} bytes)"


# ---------------------------------------------------------------------------- date and time

_DATE = rb"([0-9]{4})-([0-9]{2})-([0-9]{2})"
_CLOCK = rb"([0-9]{2}):([0-9]{2}):([0-9]{2})(?:\.([0-9]{6}))?"
_OFFSET = rb"(?P<offset>([+-])([0-9]{2}):([0-9]{2})(?::([0-9]{2})(?:\.([0-9]{6}))?)?)?"
_DATE_TEXT = re.compile(_DATE)
_TIME_TEXT = re.compile(_CLOCK + _OFFSET)
_DATETIME_TEXT = re.compile(_DATE + b"T" + _CLOCK + _OFFSET)

_DATE_FORM = "YYYY-MM-DD"
_TIME_FORM = "HH:MM:SS[.ffffff][+HH:MM[:SS[.ffffff]]]"

# Offsets seen, by their text: most values carry one of a few. Bounded, as text is hostile.
_ZONES: dict[bytes, _dt.timezone] = {}
_MAX_ZONES = 1024


def _zone(match: re.Match[bytes], first: int) -> _dt.timezone:
    """The fixed-offset timezone of the offset whose fields are groups ``first`` on."""
    text = match["offset"]
    zone = _ZONES.get(text)
    if zone is None:
        sign, hours, minutes, seconds, micros = match.groups(b"0")[first:]
        if int(hours) > 23 or int(minutes) > 59 or int(seconds) > 59:
            raise ValueError("UTC offset out of range")
        offset = _dt.timedelta(
            hours=int(hours), minutes=int(minutes), seconds=int(seconds), microseconds=int(micros)
        )
        zone = _dt.timezone(-offset if sign == b"-" else offset)  # 0 gives timezone.utc
        if len(_ZONES) < _MAX_ZONES:
            _ZONES[text] = zone
    return zone


def _parse_date(data: bytes) -> _dt.date:
    match = _DATE_TEXT.fullmatch(data)
    if match is None:
        raise ValueDecodeError(f"DATE payload {_shown(data)} is not {_DATE_FORM}")
    try:
        return _dt.date(*map(int, match.groups()))
    except ValueError as exc:
        raise ValueDecodeError(f"DATE payload {_shown(data)}: {exc}") from None


def _parse_time(data: bytes) -> _dt.time:
    match = _TIME_TEXT.fullmatch(data)
    if match is None:
        raise ValueDecodeError(f"TIME payload {_shown(data)} is not {_TIME_FORM}")
    hour, minute, second, micro = map(int, match.groups(b"0")[:4])  # b"0": no microsecond
    try:
        zone = None if match["offset"] is None else _zone(match, 5)
        return _dt.time(hour, minute, second, micro, zone)
    except ValueError as exc:
        raise ValueDecodeError(f"TIME payload {_shown(data)}: {exc}") from None


def _parse_datetime(data: bytes) -> _dt.datetime:
    match = _DATETIME_TEXT.fullmatch(data)
    if match is None:
        raise ValueDecodeError(f"DATETIME payload {_shown(data)} is not {_DATE_FORM}T{_TIME_FORM}")
    year, month, day, hour, minute, second, micro = map(int, match.groups(b"0")[:7])
    try:
        zone = None if match["offset"] is None else _zone(match, 8)
        return _dt.datetime(year, month, day, hour, minute, second, micro, zone)
    except ValueError as exc:
        raise ValueDecodeError(f"DATETIME payload {_shown(data)}: {exc}") from None


# ---------------------------------------------------------------------------- decimal

_DECIMAL_TEXT = re.compile(
    rb"-?(?:(?P<int>[0-9]+)(?:\.(?P<frac>[0-9]+))?(?:E(?P<exp>[+-][0-9]+))?|Infinity|s?NaN[0-9]*)"
)
#: The exponent range of Python's decimal on 64-bit builds (MAX_EMAX, MIN_ETINY): a finite
#: decimal's exponent must be at least MIN_EXPONENT, its adjusted exponent (that of its first
#: significant digit) at most MAX_ADJUSTED.
MIN_EXPONENT = -1999999999999999997
MAX_ADJUSTED = 999999999999999999


def _parse_decimal(data: bytes) -> decimal.Decimal:
    match = _DECIMAL_TEXT.fullmatch(data)
    if match is None:
        raise ValueDecodeError(
            f"DECIMAL payload {_shown(data)} is not [-]digits[.digits][E±digits], "
            "[-]Infinity, [-]NaN[digits] or [-]sNaN[digits]"
        )
    exponent_text = match["exp"]
    if exponent_text is not None:  # without one, the exponent is -(digits after the point)
        whole, fraction = match["int"], match["frac"] or b""
        significant = exponent_text[1:].lstrip(b"0")
        if len(significant) > 19:  # far out of range whatever the digits: don't int() it
            raise ValueDecodeError(f"DECIMAL payload {_shown(data)}: exponent out of range")
        exponent = int(exponent_text[0:1] + (significant or b"0")) - len(fraction)
        digits = len((whole + fraction).lstrip(b"0")) or 1
        if exponent < MIN_EXPONENT or exponent + digits - 1 > MAX_ADJUSTED:
            raise ValueDecodeError(f"DECIMAL payload {_shown(data)}: exponent out of range")
    try:
        # The text is in the grammar, which every Python reads alike: Decimal() only builds.
        value = decimal.Decimal(data.decode("ascii"))
    except decimal.InvalidOperation:  # out of range on a build with a smaller range
        value = None
    if value is None or (exponent_text is not None and not value.is_finite()):
        # (a context that does not trap InvalidOperation gives NaN instead of raising)
        raise ValueDecodeError(f"DECIMAL payload {_shown(data)}: not a decimal this Python holds")
    return value


# ---------------------------------------------------------------------------- numbers

_INT_MIN, _INT_MAX = -(2**63), 2**64 - 1  # what a msgpack int carries


def _parse_bigint(data: bytes) -> int:
    number = int.from_bytes(data, "big", signed=True)
    if not data or len(data) != (number if number >= 0 else ~number).bit_length() // 8 + 1:
        raise ValueDecodeError(
            f"BIGINT payload {_shown(data)} is not the minimal two's complement of its integer"
        )
    if _INT_MIN <= number <= _INT_MAX:
        raise ValueDecodeError(
            f"BIGINT payload {_shown(data)} holds an integer a msgpack int carries: send that"
        )
    return number


# [real, imag]: an array of two (fixarray, array 16 or array 32 header), each a float 64.
_COMPLEX_PAYLOAD = re.compile(
    rb"(?:\x92|\xdc\x00\x02|\xdd\x00\x00\x00\x02)\xcb(.{8})\xcb(.{8})", re.S
)


def _parse_complex(data: bytes) -> complex:
    match = _COMPLEX_PAYLOAD.fullmatch(data)
    if match is None:
        raise ValueDecodeError(f"COMPLEX payload {_shown(data)} is not [real, imag] of float 64")
    (real,) = struct.unpack(">d", match[1])
    (imag,) = struct.unpack(">d", match[2])
    return complex(real, imag)


def _refuse_ext(code: int, data: bytes) -> Any:
    raise ValueDecodeError("an extension payload cannot hold an extension")


_MAX_DAYS = 999999999


def _parse_timedelta(data: bytes) -> _dt.timedelta:
    try:
        parts = msgpack.unpackb(data, use_list=True, ext_hook=_refuse_ext)
    except ValueDecodeError:
        raise
    except Exception:  # malformed, truncated, trailing bytes: msgpack's own errors vary
        parts = None
    if type(parts) is not list or len(parts) != 3 or not all(type(p) is int for p in parts):
        raise ValueDecodeError(
            f"TIMEDELTA payload {_shown(data)} is not [days, seconds, microseconds] of int"
        )
    days, seconds, micros = parts
    if not (-_MAX_DAYS <= days <= _MAX_DAYS and 0 <= seconds < 86400 and 0 <= micros < 10**6):
        raise ValueDecodeError(
            f"TIMEDELTA payload {parts} is not normalised: -999999999 <= days <= 999999999, "
            "0 <= seconds < 86400, 0 <= microseconds < 1000000"
        )
    return _dt.timedelta(days, seconds, micros)


def _parse_uuid(data: bytes) -> uuid.UUID:
    if len(data) != 16:
        raise ValueDecodeError(f"UUID payload is {len(data)} bytes, not 16")
    return uuid.UUID(bytes=data)


#: The parser of each extension that carries a payload (not the zero-length container markers).
PAYLOAD_PARSERS: dict[int, Callable[[bytes], Any]] = {
    ExtCode.BIGINT: _parse_bigint,
    ExtCode.BYTEARRAY: bytearray,
    ExtCode.COMPLEX: _parse_complex,
    ExtCode.DATETIME: _parse_datetime,
    ExtCode.DATE: _parse_date,
    ExtCode.TIME: _parse_time,
    ExtCode.TIMEDELTA: _parse_timedelta,
    ExtCode.DECIMAL: _parse_decimal,
    ExtCode.UUID: _parse_uuid,
}


def parse_payload(code: int, data: bytes) -> Any:
    """The value an extension stands for; ``ValueDecodeError`` if it is not a valid one."""
    parse = PAYLOAD_PARSERS.get(code)
    if parse is None:
        raise ValueDecodeError(f"unknown value extension code {code}")
    return parse(data)
