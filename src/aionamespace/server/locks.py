"""Server-side leases: named locks, FIFO waiters, released when their holder's connection dies.

A lock is held by a *(connection, token)* pair: the token (random bytes from the client)
tells apart the tasks of one async proxy sharing a connection. ``acquire`` answers at once when
the lock is free; otherwise the caller waits in line and is answered later, when the lock is
handed over (or its timeout expires). When a connection goes away, every lock it held passes
to the next waiter and its own waits are dropped: a SIGKILLed holder frees its locks as soon as
the kernel closes its socket.

Locks and waits are indexed by connection as well as by name, so a connection going away
costs what it held and awaited, never a scan of every lock of the server; a wait with a
timeout is one entry of the server's timer heap (``timers.py``), not a task.
"""

from __future__ import annotations

import collections
from collections.abc import Callable
from typing import Protocol

from .timers import CallLater

__all__ = ["LockTable", "Locks"]

#: (connection, token): who holds or awaits a lock.
Owner = tuple[object, bytes]
#: (namespace key, lock name): which lock.
LockName = tuple[str, str]


class Locks(Protocol):
    """What the dispatcher needs of a lock table: ``LockTable``'s methods (a table shared
    by servers through their store, stores/redis_locks.py, has them too)."""

    def acquire(
        self,
        key: str,
        name: str,
        owner: Owner,
        timeout: float | None,
        grant: Callable[[BaseException | None], None],
    ) -> bool: ...
    def release(self, key: str, name: str, owner: Owner) -> bool: ...
    def drop_connection(self, connection: object) -> None: ...
    def counts(self) -> tuple[int, int]: ...


class _Wait:
    __slots__ = ("cancel_timer", "grant", "lock", "owner", "table", "timeout")

    def __init__(
        self,
        table: LockTable,
        lock: LockName,
        owner: Owner,
        grant: Callable[[BaseException | None], None],
        timeout: float | None,
    ) -> None:
        self.table, self.lock, self.owner, self.grant = table, lock, owner, grant
        self.timeout = timeout
        self.cancel_timer: Callable[[], None] | None = None

    def expire(self) -> None:
        """Its timeout: answer TimeoutError, unless it was granted, withdrawn or dropped."""
        self.table._expire(self)


class _Lock:
    __slots__ = ("holder", "waits")

    def __init__(self, holder: Owner) -> None:
        self.holder: Owner | None = holder
        self.waits: collections.OrderedDict[Owner, _Wait] | None = None  # made on the first wait


class _Holdings:
    """What one connection holds and awaits: the index ``drop_connection`` walks."""

    __slots__ = ("held", "waits")

    def __init__(self) -> None:
        self.held: set[LockName] = set()
        self.waits: dict[tuple[LockName, bytes], _Wait] = {}  # (lock, token) -> wait


class LockTable:
    """Every lock of a server, keyed by (namespace key, lock name)."""

    def __init__(self, call_later: CallLater) -> None:
        self._locks: dict[LockName, _Lock] = {}
        self._connections: dict[object, _Holdings] = {}
        self._call_later = call_later

    def _holdings(self, connection: object) -> _Holdings:
        holdings = self._connections.get(connection)
        if holdings is None:
            holdings = self._connections[connection] = _Holdings()
        return holdings

    def acquire(
        self,
        key: str,
        name: str,
        owner: Owner,
        timeout: float | None,
        grant: Callable[[BaseException | None], None],
    ) -> bool:
        """Take the lock now (True), or queue ``grant`` to be called when it is ours (False)."""
        which = (key, name)
        lock = self._locks.get(which)
        if lock is None:
            self._locks[which] = _Lock(owner)
            self._holdings(owner[0]).held.add(which)
            return True
        if lock.holder == owner or (lock.waits is not None and owner in lock.waits):
            raise ValueError(f"lock {name!r} is already held or awaited with this token")
        if lock.holder is None:  # (never so between calls: a lock nobody holds is deleted)
            lock.holder = owner
            self._holdings(owner[0]).held.add(which)
            return True
        wait = _Wait(self, which, owner, grant, timeout)
        if lock.waits is None:
            lock.waits = collections.OrderedDict()
        lock.waits[owner] = wait
        self._holdings(owner[0]).waits[which, owner[1]] = wait
        if timeout is not None:
            wait.cancel_timer = self._call_later(timeout, wait.expire)
        return False

    def release(self, key: str, name: str, owner: Owner) -> bool:
        """Release a held lock, or withdraw a wait (answering it). False: neither was ours."""
        which = (key, name)
        lock = self._locks.get(which)
        if lock is None:
            return False
        if lock.holder == owner:
            self._let_go(which, lock, owner[0])
            return True
        wait = lock.waits.get(owner) if lock.waits is not None else None
        if wait is None:
            return False
        self._forget_wait(lock, wait)
        wait.grant(TimeoutError(f"the wait for lock {name!r} was withdrawn"))
        return True

    def drop_connection(self, connection: object) -> None:
        """The connection is gone: release what it held, forget what it awaited."""
        holdings = self._connections.pop(connection, None)
        if holdings is None:
            return
        for wait in holdings.waits.values():  # first, so no lock is handed to them below
            lock = self._locks[wait.lock]
            assert lock.waits is not None
            del lock.waits[wait.owner]
            if wait.cancel_timer is not None:
                wait.cancel_timer()
        holdings.waits.clear()
        for which in holdings.held:
            lock = self._locks[which]
            lock.holder = None
            self._hand_over(which, lock)

    def counts(self) -> tuple[int, int]:
        """(locks held, waits in line): the ``info`` operation's figures."""
        return len(self._locks), sum(len(lock.waits or ()) for lock in self._locks.values())

    def _let_go(self, which: LockName, lock: _Lock, connection: object) -> None:
        """The holder (on ``connection``) lets go: the next waiter gets the lock."""
        holdings = self._connections[connection]
        holdings.held.discard(which)
        if not holdings.held and not holdings.waits:
            del self._connections[connection]
        lock.holder = None
        self._hand_over(which, lock)

    def _hand_over(self, which: LockName, lock: _Lock) -> None:
        """Give a lock nobody holds to its first waiter, or delete it if nobody waits."""
        if not lock.waits:
            del self._locks[which]
            return
        owner, wait = lock.waits.popitem(last=False)
        holdings = self._connections[owner[0]]
        del holdings.waits[which, owner[1]]
        if wait.cancel_timer is not None:
            wait.cancel_timer()
        lock.holder = owner
        holdings.held.add(which)
        wait.grant(None)

    def _forget_wait(self, lock: _Lock, wait: _Wait) -> None:
        """Take a wait out of its lock's line and its connection's index (not answered)."""
        assert lock.waits is not None
        del lock.waits[wait.owner]
        connection, token = wait.owner
        holdings = self._connections[connection]
        del holdings.waits[wait.lock, token]
        if not holdings.held and not holdings.waits:
            del self._connections[connection]
        if wait.cancel_timer is not None:
            wait.cancel_timer()
            wait.cancel_timer = None

    def _expire(self, wait: _Wait) -> None:
        lock = self._locks.get(wait.lock)
        if lock is None or lock.waits is None or lock.waits.get(wait.owner) is not wait:
            return  # granted, withdrawn or dropped meanwhile (its timer was cancelled)
        wait.cancel_timer = None  # it fired
        self._forget_wait(lock, wait)
        wait.grant(
            TimeoutError(f"lock {wait.lock[1]!r} not acquired within {wait.timeout} seconds")
        )
