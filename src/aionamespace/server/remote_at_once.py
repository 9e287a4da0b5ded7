"""Batches answered from the callback that got the store's reply: no task, no await.

A connection's batch in a store the server awaits goes to a task (remote_serving.py), which
walks it with ``respond_awaiting`` (remote_dispatch.py): the loop runs once to start the task,
and once more to resume it when the store's reply is parsed, and every step passes through a
chain of awaits. A batch of gets and named snapshots (``snapshot_packed``) only, or of one
set or update, of keys that are not anonymous, from a connection without a client cache, over
a store that can send it at once (``apply_now``, stores/remote.py: the Redis store's), skips
all of that: ``AtOnce.start`` sends it from the callback that parsed the client's frame, and
the store's callback that parsed its reply makes the answers and writes them. What the batch
gives rise to for its connection meanwhile (pushes) follows its answers, as on the usual path
(``_held``).

The store may answer with a coroutine function instead (a call after which it has more to do: a
new epoch, a namespace to register, a follower to tell what another server did first): a task
calls and awaits it, then answers. (A function, not a coroutine made already: one that the task
never got to await, the server stopping first, would be reported as never awaited.) What it
cannot answer at once, it says before anything ran (None: a list found, an error reply, a script
to load again): the batch is then served the usual way, from its start, with what was held kept.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from ..protocol.connection import Request
from ..protocol.pieces import Output
from .anonymous import ANONYMOUS
from .dispatch import Dispatcher, ReplyData
from .remote_dispatch import RemoteDispatcher, _joined

if TYPE_CHECKING:
    from .shells import Connection

__all__ = ["MAX_AT_ONCE", "AtOnce"]

#: The most requests a batch sent at once holds (more: the usual path, round by round).
MAX_AT_ONCE = 64
#: The requests a batch sent at once may hold: reads, or one write alone.
_READS = frozenset({"get", "snapshot_packed"})
_WRITES = frozenset({"set", "update"})


class AtOnce:
    """Starts a connection's batch at once, if it is one (module docstring). ``finished``:
    when it is answered; ``again``: when the usual path must serve it after all; ``spawn``:
    starts a task (what awaits a write's rest)."""

    def __init__(
        self,
        dispatcher: RemoteDispatcher,
        finished: Callable[[Connection], None],
        again: Callable[[Connection], None],
        failed: Callable[[Connection, Exception], None],
        spawn: Callable[..., None],
    ) -> None:
        self._dispatcher = dispatcher
        self._apply_now = getattr(dispatcher.remote, "apply_now", None)
        self._finished, self._again, self._failed = finished, again, failed
        self._spawn = spawn

    def start(self, connection: Connection) -> bool:
        """Send the connection's batch if it is one to send at once: False if not (nothing
        sent)."""
        apply_now = self._apply_now
        events = connection.pending
        if apply_now is None or len(events) > MAX_AT_ONCE:
            return False
        dispatcher = self._dispatcher
        if connection in dispatcher._tracking:
            return False  # (its gets are tracked reads)
        calls = []
        makers = []
        for event in events:
            if type(event) is not Request:
                return False
            op, args = event.op, event.args
            if op not in _READS and not (op in _WRITES and len(events) == 1):
                return False
            if args[0][:1] == ANONYMOUS:
                return False
            call, make = dispatcher._call(connection, event.id, op, args, None)
            calls.append(call)
            makers.append(make)
        held: list[Output] = []
        done = functools.partial(self._answer, connection, held, makers)
        if not apply_now(calls, done):
            return False
        dispatcher._held[connection] = held  # (what arises for it meanwhile follows)
        return True

    def _answer(
        self,
        connection: Connection,
        held: list[Output],
        makers: list[Callable[[Any], ReplyData]],
        results: list[Any] | Callable[[], Awaitable[list[Any]]] | None,
    ) -> None:
        dispatcher = self._dispatcher
        if dispatcher._held.get(connection) is not held:  # gone meanwhile
            if callable(results):  # (the store's rest is done all the same)
                self._spawn(self._later, connection, held, makers, results)
                return
            self._finished(connection)
            return
        if results is None:
            self._again(connection)  # (held stays: respond_awaiting goes on with it)
            return
        if callable(results):
            self._spawn(self._later, connection, held, makers, results)
            return
        try:
            del dispatcher._held[connection]
            with dispatcher._section(connection):
                replies = [make(result) for make, result in zip(makers, results, strict=True)]
            dispatcher.requests += len(replies)
            del connection.pending[: len(replies)]
            if held and connection.backlog() > connection.protocol.limits.max_push_backlog_bytes:
                Dispatcher._write(dispatcher, connection, held)  # (refused, dropped)
            else:
                answers = _joined(replies, held, False)
                if len(answers) == 1:
                    connection.write(answers[0])
                else:
                    connection.write_all(answers)
        except Exception as exc:  # a MemoryError, or a bug: this connection only
            self._failed(connection, exc)
        self._finished(connection)

    async def _later(
        self,
        connection: Connection,
        held: list[Output],
        makers: list[Callable[[Any], ReplyData]],
        results: Callable[[], Awaitable[list[Any]]],
    ) -> None:
        try:
            done = await results()
        except Exception as exc:  # a MemoryError, or a bug: this connection only
            self._failed(connection, exc)
            self._finished(connection)
            return
        except BaseException:  # (the server stops)
            self._finished(connection)
            raise
        self._answer(connection, held, makers, done)
