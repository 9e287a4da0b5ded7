"""Connections served from a store the server awaits: one batch in the store per connection.

``admission.Connections`` applies what a connection sent at once, in the shell's callback.
Over a ``RemoteStore`` a batch must await the store, so ``RemoteConnections`` hands it to a
task (``respond_awaiting``, remote_dispatch.py), and the connection's requests that arrive
meanwhile wait for it, in order: the shell is told to stop reading that connection when a
chunk arrives while its batch is in the store (``received`` returns False), so its next
chunk waits in the socket and what it costs stays bounded by one chunk, while other
connections go on. (Not at once when the batch starts: a client that waits for each answer
sends nothing meanwhile, and pausing and resuming a socket costs two system calls.) When the
batch's answers are written, the shell is told to go on (``Connection.proceed``): it applies
what waits, or reads again. A peer that does not read its
answers is held to the reply budget as on every other path.

A batch of plain reads, or of one set or update, goes without a task (remote_at_once.py)
when the store can send it so.
A batch's task is cheap to start (``BatchTasks``): on asyncio a bare asyncio task (anyio's task
group costs a sync get over a store a third more), cancelled and awaited when the server
stops; on another backend, one of the server's task group.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

import anyio
import anyio.abc

from ..protocol.connection import ServerConnection
from ..protocol.limits import Limits
from .admission import Connections
from .durability import Durability
from .remote_at_once import AtOnce
from .remote_dispatch import RemoteDispatcher
from .timers import CallLater

if TYPE_CHECKING:
    from .shells import Connection

__all__ = ["BatchTasks", "RemoteConnections"]


class BatchTasks:
    """Where the batches of a server over a remote store run (see the module's docstring)."""

    def __init__(self, group: anyio.abc.TaskGroup) -> None:
        self._group = group
        try:
            self._loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            self._loop = None  # (trio)
        self._running: set[asyncio.Task[None]] = set()

    def start(self, function: Callable[..., Coroutine[Any, Any, None]], *args: Any) -> None:
        if self._loop is None:
            self._group.start_soon(function, *args)
            return
        self._running.add(self._loop.create_task(self._run(function, args)))

    async def _run(self, function: Callable[..., Coroutine[Any, Any, None]], args: Any) -> None:
        # The task forgets itself as it ends: a done callback would cost the loop one more
        # iteration (a select) after every batch. (One cancelled before it started stays
        # until ``stop``, which waits for it: done already.)
        try:
            await function(*args)
        finally:
            self._running.discard(asyncio.current_task(self._loop))

    async def stop(self) -> None:
        """Cancel the batches still running, and wait until they are gone."""
        running = list(self._running)
        for task in running:
            task.cancel()
        if running:
            await asyncio.wait(running)
        self._running.clear()


class RemoteConnections(Connections):
    """Every open connection of a server over a ``RemoteStore``."""

    def __init__(
        self,
        limits: Limits,
        dispatcher: RemoteDispatcher,
        call_later: CallLater,
        new_protocol: Callable[[], ServerConnection],
        durability: Durability,
        tasks: BatchTasks,
    ) -> None:
        super().__init__(limits, dispatcher, call_later, new_protocol, durability)
        self.remote_dispatcher = dispatcher
        self.tasks = tasks
        self._spawn = tasks.start
        self._serving: set[Connection] = set()  # those with a batch in the store
        self._at_once = AtOnce(dispatcher, self._finished, self._again, self.failed, tasks.start)

    def received(self, connection: Connection, data: bytes | memoryview) -> bool:
        """Parse what a connection sent; its batch goes to a task (False: read no more until
        that task says to go on)."""
        events = connection.protocol.receive_data(data)
        if self.handshaking and connection in self.handshaking and connection.protocol.ready:
            self.handshaking.pop(connection)()  # its deadline; the slot goes to the next
        connection.pending.extend(events)
        if connection in self._serving:
            return False  # more while a batch is in the store: it waits, and so does the socket
        return self.apply(connection) or connection in self._serving

    def apply(self, connection: Connection) -> bool:
        """Start serving what the connection sent, unless a batch of it is in the store or its
        backlog is past its budget: True only when nothing waits."""
        if connection in self._serving:
            return False
        if connection.pending and not connection.closed:
            if connection.backlog() <= self.budget:
                self._serving.add(connection)
                if not self._at_once.start(connection):
                    self._spawn(self._serve, connection)
            return False
        if connection.protocol.refused:
            connection.pending.clear()
            connection.close()
        return True

    async def _serve(self, connection: Connection) -> None:
        pending, budget = connection.pending, self.budget
        try:
            while pending and not connection.closed and connection.backlog() <= budget:
                answers, applied = await self.remote_dispatcher.respond_awaiting(
                    connection, pending, budget
                )
                del pending[:applied]
                if len(answers) == 1:
                    connection.write(answers[0])
                elif answers:
                    connection.write_all(answers)
            if connection.protocol.refused:
                pending.clear()
                connection.close()
        except Exception as exc:  # a MemoryError, or a bug: this connection only
            self.failed(connection, exc)
        finally:
            self._serving.discard(connection)
            connection.proceed()

    def _finished(self, connection: Connection) -> None:
        """A batch sent at once is answered (or its connection gone)."""
        self._serving.discard(connection)
        connection.proceed()

    def _again(self, connection: Connection) -> None:
        """A batch sent at once must be served the usual way after all (nothing ran)."""
        self._spawn(self._serve, connection)

    def gone(self, connection: Connection) -> None:
        connection.pending.clear()
        super().gone(connection)
