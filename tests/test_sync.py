"""Namespace (the blocking proxy): attribute semantics, errors at the call site, pickling."""

from __future__ import annotations

import pickle

import pytest

from aionamespace import Namespace, ServerThread


@pytest.fixture
def ns(server: ServerThread) -> Namespace:
    proxy = Namespace(server.address)
    yield proxy  # type: ignore[misc]
    proxy._close()


def test_values_are_copies_like_the_stdlib(ns: Namespace) -> None:
    ns.log = [1]
    ns.log.append(2)  # changes a local copy only: the mutable-value trap
    assert ns.log == [1]
    log = ns.log
    log.append(2)
    ns.log = log  # the stdlib's fix: read, modify, write back
    assert ns.log == [1, 2]


def test_unserialisable_value_raises_type_error_naming_the_type(ns: Namespace) -> None:
    class Custom:
        pass

    ns.value = "before"
    with pytest.raises(TypeError, match="Custom"):
        ns.value = Custom()
    with pytest.raises(TypeError, match="memoryview"):
        ns.value = [memoryview(b"x")]
    assert ns.value == "before"


def test_missing_names_follow_attribute_rules(ns: Namespace) -> None:
    assert getattr(ns, "nothing", "default") == "default"
    assert not hasattr(ns, "nothing")
    with pytest.raises(AttributeError, match="'Namespace' object has no attribute 'nothing'"):
        _ = ns.nothing
    with pytest.raises(AttributeError):
        del ns.nothing


def test_underscore_names_stay_on_the_proxy(server: ServerThread, ns: Namespace) -> None:
    ns._mine = "local"
    ns.shared = "remote"
    other = Namespace(server.address, ns._aionamespace.target.key)
    assert other.shared == "remote"
    assert not hasattr(other, "_mine")
    assert str(ns) == "Namespace(shared='remote')"
    del ns._mine
    assert not hasattr(ns, "_mine")
    other._close()


def test_pickle_carries_the_target_not_local_attributes(ns: Namespace) -> None:
    ns.a = 1
    ns._local = "stays here"
    clone = pickle.loads(pickle.dumps(ns))
    assert type(clone) is Namespace
    assert clone.a == 1
    assert not hasattr(clone, "_local")
    assert repr(clone) == repr(ns)


def test_repr_says_what_and_where(server: ServerThread) -> None:
    named = Namespace(server.address, "board")
    assert repr(named).startswith("<aionamespace.Namespace 'board' at ")
    assert "anonymous" in repr(Namespace(server.address))


def test_str_matches_the_stdlib_format(ns: Namespace) -> None:
    ns.b = "x"
    ns.a = 1
    ns.c = (1, 2)
    assert str(ns) == "Namespace(a=1, b='x', c=(1, 2))"


def test_invalid_names_are_refused_clearly(server: ServerThread, ns: Namespace) -> None:
    with pytest.raises(ValueError, match="longer than"):
        setattr(ns, "n" * 1000, 1)
    with pytest.raises(ValueError, match="empty"):
        Namespace(server.address, "")


def test_open_fills_only_missing_names(server: ServerThread) -> None:
    first = Namespace(server.address, "defaults")
    first._open(a=1, b=2)
    first.a = 10
    second = Namespace(server.address, "defaults")
    second._open(a=100, c=3)
    assert second._snapshot() == {"a": 10, "b": 2, "c": 3}
