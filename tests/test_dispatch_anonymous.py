"""Anonymous namespaces through the ``Dispatcher``, on a ``ManualClock``: created by ``open``
alone, kept while a connection that used one is open and for ``anonymous_grace`` seconds after
the last one leaves, then freed; a request naming one the server does not hold gets
``NamespaceGone`` and creates nothing. Named namespaces are never freed. ``max_namespaces``
bounds them all with ``LimitExceeded``.
"""

from __future__ import annotations

import pytest

from aionamespace import Limits
from dispatch_rig import ONE, TWO, Rig, failed, ok
from memory_peer import MemoryPeer

GRACE = 30.0
KEY = "#" + "5e" * 16
GONE = (
    f"the anonymous namespace {KEY!r} is not on this server: it was freed after no connection "
    f"used it for {GRACE:g} seconds (Limits.anonymous_grace), or never created"
)


@pytest.fixture
def rig() -> Rig:
    return Rig(limits=Limits(anonymous_grace=GRACE))


def gone(request_id: int) -> list[object]:
    return failed(request_id, "NamespaceGone", GONE)


def leave(rig: Rig, peer: MemoryPeer) -> None:
    rig.dispatcher.connection_lost(peer)


@pytest.mark.parametrize(
    "request_",
    [
        ["get", KEY, "x"],
        ["set", KEY, "x", ONE],
        ["del", KEY, "x"],
        ["dump", KEY],
        ["snapshot", KEY, None],
        ["update", KEY, {"x": ONE}],
        ["setdefault", KEY, "x", ONE],
        ["pop", KEY, "x"],
        ["incr", KEY, "x", ONE],
        ["append", KEY, "x", [ONE]],
        ["cas", KEY, "x", ONE, TWO],
        ["watch", KEY, None, None],
        ["acquire", KEY, "L", b"t", None],
        ["release", KEY, "L", b"t"],
    ],
    ids=lambda request: str(request[0]),
)
def test_any_op_but_open_on_an_anonymous_key_not_held_is_namespace_gone(
    rig: Rig, request_: list[object]
) -> None:
    peer = rig.connect()
    assert rig.send(peer, [1, *request_]) == [gone(1)]
    assert rig.send(peer, [2, "keys"]) == [ok(2, [])]  # nothing was created


def test_open_creates_it_and_any_connection_then_reaches_it(rig: Rig) -> None:
    creator, other = rig.connect(), rig.connect()
    assert rig.send(creator, [1, "open", KEY, {"x": ONE}]) == [ok(1)]
    assert rig.send(other, [1, "get", KEY, "x"], [2, "set", KEY, "y", TWO]) == [
        ok(1, ONE),
        ok(2, 2),
    ]
    assert rig.send(creator, [2, "keys"]) == [ok(2, [KEY])]


def test_kept_while_a_connection_that_used_it_is_open(rig: Rig) -> None:
    creator, user = rig.connect(), rig.connect()
    rig.send(creator, [1, "open", KEY, {}])
    rig.send(user, [1, "set", KEY, "x", ONE])
    leave(rig, creator)
    rig.clock.advance(GRACE * 100)  # the user never left
    assert rig.send(user, [2, "get", KEY, "x"]) == [ok(2, ONE)]


def test_freed_once_no_connection_used_it_for_the_grace_period(rig: Rig) -> None:
    creator = rig.connect()
    rig.send(creator, [1, "open", KEY, {"x": ONE}])
    leave(rig, creator)
    rig.clock.advance(GRACE - 1)
    latecomer = rig.connect()  # a proxy in transit arrives during the grace
    assert rig.send(latecomer, [1, "get", KEY, "x"]) == [ok(1, ONE)]
    rig.clock.advance(GRACE * 2)  # its use cancelled the end: kept while it is connected
    leave(rig, latecomer)
    rig.clock.advance(GRACE - 1)
    assert rig.store.keys() == [KEY]
    rig.clock.advance(1)
    assert rig.store.keys() == []
    assert rig.clock.pending == 0
    too_late = rig.connect()
    assert rig.send(too_late, [1, "get", KEY, "x"], [2, "set", KEY, "x", TWO]) == [
        gone(1),
        gone(2),
    ]
    assert rig.store.keys() == []  # never silently re-created


def test_a_request_that_got_namespace_gone_does_not_make_a_user(rig: Rig) -> None:
    peer = rig.connect()
    rig.send(peer, [1, "get", KEY, "x"])
    rig.send(peer, [2, "open", KEY, {}])  # created now: this peer uses it
    leave(rig, peer)
    rig.clock.advance(GRACE)
    assert rig.store.keys() == []


def test_several_users_the_grace_period_starts_when_the_last_leaves(rig: Rig) -> None:
    peers = [rig.connect() for _ in range(3)]
    rig.send(peers[0], [1, "open", KEY, {}])
    for peer in peers[1:]:
        rig.send(peer, [1, "get", KEY, "missing"], [2, "dump", KEY])  # two uses, one user
    for peer in peers[:2]:
        leave(rig, peer)
    rig.clock.advance(GRACE * 2)
    assert rig.store.keys() == [KEY]
    leave(rig, peers[2])
    rig.clock.advance(GRACE)
    assert rig.store.keys() == []


def test_open_again_after_it_was_freed_is_a_new_namespace(rig: Rig) -> None:
    peer = rig.connect()
    rig.send(peer, [1, "open", KEY, {"x": ONE}])
    leave(rig, peer)
    rig.clock.advance(GRACE)
    peer = rig.connect()
    assert rig.send(peer, [1, "open", KEY, {}], [2, "dump", KEY]) == [ok(1), ok(2, {})]


def test_named_namespaces_are_never_freed(rig: Rig) -> None:
    peer = rig.connect()
    rig.send(peer, [1, "set", "board", "x", ONE], [2, "open", "empty", {}])
    leave(rig, peer)
    rig.clock.advance(GRACE * 1000)
    assert rig.store.keys() == ["board", "empty"]
    assert rig.clock.pending == 0


def test_a_store_holding_anonymous_namespaces_already_frees_them_unless_used() -> None:
    rig = Rig(limits=Limits(anonymous_grace=GRACE))
    rig.send(
        rig.connect(), [1, "open", KEY, {}], [2, "open", "#used", {}], [3, "set", "n", "x", ONE]
    )
    restarted = Rig(store=rig.store, limits=Limits(anonymous_grace=GRACE))
    peer = restarted.connect()
    assert restarted.send(peer, [1, "dump", "#used"]) == [ok(1, {})]
    restarted.clock.advance(GRACE)
    assert restarted.store.keys() == ["#used", "n"]


def test_max_namespaces_bounds_named_and_anonymous_ones() -> None:
    rig = Rig(limits=Limits(max_namespaces=2, anonymous_grace=GRACE))
    peer = rig.connect()
    assert rig.send(peer, [1, "set", "a", "x", ONE], [2, "open", KEY, {}]) == [ok(1, 1), ok(2)]
    limit = (
        "the server holds 2 namespaces, its limit (Limits.max_namespaces): {!r} cannot be created"
    )
    assert rig.send(
        peer,
        [3, "set", "b", "x", ONE],
        [4, "open", "#" + "0" * 32, {}],
        [5, "update", "c", {}],
        [6, "set", "a", "y", TWO],  # the namespaces held still take writes
        [7, "get", "b", "x"],  # (a read never creates)
    ) == [
        failed(3, "LimitExceeded", limit.format("b")),
        failed(4, "LimitExceeded", limit.format("#" + "0" * 32)),
        failed(5, "LimitExceeded", limit.format("c")),
        ok(6, 2),
        failed(7, "AttributeError", "'Namespace' object has no attribute 'x'"),
    ]
    assert rig.store.keys() == ["#5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e", "a"]
    leave(rig, peer)
    rig.clock.advance(GRACE)  # the anonymous one is freed: room for one more
    assert rig.send(rig.connect(), [1, "set", "b", "x", ONE]) == [ok(1, 1)]
