"""Atomic operations on both proxies: _incr, _update, _snapshot, _setdefault, _pop, _cas, _append.

Every scenario runs against three clients of a real server: the blocking ``Namespace``, and
``AsyncNamespace`` driven on an asyncio and on a trio event loop (through a blocking portal, so
one scenario body serves all three). Errors must name the offending type and change nothing:
the namespace's revision is compared before and after.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import decimal
import uuid
from collections.abc import Iterator
from contextlib import AbstractContextManager
from typing import Any

import anyio
import anyio.from_thread
import pytest

from aionamespace import AsyncNamespace, Namespace, ServerThread
from aionamespace.client.calls import Snapshot
from awaited_store import over_every_store

pytestmark = over_every_store  # every test here, over each kind of store

# ---------------------------------------------------------------------- one interface, 3 clients


@dataclasses.dataclass
class Client:
    """A proxy behind a blocking interface: sync calls run directly, async ones in a portal."""

    kind: str
    proxy: Namespace | AsyncNamespace
    portal: anyio.from_thread.BlockingPortal | None = None

    def __call__(self, method: str, *args: Any, **kwargs: Any) -> Any:
        """Call ``proxy.<method>(*args, **kwargs)``, awaiting it on an async proxy."""
        operation = getattr(self.proxy, method)
        if self.portal is None:
            return operation(*args, **kwargs)

        async def run() -> Any:
            return await operation(*args, **kwargs)

        return self.portal.call(run)

    def get(self, name: str) -> Any:
        if self.portal is None:
            return getattr(self.proxy, name)

        async def read() -> Any:
            return await getattr(self.proxy, name)

        return self.portal.call(read)

    def set(self, name: str, value: Any) -> None:
        setattr(self.proxy, name, value)  # queued on an async proxy: flush it
        if self.portal is not None:
            assert isinstance(self.proxy, AsyncNamespace)
            self.portal.call(self.proxy._flush)

    def revision(self) -> int:
        return int(self("_snapshot").revision)


@pytest.fixture(params=["sync", "asyncio", "trio"])
def client(request: pytest.FixtureRequest, server: ServerThread) -> Iterator[Client]:
    """A fresh anonymous namespace seen through one kind of proxy."""
    if request.param == "sync":
        ns = Namespace(server.address)
        try:
            yield Client("sync", ns)
        finally:
            ns._close()
        return
    portal_cm: AbstractContextManager[anyio.from_thread.BlockingPortal]
    portal_cm = anyio.from_thread.start_blocking_portal(request.param)
    with portal_cm as portal:
        ans = AsyncNamespace(server.address)
        try:
            yield Client(request.param, ans, portal)
        finally:
            portal.call(ans._close)


# ---------------------------------------------------------------------- _incr


def test_incr_starts_missing_names_at_zero_and_returns_the_new_value(client: Client) -> None:
    assert client("_incr", "hits") == 1
    assert client("_incr", "hits") == 2
    assert client("_incr", "hits", 10) == 12
    assert client("_incr", "hits", by=-20) == -8
    assert client.get("hits") == -8
    assert client("_incr", "fresh", 5) == 5


def test_incr_mixes_ints_and_floats_like_python(client: Client) -> None:
    assert client("_incr", "x", 0.5) == 0.5
    value = client("_incr", "x", 2)
    assert value == 2.5
    assert type(value) is float
    client.set("n", 3)
    assert type(client("_incr", "n", 1)) is int
    assert client("_incr", "n", 1.0) == 5.0
    assert type(client.get("n")) is float


def test_incr_beyond_64_bits_stays_exact(client: Client) -> None:
    client.set("big", 2**63 - 1)
    assert client("_incr", "big") == 2**63
    assert client("_incr", "big", 2**64) == 2**64 + 2**63
    assert client("_incr", "big", -(2**64 + 2**63) - 5) == -5


@pytest.mark.parametrize(
    ("held", "held_type"),
    [("text", "str"), ([1], "list"), (None, "NoneType"), (True, "bool"), ((1,), "tuple")],
)
def test_incr_of_a_non_number_raises_type_error_and_changes_nothing(
    client: Client, held: Any, held_type: str
) -> None:
    client.set("value", held)
    before = client("_snapshot")
    with pytest.raises(TypeError, match=rf"cannot increment 'value': it holds a {held_type}\b"):
        client("_incr", "value")
    after = client("_snapshot")
    assert after == before
    assert after.revision == before.revision
    assert client.get("value") == held


@pytest.mark.parametrize(
    ("by", "by_type"),
    [("x", "str"), (True, "bool"), (None, "NoneType"), ([1], "list"), (1j, "complex")],
)
def test_incr_by_a_non_number_raises_type_error_and_changes_nothing(
    client: Client, by: Any, by_type: str
) -> None:
    client.set("n", 1)
    revision = client.revision()
    with pytest.raises(TypeError, match=rf"increment by an int or a float, not {by_type}\b"):
        client("_incr", "n", by)
    with pytest.raises(TypeError, match=rf"not {by_type}\b"):
        client("_incr", "missing", by=by)
    assert client.revision() == revision
    assert client("_snapshot") == {"n": 1}


# ---------------------------------------------------------------------- _append


def test_append_extends_a_list_and_returns_its_length(client: Client) -> None:
    assert client("_append", "log", "a") == 1  # a missing name starts as []
    assert client("_append", "log", "b", "c") == 3
    assert client("_append", "log", [1, 2]) == 4  # one item, itself a list
    assert client("_append", "log", (3, 4), {"k": None}) == 6
    assert client.get("log") == ["a", "b", "c", [1, 2], (3, 4), {"k": None}]


@pytest.mark.parametrize(
    ("held", "held_type"), [("text", "str"), ((1, 2), "tuple"), (5, "int"), ({1: 2}, "dict")]
)
def test_append_to_a_non_list_raises_type_error_and_changes_nothing(
    client: Client, held: Any, held_type: str
) -> None:
    client.set("value", held)
    revision = client.revision()
    with pytest.raises(TypeError, match=rf"cannot append to 'value': it holds a {held_type}\b"):
        client("_append", "value", 1, 2)
    assert client.revision() == revision
    assert client.get("value") == held


def test_append_of_an_unshareable_item_raises_type_error_at_the_call_site(client: Client) -> None:
    client("_append", "log", 1)
    revision = client.revision()
    with pytest.raises(TypeError, match="object"):
        client("_append", "log", 2, object())
    assert client.revision() == revision
    assert client.get("log") == [1]


# ---------------------------------------------------------------------- _update and _snapshot


def test_update_sets_every_name_as_one_revision(client: Client) -> None:
    client.set("a", 0)
    before = client.revision()
    revision = client("_update", a=1, b="two", c=[3])
    assert revision == before + 1
    snapshot = client("_snapshot")
    assert snapshot == {"a": 1, "b": "two", "c": [3]}
    assert snapshot.revision == revision


def test_update_with_nothing_changes_nothing(client: Client) -> None:
    client.set("a", 1)
    revision = client.revision()
    assert client("_update") == revision
    assert client.revision() == revision


def test_update_with_an_unshareable_value_changes_nothing(client: Client) -> None:
    client("_update", a=1, b=2)
    revision = client.revision()
    with pytest.raises(TypeError, match="object"):
        client("_update", a=10, c=3, b=object())
    assert client("_snapshot") == {"a": 1, "b": 2}
    assert client.revision() == revision


def test_update_with_an_invalid_name_changes_nothing(client: Client) -> None:
    client("_update", a=1)
    revision = client.revision()
    with pytest.raises(ValueError, match="longer than"):  # refused at the call site
        client("_update", a=10, **{"n" * 1000: 2})
    assert client("_snapshot") == {"a": 1}
    assert client.revision() == revision


def test_snapshot_revision_counts_every_change_by_one(client: Client) -> None:
    empty = client("_snapshot")
    assert type(empty) is Snapshot
    assert isinstance(empty, dict)
    assert empty == {}
    assert empty.revision == 0
    steps: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = [
        ("set", ("a", 1), {}),
        ("_incr", ("a",), {}),
        ("_append", ("log", 1, 2, 3), {}),  # several items, one change
        ("_setdefault", ("b", "new"), {}),
        ("_cas", ("b", "new", "newer"), {}),
        ("_pop", ("b",), {}),
        ("_update", (), {"x": 1, "y": 2, "z": 3}),  # several names, one change
        ("_pop", ("x", None), {}),
    ]
    for revision, (method, args, kwargs) in enumerate(steps, start=1):
        if method == "set":
            client.set(*args)
        else:
            client(method, *args, **kwargs)
        assert client.revision() == revision, method
    assert client("_snapshot") == {"a": 2, "log": [1, 2, 3], "y": 2, "z": 3}


def test_snapshot_of_names_reads_only_those_that_exist(client: Client) -> None:
    client("_update", a=1, b=2, c=3)
    snapshot = client("_snapshot", "a", "c", "missing")
    assert snapshot == {"a": 1, "c": 3}
    assert snapshot.revision == 1
    assert repr(snapshot) == "Snapshot(revision=1, {'a': 1, 'c': 3})"
    assert client("_snapshot", "missing") == {}


def test_a_snapshot_of_names_held_asked_twice_or_appended_to(client: Client) -> None:
    """Each name held: a store may answer with their values in order (the Redis store's
    snapshot_in_order); a name asked twice, or a list that appends grew, takes the other way,
    and every answer is the same as a full snapshot's part."""
    client("_update", a=1, b="two")
    client("_append", "log", 1)
    client("_append", "log", 2)
    revision = client("_snapshot").revision
    for names in (["b", "a"], ["a", "a"], ["a", "b", "a"], ["log", "a"], ["a", "log"]):
        snapshot = client("_snapshot", *names)
        expected = {name: {"a": 1, "b": "two", "log": [1, 2]}[name] for name in names}
        assert snapshot == expected, names
        assert list(snapshot) == list(expected), names
        assert snapshot.revision == revision, names


EVERY_TYPE: dict[str, Any] = {
    "small": 7,
    "negative": -33,
    "wide": 2**64 - 1,
    "big": -(2**70),
    "float": 0.1,
    "none": None,
    "true": True,
    "text": "é" * 40,
    "blob": b"\x00\xff" * 50,
    "array": bytearray(b"ab"),
    "list": [1, [2, "x"]],
    "tuple": (1, (2, 3)),
    "set": {1, 2},
    "frozenset": frozenset({"a", (1, 2)}),
    "dict": {"a": {1: (2,)}, 3: None},
    "complex": 1.5 - 2j,
    "when": dt.datetime(2026, 11, 25, 12, 0, tzinfo=dt.timezone.utc),
    "day": dt.date(2026, 11, 25),
    "time": dt.time(1, 2, 3, 4),
    "span": dt.timedelta(1, 2, 3),
    "decimal": decimal.Decimal("-1.5E+7"),
    "uuid": uuid.UUID(int=7),
}


def test_a_snapshot_of_names_brings_every_type_back_exactly(client: Client) -> None:
    """The values of a snapshot of names travel as one array (snapshot_packed): each comes back
    equal, of its own type, in whatever order and number the names were asked."""
    revision = client("_update", **EVERY_TYPE)
    for names in (list(EVERY_TYPE), list(reversed(EVERY_TYPE)), ["tuple", "missing", "tuple"]):
        snapshot = client("_snapshot", *names)
        expected = {name: EVERY_TYPE[name] for name in names if name in EVERY_TYPE}
        assert snapshot == expected
        assert list(snapshot) == list(expected)
        assert {n: type(v) for n, v in snapshot.items()} == {
            n: type(v) for n, v in expected.items()
        }
        assert snapshot.revision == revision


def test_a_snapshot_holding_a_large_value_reads_it_whole(client: Client) -> None:
    """Values adding up to 64 KiB or more are answered as snapshot's map, not copied into one
    array: the reader takes either."""
    big = bytes(range(256)) * 300
    client("_update", big=big, small=1)
    assert client("_snapshot", "small", "big") == {"small": 1, "big": big}
    assert client("_snapshot", "small") == {"small": 1}


def test_changes_that_fail_or_find_nothing_do_not_count(client: Client) -> None:
    client.set("a", 1)
    assert client.revision() == 1
    assert client("_setdefault", "a", 2) == 1  # existing: no change
    assert client("_cas", "a", 99, 2) is False
    assert client("_cas", "missing", None, 2) is False
    assert client("_pop", "missing", "default") == "default"
    with pytest.raises(AttributeError):
        client("_pop", "missing")
    assert client.revision() == 1


# ---------------------------------------------------------------------- _setdefault and _pop


def test_setdefault_sets_a_new_name_and_keeps_an_existing_one(client: Client) -> None:
    assert client("_setdefault", "a", [1]) == [1]
    assert client.get("a") == [1]
    assert client("_setdefault", "a", [2]) == [1]
    assert client.get("a") == [1]
    client.set("none", None)
    assert client("_setdefault", "none", 5) is None  # None is a value, not "unset"
    assert client.get("none") is None


def test_pop_returns_and_removes_or_gives_the_default(client: Client) -> None:
    client.set("a", (1, "x"))
    assert client("_pop", "a") == (1, "x")
    with pytest.raises(AttributeError, match="'Namespace' object has no attribute 'a'"):
        client.get("a")
    with pytest.raises(AttributeError, match="'a'"):
        client("_pop", "a")
    assert client("_pop", "a", None) is None
    assert client("_pop", "a", 0) == 0
    default: list[int] = []
    assert client("_pop", "a", default) == []
    client.set("b", False)
    assert client("_pop", "b", "default") is False  # a falsy value is still a value


# ---------------------------------------------------------------------- _cas


def test_cas_swaps_only_on_an_equal_value_of_the_same_type(client: Client) -> None:
    client.set("n", 1)
    assert client("_cas", "n", 1.0, "float") is False
    assert client("_cas", "n", True, "bool") is False
    assert client.get("n") == 1
    assert client("_cas", "n", 1, 2) is True
    assert client.get("n") == 2

    client.set("f", 1.0)
    assert client("_cas", "f", 1, "int") is False
    assert client("_cas", "f", True, "bool") is False
    assert client("_cas", "f", 1.0, 1.5) is True
    assert client.get("f") == 1.5

    client.set("t", True)
    assert client("_cas", "t", 1, "int") is False
    assert client("_cas", "t", 1.0, "float") is False
    assert client("_cas", "t", True, False) is True
    assert client.get("t") is False


def test_cas_compares_containers_by_value_and_type(client: Client) -> None:
    client.set("v", [1, 2])
    assert client("_cas", "v", (1, 2), "tuple") is False
    assert client("_cas", "v", [1, 3], "other") is False
    assert client("_cas", "v", [1, 2], {"k": (1,)}) is True
    assert client("_cas", "v", {"k": [1]}, "list inside") is False
    assert client("_cas", "v", {"k": (1,)}, None) is True
    assert client.get("v") is None
    assert client("_cas", "v", None, 0) is True  # None held is a value to compare with


def test_cas_on_a_missing_name_is_false_and_creates_nothing(client: Client) -> None:
    assert client("_cas", "missing", None, 1) is False
    assert client("_cas", "missing", 0, 1) is False
    assert client("_snapshot") == {}


def test_cas_with_an_unshareable_value_raises_type_error(client: Client) -> None:
    client.set("a", 1)
    with pytest.raises(TypeError, match="object"):
        client("_cas", "a", 1, object())
    assert client.get("a") == 1


# ---------------------------------------------------------------------- the same data, two proxies


def test_sync_and_async_proxies_share_one_namespace(server: ServerThread) -> None:
    sync = Namespace(server.address, "shared")

    async def main() -> None:
        async with AsyncNamespace(server.address, "shared") as ans:
            assert await ans._incr("n") == 1
            assert sync._incr("n") == 2
            assert await ans._append("log", "async") == 1
            assert sync._append("log", "sync") == 2
            revision = await ans._update(a=1, b=2)
            snapshot = sync._snapshot()
            assert snapshot == {"n": 2, "log": ["async", "sync"], "a": 1, "b": 2}
            assert snapshot.revision == revision

    try:
        anyio.run(main, backend="trio")
    finally:
        sync._close()


@pytest.mark.anyio
async def test_concurrent_incr_tasks_on_one_async_proxy_lose_nothing(server: ServerThread) -> None:
    async with AsyncNamespace(server.address) as ns:
        results: list[int] = []

        async def bump(times: int) -> None:
            for _ in range(times):
                results.append(await ns._incr("n"))

        async with anyio.create_task_group() as group:
            for _ in range(20):
                group.start_soon(bump, 50)
        assert sorted(results) == list(range(1, 1001))  # every value returned exactly once
        assert await ns.n == 1000
        assert (await ns._snapshot()).revision == 1000


@pytest.mark.anyio
async def test_async_errors_leave_the_proxy_usable(server: ServerThread) -> None:
    async with AsyncNamespace(server.address) as ns:
        ns.text = "x"
        with pytest.raises(TypeError, match="holds a str"):
            await ns._incr("text")
        with pytest.raises(TypeError, match="not str"):
            await ns._incr("n", by="x")
        with pytest.raises(TypeError, match="holds a str"):
            await ns._append("text", 1)
        assert await ns._incr("n") == 1
        assert await ns._snapshot() == {"text": "x", "n": 1}
