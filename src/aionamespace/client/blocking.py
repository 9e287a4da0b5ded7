"""The sync proxy's transport: a blocking socket per thread and per server, around the protocol.

Transports are per thread and per server, shared by every proxy of this process that points at
that server, as the stdlib's proxies do: threads never wait for each other, and a thread has at
most one request in flight, so the next reply on its socket is the answer to its request.

A signal handler runs on the thread it interrupted, maybe mid-call on its transport (inside a
``recv`` retried after EINTR): the transport is then *busy*, and the handler's calls go through
a transport of their own (``SocketTransport.nested``); the interrupted call gets its reply.

Fork safety, after redis-py: each transport remembers the pid that opened it. A forked child
drops the inherited ones (closing only its own copies of the descriptors, never shutting the
parent's sockets down) and opens fresh ones on first use. It never finds them: the pool is
emptied in the child right after the fork (``os.register_at_fork``), so a call needs no
``getpid()`` (a system call, on every get) to tell whose transport it holds.
"""

from __future__ import annotations

import collections
import os
import socket
import threading
from time import monotonic
from typing import Any

from .._errors import ConnectionLost, LockLost, ServerTimeout
from ..protocol.connection import NO_FRAME, ClientConnection, Hello, Invalidation, Reply, WatchPush
from .busypoll import ReplyPoll, ReplyWait, receive_when_readable, reply_wait
from .calls import Operation
from .connecting import handshake, open_socket
from .large_gets import LargeGets
from .leases import Lease, thread_leases_lost
from .liveness import (
    CALL_TIMEOUTS,
    IDLE_CHECK_SECONDS,
    WAITS,
    handshake_timeout,
    left_while_idle,
    peek,
    server_timeout,
    set_call_timeout,
)
from .proxy import Target
from .transport import Transport, connection_lost, map_connection_errors

__all__ = ["POOL", "SocketTransport", "open_socket", "open_transport"]

READ_CHUNK_BYTES = 256 * 1024  # one buffer per transport, reused: large values in fewer reads

Event = Hello | Reply | WatchPush | Invalidation


def open_transport(target: Target, *, track: bool = False) -> Transport:
    """A new sync transport to ``target``'s server."""
    return SocketTransport(target, track=track)


class SocketTransport:
    """One blocking socket, its protocol state, and the pid that owns it."""

    def __init__(self, target: Target, *, track: bool = False) -> None:
        self.target = target
        self.address = target.address
        self.pid = os.getpid()
        self.protocol = ClientConnection(target.limits, target.authkey, track=track)
        self.protocol.reuse_large_buffer(0 if track else 16 * READ_CHUNK_BYTES)  # call() reads now
        self.sock: socket.socket | None = None
        self.closed = True  # until connected (an attribute: the pool tests it on every call)
        self.busy = False  # between sending a request and reading its reply
        self._nested: SocketTransport | None = None  # for calls re-entering a busy one
        self.leases: dict[bytes, Lease] = {}  # the locks held on this connection, by token
        # recv_into one buffer per transport: recv(n) would allocate n bytes on every call.
        self._buffer = memoryview(bytearray(READ_CHUNK_BYTES))
        self.pushes: collections.deque[WatchPush] = collections.deque()
        # How long a call waits for a silent server (the cache's reader, which waits for
        # invalidations, has no such bound); Python's own socket timeout, if it keeps one.
        self.call_timeout = None if track else target.limits.call_timeout
        self.sock_timeout: float | None = None
        self._poll: ReplyPoll | None = None
        self._wait: ReplyWait | None = None  # what a call sleeps in until its reply is readable
        self.fresh_until = 0.0  # until then the connection was in use: no idle check
        self.check_idle = target.in_process is None  # (a loopback end cannot go stale)
        timeout = handshake_timeout(target.limits)
        with map_connection_errors(self.address, connecting=True, handshake_timeout=timeout):
            if target.in_process is None:
                self.sock = open_socket(self.address, target.ssl_context, timeout)
            else:  # a server in this process: an in-memory end (loopback.py)
                self.sock = target.in_process.socket(timeout)
            try:
                handshake(self.sock, self.protocol, self._buffer, self._events)
                self.sock.settimeout(None)
                if self.call_timeout is not None:  # set once: a call arms nothing (liveness)
                    if set_call_timeout(self.sock, self.call_timeout):
                        self.sock_timeout = self.call_timeout
                self.fresh_until = monotonic() + IDLE_CHECK_SECONDS
                if not track:
                    self._wait = reply_wait(self.sock, self.call_timeout)
                self._poll = ReplyPoll.for_socket(
                    self.sock, target.limits.reply_poll, track, self._wait
                )
                self._large_gets = LargeGets(self._wait is not None, self.address)
                self.closed = False
            except BaseException:
                self.close()
                raise

    def call(self, operation: Operation, args: tuple[Any, ...]) -> Any:
        """Send one request and block until its reply; raise what the server raised.

        The hot path: one send, one receive, and a reply that came alone decoded in one call.
        (A try block instead of map_connection_errors: a context manager per call would cost
        as much as the rest of the Python here.) A connection idle for a while is first
        checked for a server that left it (``liveness.py``).
        """
        if self.busy:  # re-entered mid-call, by a signal handler: the stream is not ours now
            return self.nested().call(operation, args)
        now = monotonic()
        if now > self.fresh_until and self.check_idle:
            self.busy = True  # (it reads into the buffer a handler's call would use)
            try:
                self._check_idle()
            finally:
                self.busy = False
        self.fresh_until = now + IDLE_CHECK_SECONDS
        protocol, large = self.protocol, self._large_gets
        op, head = operation.op, 0  # head: a get of large bytes reads their head first
        if op == "get":
            request_id, frame = protocol.send_get(*args)
            if args == large.args:
                head = large.head(args, request_id, protocol.between_frames)
                limit = protocol.receive_limit
        elif op == "set":
            request_id, frame = protocol.send_set(*args)
        else:
            request_id, frame = protocol.send_request(operation.op, *args)
        sock = self.sock
        assert sock is not None
        sent = False
        try:
            self.busy = True
            sock.sendall(frame)
            sent = True
            poll, buffer = self._poll, self._buffer[:head] if head else self._buffer
            if poll is None or poll.skip:  # not polling (now): a blocking read, no call more
                if poll is not None:
                    poll.skip -= 1
                wait = self._wait  # (busypoll.py: "Sleeping in poll")
                if wait is None:
                    received = sock.recv_into(buffer)
                else:
                    received = receive_when_readable(wait, sock, buffer)
            else:
                received = poll.receive(sock, buffer)
            if head and received:  # a get of large bytes, probably: their head first
                value, received = large.receive(sock, buffer, received, request_id, limit)
                if value is not None:
                    self.busy = False
                    return value
            if received:
                result = protocol.lone_result(request_id, self._buffer[:received])
                if result is not NO_FRAME:
                    self.busy = False
                    read = operation.read
                    return result if read is None else read(result)
            reply = self._receive_until(request_id, self._events(received))
            self.busy = False
        except BaseException as exc:
            if not (sent and operation.op in WAITS and isinstance(exc, CALL_TIMEOUTS)):
                self.busy = False
                self._fail(exc, sent)
            try:
                reply = self._keep_waiting(request_id)  # a lock wait: is the server alive?
            finally:
                self.busy = False
        if reply.error is not None:
            if reply.id == 0:  # the server dropped the whole connection
                self.close()
            raise reply.error
        if operation.read is not None:
            value = operation.read(reply.result)
            if op == "get":
                large.learn(args, value)
            return value
        return bytearray(reply.result) if type(reply.result) is memoryview else reply.result

    def nested(self) -> SocketTransport:
        """The transport for calls made while this one is busy (opened on first use)."""
        nested = self._nested
        if nested is None or nested.closed:
            if nested is not None and nested.leases:
                raise nested.lease_lost()
            nested = self._nested = SocketTransport(self.target)
        return nested

    def lease_lost(self) -> LockLost:
        """What a call on this closed transport raises while it had locks (``leases.py``)."""
        return thread_leases_lost(self.leases, self.address)

    epoch = property(lambda self: self.protocol.epoch, doc="the server's (its hello's)")

    def _fail(self, exc: BaseException, sent: bool) -> None:
        """Interrupted or broken mid-call: the stream position is unknown, never reuse it;
        raise what the caller sees (``sent``: whether the whole request had left)."""
        self.close()
        if isinstance(exc, CALL_TIMEOUTS) and self.call_timeout is not None:
            raise server_timeout(self.address, self.call_timeout, sent) from exc
        lost = connection_lost(exc, self.address)
        if lost is not None:
            lost.request_sent = sent
            raise lost from exc
        if isinstance(exc, ConnectionLost):
            exc.request_sent = sent
        raise exc

    def _check_idle(self) -> None:
        """Raise ConnectionLost (``request_sent`` false) if the server left this idle
        connection: an end of stream, a reset, or its goodbye is waiting in the socket."""
        assert self.sock is not None
        found = peek(self.sock, self._buffer, self.sock_timeout)
        if found is None:
            return  # nothing there: as alive as anyone can tell without asking
        why = str(found)
        if type(found) is int:
            goodbye = self._sort(self._events(found), 0)  # (a late pong is dropped)
            if goodbye is None:
                return
            why = f"it said: {goodbye.error}"
        self.close()
        raise left_while_idle(self.address, why)

    def _keep_waiting(self, request_id: int) -> Reply:
        """The reply to a request that may take any time (a lock wait) has not come within
        ``call_timeout``: ping the server on this connection; while it answers, wait on.
        Its goodbye is returned like a reply (the caller raises it)."""
        pending = self._ping()
        while True:
            try:
                events = self.receive()
            except BaseException as exc:
                if pending or not isinstance(exc, CALL_TIMEOUTS):
                    self._fail(exc, True)  # no answer to a ping either: frozen
                pending = self._ping()
                continue
            for event in events:
                if type(event) is Reply:
                    if event.id == request_id or event.id == 0:
                        return event
                    if event.id == pending:
                        pending = 0  # alive: silence may last call_timeout again
                elif type(event) is WatchPush:
                    self.pushes.append(event)

    def _ping(self) -> int:
        """Send a ``ping`` (the liveness check of a long wait); its request id."""
        request_id, frame = self.protocol.send_request("ping")
        assert self.sock is not None
        try:
            self.sock.sendall(frame)
        except BaseException as exc:
            self._fail(exc, True)
        return request_id

    def send(self, operation: Operation, args: tuple[Any, ...]) -> int:
        """Send a request without waiting: its reply comes through ``receive``. The caller
        serialises sends (one thread at a time) and reads in one thread."""
        request_id, frame = self.protocol.send_request(operation.op, *args)
        assert self.sock is not None
        with map_connection_errors(self.address):
            self.sock.sendall(frame)
        return request_id

    def receive(self) -> list[Event]:
        """Block for the next chunk and return the events it completes (maybe none)."""
        assert self.sock is not None
        large = self.protocol.large_value()
        received = self.sock.recv_into(self._buffer if large is None else large)
        if large is not None and received:  # the kernel wrote into the value's own buffer
            return self.protocol.large_received(received)
        return self._events(received)

    def next_push(self, timeout: float | None = None) -> WatchPush:
        """The next watch event on this connection; TimeoutError after ``timeout`` seconds.

        A server silent for ``call_timeout`` is pinged; ServerTimeout if it does not answer
        within ``call_timeout`` either (``liveness.py``)."""
        if not self.pushes:
            if timeout is not None and timeout <= 0:  # settimeout(0) would mean non-blocking
                raise TimeoutError("no watch event arrived in time")
            deadline = None if timeout is None else monotonic() + timeout
            try:
                self._wait_for_push(deadline)
            except ServerTimeout:
                self.close()
                raise
            except TimeoutError:
                raise  # the caller's timeout: the watch goes on
            except BaseException as exc:
                self.close()
                lost = connection_lost(exc, self.address)
                if lost is not None:
                    raise lost from exc
                raise
        return self.pushes.popleft()

    def _wait_for_push(self, deadline: float | None) -> None:
        sock = self.sock
        assert sock is not None
        pending = 0  # a ping not answered yet
        while not self.pushes:
            wait = self.call_timeout
            if deadline is not None:
                left = deadline - monotonic()
                if left <= 0:
                    raise TimeoutError("no watch event arrived in time")
                wait = left if wait is None else min(wait, left)
            sock.settimeout(wait)
            try:
                events = self.receive()
            except CALL_TIMEOUTS:
                if deadline is not None and monotonic() >= deadline:
                    raise TimeoutError("no watch event arrived in time") from None
                if pending:
                    raise server_timeout(self.address, self.call_timeout, True) from None
                pending = self._ping()
                continue
            for event in events:
                if type(event) is Reply:
                    if event.id == 0:
                        raise event.error or ConnectionLost("the server said goodbye")
                    if event.id == pending:
                        pending = 0
                elif type(event) is WatchPush:
                    self.pushes.append(event)

    def _events(self, received: int) -> list[Event]:
        """The events completed by ``received`` bytes read into the buffer (0: closed)."""
        if not received:
            raise ConnectionLost(
                f"the aionamespace server at {self.address!r} closed the connection"
            )
        return self.protocol.receive_data(self._buffer[:received])

    def _receive_until(self, request_id: int, events: list[Event]) -> Reply:
        """Read until the reply to ``request_id`` (looking at ``events``, those already read,
        first) or the server's goodbye."""
        while True:
            reply = self._sort(events, request_id)
            if reply is not None:
                return reply
            events = self.receive()

    def _sort(self, events: list[Event], request_id: int) -> Reply | None:
        """Keep the watch events among ``events`` in ``pushes``; return the reply to
        ``request_id``, or the server's goodbye (nothing behind it counts), if there."""
        found = None
        for event in events:
            if type(event) is Reply:
                if event.id == 0:
                    return event
                if event.id == request_id:
                    found = event
            elif type(event) is WatchPush:
                self.pushes.append(event)
        return found

    def close(self) -> None:
        """Release this process's descriptor; only the opening process shuts the socket down."""
        sock, self.sock = self.sock, None
        self.closed = True
        nested, self._nested = self._nested, None
        if nested is not None:
            nested.close()
        if sock is None:
            return
        if self.pid == os.getpid():
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        sock.close()

    def __del__(self) -> None:
        self.close()


class _Pool:
    """Per-thread transports, keyed by server; a forked child drops those it inherited.

    Each server's ``threading.local`` lives as long as the process: a sync proxy keeps its
    server's (``local``) and finds this thread's transport there in one attribute read, where
    ``transport()`` would cost it a Python call and a lookup by a tuple on every get."""

    def __init__(self) -> None:
        self.lock = threading.RLock()  # (a signal handler may take it on the same thread)
        self.locals: dict[tuple[Any, ...], threading.local] = {}

    def local(self, target: Target) -> threading.local:
        """The ``threading.local`` whose ``transport`` is this thread's to ``target``'s
        server, once opened (``transport()`` opens it)."""
        server = target.server
        local = self.locals.get(server)
        if local is None:
            with self.lock:
                local = self.locals.setdefault(server, threading.local())
        return local

    def transport(self, target: Target) -> Transport:
        local = self.local(target)
        transport: Transport | None = getattr(local, "transport", None)
        if transport is None or transport.closed:
            if transport is not None and transport.leases:  # never reconnect under a lost lock
                raise transport.lease_lost()
            transport = local.transport = open_transport(target)
        return transport

    def discard(self, target: Target) -> None:
        """Close this thread's transport (one holding locks stays, closed: ``leases.py``)."""
        local = self.locals.get(target.server)
        transport = getattr(local, "transport", None)
        if transport is not None:
            transport.close()
            if not transport.leases:
                del local.transport  # type: ignore[union-attr]

    def after_fork(self) -> None:
        """In a forked child: drop the transports inherited from the thread that forked (the
        only one left; the others' went with their threads), which are closed, never shut
        down, as they are collected. The locals stay: proxies hold them."""
        self.lock = threading.RLock()
        for local in self.locals.values():
            local.__dict__.pop("transport", None)


POOL = _Pool()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=POOL.after_fork)
