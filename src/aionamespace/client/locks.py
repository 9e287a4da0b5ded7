"""The lock objects of both proxies: ``ns._lock(name)``, ``Manager.Lock()``, and their async twins.

A lock is a lease on the server, held by a connection (docs/PROTOCOL.md, section 12). One
lock object may be shared: by the threads of a process (``Lock``) or the tasks of an event
loop (``AsyncLock``), each acquiring with a token of its own, so the server makes them take
turns exactly as it does different processes. The thread (task) that acquired holds the lease:
``release()`` from any other raises ``RuntimeError``, as ``threading.RLock``'s does (a
``threading.Lock`` may be released by any thread; a lease cannot, it belongs to a
connection). Locks are not re-entrant: acquiring one this thread (task) already holds raises
``RuntimeError`` at once instead of waiting for ever.

A lock whose connection was lost raises ``LockLost`` at ``release()`` (``leases.py`` says what
else does). Pickling a lock carries its proxy (the server's address, the authkey, the
namespace key) and its name: never a token, never a held state.
"""

from __future__ import annotations

import contextlib
import os
import threading
from typing import TYPE_CHECKING, Any

import anyio

from .._errors import ConnectionLost, LockLost
from . import calls
from .blocking import POOL
from .leases import Lease, current_task, lock_lost

if TYPE_CHECKING:
    from .asynchronous import AsyncNamespace
    from .sync import Namespace

__all__ = ["AsyncLock", "Lock", "wait_seconds"]


def wait_seconds(blocking: bool, timeout: float | None) -> float | None:
    """``acquire``'s arguments, as ``threading.Lock`` takes them, as the server's timeout
    (None: no limit; 0: only if free now)."""
    if not blocking:
        if timeout not in (-1, None):
            raise ValueError("can't specify a timeout for a non-blocking call")
        return 0.0
    if timeout is None or timeout == -1:
        return None
    if timeout < 0:
        raise ValueError("timeout value must be a non-negative number (or -1: no limit)")
    return float(timeout)


def _not_held(name: str, holders: dict[Any, Lease], who: str) -> RuntimeError:
    other = f" (another {who} does)" if holders else ""
    return RuntimeError(
        f"cannot release un-acquired lock {name!r}: this {who} does not hold it{other}"
    )


def _reentered(name: str, who: str) -> RuntimeError:
    return RuntimeError(f"lock {name!r} is already held by this {who} (locks are not re-entrant)")


class Lock:
    """``with ns._lock(name, timeout=None):`` -- a lock shared by every process of the server.

    ``acquire(blocking=True, timeout=-1)``, ``release()`` and ``locked()`` as
    ``threading.Lock`` has them; ``with`` waits at most the ``timeout`` given to ``_lock``
    and raises ``TimeoutError`` after it. One object may be shared by threads.
    """

    def __init__(self, ns: Namespace, name: str, timeout: float | None = None) -> None:
        check = ns._aionamespace.target.limits.check_name(name)
        if check is not None:
            raise ValueError(f"invalid lock name {name!r}: {check}")
        self._ns, self._name, self._timeout = ns, name, timeout
        self._leases: dict[threading.Thread, Lease] = {}  # by holding thread

    @property
    def name(self) -> str:
        return self._name

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self._ns, self._name, self._timeout))

    def __repr__(self) -> str:
        state = "locked" if self.locked() else "unlocked"
        target = self._ns._aionamespace.target
        return f"<aionamespace.Lock {self._name!r} of {target.describe()}, {state} here>"

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        """Wait for the lock (at most ``timeout`` seconds, -1: no limit; not at all unless
        ``blocking``); whether this thread got it."""
        try:
            self._acquire(wait_seconds(blocking, timeout))
        except TimeoutError:
            return False
        return True

    def _acquire(self, seconds: float | None) -> None:
        thread = threading.current_thread()
        held = self._leases.get(thread)
        if held is not None and held.pid == os.getpid():
            raise _reentered(self._name, "thread")
        ns, name = self._ns, self._name
        target = ns._aionamespace.target
        token = os.urandom(16)
        call = calls.acquire(target.key, name, token, seconds)

        def attempt() -> Any:
            transport = POOL.transport(target)
            if transport.busy:  # a signal handler, re-entering a call: see blocking.py
                transport = transport.nested()
            for lease in transport.leases.values():
                if lease.key == target.key and lease.name == name:
                    raise _reentered(name, "thread")  # (through another lock object)
            transport.call(*call)
            return transport

        transport = ns._retrying("acquire", attempt)
        lease = Lease(thread, target.key, name, token, transport, os.getpid())
        transport.leases[token] = lease
        self._leases[thread] = lease

    def release(self) -> None:
        """Release the lock this thread holds: ``RuntimeError`` if it holds none,
        ``LockLost`` if the server released it already (its connection was lost)."""
        lease = self._leases.pop(threading.current_thread(), None)
        if lease is None or lease.pid != os.getpid():
            raise _not_held(self._name, self._leases, "thread")
        transport = lease.transport
        transport.leases.pop(lease.token, None)
        if transport.closed:
            raise lock_lost(self._name, transport.address)
        try:
            released = transport.call(*calls.release(lease.key, self._name, lease.token))
        except ConnectionLost as exc:  # released, or freed with the connection: unknown when
            raise lock_lost(self._name, transport.address) from exc
        if not released:
            raise lock_lost(self._name, transport.address)

    def locked(self) -> bool:
        """Whether a thread of this process holds the lock through this object (the server is
        not asked: another process holding it is not seen)."""
        pid = os.getpid()
        return any(
            lease.pid == pid and not lease.transport.closed for lease in self._leases.values()
        )

    def __enter__(self) -> Lock:
        self._acquire(self._timeout)
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        try:
            self.release()
        except LockLost:
            if not isinstance(exc, LockLost):  # (else the block is raising it already)
                raise


class AsyncLock:
    """``async with ns._lock(name, timeout=None):`` -- see ``Lock``; one object may be shared
    by tasks. ``await acquire(blocking=True, timeout=-1)``, ``await release()`` (a round trip,
    unlike ``asyncio.Lock.release``) and ``locked()``."""

    def __init__(
        self, ns: AsyncNamespace, name: str, timeout: float | None = None, *, own: bool = False
    ) -> None:
        check = ns._aionamespace.target.limits.check_name(name)
        if check is not None:
            raise ValueError(f"invalid lock name {name!r}: {check}")
        self._ns, self._name, self._timeout = ns, name, timeout
        self._own = own  # the proxy is the lock's own (Manager.AsyncLock): aclose() closes it
        self._leases: dict[object, Lease] = {}  # by holding task

    @property
    def name(self) -> str:
        return self._name

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild_async, (self._ns, self._name, self._timeout, self._own))

    async def aclose(self) -> None:
        """Close the connection of a lock that has its own (``Manager.AsyncLock``'s; a lock of
        ``ns._lock()`` uses the proxy's, which ``ns._close()`` closes)."""
        if self._own:
            await self._ns._close()

    def __repr__(self) -> str:
        state = "locked" if self.locked() else "unlocked"
        target = self._ns._aionamespace.target
        return f"<aionamespace.AsyncLock {self._name!r} of {target.describe()}, {state} here>"

    async def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:  # noqa: ASYNC109
        """Wait for the lock (see ``Lock.acquire``); whether this task got it."""
        try:
            await self._acquire(wait_seconds(blocking, timeout))
        except TimeoutError:
            return False
        return True

    async def _acquire(self, seconds: float | None) -> None:
        task = current_task()
        ns, name = self._ns, self._name
        table, key = ns._aionamespace.table, ns._aionamespace.key
        if task in self._leases or table.holds(task, key, name):
            raise _reentered(name, "task")
        token = os.urandom(16)
        connections = table.connections
        answered = False
        try:
            await ns._run(calls.acquire(key, name, token, seconds))
            answered = True
            if table.connections != connections:
                # A connection was lost while we waited: granted on it and lost since, or
                # granted on the next one; the grant cannot be trusted either way.
                lost = ConnectionLost(f"the connection was lost while acquiring lock {name!r}")
                lost.request_sent = True
                raise lost
        except ConnectionLost:
            if answered:  # granted: maybe on the connection we have now
                await _withdraw(ns, key, name, token)
            raise  # else the wait went with its connection, and the server frees it
        except BaseException:
            # Cancelled or failed: withdraw the wait (or release a grant already on its way),
            # now, so that nobody else waits on a lock we no longer want.
            await _withdraw(ns, key, name, token)
            raise
        lease = Lease(task, key, name, token, None)
        table.leases[token] = lease
        self._leases[task] = lease

    async def release(self) -> None:
        """Release the lock this task holds: ``RuntimeError`` if it holds none, ``LockLost``
        if the server released it already (its connection was lost)."""
        task = current_task()
        lease = self._leases.pop(task, None)
        if lease is None:
            raise _not_held(self._name, self._leases, "task")
        state = self._ns._aionamespace
        if state.table.leases.pop(lease.token, None) is None:
            state.table.forget_lost(lease)
            raise lock_lost(self._name, state.target.address)
        with anyio.CancelScope(shield=True):
            try:
                released = await self._ns._run(calls.release(lease.key, self._name, lease.token))
            except LockLost:
                raise
            except ConnectionLost as exc:
                raise lock_lost(self._name, state.target.address) from exc
        if not released:
            raise lock_lost(self._name, state.target.address)

    def locked(self) -> bool:
        """Whether a task holds the lock through this object (the server is not asked)."""
        leases = self._ns._aionamespace.table.leases
        return any(lease.token in leases for lease in self._leases.values())

    async def __aenter__(self) -> AsyncLock:
        await self._acquire(self._timeout)
        return self

    async def __aexit__(self, exc_type: object, exc: object, tb: object) -> None:
        try:
            await self.release()
        except LockLost:
            if not isinstance(exc, LockLost):
                raise


def _rebuild_async(ns: AsyncNamespace, name: str, timeout: float | None, own: bool) -> AsyncLock:
    return AsyncLock(ns, name, timeout, own=own)


async def _withdraw(ns: Any, key: str, name: str, token: bytes) -> None:
    """Withdraw a wait, or release a grant on its way, whatever happens meanwhile."""
    with anyio.CancelScope(shield=True), contextlib.suppress(ConnectionLost):
        await ns._run(calls.release(key, name, token))
