"""``Namespace``: the blocking proxy, a thin shell over sync transports.

``ns.x``, ``ns.x = v`` and ``del ns.x`` are one round trip each on the calling thread's
transport to the server (``blocking.py``); what each operation sends and how its answer is
read is ``calls.py``'s. Watches get a transport of their own; cached reads go through the
process's cache connection (``cache.py``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from types import TracebackType
from typing import Any

from .._errors import ConnectionLost
from ..protocol.codec import decode_values
from . import calls
from .blocking import POOL, open_transport
from .cache import ABSENT, NOT_VALUES, NOTHING_CACHED, entry_value
from .locks import Lock
from .proxy import ProxyBase, Target, check_attribute_name, format_namespace
from .tracking import CACHES, CacheConnection

__all__ = ["Namespace", "Watch"]


class Watch:
    """An iterator of ``WatchEvent`` on a dedicated connection (see ``Namespace._watch``).

    ``revision`` is the namespace revision the watch started at; ``values`` the watched
    attributes at that revision (empty when resuming with ``since``).
    """

    def __init__(self, target: Target, names: tuple[str, ...], since: int | None) -> None:
        call = calls.watch(target.key, names, since)
        self._transport = open_transport(target)
        try:
            self._id, revision, values = self._transport.call(*call)
        except BaseException:
            self._transport.close()
            raise
        self._epoch = self._transport.epoch
        self.revision = calls.revision(revision, self._epoch)
        self.values = decode_values(values)

    def next(self, timeout: float | None = None) -> calls.WatchEvent:
        """The next change; TimeoutError if none comes within ``timeout`` seconds."""
        push = self._transport.next_push(timeout)
        return calls.event_from_push(push.name, push.revision, push.value, self._epoch)

    def __iter__(self) -> Watch:
        return self

    def __next__(self) -> calls.WatchEvent:
        return self.next()

    def close(self) -> None:
        """Stop watching: closes the watch's transport."""
        self._transport.close()

    def __enter__(self) -> Watch:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __del__(self) -> None:
        transport = getattr(self, "_transport", None)
        if transport is not None:
            transport.close()


class _State:
    """A proxy's target, its server's per-thread transports (``local``, the pool's), and with
    a cache, its connection and its namespace's cached entries (``values``: the dict that
    connection's table keeps for the namespace, emptied in place when the connection is lost
    or the process forks; ``NOTHING_CACHED`` until then)."""

    __slots__ = ("cache", "local", "target", "values")

    def __init__(self, target: Target) -> None:
        self.target = target
        self.local = POOL.local(target)
        self.cache: CacheConnection | None = None
        self.values: dict[str, Any] = NOTHING_CACHED


def _read_cached(state: _State, name: str) -> Any:
    """A cached proxy's read that found nothing in its namespace's dict: through the process's
    cache connection (a new one if that was lost, or made before a fork), whose dict for the
    namespace the next reads then look in."""
    cache = state.cache = CACHES.connection(state.target)
    key = state.target.key
    try:
        return cache.get(key, name)
    finally:
        state.values = cache.namespace(key)


# The closures a read may need are made in these, not in ``__getattribute__``: a variable a
# closure captures is a cell, made afresh on every call of the function that holds it.


def _read_through_cache(proxy: Namespace, state: _State, name: str) -> Any:
    return proxy._retrying("get", lambda: _read_cached(state, name))


def _retry_get(proxy: Namespace, target: Target, name: str, failed: ConnectionLost) -> Any:
    get = (target.key, name)
    return proxy._retrying("get", lambda: POOL.transport(target).call(calls.GET, get), failed)


#: A proxy's state, read from its slot without going through ``__getattribute__``.
_STATE: Callable[[ProxyBase], _State] = ProxyBase.__dict__["_aionamespace"].__get__


class Namespace(ProxyBase):
    """A blocking proxy to a namespace on an aionamespace server.

    ``ns.x``, ``ns.x = v`` and ``del ns.x`` are round trips to the server; names starting with
    ``_`` stay on this proxy. Usually made by ``Manager.Namespace()``; to reach a namespace
    directly: ``Namespace(address, name=None, authkey=None)`` (``name=None`` creates a new
    anonymous one on the server, one round trip).
    """

    __slots__ = ()

    def _attach(self, target: Target) -> None:
        object.__setattr__(self, "_aionamespace", _State(target))

    def _retrying(
        self, op: str, attempt: Callable[[], Any], failed: ConnectionLost | None = None
    ) -> Any:
        """``attempt()``, again after a lost connection when the retry policy allows
        (``failed``: the first attempt, made by a fast path, already failed so)."""
        retry = self._aionamespace.target.retry
        failures = 0
        while True:
            if failed is not None:
                failures += 1
                delay = retry.delay(op, failures, failed)
                if delay is None:
                    raise failed
                time.sleep(delay)  # back off before reconnecting (not synchronisation)
            try:
                return attempt()
            except ConnectionLost as exc:
                failed = exc

    def _run(self, call: calls.Call) -> Any:
        """Send ``call`` on this thread's transport, retrying as the target's policy says."""
        state = _STATE(self)  # not self._aionamespace: that is a Python call, here
        target = state.target
        operation, args = call
        if target.cache and operation.changes:
            return self._write_cached(operation, args)
        try:  # the first attempt without a closure: the hot path (sets; see __getattribute__)
            transport = getattr(state.local, "transport", None)
            if transport is None or transport.closed:
                transport = POOL.transport(target)
            return transport.call(operation, args)
        except ConnectionLost as exc:
            return self._retrying(
                operation.op, lambda: POOL.transport(target).call(operation, args), exc
            )

    def _write_cached(self, operation: calls.Operation, args: tuple[Any, ...]) -> Any:
        """A write through a caching proxy. Its names are forgotten before it leaves, and again
        once it is acknowledged: the write goes on this thread's connection, the cache reads on
        another, so a read sent meanwhile (by any thread) may reach the server before the
        write and be answered the old value after the first forget (read-your-writes)."""
        target = self._aionamespace.target
        names = operation.changed(args)
        cache = CACHES.existing(target)
        if cache is not None:
            cache.forget(target.key, names)
        try:
            return POOL.transport(target).call(operation, args)
        except ConnectionLost as exc:
            return self._retrying(
                operation.op, lambda: POOL.transport(target).call(operation, args), exc
            )
        finally:
            cache = CACHES.existing(target)
            if cache is not None:
                cache.forget(target.key, names)

    @property
    def _key(self) -> str:
        return self._aionamespace.target.key  # type: ignore[no-any-return]

    def __getattribute__(self, name: str) -> Any:
        # Shared names are looked up here, not in __getattr__: that is only called after the
        # normal lookup has raised (and thrown away) an AttributeError, which would cost a
        # cached read more than its dict lookup. Everything of the proxy's own starts with "_".
        # The cached read comes first, before the name is even checked: only reads of shared
        # names are ever cached, so the namespace's dict holds no "_" name.
        try:
            state: _State = _STATE(self)
        except AttributeError:  # not attached yet: being made (ProxyBase.__init__, _rebuild)
            return object.__getattribute__(self, name)
        entry = state.values.get(name, ABSENT)
        if type(entry) not in NOT_VALUES:  # the hot path: a cached read of an immutable value
            return entry
        if entry is not ABSENT:  # a fresh copy of a mutable value, or AttributeError
            return entry_value(entry, name)
        if name[:1] == "_":
            return object.__getattribute__(self, name)
        target = state.target
        if target.cache:
            return _read_through_cache(self, state, name)
        try:  # the first attempt without _run's checks: the hot path of an uncached proxy
            # This thread's transport, read from the pool's local without a call into the pool
            # (a Python call and a lookup by a tuple: on a crowded machine, where every get
            # starts with cold caches, a large share of a get's own Python).
            transport = getattr(state.local, "transport", None)
            if transport is None or transport.closed:
                transport = POOL.transport(target)
            return transport.call(calls.GET, (target.key, name))
        except ConnectionLost as exc:
            return _retry_get(self, target, name, exc)

    def __setattr__(self, name: str, value: Any) -> None:
        check_attribute_name(name)
        if name.startswith("_"):
            object.__setattr__(self, name, value)
            return
        # Namespace._run and _STATE, not self._run and self._aionamespace: each of those
        # would go through __getattribute__, a Python call, on every set.
        Namespace._run(self, calls.set_(_STATE(self).target.key, name, value))

    def __delattr__(self, name: str) -> None:
        check_attribute_name(name)
        if name.startswith("_"):
            object.__delattr__(self, name)
            return
        self._run(calls.delete(self._key, name))

    def __str__(self) -> str:
        return format_namespace(self._run(calls.dump(self._key)))

    def _create(self, initial: dict[str, Any]) -> None:
        self._run(calls.open_(self._key, initial))  # one round trip, like the stdlib's

    def _open(self, **defaults: Any) -> None:
        """Create the namespace on the server now, giving it the ``defaults`` it lacks (an
        anonymous one exists already, or raises NamespaceGone: it is never created again)."""
        if self._aionamespace.target.anonymous:
            self._run(calls.exists(self._key))
        self._run(calls.open_(self._key, defaults))

    # ------------------------------------------------------------------ atomic operations

    def _snapshot(self, *names: str) -> calls.Snapshot:
        """All attributes (or those of ``names`` that exist), read together; ``.revision``."""
        # Namespace._run and _STATE, as in __setattr__: self._run, self._key and self._epoch
        # would each go through __getattribute__ (and _key through it twice).
        target = _STATE(self).target
        snapshot: calls.Snapshot = Namespace._run(self, calls.snapshot(target.key, names))
        snapshot.revision = calls.revision(snapshot.revision, POOL.transport(target).epoch)
        return snapshot

    def _update(self, **values: Any) -> int:
        """Set several attributes at once (one revision, all or nothing); returns it."""
        target = _STATE(self).target
        revision = Namespace._run(self, calls.update(target.key, values))
        return calls.revision(revision, POOL.transport(target).epoch)

    def _incr(self, name: str, by: int | float = 1) -> Any:
        """Add ``by`` on the server (a missing name starts at 0); returns the new value."""
        return self._run(calls.incr(self._key, name, by))

    def _append(self, name: str, *items: Any) -> int:
        """Extend a shared list in place (a missing name starts empty); returns its length."""
        return self._run(calls.append(self._key, name, items))  # type: ignore[no-any-return]

    def _setdefault(self, name: str, value: Any) -> Any:
        """Set ``name`` unless it is set; returns the value it holds afterwards."""
        return self._run(calls.setdefault(self._key, name, value))

    def _pop(self, name: str, *default: Any) -> Any:
        """Remove ``name`` and return its value (or ``default``, if given, when it is unset)."""
        try:
            return self._run(calls.pop(self._key, name))
        except AttributeError:
            if default:
                return default[0]
            raise

    def _cas(self, name: str, expected: Any, new: Any) -> bool:
        """Set ``name`` to ``new`` only if it equals ``expected`` (same type); whether it did."""
        return self._run(calls.cas(self._key, name, expected, new))  # type: ignore[no-any-return]

    # ------------------------------------------------------------------ watches and locks

    def _watch(self, *names: str, since: int | None = None) -> Watch:
        """Iterate over changes (of ``names``, or all) as the server pushes them.

        ``since=revision`` first replays what changed after that revision (HistoryExpired if
        the server no longer remembers that far). The watch has its own connection: close it
        (``with`` / ``break`` out of a ``for`` loop) when done.
        """
        return Watch(self._aionamespace.target, names, since)

    def _wait_for(
        self,
        name: str,
        predicate: Callable[[Any], bool] | None = None,
        timeout: float | None = None,
    ) -> Any:
        """Block until ``predicate(value)`` holds (or, without one, until ``name`` is set
        again) and return the value; TimeoutError after ``timeout`` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._watch(name) as watch:
            if predicate is not None and name in watch.values and predicate(watch.values[name]):
                return watch.values[name]
            while True:
                remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
                event = watch.next(timeout=remaining)
                if not event.deleted and (predicate is None or predicate(event.value)):
                    return event.value

    def _lock(self, name: str, timeout: float | None = None) -> Lock:
        """A lock shared by every process using this server: ``with ns._lock("name"):``.

        Released on exit, or by the server as soon as this connection dies (then ``LockLost``).
        ``timeout`` seconds without getting it raise TimeoutError. The object has
        ``acquire``/``release``/``locked`` too, and may be shared by threads (``locks.py``).
        """
        return Lock(self, name, timeout)

    def _keys(self) -> list[str]:
        """The keys of every namespace on this proxy's server (named and anonymous)."""
        return self._run(calls.keys())  # type: ignore[no-any-return]

    def _info(self) -> dict[str, Any]:
        """What the server holds and serves (docs/PROTOCOL.md, ``info``): a dict of figures."""
        return self._run(calls.info())  # type: ignore[no-any-return]

    def _ping(self) -> None:
        """One round trip; raises ConnectionLost if the server is unreachable."""
        self._run(calls.ping())

    def _close(self) -> None:
        """Close this thread's transport to the server (the next use reopens one)."""
        POOL.discard(self._aionamespace.target)

    def __enter__(self) -> Namespace:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._close()
