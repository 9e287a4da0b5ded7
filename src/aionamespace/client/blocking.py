"""The sync proxy's transport: a blocking socket per thread and per server, around the protocol.

Transports are per thread and per server, shared by every proxy of this process that points at
that server, as the stdlib's proxies do: threads never wait for each other, and a thread has at
most one request in flight, so the next reply on its socket is the answer to its request.

A signal handler that uses a proxy runs on the thread it interrupted, maybe in the middle of a
call on that thread's transport (a ``recv`` retried after EINTR runs the handler inside it):
the transport is then *busy*, and the handler's calls go through a transport of their own
(``SocketTransport.nested``), so that the interrupted call still gets its own reply.

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
import ssl
import threading
from typing import Any

from .._errors import ConnectionLost, LockLost
from ..protocol.addresses import Address
from ..protocol.connection import NO_FRAME, ClientConnection, Hello, Invalidation, Reply, WatchPush
from .calls import Operation
from .leases import Lease, lock_lost
from .proxy import Target
from .transport import Transport, connection_lost, map_connection_errors

__all__ = ["POOL", "SocketTransport", "open_socket", "open_transport"]

READ_CHUNK_BYTES = 256 * 1024  # one buffer per transport, reused: large values in fewer reads

Event = Hello | Reply | WatchPush | Invalidation


def open_socket(
    address: Address, ssl_context: ssl.SSLContext | None = None, timeout: float | None = None
) -> socket.socket:
    """A connected socket (TCP_NODELAY for TCP: every frame is a whole message), with
    ``timeout`` on its operations until the caller lifts it (the handshake's bound)."""
    if isinstance(address, tuple):
        sock = socket.create_connection(address, timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    else:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        try:
            sock.connect(address)
        except BaseException:
            sock.close()
            raise
    if ssl_context is None:
        return sock
    hostname = address[0] if isinstance(address, tuple) else None
    try:
        return ssl_context.wrap_socket(sock, server_hostname=hostname)
    except BaseException:
        sock.close()
        raise


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
        self.sock: socket.socket | None = None
        self.closed = True  # until connected (an attribute: the pool tests it on every call)
        self.busy = False  # between sending a request and reading its reply
        self._nested: SocketTransport | None = None  # for calls re-entering a busy one
        self.leases: dict[bytes, Lease] = {}  # the locks held on this connection, by token
        # recv_into one buffer per transport: recv(n) would allocate n bytes on every call.
        self._buffer = memoryview(bytearray(READ_CHUNK_BYTES))
        self.pushes: collections.deque[WatchPush] = collections.deque()
        timeout = target.limits.handshake_timeout
        with map_connection_errors(self.address, connecting=True, handshake_timeout=timeout):
            if target.in_process is None:
                self.sock = open_socket(self.address, target.ssl_context, timeout)
            else:  # a server in this process: an in-memory end (loopback.py)
                self.sock = target.in_process.socket(timeout)
            try:
                self._handshake()
                self.sock.settimeout(None)  # from here on, a call waits as long as it takes
                self.closed = False
            except BaseException:
                self.close()
                raise

    def _handshake(self) -> None:
        """``ClientConnection``'s handshake over the blocking socket."""
        assert self.sock is not None
        try:
            self.sock.sendall(self.protocol.start())
        except OSError:
            self._read_refusal()  # a server refusing us at once may have said why
            raise
        while not self.protocol.greeted:
            self._events(self.sock.recv_into(self._buffer))
        reply = self.protocol.handshake_reply()
        if reply:
            self.sock.sendall(reply)

    def _read_refusal(self) -> None:
        """Raise the reason a refusing server sent before closing, if it is there to read."""
        assert self.sock is not None
        self.sock.settimeout(1.0)
        try:
            received = self.sock.recv_into(self._buffer)
        except OSError:
            return  # nothing readable: the caller raises its own error
        finally:
            self.sock.settimeout(None)
        self.protocol.receive_data(self._buffer[:received])  # a refusal raises its reason

    def call(self, operation: Operation, args: tuple[Any, ...]) -> Any:
        """Send one request and block until its reply; raise what the server raised.

        The hot path: one send, one receive, and a reply that came alone decoded in one call.
        (A try block instead of map_connection_errors: a context manager per call would cost
        as much as the rest of the Python here.)
        """
        if self.busy:  # re-entered mid-call, by a signal handler: the stream is not ours now
            return self.nested().call(operation, args)
        protocol = self.protocol
        if operation.op == "get":
            request_id, frame = protocol.send_get(*args)
        else:
            request_id, frame = protocol.send_request(operation.op, *args)
        sock = self.sock
        assert sock is not None
        sent = False
        try:
            self.busy = True
            sock.sendall(frame)
            sent = True
            received = sock.recv_into(self._buffer)
            if received:
                result = protocol.lone_result(request_id, self._buffer[:received])
                if result is not NO_FRAME:
                    self.busy = False
                    read = operation.read
                    return result if read is None else read(result)
            reply = self._receive_until(request_id, self._events(received))
            self.busy = False
        except BaseException as exc:
            # Interrupted or broken mid-call: the stream position is unknown, never reuse it.
            self.busy = False
            self.close()
            lost = connection_lost(exc, self.address)
            if lost is not None:
                lost.request_sent = sent
                raise lost from exc
            if isinstance(exc, ConnectionLost):
                exc.request_sent = sent
            raise
        if reply.error is not None:
            if reply.id == 0:  # the server dropped the whole connection
                self.close()
            raise reply.error
        read = operation.read
        return reply.result if read is None else read(reply.result)

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
        names = sorted({lease.name for lease in self.leases.values()})
        return lock_lost(
            ", ".join(names),
            self.address,
            "; this thread's calls to that server raise LockLost until it releases the lock",
        )

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
        """The next watch event on this connection; TimeoutError after ``timeout`` seconds."""
        if not self.pushes:
            assert self.sock is not None
            if timeout is not None and timeout <= 0:  # settimeout(0) would mean non-blocking
                raise TimeoutError("no watch event arrived in time")
            self.sock.settimeout(timeout)
            try:
                with map_connection_errors(self.address):
                    while not self.pushes:
                        goodbye = self._sort(self.receive(), 0)
                        if goodbye is not None:
                            raise goodbye.error or ConnectionLost("the server said goodbye")
            except TimeoutError:
                raise
            except BaseException:
                self.close()
                raise
        return self.pushes.popleft()

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
    """Per-thread transports, keyed by server; emptied in a forked child."""

    def __init__(self) -> None:
        self.lock = threading.RLock()  # (a signal handler may take it on the same thread)
        self.locals: dict[tuple[Any, ...], threading.local] = {}

    def transport(self, target: Target) -> Transport:
        server = target.server
        local = self.locals.get(server)
        if local is None:
            with self.lock:
                local = self.locals.setdefault(server, threading.local())
        transport: Transport | None = getattr(local, "transport", None)
        if transport is None or transport.closed:  # (a forked child: see after_fork)
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
        self.lock = threading.RLock()
        self.locals = {}  # inherited transports are closed (not shut down) as they are collected


POOL = _Pool()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=POOL.after_fork)
