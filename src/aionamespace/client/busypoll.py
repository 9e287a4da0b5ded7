"""A sync proxy's wait for its reply: polling the socket briefly before it sleeps.

The server's side of this (``server/busypoll.py``) explains the cost it avoids: on a machine
where waking a sleeping CPU is dear (virtual machines above all), a thread asleep in ``recv``
is woken late, and the longer the CPU it ran on stays idle, the later: a reply that takes the
server a little longer to make (a commit to a data file) then costs the client much more than
the difference. So a sync call, once its request is sent, first reads the socket without
blocking for up to ``Limits.reply_poll`` seconds, and sleeps in ``recv`` only if the reply has
not come by then.

Polling pays only while a CPU is idle. On a crowded machine it costs twice: the CPU it takes
is another process's (the server's, maybe), and a process that polled instead of sleeping
loses the scheduler's preference for a task that wakes up. So each poll counts as a *miss*
when no reply came within the window, and also when the thread was given less than half of
the window's time to run (another process was ready: the CPUs are busy). After
``MAX_MISSES`` misses in a row it stops polling for a number of calls that doubles each time
(up to ``MAX_BACKOFF``), and a poll that catches a reply with a CPU to itself sets it back to
one. Between two reads it yields the CPU (``sched_yield``), which costs nothing when no other
process waits for it. Only plain sockets poll (a TLS socket's ``recv_into`` takes no flags),
and never a connection to a server in this very process, whose thread needs the GIL to answer.
"""

from __future__ import annotations

import os
import socket
from time import perf_counter, thread_time

__all__ = ["ReplyPoll"]

_DONTWAIT = socket.MSG_DONTWAIT
_yield = getattr(os, "sched_yield", lambda: None)


class ReplyPoll:
    """Reads a reply into a buffer, polling for up to ``seconds`` before a blocking read."""

    __slots__ = ("backoff", "misses", "seconds", "skip")

    #: Misses in a row after which polling stops for a while (``backoff`` calls).
    MAX_MISSES = 3
    #: The most calls polling stops for.
    MAX_BACKOFF = 4096

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.misses = 0
        self.skip = 0  # calls left that sleep at once (the sync transport counts them down itself)
        self.backoff = 1  # how many the next stop lasts

    @classmethod
    def for_socket(cls, sock: object, seconds: float, tracking: bool) -> ReplyPoll | None:
        """A poll for a sync transport's socket, or None: polling is off (``seconds`` 0), the
        socket is not a plain one (TLS, or an end of a server in this process), or it is the
        cache's reader, which waits for pushes rather than replies."""
        if seconds > 0 and not tracking and type(sock) is socket.socket:
            return cls(seconds)
        return None

    def receive(self, sock: socket.socket, buffer: memoryview) -> int:
        """``sock.recv_into(buffer)``, polled first (the socket's own timeout still bounds
        the blocking read, which follows a poll that caught nothing)."""
        if self.skip:
            self.skip -= 1
            return sock.recv_into(buffer)
        started, ran = perf_counter(), thread_time()
        deadline = started + self.seconds
        while True:
            try:
                received = sock.recv_into(buffer, 0, _DONTWAIT)
            except BlockingIOError:
                if perf_counter() < deadline:
                    _yield()  # another process ready to run (the server?) goes first
                    continue
                self._missed()
                return sock.recv_into(buffer)
            if 2 * (thread_time() - ran) < perf_counter() - started:
                self._missed()  # caught, but the CPUs are busy: polling takes from others
            else:
                self.misses, self.backoff = 0, 1
            return received

    def _missed(self) -> None:
        self.misses += 1
        if self.misses >= self.MAX_MISSES:
            self.misses = 0
            self.skip = self.backoff
            self.backoff = min(2 * self.backoff, self.MAX_BACKOFF)
