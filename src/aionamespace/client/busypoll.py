"""A sync proxy's wait for its reply: polling the socket briefly before it sleeps.

The server's side of this (``server/busypoll.py``) explains the cost it avoids: on a machine
where waking a sleeping CPU is dear (virtual machines above all), a thread asleep in ``recv``
is woken late, and the longer the CPU it ran on stays idle, the later: a reply that takes the
server a little longer to make (a commit to a data file, a store over the network) then costs
the client much more than the difference. So a sync call, once its request is sent, first
reads the socket without blocking for up to ``Limits.reply_poll`` seconds, and sleeps in
``recv`` only if the reply has not come by then.

It adapts as the server's selector does: after ``MAX_MISSES`` polls in a row that caught
nothing (a server slower than the window, or CPUs too busy to lend one to polling: the poll
would take it from the server), it stops polling and sleeps at once, until a reply comes back
within one window again. Only plain sockets poll (a TLS socket's ``recv_into`` takes no flags),
and never a connection to a server in this very process, whose thread needs the GIL to answer.
"""

from __future__ import annotations

import socket
from time import perf_counter

__all__ = ["ReplyPoll"]

_DONTWAIT = socket.MSG_DONTWAIT


class ReplyPoll:
    """Reads a reply into a buffer, polling for up to ``seconds`` before a blocking read."""

    __slots__ = ("misses", "seconds")

    #: Polls in a row that caught nothing before polling stops paying: from then on the call
    #: sleeps at once, until a reply comes within one window again.
    MAX_MISSES = 3

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.misses = 0

    def receive(self, sock: socket.socket, buffer: memoryview) -> int:
        """``sock.recv_into(buffer)``, polled first (the socket's own timeout still bounds
        the blocking read, which follows a poll that caught nothing)."""
        window = self.seconds
        if self.misses < self.MAX_MISSES:
            deadline = perf_counter() + window
            while True:
                try:
                    received = sock.recv_into(buffer, 0, _DONTWAIT)
                except BlockingIOError:
                    if perf_counter() < deadline:
                        continue
                    self.misses += 1
                    break
                self.misses = 0
                return received
        started = perf_counter()
        received = sock.recv_into(buffer)
        if perf_counter() - started < window:
            self.misses = 0  # it would have been caught polling: poll again
        return received
