"""The typed rules of the read-modify-write operations, shared by every store.

``incr`` adds an int or a float to an int or a float (ints of any size, as Python adds them);
``append`` extends a list and nothing else. A store that keeps values elsewhere (Redis, where
a script cannot decode our values) reads the value, applies these rules here, and writes the
result back only if nothing changed meanwhile: the same rules, so the same answers and errors.
"""

from __future__ import annotations

from typing import Any

from ...protocol.codec import decode_value, encode_value

__all__ = ["incremented", "kind", "list_refused", "step_of"]


def kind(value: Any) -> str:
    """How an error names a value's type: ``a list``, ``a str``."""
    return f"a {type(value).__name__}"


def step_of(by: bytes) -> int | float:
    """The step an ``incr`` adds (decoded), or TypeError if it is not an int or a float."""
    step = decode_value(by)
    if type(step) not in (int, float):
        raise TypeError(f"can only increment by an int or a float, not {kind(step)}")
    return step  # type: ignore[no-any-return]


def incremented(name: str, current: bytes | None, step: int | float) -> bytes:
    """The encoding of ``current`` (None: missing, counted as 0) plus ``step``; TypeError if it
    holds anything but an int or a float (OverflowError if the sum cannot be a float)."""
    value = 0 if current is None else decode_value(current)
    if type(value) not in (int, float):
        raise TypeError(f"cannot increment {name!r}: it holds {kind(value)}, not an int or a float")
    return encode_value(value + step)


def list_refused(name: str, current: bytes) -> TypeError:
    """The error for an append to ``name``, which holds ``current``: not a list."""
    return TypeError(
        f"cannot append to {name!r}: it holds {kind(decode_value(current))}, not a list"
    )
