"""Every proxy operation, defined once: the request it sends and how its answer is read.

``Namespace`` and ``AsyncNamespace`` differ only in how they wait, so what an operation means
lives here (httpx's ``BaseClient`` idea). An ``Operation`` is made once per kind of request:
its op name, how its answer is read, and which attribute names it may change (a client cache
forgets those before the request leaves). A *call* is an operation with its arguments, the
values already encoded, so an unshareable value raises ``TypeError`` at the call site; every
transport takes a call as it is (``transport.call(*call)``), the hot ``get`` included:
``(GET, (key, name))`` needs no builder at all.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from typing import Any

from .._errors import RemoteProtocolError
from ..protocol.codec import (
    decode_array,
    decode_value,
    decode_values,
    encode_value,
    encode_values,
)

__all__ = ["GET", "Call", "Operation", "Revision", "Snapshot", "WatchEvent"]


class Revision(int):
    """A revision, and the ``epoch`` of the board it counts in: the server's, when it said.

    It is an int for every other purpose. Given as a watch's ``since``, it resumes only on a
    board of the same epoch (else HistoryExpired); a plain int resumes on any board.
    """

    epoch: str | None

    def __new__(cls, revision: int, epoch: str | None) -> Revision:
        self = super().__new__(cls, revision)
        self.epoch = epoch
        return self

    def __repr__(self) -> str:
        return f"Revision({int(self)}, epoch={self.epoch!r})"

    def __str__(self) -> str:  # as an int prints (str() of an int subclass calls __repr__)
        return int.__repr__(self)

    def __reduce__(self) -> tuple[Any, ...]:
        return Revision, (int(self), self.epoch)


def revision(number: int, epoch: str | None) -> int:
    """``number`` as the API hands revisions out: a Revision when the epoch is known."""
    return Revision(number, epoch) if epoch is not None else number


class Operation:
    """One kind of request: ``op``, how its answer is ``read``, what it may change.

    ``read`` is None when the answer is the result itself (no call to make). ``changes`` says
    where the attribute names it may change are among its arguments: ``"name"``
    (the second argument), ``"values"`` (the keys of the second) or None (it changes none).
    """

    __slots__ = ("changes", "op", "read")

    def __init__(
        self, op: str, read: Callable[[Any], Any] | None = None, changes: str | None = None
    ) -> None:
        self.op, self.read, self.changes = op, read, changes

    def changed(self, args: tuple[Any, ...]) -> tuple[str, ...]:
        """The attribute names a call with ``args`` may change."""
        if self.changes == "name":
            return (args[1],)
        if self.changes == "values":
            return tuple(args[1])
        return ()

    def __repr__(self) -> str:
        return f"<Operation {self.op}>"


#: An operation and its arguments, ready to send.
Call = tuple[Operation, tuple[Any, ...]]


class Snapshot(dict[str, Any]):
    """A dict of attributes, read together at one ``revision`` (watch ``since`` it)."""

    revision: int

    def __init__(
        self, revision: int, values: Mapping[str, Any] | Iterable[tuple[str, Any]]
    ) -> None:
        super().__init__(values)
        self.revision = revision

    def __repr__(self) -> str:
        return f"Snapshot(revision={int(self.revision)}, {dict.__repr__(self)})"


@dataclasses.dataclass(frozen=True, slots=True)
class WatchEvent:
    """One change seen by a watch: ``name`` got ``value`` (or was deleted) at ``revision``."""

    name: str
    value: Any
    revision: int
    deleted: bool = False


def _read_snapshot(result: list[Any], asked: Sequence[str] = ()) -> Snapshot:
    """A ``snapshot``'s result, ``[revision, map]``, or a ``snapshot_packed``'s, ``[revision,
    names, bin]`` (names nil: those ``asked``), whose values are decoded in one call."""
    if len(result) == 2:
        return Snapshot(result[0], decode_values(result[1]))
    revision, names, packed = result
    values = decode_array(packed)
    names = asked if names is None else names
    if len(names) != len(values):
        raise RemoteProtocolError(
            f"a snapshot of {len(names)} names came with {len(values)} values"
        )
    return Snapshot(revision, zip(names, values, strict=True))  # (no dict made to be copied)


PING = Operation("ping")
KEYS = Operation("keys")
GET = Operation("get", decode_value)
SET = Operation("set", changes="name")
DELETE = Operation("del", changes="name")
OPEN = Operation("open", changes="values")
DUMP = Operation("dump")
SNAPSHOT = Operation("snapshot", _read_snapshot)
UPDATE = Operation("update", changes="values")
SETDEFAULT = Operation("setdefault", decode_value, changes="name")
POP = Operation("pop", decode_value, changes="name")
INCR = Operation("incr", decode_value, changes="name")
APPEND = Operation("append", changes="name")
CAS = Operation("cas", changes="name")
ACQUIRE = Operation("acquire")
RELEASE = Operation("release")
WATCH = Operation("watch")
TRACK = Operation("track")
INFO = Operation("info")


def shared(name: str) -> str:
    """An attribute name an operation may share: ``_`` names stay on the proxy."""
    if isinstance(name, str) and name.startswith("_"):
        raise ValueError(
            f"{name!r} starts with '_': such names stay on the proxy and are never shared"
        )
    return name


def _shared_names(names: Collection[str]) -> None:
    """``shared`` for many names at once: one search of the names joined, in C (a batch's
    names are many; a name holding ``"\\0_"`` itself only sends this to the loop below)."""
    try:
        private = "\0_" in "\0" + "\0".join(names)
    except TypeError:  # not all str: the name check before sending says why
        private = any(isinstance(name, str) and name[:1] == "_" for name in names)
    if private:
        for name in names:
            shared(name)  # raises for the first


def get(key: str, name: str) -> Call:
    return GET, (key, name)


def set_(key: str, name: str, value: Any) -> Call:
    return SET, (key, name, encode_value(value))


def delete(key: str, name: str) -> Call:
    return DELETE, (key, name)


def open_(key: str, defaults: dict[str, Any]) -> Call:
    # Not shared(): like the stdlib's Namespace(_x=1), an initial _ name is stored, unreachable.
    return OPEN, (key, encode_values(defaults))


def exists(key: str) -> Call:
    """A read naming ``key`` that reads nothing: NamespaceGone if it is a freed anonymous one."""
    return SNAPSHOT, (key, [])


def dump(key: str) -> Call:
    return DUMP, (key,)


def snapshot(key: str, names: tuple[str, ...]) -> Call:
    _shared_names(names)
    if not names:
        return SNAPSHOT, (key, None)
    asked = list(names)  # (a reply to snapshot_packed may leave them out: these, in order)
    return Operation("snapshot", functools.partial(_read_snapshot, asked=asked)), (key, asked)


def update(key: str, values: dict[str, Any]) -> Call:
    _shared_names(values)
    return UPDATE, (key, encode_values(values))


def setdefault(key: str, name: str, value: Any) -> Call:
    return SETDEFAULT, (key, shared(name), encode_value(value))


def pop(key: str, name: str) -> Call:
    return POP, (key, shared(name))


def incr(key: str, name: str, by: int | float) -> Call:
    if type(by) not in (int, float):
        raise TypeError(f"can only increment by an int or a float, not {type(by).__name__}")
    return INCR, (key, shared(name), encode_value(by))


def append(key: str, name: str, items: Iterable[Any]) -> Call:
    return APPEND, (key, shared(name), [encode_value(item) for item in items])


def cas(key: str, name: str, expected: Any, new: Any) -> Call:
    return CAS, (key, shared(name), encode_value(expected), encode_value(new))


def acquire(key: str, name: str, token: bytes, timeout: float | None) -> Call:
    if timeout is not None and not (timeout >= 0 and math.isfinite(timeout)):
        raise ValueError(f"timeout must be a non-negative number of seconds, not {timeout!r}")
    return ACQUIRE, (key, name, token, timeout)


def release(key: str, name: str, token: bytes) -> Call:
    return RELEASE, (key, name, token)


def watch(key: str, names: tuple[str, ...], since: int | None) -> Call:
    if since is not None and (not isinstance(since, int) or isinstance(since, bool) or since < 0):
        raise ValueError(f"since must be a revision (an int >= 0), not {since!r}")
    sent: int | list[Any] | None = since
    if isinstance(since, Revision) and since.epoch is not None:
        sent = [since.epoch, int(since)]
    elif since is not None:
        sent = int(since)
    return WATCH, (key, [shared(n) for n in names] or None, sent)


EXPORT = Operation("export")
EXPORT_READ = Operation("export_read")


def export() -> Call:
    """Freeze the board for this connection: ``[epoch, [key, ...]]``."""
    return EXPORT, ()


def export_read(key: str) -> Call:
    """One namespace of this connection's export: ``[revision, {name: encoded value}]``."""
    return EXPORT_READ, (key,)


def ping() -> Call:
    return PING, ()


def keys() -> Call:
    return KEYS, ()


def info() -> Call:
    return INFO, ()


def event_from_push(
    name: str, number: int, value: bytes | None, epoch: str | None = None
) -> WatchEvent:
    """The ``WatchEvent`` a watch event frame stands for (on a server of ``epoch``)."""
    if value is None:
        return WatchEvent(name, None, revision(number, epoch), deleted=True)
    return WatchEvent(name, decode_value(value), revision(number, epoch))
