"""Every proxy operation as data: the request it sends and how its answer is read.

``Namespace`` and ``AsyncNamespace`` differ only in how they move bytes, so what an operation
means lives here once (httpx's ``BaseClient`` idea): a function builds a ``Call`` -- encoding
the values at once, so an unshareable value raises ``TypeError`` at the call site -- and each
proxy sends it its own way and hands the result to ``call.read``.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Callable, Collection, Iterable
from typing import Any

from ..protocol.codec import decode_value, decode_values, encode_value, encode_values

__all__ = ["Call", "Snapshot", "WatchEvent"]


def _unchanged(result: Any) -> Any:
    return result


@dataclasses.dataclass(frozen=True, slots=True)
class Call:
    op: str
    args: tuple[Any, ...]
    read: Callable[[Any], Any] = _unchanged
    changes: tuple[str, ...] = ()  # attribute names it may change (a client cache forgets them)


class Snapshot(dict[str, Any]):
    """A dict of attributes, read together at one ``revision`` (watch ``since`` it)."""

    revision: int

    def __init__(self, revision: int, values: dict[str, Any]) -> None:
        super().__init__(values)
        self.revision = revision

    def __repr__(self) -> str:
        return f"Snapshot(revision={self.revision}, {dict.__repr__(self)})"


@dataclasses.dataclass(frozen=True, slots=True)
class WatchEvent:
    """One change seen by a watch: ``name`` got ``value`` (or was deleted) at ``revision``."""

    name: str
    value: Any
    revision: int
    deleted: bool = False


def shared(name: str) -> str:
    """An attribute name an operation may share: ``_`` names stay on the proxy."""
    if isinstance(name, str) and name.startswith("_"):
        raise ValueError(f"{name!r} starts with '_': such names stay on the proxy and are "
                         "never shared")
    return name


def _read_snapshot(result: list[Any]) -> Snapshot:
    return Snapshot(result[0], decode_values(result[1]))


def _shared_names(names: Collection[str]) -> None:
    """``shared`` for many names at once (a loop in C: batches are big)."""
    try:
        private = any(map(str.startswith, names, itertools.repeat("_", len(names))))
    except TypeError:  # not all str: the name check before sending says why
        private = any(isinstance(name, str) and name[:1] == "_" for name in names)
    if private:
        for name in names:
            shared(name)  # raises for the first


def get(key: str, name: str) -> Call:
    return Call("get", (key, name), decode_value)


def set_(key: str, name: str, value: Any) -> Call:
    return Call("set", (key, name, encode_value(value)), changes=(name,))


def delete(key: str, name: str) -> Call:
    return Call("del", (key, name), changes=(name,))


def open_(key: str, defaults: dict[str, Any]) -> Call:
    # Not shared(): like the stdlib's Namespace(_x=1), an initial _ name is stored, unreachable.
    return Call("open", (key, encode_values(defaults)), changes=tuple(defaults))


def dump(key: str) -> Call:
    return Call("dump", (key,))


def snapshot(key: str, names: tuple[str, ...]) -> Call:
    _shared_names(names)
    return Call("snapshot", (key, list(names) or None), _read_snapshot)


def update(key: str, values: dict[str, Any]) -> Call:
    _shared_names(values)
    return Call("update", (key, encode_values(values)), changes=tuple(values))


def setdefault(key: str, name: str, value: Any) -> Call:
    return Call("setdefault", (key, shared(name), encode_value(value)), decode_value,
                changes=(name,))


def pop(key: str, name: str) -> Call:
    return Call("pop", (key, shared(name)), decode_value, changes=(name,))


def incr(key: str, name: str, by: int | float) -> Call:
    if type(by) not in (int, float):
        raise TypeError(f"can only increment by an int or a float, not {type(by).__name__}")
    return Call("incr", (key, shared(name), encode_value(by)), decode_value, changes=(name,))


def append(key: str, name: str, items: Iterable[Any]) -> Call:
    return Call("append", (key, shared(name), [encode_value(item) for item in items]),
                changes=(name,))


def cas(key: str, name: str, expected: Any, new: Any) -> Call:
    return Call("cas", (key, shared(name), encode_value(expected), encode_value(new)),
                changes=(name,))


def acquire(key: str, name: str, token: bytes, timeout: float | None) -> Call:
    if timeout is not None and not (timeout >= 0 and math.isfinite(timeout)):
        raise ValueError(f"timeout must be a non-negative number of seconds, not {timeout!r}")
    return Call("acquire", (key, name, token, timeout))


def release(key: str, name: str, token: bytes) -> Call:
    return Call("release", (key, name, token))


def watch(key: str, names: tuple[str, ...], since: int | None) -> Call:
    if since is not None and (type(since) is not int or since < 0):
        raise ValueError(f"since must be a revision (an int >= 0), not {since!r}")
    return Call("watch", (key, [shared(n) for n in names] or None, since))


def event_from_push(name: str, revision: int, value: bytes | None) -> WatchEvent:
    if value is None:
        return WatchEvent(name, None, revision, deleted=True)
    return WatchEvent(name, decode_value(value), revision)
