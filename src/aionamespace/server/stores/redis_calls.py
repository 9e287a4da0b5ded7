"""The calls of a batch as the Redis store runs them: what each sends to the namespace script
(redis_scripts.py), and what it makes of the reply.

Most calls are one script call. ``incr`` and ``cas`` compute in Python (Lua cannot decode our
values: ints of any size, Decimal, Fraction, the ext types) with the rules every store uses
(typed.py, protocol/equality.py), then write *only if the name still holds what they read*,
else read again: an optimistic loop that never loses an update. An ``incr`` first tries the
value this server last saw (``guesses``), so a counter this server alone bumps costs one round
trip; a ``cas`` first tries the expected bytes themselves, so an equal value costs one too.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ..._errors import LimitExceeded
from ...protocol.equality import cas_equal
from ...protocol.events import missing_attribute
from ...protocol.lists import MAX_LIST_LENGTH
from .base import Changes
from .redis_history import UnfetchedList, pack_update
from .redis_wire import Packed, PackedReads, multi, pack, pack_args
from .typed import incremented, list_refused, step_of

__all__ = ["Ahead", "Call", "Guesses", "full", "prepare"]

#: The last value this server saw of (key, name), None for missing: an incr's first guess.
Guesses = dict[tuple[str, str], "bytes | None"]
#: What (key, name) will hold once the calls before, in a round, have run (None: missing).
Ahead = dict[tuple[str, str], "bytes | None"]
MAX_GUESSES = 10_000


class Call:
    """One call of a batch. ``request()`` is the next script call (op, args); ``answer()`` takes
    its reply; ``done`` once ``result`` (a value or an exception) is final. ``foresee()`` is
    told, before ``request()``, what the calls before it in the round leave in the names they
    write (if they write: the calls after a conditional write that fails do not run): it
    updates that with what it leaves itself, so that an incr after it guesses right."""

    __slots__ = (
        "changes", "done", "key", "observed", "result", "revision", "scripted", "want_list",
    )  # fmt: skip

    creates = False  # may create its namespace (the ops PROTOCOL.md lists)
    reads = False  # writes nothing
    again = False  # may need another round trip before it is done

    def __init__(self, key: str) -> None:
        self.key = key
        self.done = False
        self.result: Any = None
        self.revision = 0
        self.changes: Changes | None = None  # the revision it made, told to on_commit
        self.want_list = False  # an append asks for the whole list (the store sets it)
        self.observed = -1  # the namespace's revision a read saw (a followed key starts there)
        self.scripted = False  # a plain read found a list: the script reads it

    def request(self) -> tuple[str, Sequence[Any] | Packed]:
        raise NotImplementedError

    def transaction(self, base: bytes, packed: PackedReads) -> bytes:
        """A read's plain commands in ``MULTI``/``EXEC`` (redis_wire.multi), which cost Redis
        less than the script's Lua, or b"": this call goes through the script. ``packed``
        keeps such commands, as the same reads come again (a polled name, a snapshot of the
        same names): packing them is most of what the server spends on a read's request."""
        return b""

    def answer_plain(self, found: list[Any]) -> None:
        """Take ``EXEC``'s replies to ``transaction()``; not done if the script must answer
        (then ``scripted`` is set: the call goes to the script in the next round)."""
        raise NotImplementedError

    def answer(self, reply: list[Any]) -> None:
        """Take the script's reply; an exception raised here is the call's result."""
        raise NotImplementedError

    def foresee(self, ahead: Ahead) -> None:
        """(A read leaves every name as it was.)"""

    def finish(self, result: Any, revision: int = 0, changes: Changes | None = None) -> None:
        self.done, self.result = True, result
        if changes is not None:
            self.revision, self.changes = revision, changes


def full(key: str, bound: int | None) -> LimitExceeded:
    """The error of a call that would create ``key`` past ``max_namespaces`` (``bound``)."""
    return LimitExceeded(
        f"the server holds {bound} namespaces, its limit (Limits.max_namespaces): {key!r} "
        "cannot be created"
    )


class _Named(Call):
    __slots__ = ("name",)

    def __init__(self, key: str, name: str) -> None:
        super().__init__(key)
        self.name = name


class Get(_Named):
    __slots__ = ()
    reads = True

    def request(self) -> tuple[str, Sequence[Any]]:
        return "get", (self.name,)

    def transaction(self, base: bytes, packed: PackedReads) -> bytes:
        if self.scripted or not self.name:
            return b""
        item = (base, self.name)
        command = packed.get(item)
        if command is None:
            command = multi(pack("HGET", base + b":v", self.name), pack("HGET", base + b":m", "r"))
            packed.keep(item, command)
        return command

    def answer_plain(self, found: list[Any]) -> None:
        value, revision = found
        if value == b"":  # a list that appends grew: its elements are elsewhere
            self.scripted = True
            return
        self.answer(
            [b"missing", int(revision or 0)]
            if value is None
            else [b"ok", value, int(revision or 0)]
        )

    def answer(self, reply: list[Any]) -> None:
        if reply[0] == b"missing":
            self.observed = reply[1]
            raise missing_attribute(self.name)
        self.observed = reply[2]
        self.finish(reply[1])


class Set(_Named):
    __slots__ = ("value",)
    creates = True

    def __init__(self, key: str, name: str, value: bytes) -> None:
        super().__init__(key, name)
        self.value = value

    def request(self) -> tuple[str, Sequence[Any]]:
        return "set", (self.name, self.value)

    def foresee(self, ahead: Ahead) -> None:
        ahead[self.key, self.name] = self.value

    def answer(self, reply: list[Any]) -> None:
        self.finish(reply[1], reply[1], {self.name: self.value})


class Delete(_Named):
    __slots__ = ()

    def request(self) -> tuple[str, Sequence[Any]]:
        return "del", (self.name,)

    def foresee(self, ahead: Ahead) -> None:
        ahead[self.key, self.name] = None

    def answer(self, reply: list[Any]) -> None:
        if reply[0] == b"missing":
            raise missing_attribute(self.name)
        self.finish(reply[1], reply[1], {self.name: None})


class Pop(Delete):
    __slots__ = ()

    def request(self) -> tuple[str, Sequence[Any]]:
        return "pop", (self.name,)

    def answer(self, reply: list[Any]) -> None:
        if reply[0] == b"missing":
            raise missing_attribute(self.name)
        self.finish(reply[1], reply[2], {self.name: None})


class SetDefault(Set):
    __slots__ = ()

    def request(self) -> tuple[str, Sequence[Any]]:
        return "setdefault", (self.name, self.value)

    def foresee(self, ahead: Ahead) -> None:
        ahead.pop((self.key, self.name), None)

    def answer(self, reply: list[Any]) -> None:
        if reply[0] == b"set":
            self.finish(self.value, reply[1], {self.name: self.value})
        else:
            self.finish(reply[1])


class Update(Call):
    __slots__ = ("values",)
    creates = True

    def __init__(self, key: str, values: Mapping[str, bytes]) -> None:
        super().__init__(key)
        self.values = values

    def request(self) -> tuple[str, Sequence[Any] | Packed]:
        # One argument: the history entry, packed here (packing it in Lua costs Redis more
        # than all the rest of the call), from which the script reads the names and values.
        entry = pack_update(self.values)
        return "update", Packed(b"$%d\r\n%b\r\n" % (len(entry), entry), 1)

    def foresee(self, ahead: Ahead) -> None:
        for name, value in self.values.items():
            ahead[self.key, name] = value

    def answer(self, reply: list[Any]) -> None:
        if self.values:
            self.finish(reply[1], reply[1], self.values)
        else:
            self.finish(reply[1])


class Open(Update):
    __slots__ = ()

    def request(self) -> tuple[str, Sequence[Any]]:
        return "open", [item for pair in self.values.items() for item in pair]

    def foresee(self, ahead: Ahead) -> None:
        for name in self.values:
            ahead.pop((self.key, name), None)

    def answer(self, reply: list[Any]) -> None:
        names = [name.decode() for name in reply[2]]
        if names:
            self.finish(None, reply[1], {name: self.values[name] for name in names})
        else:
            self.finish(None)


class Snapshot(Call):
    __slots__ = ("names",)
    reads = True

    def __init__(self, key: str, names: Sequence[str] | None) -> None:
        super().__init__(key)
        self.names = names

    def request(self) -> tuple[str, Sequence[Any]]:
        return "snapshot", ["*"] if self.names is None else ["-", *self.names]

    def transaction(self, base: bytes, packed: PackedReads) -> bytes:
        names = self.names
        if self.scripted or not names or "" in names:
            return b""
        item = (base, tuple(names))
        command = packed.get(item)
        if command is None:
            head = b"*%d\r\n$5\r\nHMGET\r\n$%d\r\n%b:v\r\n" % (
                len(names) + 2, len(base) + 2, base,
            )  # fmt: skip
            command = multi(head + pack_args(*names), pack("HGET", base + b":m", "r"))
            packed.keep(item, command)
        return command

    def answer_plain(self, found: list[Any]) -> None:
        values, revision = found
        if b"" in values:  # a list that appends grew: its elements are elsewhere
            self.scripted = True
            return
        self.answer([b"ok", int(revision or 0), values])

    def answer(self, reply: list[Any]) -> None:
        found = reply[2]
        values: dict[str, bytes]
        if self.names is None:  # all of them: name, value, ... in the namespace's order
            values = {found[i].decode(): found[i + 1] for i in range(0, len(found), 2)}
        elif not found:  # (no such namespace)
            values = {}
        else:  # the names asked for: their values in order, None for one missing
            values = {
                name: value
                for name, value in zip(self.names, found, strict=True)
                if value is not None
            }
        self.observed = reply[1]
        self.finish((reply[1], values))


class SnapshotInOrder(Snapshot):
    """A snapshot of names whose values may come as a list in their order (remote.py's
    ``snapshot_in_order``): ``snapshot_packed``'s reply, made of it as it is."""

    __slots__ = ()

    def answer_plain(self, found: list[Any]) -> None:
        values, revision = found
        names = self.names
        assert names is not None  # (transaction() sends no plain read without names)
        # (None: missing, b"": a list that appends grew; a value held is never empty)
        if not all(values) or len(set(names)) != len(names):
            super().answer_plain(found)  # (one missing, a list, a name twice: a dict)
            return
        self.observed = int(revision or 0)
        self.finish((self.observed, values))


class Append(_Named):
    __slots__ = ("items",)
    creates = True

    def __init__(self, key: str, name: str, items: Sequence[bytes]) -> None:
        super().__init__(key, name)
        self.items = items

    def request(self) -> tuple[str, Sequence[Any]]:
        return "append", (self.name, len(self.items), b"".join(self.items))

    def foresee(self, ahead: Ahead) -> None:
        ahead.pop((self.key, self.name), None)

    def answer(self, reply: list[Any]) -> None:
        status = reply[0]
        if status == b"notlist":
            raise list_refused(self.name, reply[1])
        if status == b"toolong":
            raise ValueError(f"a list holds at most {MAX_LIST_LENGTH} items")
        count, revision, whole = reply[1], reply[2], reply[3]
        value = whole if isinstance(whole, bytes) else UnfetchedList(self.key, count, whole)
        self.finish(count, revision, {self.name: value})


class Incr(_Named):
    """Read, add in Python, write if unchanged; again from what the failed write found."""

    __slots__ = ("expected", "guesses", "new", "step")
    creates = again = True

    def __init__(self, key: str, name: str, by: bytes, guesses: Guesses) -> None:
        super().__init__(key, name)
        self.step = step_of(by)
        self.guesses = guesses
        self.expected: tuple[str, bytes] = ("u", b"")
        self.new = b""
        guess = guesses.get((key, name), b"")
        if guess != b"":  # a value seen, or None: seen missing
            self._guess(guess)

    def _guess(self, value: bytes | None) -> None:
        try:
            self._expect(value)
        except (TypeError, OverflowError):  # a guess must not decide the answer: read first
            self.expected = ("u", b"")

    def foresee(self, ahead: Ahead) -> None:
        item = (self.key, self.name)
        if item in ahead:  # what the calls before it in the round leave
            self._guess(ahead[item])
        if self.expected[0] == "u":
            ahead.pop(item, None)
        else:
            ahead[item] = self.new

    def _expect(self, current: bytes | None) -> None:
        self.new = incremented(self.name, current, self.step)
        self.expected = ("m", b"") if current is None else ("v", current)

    def request(self) -> tuple[str, Sequence[Any]]:
        kind, expected = self.expected
        return "cond", (self.name, kind, expected, self.new, "0")

    def answer(self, reply: list[Any]) -> None:
        status = reply[0]
        if status == b"ok":
            self._remember(self.new)
            self.finish(self.new, reply[1], {self.name: self.new})
        elif status == b"l":
            raise TypeError(
                f"cannot increment {self.name!r}: it holds a list, not an int or a float"
            )
        else:
            current = None if status == b"m" else reply[1]
            self._remember(current)
            self._expect(current)  # (raises TypeError for a value of another type)

    def _remember(self, value: bytes | None) -> None:
        if len(self.guesses) >= MAX_GUESSES:
            self.guesses.clear()
        self.guesses[self.key, self.name] = value


class Cas(_Named):
    """Write if the bytes are the expected ones; else compare in Python and, if equal, write if
    the name still holds what was compared."""

    __slots__ = ("compared", "expected", "new")
    creates = again = True

    def __init__(self, key: str, name: str, expected: bytes, new: bytes) -> None:
        super().__init__(key, name)
        self.expected, self.new = expected, new
        self.compared: tuple[str, bytes] = ("v", expected)

    def request(self) -> tuple[str, Sequence[Any]]:
        kind, compared = self.compared
        return "cond", (self.name, kind, compared, self.new, "1")

    def foresee(self, ahead: Ahead) -> None:
        ahead[self.key, self.name] = self.new

    def answer(self, reply: list[Any]) -> None:
        status = reply[0]
        if status == b"ok":
            self.finish(True, reply[1], {self.name: self.new})
        elif status == b"m":
            self.finish(False)
        else:
            current = reply[2] if status == b"l" else reply[1]
            if not cas_equal(current, self.expected):
                self.finish(False)
            else:
                self.compared = ("l", reply[1]) if status == b"l" else ("v", current)


def prepare(op: str, args: Sequence[Any], guesses: Guesses) -> Call:
    """The call of ``op`` (remote.py's names) with ``args`` as ``Store``'s method takes them."""
    if op == "incr":
        key, name, by = args
        return Incr(key, name, by, guesses)
    return _CALLS[op](*args)  # type: ignore[no-any-return]


_CALLS: dict[str, Any] = {
    "open": Open,
    "get": Get,
    "set": Set,
    "del": Delete,
    "update": Update,
    "setdefault": SetDefault,
    "pop": Pop,
    "append": Append,
    "cas": Cas,
    "snapshot": Snapshot,
    "snapshot_in_order": SnapshotInOrder,
}
