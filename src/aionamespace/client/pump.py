"""``async with ns:`` -- the tasks that keep an AsyncNamespace's connection moving.

Outside ``async with``, queued writes (``ns.x = v``) go out with the proxy's next await, and a
cached read is never served locally, since nobody would apply the server's invalidations in
time. Inside it, a ``Pump`` runs tasks of its own next to the block's: one sends writes as
soon as they are queued and reads their acknowledgements; with a cache, another is the reader
whenever a connection is up, so that invalidations are applied as they arrive and cached reads
can be served (``Multiplexer.cached``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import anyio
import anyio.abc

from .._errors import ConnectionLost
from .waiters import Waiter

if TYPE_CHECKING:
    from .multiplex import Multiplexer

__all__ = ["Pump"]


class Pump:
    """The tasks of one ``async with`` block on one multiplexer."""

    def __init__(self, multiplexer: Multiplexer) -> None:
        self.multiplexer = multiplexer
        self.kick = anyio.Event()  # set when a write is queued
        self.group: anyio.abc.TaskGroup | None = None

    async def start(self) -> None:
        group = anyio.create_task_group()
        await group.__aenter__()
        self.group = group
        group.start_soon(self._send_writes)
        if self.multiplexer.cache is not None:
            group.start_soon(self._keep_cache)

    async def stop(self) -> None:
        """Flush and close the connection, then end the tasks."""
        group, self.group = self.group, None
        try:
            await self.multiplexer.close()
        finally:
            if group is not None:
                group.cancel_scope.cancel()
                await group.__aexit__(None, None, None)

    async def _send_writes(self) -> None:
        multiplexer = self.multiplexer
        while self.group is not None:
            kick = self.kick
            await kick.wait()
            if self.kick is kick:
                self.kick = anyio.Event()
            try:
                if multiplexer.outbox:
                    await multiplexer.connect()
                    await multiplexer.drain()
                if multiplexer.inflight_writes:
                    await multiplexer.wait(Waiter(until=max(multiplexer.inflight_writes)))
            except ConnectionLost:
                pass  # unsent writes stay queued; flush() reconnects and reports

    async def _keep_cache(self) -> None:
        """Be the reader whenever connected, so that the server's invalidations are applied
        as they arrive (other tasks get their replies through their events)."""
        multiplexer = self.multiplexer
        try:
            while True:
                if multiplexer.connected is None:
                    multiplexer.connected = anyio.Event()
                await multiplexer.connected.wait()
                multiplexer.keeping_cache = True
                await multiplexer.wait(Waiter(wants_push=True))  # ends when the connection does
                multiplexer.keeping_cache = False
        finally:
            multiplexer.keeping_cache = False
