"""A sync proxy's wait for its reply: polling the socket briefly before it sleeps.

The server's side of this (``server/busypoll.py``) explains the cost it avoids: on a machine
where waking a sleeping CPU is dear (virtual machines above all), a thread asleep in ``recv``
is woken late, and the longer the CPU it ran on stays idle, the later: a reply that takes the
server a little longer to make (a commit to a data file) then costs the client much more than
the difference. So a sync call, once its request is sent, first reads the socket without
blocking for up to ``Limits.reply_poll`` seconds, and sleeps (in ``poll``: below) only if the
reply has not come by then.

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

**Sleeping in poll, not recv.** A thread asleep in ``recv`` on a Unix socket is woken not only
by the reply but also when the server reads the request: consuming it frees the client's
send buffer, and the kernel wakes whoever sleeps on the client's socket for "writable"
(``unix_write_space``), which a sleeper in ``recv`` does not filter out. With more clients
than CPUs the server reads a request after its client went to sleep, so most calls were woken
twice: a second context switch in the client, and a wake-up the server paid for in its
``recv``. ``poll()`` for input filters that wake-up out, so a sync call sleeps in ``poll``
(``reply_wait``), then reads what it said is there.
"""

from __future__ import annotations

import functools
import math
import os
import select
import socket
from collections.abc import Callable
from time import perf_counter, thread_time

__all__ = ["ReplyPoll", "ReplyWait", "reply_wait"]

#: Sleeps until the socket it was made for is readable: a non-empty list, or an empty one
#: after the call timeout.
ReplyWait = Callable[[], list[tuple[int, int]]]

_DONTWAIT = socket.MSG_DONTWAIT
_yield = getattr(os, "sched_yield", lambda: None)


class ReplyPoll:
    """Reads a reply into a buffer, polling for up to ``seconds`` before a blocking read."""

    __slots__ = ("backoff", "misses", "seconds", "skip", "wait")

    #: Misses in a row after which polling stops for a while (``backoff`` calls).
    MAX_MISSES = 3
    #: The most calls polling stops for.
    MAX_BACKOFF = 4096

    def __init__(self, seconds: float, wait: ReplyWait) -> None:
        self.seconds = seconds
        self.wait = wait  # what a read that stopped polling sleeps in (``reply_wait``)
        self.misses = 0
        self.skip = 0  # calls left that sleep at once (the sync transport counts them down itself)
        self.backoff = 1  # how many the next stop lasts

    @classmethod
    def for_socket(
        cls, sock: object, seconds: float, tracking: bool, wait: ReplyWait | None
    ) -> ReplyPoll | None:
        """A poll for a sync transport's socket, or None: polling is off (``seconds`` 0), the
        socket is not a plain one (TLS, or an end of a server in this process: no ``wait``),
        or it is the cache's reader, which waits for pushes rather than replies."""
        if seconds > 0 and not tracking and wait is not None and type(sock) is socket.socket:
            return cls(seconds, wait)
        return None

    def receive(self, sock: socket.socket, buffer: memoryview) -> int:
        """``sock.recv_into(buffer)``, polled first; a poll that caught nothing sleeps in
        ``wait``, whose call timeout bounds it (TimeoutError)."""
        if self.skip:
            self.skip -= 1
            return receive_when_readable(self.wait, sock, buffer)
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
                return receive_when_readable(self.wait, sock, buffer)
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


def reply_wait(sock: object, timeout: float | None) -> ReplyWait | None:
    """What a sync call on ``sock`` sleeps in until its reply is readable, at most ``timeout``
    seconds (module docstring, "Sleeping in poll"); None for a socket that is not a plain one
    (TLS, an end of a server in this process), or where there is no ``poll()``."""
    if type(sock) is not socket.socket or not hasattr(select, "poll"):
        return None
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    milliseconds = -1 if timeout is None else max(1, math.ceil(timeout * 1000))
    return functools.partial(poller.poll, milliseconds)


def receive_when_readable(wait: ReplyWait, sock: socket.socket, buffer: memoryview) -> int:
    """``sock.recv_into(buffer)`` once ``wait`` says it is readable; TimeoutError if it does
    not become readable within the call timeout."""
    if not wait():
        raise TimeoutError("no reply within the call timeout")
    return sock.recv_into(buffer)
