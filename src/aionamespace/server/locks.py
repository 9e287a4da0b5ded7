"""Server-side leases: named locks, FIFO waiters, released when their holder's connection dies.

A lock is held by a *(connection, token)* pair: the token (random bytes from the client)
tells apart the tasks of one async proxy sharing a connection. ``acquire`` answers at once when
the lock is free; otherwise the caller waits in line and is answered later, when the lock is
handed over (or its timeout expires). When a connection goes away, every lock it held passes
to the next waiter and its own waits are dropped: a SIGKILLed holder frees its locks as soon as
the kernel closes its socket.
"""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Callable

__all__ = ["LockTable"]

#: (connection, token): who holds or awaits a lock.
Owner = tuple[object, bytes]


@dataclasses.dataclass(eq=False)
class _Wait:
    owner: Owner
    grant: Callable[[BaseException | None], None]  # answers the deferred acquire
    cancel_timer: Callable[[], None] = lambda: None


@dataclasses.dataclass(eq=False)
class _Lock:
    holder: Owner | None = None
    waits: collections.OrderedDict[Owner, _Wait] = dataclasses.field(
        default_factory=collections.OrderedDict
    )


class LockTable:
    """Every lock of a server, keyed by (namespace key, lock name)."""

    def __init__(
        self,
        call_later: Callable[[float, Callable[[], None]], Callable[[], None]],
    ) -> None:
        self._locks: dict[tuple[str, str], _Lock] = {}
        self._call_later = call_later

    def acquire(
        self,
        key: str,
        name: str,
        owner: Owner,
        timeout: float | None,
        grant: Callable[[BaseException | None], None],
    ) -> bool:
        """Take the lock now (True), or queue ``grant`` to be called when it is ours (False)."""
        lock = self._locks.setdefault((key, name), _Lock())
        if lock.holder is None:
            lock.holder = owner
            return True
        if lock.holder == owner or owner in lock.waits:
            raise ValueError(f"lock {name!r} is already held or awaited with this token")
        wait = _Wait(owner, grant)
        lock.waits[owner] = wait
        if timeout is not None:
            wait.cancel_timer = self._call_later(
                timeout, lambda: self._expire(key, name, owner, timeout)
            )
        return False

    def release(self, key: str, name: str, owner: Owner) -> bool:
        """Release a held lock, or withdraw a wait (answering it). False: neither was ours."""
        lock = self._locks.get((key, name))
        if lock is None:
            return False
        if lock.holder == owner:
            self._hand_over(key, name, lock)
            return True
        wait = lock.waits.pop(owner, None)
        if wait is None:
            return False
        wait.cancel_timer()
        wait.grant(TimeoutError(f"the wait for lock {name!r} was withdrawn"))
        return True

    def drop_connection(self, connection: object) -> None:
        """The connection is gone: release what it held, forget what it awaited."""
        for (key, name), lock in list(self._locks.items()):
            for owner in [o for o in lock.waits if o[0] is connection]:
                lock.waits.pop(owner).cancel_timer()
            if lock.holder is not None and lock.holder[0] is connection:
                self._hand_over(key, name, lock)
            elif lock.holder is None and not lock.waits:
                del self._locks[key, name]

    def _hand_over(self, key: str, name: str, lock: _Lock) -> None:
        if not lock.waits:
            del self._locks[key, name]
            return
        owner, wait = lock.waits.popitem(last=False)
        wait.cancel_timer()
        lock.holder = owner
        wait.grant(None)

    def _expire(self, key: str, name: str, owner: Owner, timeout: float) -> None:
        lock = self._locks.get((key, name))
        wait = lock.waits.pop(owner, None) if lock is not None else None
        if wait is not None:
            wait.grant(TimeoutError(f"lock {name!r} not acquired within {timeout} seconds"))
