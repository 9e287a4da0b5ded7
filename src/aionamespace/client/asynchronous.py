"""``AsyncNamespace``: the awaitable proxy, a thin shell over an async transport.

``await ns.x`` reads; ``ns.x = v`` and ``del ns.x`` cannot await, so they are encoded at once
(a bad value raises ``TypeError`` right there) and queued, in order, on the proxy's request
table; ``await ns._flush()`` waits for their acknowledgements. How many tasks share one
connection is the transport's business (``pipelined.py`` and its subclasses); what each
operation means is ``calls.py``'s.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from types import TracebackType
from typing import Any

import anyio

from ..protocol.codec import decode_values
from . import calls
from .asyncio_transport import AsyncioTransport
from .cache import ABSENT, NOT_VALUES, entry_value
from .locks import AsyncLock
from .pipelined import AsyncState, PipelinedTransport
from .proxy import ProxyBase, Target, check_attribute_name
from .requests import RequestTable
from .stream_transport import StreamTransport

__all__ = ["AsyncNamespace", "AsyncWatch"]


def _new_transport(state: AsyncState) -> PipelinedTransport:
    """A transport for the running event loop: asyncio's protocol callbacks on plain asyncio
    sockets, a reader task on plain trio sockets, an anyio stream for TLS, or what the
    address opens (a loopback)."""
    if state.target.in_process is not None:
        return state.target.in_process.async_transport(state)
    if state.target.ssl_context is not None:
        return StreamTransport(state)
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:  # trio (anyio runs on nothing else), an optional dependency
        from .trio_transport import TrioTransport

        return TrioTransport(state)
    return AsyncioTransport(state, loop)


def _state(target: Target) -> AsyncState:
    return AsyncState(RequestTable(target), _new_transport)


#: A proxy's state, read from its slot without going through ``__getattribute__``.
_STATE: Callable[[ProxyBase], AsyncState] = ProxyBase.__dict__["_aionamespace"].__get__


async def _cached(value: Any) -> Any:
    """``await ns.x`` of an immutable value found in the cache."""
    return value


async def _cached_entry(entry: Any, name: str) -> Any:
    """``await ns.x`` of another entry found in the cache: a fresh copy of a mutable value, or
    AttributeError (raised by the await, as for a read through the server)."""
    return entry_value(entry, name)


async def _read_cached(state: AsyncState, name: str) -> Any:
    """``await ns.x`` with a cache, when the namespace's dict the proxy holds had nothing: from
    the cache if the pump keeps it current (the dict held may have been let go), else a
    request."""
    transport = state.bound()
    entry = transport.cached(state.key, name)
    if entry is not ABSENT:
        return entry_value(entry, name)
    return await transport.call(calls.GET, (state.key, name))


class AsyncNamespace(ProxyBase):
    """An awaitable proxy: ``await ns.x``; ``ns.x = v`` and ``del ns.x`` are queued in order.

    With no name it creates a new anonymous namespace with its first queued write: await it
    (``await ns._flush()``) before handing the proxy to another process.

    ``await ns._flush()`` waits until every queued write is acknowledged and raises the first
    failure. Use ``async with ns:`` (or ``await ns._close()``) to release the connection.
    """

    __slots__ = ()
    _aionamespace: AsyncState

    def _attach(self, target: Target) -> None:
        object.__setattr__(self, "_aionamespace", _state(target))

    @property
    def _key(self) -> str:
        return self._aionamespace.key

    def _forget(self, call: calls.Call) -> None:
        cache = self._aionamespace.table.cache
        operation, args = call
        if cache is not None and operation.changes:
            cache.forget(self._key, operation.changed(args))  # read-your-writes

    async def _run(self, call: calls.Call) -> Any:
        """Run ``call``, retrying as the target's policy says."""
        self._forget(call)
        return await self._aionamespace.transport.call(*call)

    def _queue(self, call: calls.Call) -> None:
        self._forget(call)
        self._aionamespace.transport.write(*call)

    # ------------------------------------------------------------------ attribute protocol

    def __getattribute__(self, name: str) -> Any:
        # Shared names are answered here, not in __getattr__, which only runs after the normal
        # lookup has raised (and thrown away) an AttributeError, an exception per read.
        # The proxy's own attributes all start with "_" (it has no public ones to shadow).
        # ``ns.x`` is the transport's coroutine itself (not an awaitable object wrapping it,
        # one more frame per read); forgetting the await draws the "never awaited" warning.
        # The cached read comes first, before the name is even checked: only reads of shared
        # names are ever cached, so the namespace's dict holds no "_" name.
        try:
            state = _STATE(self)
        except AttributeError:  # not attached yet: being made (ProxyBase.__init__, _rebuild)
            return object.__getattribute__(self, name)
        entry = state.cached.get(name, ABSENT)  # NOTHING_CACHED unless the pump keeps it
        if type(entry) not in NOT_VALUES:  # the hot path: a cached immutable value
            return _cached(entry)
        if entry is not ABSENT:
            return _cached_entry(entry, name)
        if name[:1] == "_":
            return object.__getattribute__(self, name)
        if state.table.cache is None:
            return state.transport.call(calls.GET, (state.key, name))
        return _read_cached(state, name)

    def __setattr__(self, name: str, value: Any) -> None:
        check_attribute_name(name)
        if name.startswith("_"):
            object.__setattr__(self, name, value)
            return
        self._queue(calls.set_(self._key, name, value))

    def __delattr__(self, name: str) -> None:
        check_attribute_name(name)
        if name.startswith("_"):
            object.__delattr__(self, name)
            return
        self._queue(calls.delete(self._key, name))

    # ------------------------------------------------------------------ connection

    async def _flush(self) -> None:
        """Send every queued write, wait for all acknowledgements, raise the first failure."""
        await self._aionamespace.bound().flush()

    async def _close(self) -> None:
        """Flush queued writes, then close the connection (a later use reconnects)."""
        await self._aionamespace.bound().close()

    async def _info(self) -> dict[str, Any]:
        """What the server holds and serves (docs/PROTOCOL.md, ``info``): a dict of figures."""
        return await self._run(calls.info())  # type: ignore[no-any-return]

    async def _ping(self) -> None:
        """One round trip; raises ConnectionLost if the server is unreachable."""
        await self._run(calls.ping())

    async def __aenter__(self) -> AsyncNamespace:
        await self._aionamespace.bound().start_pump()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._aionamespace.transport.stop_pump()

    # ------------------------------------------------------------------ operations

    def _create(self, initial: dict[str, Any]) -> None:
        self._queue(calls.open_(self._key, initial))  # the first write: sent before any other

    async def _open(self, **defaults: Any) -> None:
        """Create the namespace on the server now, giving it the ``defaults`` it lacks (an
        anonymous one exists already, or raises NamespaceGone: it is never created again)."""
        if self._aionamespace.target.anonymous:
            await self._run(calls.exists(self._key))
        await self._run(calls.open_(self._key, defaults))

    async def _snapshot(self, *names: str) -> calls.Snapshot:
        """All attributes (or those of ``names`` that exist), read together; ``.revision``."""
        snapshot: calls.Snapshot = await self._run(calls.snapshot(self._key, names))
        snapshot.revision = calls.revision(snapshot.revision, self._epoch())
        return snapshot

    async def _update(self, **values: Any) -> int:
        """Set several attributes at once (one revision, all or nothing); returns it."""
        return calls.revision(await self._run(calls.update(self._key, values)), self._epoch())

    def _epoch(self) -> str | None:
        """The epoch of the server this proxy's connection reached last."""
        return self._aionamespace.table.protocol.epoch

    async def _incr(self, name: str, by: int | float = 1) -> Any:
        """Add ``by`` on the server (a missing name starts at 0); returns the new value."""
        return await self._run(calls.incr(self._key, name, by))

    async def _append(self, name: str, *items: Any) -> int:
        """Extend a shared list in place (a missing name starts empty); returns its length."""
        return await self._run(  # type: ignore[no-any-return]
            calls.append(self._key, name, items)
        )

    async def _setdefault(self, name: str, value: Any) -> Any:
        """Set ``name`` unless it is set; returns the value it holds afterwards."""
        return await self._run(calls.setdefault(self._key, name, value))

    async def _pop(self, name: str, *default: Any) -> Any:
        """Remove ``name`` and return its value (or ``default``, if given, when it is unset)."""
        try:
            return await self._run(calls.pop(self._key, name))
        except AttributeError:
            if default:
                return default[0]
            raise

    async def _cas(self, name: str, expected: Any, new: Any) -> bool:
        """Set ``name`` to ``new`` only if it equals ``expected`` (same type); whether it did."""
        return await self._run(  # type: ignore[no-any-return]
            calls.cas(self._key, name, expected, new)
        )

    # ------------------------------------------------------------------ watches and locks

    def _watch(self, *names: str, since: int | None = None) -> AsyncWatch:
        """``async with ns._watch(...) as events: async for event in events: ...``

        Changes of ``names`` (or all), pushed by the server on a connection of the watch's
        own; ``since=revision`` first replays what changed after it (HistoryExpired if the
        server no longer remembers that far).
        """
        return AsyncWatch(self._aionamespace.target, names, since)

    async def _wait_for(
        self,
        name: str,
        predicate: Callable[[Any], bool] | None = None,
        timeout: float | None = None,  # noqa: ASYNC109 - Namespace's API
    ) -> Any:
        """Wait until ``predicate(value)`` holds (or, without one, until ``name`` is set
        again) and return the value; TimeoutError after ``timeout`` seconds."""
        with anyio.fail_after(timeout):
            async with self._watch(name) as watch:
                values = watch.values
                if predicate is not None and name in values and predicate(values[name]):
                    return values[name]
                async for event in watch:
                    if not event.deleted and (predicate is None or predicate(event.value)):
                        return event.value
        raise AssertionError("unreachable: a watch only ends by raising")  # pragma: no cover

    def _lock(self, name: str, timeout: float | None = None) -> AsyncLock:
        """``async with ns._lock("name"):`` -- shared by every process using this server.

        Released on exit, or by the server as soon as this connection dies (then
        ``LockLost``); ``timeout`` seconds without getting it raise TimeoutError; cancelling
        the wait withdraws it. The object may be shared by tasks (``locks.py``).
        """
        return AsyncLock(self, name, timeout)


class AsyncWatch:
    """An async iterator of ``WatchEvent`` on a dedicated connection.

    Use it as ``async with``: entering starts the watch (``revision`` and ``values`` then say
    where it started), leaving closes its connection.
    """

    def __init__(self, target: Target, names: tuple[str, ...], since: int | None) -> None:
        self._call = calls.watch(target.key, names, since)
        self._state = _state(target)
        self.revision = 0
        self.values: dict[str, Any] = {}
        self._epoch: str | None = None

    async def __aenter__(self) -> AsyncWatch:
        try:
            _, revision, values = await self._state.transport.call(*self._call)
        except BaseException:
            await self._state.bound().close()
            raise
        self._epoch = self._state.table.protocol.epoch
        self.revision = calls.revision(revision, self._epoch)
        self.values = decode_values(values)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self._state.bound().close()

    def __aiter__(self) -> AsyncWatch:
        return self

    async def __anext__(self) -> calls.WatchEvent:
        push = await self._state.bound().next_push()
        return calls.event_from_push(push.name, push.revision, push.value, self._epoch)
