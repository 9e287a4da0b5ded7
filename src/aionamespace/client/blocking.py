"""Blocking connections: a plain socket per thread and per server, around the protocol.

Connections are per thread and per server, shared by every proxy of this process that points at
that server, as the stdlib's proxies do: threads never wait for each other, and a thread has at
most one request in flight, so the next reply on its socket is the answer to its request.

Fork safety, after redis-py: each connection remembers the pid that opened it. A forked child
drops the inherited connections (closing only its own copies of the descriptors, never shutting
the parent's sockets down) and opens fresh ones on first use. It never finds them: the pool is
emptied in the child right after the fork (``os.register_at_fork``), so a call needs no
``getpid()`` (a system call, on every get) to tell whose connection it holds.
"""

from __future__ import annotations

import collections
import os
import socket
import ssl
import threading
from collections.abc import Sequence
from typing import Any

from .._errors import ConnectionLost, connection_lost, map_connection_errors
from ..protocol.connection import (
    NO_FRAME,
    Address,
    ClientConnection,
    Hello,
    Invalidate,
    Push,
    Reply,
)
from .proxy import Target

__all__ = ["POOL", "SyncConnection", "open_socket"]

READ_CHUNK_BYTES = 256 * 1024  # one buffer per connection, reused: large values in fewer reads


def open_socket(address: Address, ssl_context: ssl.SSLContext | None = None,
                timeout: float | None = None) -> socket.socket:
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


class SyncConnection:
    """One blocking socket, its protocol state, and the pid that owns it."""

    def __init__(self, target: Target) -> None:
        self.address = target.address
        self.pid = os.getpid()
        self.protocol = ClientConnection(target.limits, target.authkey)
        self.sock: socket.socket | None = None
        # recv_into one buffer per connection: recv(n) would allocate n bytes on every call.
        self._buffer = memoryview(bytearray(READ_CHUNK_BYTES))
        self.pushes: collections.deque[Push] = collections.deque()
        timeout = target.limits.handshake_timeout
        with map_connection_errors(self.address, connecting=True, handshake_timeout=timeout):
            self.sock = open_socket(self.address, target.ssl_context, timeout)
            try:
                try:
                    self.sock.sendall(self.protocol.send_hello())
                except OSError:
                    self._read_refusal()  # a server refusing us at once may have said why
                    raise
                self._receive_until(lambda event: type(event) is Hello)
                proof = self.protocol.send_proof()
                if proof:
                    self.sock.sendall(proof)
                self.sock.settimeout(None)  # from here on, a call waits as long as it takes
            except BaseException:
                self.close()
                raise

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

    def call(self, op: str, *args: Any) -> Any:
        """Send one request and block until its reply; raise what the server raised.

        The hot path: one send, one receive, and a reply that came alone decoded in one call.
        (A try block instead of map_connection_errors: that context manager costs as much
        as the rest of the Python here.)
        """
        if op == "get":
            request_id, frame = self.protocol.send_get(*args)
        else:
            request_id, frame = self.protocol.send_request(op, *args)
        sock = self.sock
        assert sock is not None
        sent = False
        try:
            sock.sendall(frame)
            sent = True
            received = sock.recv_into(self._buffer)
            if received:
                result = self.protocol.lone_result(request_id, self._buffer[:received])
                if result is not NO_FRAME:
                    return result
            reply = self._receive_until(
                lambda event: type(event) is Reply and event.id in (request_id, 0),
                self._events(received))
        except BaseException as exc:
            # Interrupted or broken mid-call: the stream position is unknown, never reuse it.
            self.close()
            lost = connection_lost(exc, self.address)
            if lost is not None:
                lost.request_sent = sent
                raise lost from exc
            if isinstance(exc, ConnectionLost):
                exc.request_sent = sent
            raise
        assert isinstance(reply, Reply)
        if reply.error is not None:
            if reply.id == 0:  # the server dropped the whole connection
                self.close()
            raise reply.error
        return reply.result

    def next_push(self, timeout: float | None = None) -> Push:
        """The next watch event on this connection; TimeoutError after ``timeout`` seconds."""
        if not self.pushes:
            assert self.sock is not None
            if timeout is not None and timeout <= 0:  # settimeout(0) would mean non-blocking
                raise TimeoutError("no watch event arrived in time")
            self.sock.settimeout(timeout)
            try:
                with map_connection_errors(self.address):
                    self._receive_until(lambda event: type(event) is Push)
            except TimeoutError:
                raise
            except BaseException:
                self.close()
                raise
        return self.pushes.popleft()

    def receive_events(self) -> list[Hello | Reply | Push | Invalidate]:
        """Block for the next chunk and return the events it completes (maybe none)."""
        assert self.sock is not None
        large = self.protocol.large_value()
        received = self.sock.recv_into(self._buffer if large is None else large)
        if large is not None and received:  # the kernel wrote into the value's own buffer
            return self.protocol.large_received(received)
        return self._events(received)

    def _events(self, received: int) -> list[Hello | Reply | Push | Invalidate]:
        """The events completed by ``received`` bytes read into the buffer (0: closed)."""
        if not received:
            raise ConnectionLost(f"the aionamespace server at {self.address!r} closed the "
                                 "connection")
        return self.protocol.receive_data(self._buffer[:received])

    def _receive_until(self, wanted: Any, events: Sequence[Hello | Reply | Push | Invalidate] = (),
                       ) -> Hello | Reply | Push | Invalidate:
        """Read until an event ``wanted`` accepts (among ``events`` first, if given: those
        already read); watch events are kept in ``pushes``."""
        while True:
            found = None
            for event in events:
                if type(event) is Reply and event.id == 0:
                    return event  # the server's goodbye: nothing behind it counts
                if type(event) is Push:
                    self.pushes.append(event)
                if wanted(event):
                    found = event
            if found is not None:
                return found
            events = self.receive_events()

    def close(self) -> None:
        """Release this process's descriptor; only the opening process shuts the socket down."""
        sock, self.sock = self.sock, None
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
    """Per-thread connections, keyed by server; emptied in a forked child."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.locals: dict[tuple[Any, ...], threading.local] = {}

    def connection(self, target: Target) -> SyncConnection:
        server = target.server
        local = self.locals.get(server)
        if local is None:
            with self.lock:
                local = self.locals.setdefault(server, threading.local())
        connection: SyncConnection | None = getattr(local, "connection", None)
        if connection is None or connection.sock is None:  # (a forked child: see after_fork)
            connection = local.connection = SyncConnection(target)
        return connection

    def discard(self, target: Target) -> None:
        local = self.locals.get(target.server)
        connection = getattr(local, "connection", None)
        if connection is not None:
            connection.close()
            del local.connection  # type: ignore[union-attr]

    def after_fork(self) -> None:
        self.lock = threading.Lock()
        self.locals = {}  # inherited connections are closed (not shut down) as they are collected


POOL = _Pool()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=POOL.after_fork)
