"""Plain reads answered from the callback that got the store's reply: no task, no await.

A connection's batch in a store the server awaits goes to a task (remote_serving.py), which
walks it with ``respond_awaiting`` (remote_dispatch.py): the loop runs once to start the task,
and once more to resume it when the store's reply is parsed, and every step passes through a
chain of awaits. A batch of gets and named snapshots (``snapshot_packed``) only, of keys that
are not anonymous, from a connection without a client cache, over a store that reads at once
(``read_now``, stores/remote.py: the Redis store's), skips all of that: ``PlainReads.start``
sends it from the callback that parsed the client's frame, and the store's callback that
parsed its reply makes the answers and writes them. What such a batch gives rise to for its
connection meanwhile (pushes) follows its answers, as on the usual path (``_held``).

Whatever the store cannot answer so (it says None: a list found, an error reply, a new
epoch, a key followed meanwhile) is served the usual way, from the batch's start, with what
was held kept: reads change nothing, so nothing runs twice that should not.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..protocol.connection import Request
from ..protocol.pieces import Output
from .anonymous import ANONYMOUS
from .dispatch import Dispatcher, ReplyData
from .remote_dispatch import RemoteDispatcher, _joined

if TYPE_CHECKING:
    from .shells import Connection

__all__ = ["MAX_READS_AT_ONCE", "PlainReads"]

#: The most requests a batch read at once holds (more: the usual path, round by round).
MAX_READS_AT_ONCE = 64


class PlainReads:
    """Starts a connection's batch of plain reads at once, if it is one (module docstring);
    ``finished(connection)`` when it is answered, ``again(connection)`` when the usual path
    must serve it after all."""

    def __init__(
        self,
        dispatcher: RemoteDispatcher,
        finished: Callable[[Connection], None],
        again: Callable[[Connection], None],
        failed: Callable[[Connection, Exception], None],
    ) -> None:
        self._dispatcher = dispatcher
        self._read_now = getattr(dispatcher.remote, "read_now", None)
        self._finished, self._again, self._failed = finished, again, failed

    def start(self, connection: Connection) -> bool:
        """Send the connection's batch if it is plain reads only: False if not (nothing sent)."""
        read_now = self._read_now
        events = connection.pending
        if read_now is None or len(events) > MAX_READS_AT_ONCE:
            return False
        dispatcher = self._dispatcher
        if connection in dispatcher._tracking:
            return False  # (its gets are tracked reads)
        calls = []
        makers = []
        for event in events:
            if type(event) is not Request or event.op not in ("get", "snapshot_packed"):
                return False
            args = event.args
            if args[0][:1] == ANONYMOUS:
                return False
            call, make = dispatcher._call(connection, event.id, event.op, args, None)
            calls.append(call)
            makers.append(make)
        held: list[Output] = []
        done = functools.partial(self._answer, connection, held, makers)
        if not read_now(calls, done):
            return False
        dispatcher._held[connection] = held  # (what arises for it meanwhile follows)
        return True

    def _answer(
        self,
        connection: Connection,
        held: list[Output],
        makers: list[Callable[[Any], ReplyData]],
        results: list[Any] | None,
    ) -> None:
        dispatcher = self._dispatcher
        if dispatcher._held.get(connection) is not held:  # gone meanwhile
            self._finished(connection)
            return
        if results is None:
            self._again(connection)  # (held stays: respond_awaiting goes on with it)
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
