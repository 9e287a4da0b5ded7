"""``Namespace``: the blocking proxy, a thin shell of plain sockets around the protocol.

Connections are per thread and per server, shared by every proxy of this process that points at
that server, as the stdlib's proxies do: threads never wait for each other, and a thread has at
most one request in flight, so the next reply on its socket is the answer to its request.

Fork safety, after redis-py: each connection remembers the pid that opened it. A forked child
drops the inherited connections (closing only its own copies of the descriptors, never shutting
the parent's sockets down) and opens fresh ones on first use.
"""

from __future__ import annotations

import os
import socket
import threading
from types import TracebackType
from typing import Any

from ._codec import decode_value, encode_value
from ._errors import ConnectionLost, map_connection_errors
from ._protocol import Address, ClientConnection, Hello, Limits, Reply
from ._proxy import ProxyBase, Target, check_attribute_name, format_namespace

__all__ = ["Namespace"]

READ_CHUNK_BYTES = 64 * 1024


def open_socket(address: Address) -> socket.socket:
    """A connected blocking socket (TCP_NODELAY for TCP: every frame is a whole message)."""
    if isinstance(address, tuple):
        sock = socket.create_connection(address)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(address)
    except BaseException:
        sock.close()
        raise
    return sock


class SyncConnection:
    """One blocking socket, its protocol state, and the pid that owns it."""

    def __init__(self, target: Target) -> None:
        self.address = target.address
        self.pid = os.getpid()
        self.protocol = ClientConnection(target.limits, target.authkey)
        self.sock: socket.socket | None = None
        # recv_into one buffer per connection: recv(n) would allocate n bytes on every call.
        self._buffer = memoryview(bytearray(READ_CHUNK_BYTES))
        with map_connection_errors(self.address, connecting=True):
            self.sock = open_socket(self.address)
            try:
                self.sock.sendall(self.protocol.send_hello())
                self._receive_until(lambda event: type(event) is Hello)
                proof = self.protocol.send_proof()
                if proof:
                    self.sock.sendall(proof)
            except BaseException:
                self.close()
                raise

    def call(self, op: str, *args: Any) -> Any:
        """Send one request and block until its reply; raise what the server raised."""
        request_id, frame = self.protocol.send_request(op, *args)
        assert self.sock is not None
        try:
            with map_connection_errors(self.address):
                self.sock.sendall(frame)
                reply = self._receive_until(
                    lambda event: type(event) is Reply and event.id in (request_id, 0))
        except BaseException:
            # Interrupted or broken mid-call: the stream position is unknown, never reuse it.
            self.close()
            raise
        assert isinstance(reply, Reply)
        if reply.error is not None:
            if reply.id == 0:  # the server dropped the whole connection
                self.close()
            raise reply.error
        return reply.result

    def _receive_until(self, wanted: Any) -> Hello | Reply:
        assert self.sock is not None
        while True:
            received = self.sock.recv_into(self._buffer)
            if not received:
                raise ConnectionLost(f"the aionamespace server at {self.address!r} closed the "
                                     "connection")
            found = None
            for event in self.protocol.receive_data(self._buffer[:received]):
                if wanted(event):
                    found = event
            if found is not None:
                return found

    @property
    def closed(self) -> bool:
        return self.sock is None

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
        self.locals: dict[tuple[Address, bytes | None], threading.local] = {}

    def connection(self, target: Target) -> SyncConnection:
        server = (target.address, target.authkey)
        local = self.locals.get(server)
        if local is None:
            with self.lock:
                local = self.locals.setdefault(server, threading.local())
        connection: SyncConnection | None = getattr(local, "connection", None)
        if connection is None or connection.closed or connection.pid != os.getpid():
            connection = local.connection = SyncConnection(target)
        return connection

    def discard(self, target: Target) -> None:
        local = self.locals.get((target.address, target.authkey))
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


class _State:
    __slots__ = ("target",)

    def __init__(self, target: Target) -> None:
        self.target = target


class Namespace(ProxyBase):
    """A blocking proxy to a namespace on an aionamespace server.

    ``ns.x``, ``ns.x = v`` and ``del ns.x`` are round trips to the server; names starting with
    ``_`` stay on this proxy. Usually made by ``Manager.Namespace()``; to reach a namespace
    directly: ``Namespace(address, name=None, authkey=None)`` (``name=None`` creates a new
    anonymous one).
    """

    __slots__ = ()

    def __init__(self, address: Address, name: str | None = None, /, *,
                 authkey: bytes | None = None, limits: Limits | None = None) -> None:
        self._attach(Target.create(address, name, authkey, limits))

    def _attach(self, target: Target) -> None:
        object.__setattr__(self, "_aionamespace", _State(target))

    def _call(self, op: str, *args: Any) -> Any:
        state: _State = self._aionamespace
        return POOL.connection(state.target).call(op, *args)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")
        return decode_value(self._call("get", self._aionamespace.target.key, name))

    def __setattr__(self, name: str, value: Any) -> None:
        check_attribute_name(name)
        if name.startswith("_"):
            object.__setattr__(self, name, value)
            return
        self._call("set", self._aionamespace.target.key, name, encode_value(value))

    def __delattr__(self, name: str) -> None:
        check_attribute_name(name)
        if name.startswith("_"):
            object.__delattr__(self, name)
            return
        self._call("del", self._aionamespace.target.key, name)

    def __str__(self) -> str:
        return format_namespace(self._call("dump", self._aionamespace.target.key))

    def _open(self, **defaults: Any) -> None:
        """Create the namespace on the server now, giving it the ``defaults`` it lacks."""
        encoded = {name: encode_value(value) for name, value in defaults.items()}
        self._call("open", self._aionamespace.target.key, encoded)

    def _snapshot(self) -> dict[str, Any]:
        """Every shared attribute, as a dict, in one round trip."""
        blobs = self._call("dump", self._aionamespace.target.key)
        return {name: decode_value(blob) for name, blob in blobs.items()}

    def _ping(self) -> None:
        """One round trip; raises ConnectionLost if the server is unreachable."""
        self._call("ping")

    def _close(self) -> None:
        """Close this thread's connection to the server (the next use reopens one)."""
        POOL.discard(self._aionamespace.target)

    def __enter__(self) -> Namespace:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._close()
