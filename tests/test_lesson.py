"""The stdlib Namespace lesson (shared/reference/namespace-lesson.txt), ours beside the stdlib's.

Every lesson program runs twice, once on ``aionamespace.Manager().Namespace()`` and once on
``multiprocessing.managers.SyncManager().Namespace()``, in real spawned or forked processes: the
point is not only that ours works but that it behaves exactly as the stdlib does. Children report
what they saw through a multiprocessing queue; the parent asserts on it.

The child functions are module-level so that spawned children can import them by name.
"""

from __future__ import annotations

import multiprocessing
import pickle
from collections.abc import Callable, Iterator
from multiprocessing.managers import SyncManager
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aionamespace import Manager, Namespace
from aionamespace.protocol.connection import format_address
from child_processes import Reports, run_child

MISSING_MESSAGE = "'Namespace' object has no attribute 'missing'"

# Python 3.12+ warns when forking a multi-threaded process; our fork tests fork on purpose.
allow_fork = pytest.mark.filterwarnings(
    "ignore:This process .* is multi-threaded:DeprecationWarning"
)


# ---------------------------------------------------------------------- the lesson's children


def process1(ns: Any, report: Any) -> None:
    print(ns.item)
    report.put(("process1", ns.item))
    ns.item = "educative"


def process2(ns: Any, report: Any) -> None:
    print(ns.item)
    report.put(("process2", ns.item))
    ns.item = "educative is awesome !"


def read_underscore(ns: Any, report: Any) -> None:
    try:
        value = ns._item
    except AttributeError as exc:
        report.put(("AttributeError", str(exc)))
    else:
        print(value)
        report.put(("value", value))


# ---------------------------------------------------------------------- fixtures and helpers


@pytest.fixture(scope="module")
def stdlib_manager() -> Iterator[SyncManager]:
    """The stdlib's manager, the reference every behaviour here is compared with."""
    with SyncManager(ctx=multiprocessing.get_context("spawn")) as running:
        yield running


NamespaceFactory = Callable[..., Any]


@pytest.fixture(params=["aionamespace", "stdlib"])
def make_namespace(request: pytest.FixtureRequest, manager: Manager) -> NamespaceFactory:
    """``Manager.Namespace`` of ours or of the stdlib: the lesson must not tell them apart."""
    if request.param == "stdlib":
        stdlib: SyncManager = request.getfixturevalue("stdlib_manager")
        return stdlib.Namespace
    return manager.Namespace


@pytest.fixture
def spawn_reports() -> Iterator[Reports]:
    reports = Reports(multiprocessing.get_context("spawn"))
    yield reports
    reports.close()


# ---------------------------------------------------------------------- the three programs


def test_spawned_processes_share_attributes(
    make_namespace: NamespaceFactory, spawn_reports: Reports, capfd: pytest.CaptureFixture[str]
) -> None:
    """Program 1: two spawned children read and overwrite ``item`` in turn."""
    spawn = multiprocessing.get_context("spawn")
    shared_vars = make_namespace()
    shared_vars.item = "empty"

    assert run_child(spawn, process1, shared_vars, spawn_reports.queue) == 0
    assert run_child(spawn, process2, shared_vars, spawn_reports.queue) == 0

    assert spawn_reports.get() == ("process1", "empty")
    assert spawn_reports.get() == ("process2", "educative")
    assert shared_vars.item == "educative is awesome !"
    # What the lesson's children print, in the order the lesson shows.
    assert capfd.readouterr().out.splitlines() == ["empty", "educative"]


def test_underscore_attribute_is_not_seen_by_a_spawned_child(
    make_namespace: NamespaceFactory, spawn_reports: Reports
) -> None:
    """Program 2: ``_item`` lives on the parent's proxy; a spawned child's proxy lacks it."""
    shared_vars = make_namespace()
    shared_vars._item = "empty"

    assert (
        run_child(
            multiprocessing.get_context("spawn"), read_underscore, shared_vars, spawn_reports.queue
        )
        == 0
    )

    kind, message = spawn_reports.get()
    assert kind == "AttributeError"
    assert "_item" in message
    assert shared_vars._item == "empty"  # the parent's proxy still has it
    assert "_item" not in str(shared_vars)


@allow_fork
def test_underscore_attribute_is_seen_by_a_forked_child(make_namespace: NamespaceFactory) -> None:
    """Program 3: a forked child copies the parent's memory, ``_item`` included."""
    if "fork" not in multiprocessing.get_all_start_methods():
        pytest.skip("no fork on this platform")
    fork = multiprocessing.get_context("fork")
    shared_vars = make_namespace()
    shared_vars._item = "empty"
    reports = Reports(fork)
    try:
        assert run_child(fork, read_underscore, shared_vars, reports.queue) == 0
        assert reports.get() == ("value", "empty")
    finally:
        reports.close()


# ---------------------------------------------------------------------- Namespace behaviour


def test_set_get_overwrite_delete(make_namespace: NamespaceFactory) -> None:
    ns = make_namespace()
    ns.a = 1
    ns.b = "x"
    assert (ns.a, ns.b) == (1, "x")
    ns.a = [1, 2]
    assert ns.a == [1, 2]
    del ns.a
    assert not hasattr(ns, "a")
    assert hasattr(ns, "b")
    assert ns.b == "x"


def test_missing_names(make_namespace: NamespaceFactory) -> None:
    ns = make_namespace()
    assert not hasattr(ns, "missing")
    assert getattr(ns, "missing", "default") == "default"
    with pytest.raises(AttributeError) as read_error:
        _ = ns.missing
    assert str(read_error.value) == MISSING_MESSAGE
    with pytest.raises(AttributeError):
        del ns.missing


def test_str_is_sorted_and_hides_underscore_names(make_namespace: NamespaceFactory) -> None:
    ns = make_namespace()
    assert str(ns) == "Namespace()"
    ns.b = "x"
    ns.a = 1
    ns._local = "not shared"
    assert str(ns) == "Namespace(a=1, b='x')"


def test_initial_values_and_underscore_initial_values(make_namespace: NamespaceFactory) -> None:
    """``Namespace(**initial)``: an underscore initial is stored but never shown nor reachable."""
    ns = make_namespace(b=2, a="one", _hidden=3)
    assert str(ns) == "Namespace(a='one', b=2)"
    assert (ns.a, ns.b) == ("one", 2)
    assert not hasattr(ns, "_hidden")


def test_underscore_names_stay_on_the_proxy(make_namespace: NamespaceFactory) -> None:
    ns = make_namespace()
    ns._note = "local"
    assert ns._note == "local"
    assert "_note" in vars(ns)
    del ns._note
    assert not hasattr(ns, "_note")
    with pytest.raises(AttributeError):
        del ns._note


def test_str_matches_the_stdlib_for_the_same_attributes(
    manager: Manager, stdlib_manager: SyncManager
) -> None:
    ours, theirs = manager.Namespace(), stdlib_manager.Namespace()
    attributes: dict[str, Any] = {
        "b": "x",
        "a": 1,
        "a_b": (1, "2"),
        "A": None,
        "ab": [1.5, -0.0],
        "Z9": {"k": b"v"},
        "flag": True,
        "big": 2**80,
    }
    for name, value in attributes.items():
        setattr(ours, name, value)
        setattr(theirs, name, value)
    ours._local = theirs._local = "hidden"
    assert str(ours) == str(theirs)
    assert str(ours).startswith("Namespace(A=None, Z9={'k': b'v'}, a=1, a_b=(1, '2'), ab=")


names = st.from_regex(r"[A-Za-z][A-Za-z0-9_]{0,6}", fullmatch=True)
scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False)
    | st.text(max_size=8)
    | st.binary(max_size=8)
)
values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.lists(inner, max_size=3).map(tuple)
        | st.dictionaries(st.text(max_size=4), inner, max_size=3)
    ),
    max_leaves=6,
)


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(attributes=st.dictionaries(names, values, max_size=6))
def test_str_matches_the_stdlib_for_any_attributes(
    manager: Manager, stdlib_manager: SyncManager, attributes: dict[str, Any]
) -> None:
    ours, theirs = manager.Namespace(**attributes), stdlib_manager.Namespace(**attributes)
    assert str(ours) == str(theirs)
    assert {name: getattr(ours, name) for name in attributes} == attributes


def test_repr_names_the_class_and_the_address(manager: Manager) -> None:
    anonymous = manager.Namespace()
    named = manager.Namespace("lesson-board")
    address = format_address(manager.address)
    for ns in (anonymous, named):
        assert repr(ns).startswith("<aionamespace.Namespace ")
        assert repr(address) in repr(ns)
    assert "anonymous" in repr(anonymous)
    assert "'lesson-board'" in repr(named)


def test_two_proxies_of_one_namespace_share_attributes_but_not_locals(manager: Manager) -> None:
    ns = manager.Namespace()
    ns.item = "empty"
    ns._item = "local"
    twin = pickle.loads(pickle.dumps(ns))
    assert isinstance(twin, Namespace)
    assert twin.item == "empty"
    assert not hasattr(twin, "_item")
    twin.item = "educative"
    assert ns.item == "educative"
