"""Leases: which locks a connection holds, and who holds them, so that a lost one is told.

A lock is held by a connection (docs/PROTOCOL.md, section 12): when that connection breaks, the
server releases it and another process may take it at once. The holder must not go on as if it
still held it. So a connection keeps its *leases*, and once it is lost with leases on it:

* sync proxy: the thread's transport stays in place, closed, and every call of that thread to
  that server raises ``LockLost`` instead of reconnecting (``blocking._Pool.transport``), until
  the thread releases each lost lock (its ``release()`` raises ``LockLost`` too);
* async proxy: the request table moves the leases to ``lost``, and every request of a holding
  task raises ``LockLost`` (other tasks of the proxy reconnect as usual); writes the holder
  queued under the lock and that had not left are dropped, and reported as ``LockLost`` by the
  next ``_flush()`` (``requests.RequestTable``).

Who holds a lease is a thread (``threading.current_thread()``) or a task (``current_task``):
the objects themselves, not their ids, which a new thread or task may reuse.
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any

from .._errors import LockLost
from ..protocol.addresses import format_address

__all__ = ["Lease", "current_task", "lock_lost", "thread_leases_lost"]


class Lease:
    """A lock held: by ``holder`` (a thread or task), as ``token``, on ``transport``."""

    __slots__ = ("holder", "key", "name", "pid", "token", "transport")

    def __init__(
        self, holder: object, key: str, name: str, token: bytes, transport: Any, pid: int = 0
    ) -> None:
        self.holder, self.key, self.name, self.token = holder, key, name, token
        self.transport = transport  # the sync transport that holds it (async: None)
        self.pid = pid  # the process that took it (a forked child's copy is not held)


def current_task() -> object:
    """The running task (asyncio's or trio's), or None outside any."""
    try:
        return asyncio.current_task()
    except RuntimeError:  # no asyncio loop running in this thread
        pass
    trio = sys.modules.get("trio")  # (only imported by a program that runs it)
    if trio is not None:
        try:
            return trio.lowlevel.current_task()
        except RuntimeError:
            pass
    return None


def lock_lost(name: str, address: object, detail: str = "") -> LockLost:
    """The error for a lock lost with its connection."""
    where = format_address(address) if isinstance(address, (str, tuple)) else address
    return LockLost(
        f"lock {name!r} is no longer held: the connection to the aionamespace server at "
        f"{where!r} that held it was lost, so the server released it (another process may "
        f"hold it now){detail}"
    )


def thread_leases_lost(leases: dict[bytes, Lease], address: object) -> LockLost:
    """What a call on a closed sync transport that held ``leases`` raises."""
    return lock_lost(
        ", ".join(sorted({lease.name for lease in leases.values()})),
        address,
        "; this thread's calls to that server raise LockLost until it releases the lock",
    )
