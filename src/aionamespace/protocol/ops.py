"""The operations a request may name, and what their arguments must be (sans-IO).

Each op lists the *kinds* of its arguments; every kind has one check. The server runs the
checks before an op reaches the store, so the store only ever sees valid keys, names and
encoded values; the client runs the name checks before sending, so a bad name fails at the
call site. docs/PROTOCOL.md, "Operations", is this table in prose.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection
from typing import TYPE_CHECKING, Any

from .codec import MAX_DEPTH, ONE_BYTE_VALUES, SCALAR_LENGTHS, ValueDecodeError
from .values import check_value

if TYPE_CHECKING:
    from .limits import Limits

__all__ = [
    "ANNOUNCED_OPS",
    "DEFERRED_OPS",
    "OPS",
    "READ_OPS",
    "SAFE_TO_RESEND",
    "check_args",
    "check_each_name",
    "check_names",
    "valid_names",
]

MAX_TOKEN_BYTES = 64
MAX_EPOCH_LENGTH = 64  # characters of an epoch (the reference server's are 16)

#: op -> the kinds of its arguments.
OPS: dict[str, tuple[str, ...]] = {
    "ping": (),
    "keys": (),  # -> [key, ...]: every namespace the server holds
    "open": ("key", "values"),  # create; set the names it lacks -> nil
    "get": ("key", "name"),  # -> value
    "set": ("key", "name", "value"),  # -> revision
    "del": ("key", "name"),  # -> revision
    "dump": ("key",),  # -> {name: value}
    "snapshot": ("key", "names?"),  # -> [revision, {name: value}]
    # -> [revision, [name, ...] or nil (the names asked), bin(array of values)]
    "snapshot_packed": ("key", "names?"),
    "update": ("key", "values"),  # all at once, one revision -> revision
    "setdefault": ("key", "name", "value"),  # -> the value now held
    "pop": ("key", "name"),  # -> the value removed
    "incr": ("key", "name", "value"),  # add an int or float -> new value
    "append": ("key", "name", "items"),  # extend a list in place -> new length
    "cas": ("key", "name", "value", "value"),  # compare and swap -> bool
    "watch": ("key", "names?", "revision?"),  # -> [watch id, revision, {name: value}]
    "unwatch": ("watch_id",),  # -> bool: whether that watch existed
    "acquire": ("key", "name", "token", "timeout?"),  # -> nil, when acquired (deferred)
    "release": ("key", "name", "token"),  # -> bool: whether it was held or awaited
    "track": ("flag",),  # client cache: from now on, invalidate what this connection gets
    "info": (),  # -> {figure: value}: what the server holds and serves (docs/PROTOCOL.md)
    "export": (),  # freeze the whole board for this connection -> [epoch, [key, ...]]
    "export_read": ("key",),  # one namespace of it -> [revision, {name: value}]
}

#: Ops whose reply may come after the replies to later requests (docs/PROTOCOL.md).
DEFERRED_OPS = frozenset({"acquire"})

#: Ops a client may send again after losing the connection: they change nothing (``open``
#: only fills in missing names, so a second one is a no-op).
SAFE_TO_RESEND = frozenset(
    {"ping", "keys", "get", "dump", "snapshot", "snapshot_packed", "open", "info"}
)
#: Ops added to version 1 that a server announces in its hello (``ops``): a client sends one
#: only to a server that announced it.
ANNOUNCED_OPS = ("snapshot_packed",)
#: Ops that only read: they commit nothing, so they push nothing to anyone.
READ_OPS = SAFE_TO_RESEND - {"open"}


def _name(limits: Limits, value: Any) -> str | None:
    problem = limits.check_name(value)
    if problem is None:
        valid = valid_names(limits)
        if value not in valid:  # (a get of it is then checked in one test)
            _remember(valid, (value,))
    return problem


def _value(limits: Limits, value: Any) -> str | None:
    if type(value) is not bytes:
        return "values travel as bin"
    try:
        check_value(value, MAX_DEPTH, limits.max_keys_per_hash)
    except ValueDecodeError as exc:
        return str(exc)
    return None


_BIN = frozenset({bytes})


def _values(limits: Limits, values: Any) -> str | None:
    if type(values) is not dict:
        return "expected a map of name to value"
    problem = check_each_name(limits, values)
    if problem is not None:
        return problem
    blobs = values.values()
    if _BIN.issuperset(map(type, blobs)) and all(blobs):
        joined = b"".join(blobs)
        if len(joined) == len(blobs) and not joined.translate(None, ONE_BYTE_VALUES):
            return None  # each value one byte, a whole value (a small int, None, a bool)
    lengths = SCALAR_LENGTHS
    for value in blobs:
        if type(value) is bytes and value and len(value) == lengths[value[0]]:
            continue  # a whole int, float, None or bool: check_value's own first test, inlined
        problem = _value(limits, value)
        if problem is not None:
            return problem
    return None


#: Names found valid, by the name length limit they were checked against: a batch of names
#: seen before (the same _update in a loop) is then one subset test in C. Bounded.
_VALID_NAMES: dict[int, set[str]] = {}
_MAX_VALID_NAMES = 100_000


def valid_names(limits: Limits) -> set[str]:
    """The names found valid under ``limits`` so far: a name in it needs no check."""
    return _VALID_NAMES.setdefault(limits.max_name_length, set())


def check_each_name(limits: Limits, names: Collection[Any]) -> str | None:
    """The first problem ``limits.check_name`` finds among ``names`` (in C loops: batches are
    big; the loop in Python only runs to say what is wrong); valid names are remembered."""
    valid = valid_names(limits)
    try:
        if valid.issuperset(names):
            return None
    except TypeError:  # an unhashable "name": said below
        pass
    if not names or (
        set(map(type, names)) == {str}
        and 0 < min(map(len, names))
        and max(map(len, names)) <= limits.max_name_length
    ):
        _remember(valid, names)
        return None
    return next(filter(None, map(limits.check_name, names)))


def _remember(valid: set[str], names: Collection[str]) -> None:
    if len(valid) > _MAX_VALID_NAMES:
        valid.clear()
    valid.update(names)


def _items(limits: Limits, items: Any) -> str | None:
    if type(items) is not list:
        return "expected an array of values"
    for item in items:  # each will sit one level down, inside the list
        if type(item) is not bytes:
            return "values travel as bin"
        try:
            check_value(item, MAX_DEPTH - 1, limits.max_keys_per_hash)
        except ValueDecodeError as exc:
            return str(exc)
    return None


def _names(limits: Limits, names: Any) -> str | None:
    if names is None:
        return None
    if type(names) is not list:
        return "expected an array of names or nil"
    return check_each_name(limits, names)


def _revision(limits: Limits, revision: Any) -> str | None:
    if revision is None or (type(revision) is int and revision >= 0):
        return None
    if (
        type(revision) is list
        and len(revision) == 2
        and type(revision[0]) is str
        and 0 < len(revision[0]) <= MAX_EPOCH_LENGTH
        and type(revision[1]) is int
        and revision[1] >= 0
    ):
        return None
    return "a revision is a non-negative integer, [epoch, integer] or nil"


def _watch_id(limits: Limits, watch_id: Any) -> str | None:
    return None if type(watch_id) is int and watch_id > 0 else "a watch id is a positive integer"


def _token(limits: Limits, token: Any) -> str | None:
    if type(token) is bytes and 0 < len(token) <= MAX_TOKEN_BYTES:
        return None
    return f"a lock token is 1 to {MAX_TOKEN_BYTES} bytes"


def _flag(limits: Limits, flag: Any) -> str | None:
    return None if type(flag) is bool else "expected true or false"


def _timeout(limits: Limits, timeout: Any) -> str | None:
    if timeout is None:
        return None
    if type(timeout) in (int, float) and 0 <= timeout and math.isfinite(timeout):
        return None
    return "a timeout is a non-negative finite number of seconds or nil"


_CHECKS: dict[str, Callable[[Limits, Any], str | None]] = {
    "key": _name,
    "name": _name,
    "value": _value,
    "values": _values,
    "items": _items,
    "names?": _names,
    "revision?": _revision,
    "watch_id": _watch_id,
    "token": _token,
    "timeout?": _timeout,
    "flag": _flag,
}

_NAME_KINDS = frozenset({"key", "name", "names?"})


def check_args(limits: Limits, op: str, args: tuple[Any, ...]) -> str | None:
    """Why ``args`` are not valid for ``op`` (which must be in OPS), or None."""
    kinds = OPS[op]
    if len(args) != len(kinds):
        return f"takes {len(kinds)} arguments ({', '.join(kinds)}), not {len(args)}"
    for kind, arg in zip(kinds, args, strict=True):
        problem = _CHECKS[kind](limits, arg)
        if problem is not None:
            return problem
    return None


def check_names(limits: Limits, op: str, args: tuple[Any, ...]) -> str | None:
    """The name checks only: what a client verifies before sending."""
    for kind, arg in zip(OPS[op], args, strict=False):
        if kind in _NAME_KINDS:
            problem = _CHECKS[kind](limits, arg)
        elif kind == "values":
            problem = check_each_name(limits, arg)
        else:
            continue
        if problem is not None:
            return problem
    return None
