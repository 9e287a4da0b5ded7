"""``Namespace``: the blocking proxy, a thin shell of plain sockets around the protocol.

Connections are per thread and per server, shared by every proxy of this process that points at
that server, as the stdlib's proxies do: threads never wait for each other, and a thread has at
most one request in flight, so the next reply on its socket is the answer to its request.

Fork safety, after redis-py: each connection remembers the pid that opened it. A forked child
drops the inherited connections (closing only its own copies of the descriptors, never shutting
the parent's sockets down) and opens fresh ones on first use.
"""

from __future__ import annotations

import collections
import os
import socket
import ssl
import threading
import time
from collections.abc import Callable
from types import TracebackType
from typing import Any

from . import _calls as calls
from ._cache import CACHES, SPECIAL_ENTRIES, CacheConnection, entry_value
from ._codec import decode_value, encode_value
from ._errors import ConnectionLost, map_connection_errors
from ._protocol import Address, ClientConnection, Hello, Invalidate, Push, Reply
from ._proxy import ProxyBase, Target, check_attribute_name, format_namespace

__all__ = ["Namespace"]

_ABSENT = object()

READ_CHUNK_BYTES = 256 * 1024  # one buffer per connection, reused: large values in fewer reads


def open_socket(address: Address, ssl_context: ssl.SSLContext | None = None) -> socket.socket:
    """A connected blocking socket (TCP_NODELAY for TCP: every frame is a whole message)."""
    if isinstance(address, tuple):
        sock = socket.create_connection(address)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    else:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
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
        with map_connection_errors(self.address, connecting=True):
            self.sock = open_socket(self.address, target.ssl_context)
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
        """Send one request and block until its reply; raise what the server raised."""
        request_id, frame = self.protocol.send_request(op, *args)
        assert self.sock is not None
        sent = False
        try:
            with map_connection_errors(self.address):
                self.sock.sendall(frame)
                sent = True
                reply = self._receive_until(
                    lambda event: type(event) is Reply and event.id in (request_id, 0))
        except BaseException as exc:
            # Interrupted or broken mid-call: the stream position is unknown, never reuse it.
            self.close()
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
        received = self.sock.recv_into(self._buffer)
        if not received:
            raise ConnectionLost(f"the aionamespace server at {self.address!r} closed the "
                                 "connection")
        return self.protocol.receive_data(self._buffer[:received])

    def _receive_until(self, wanted: Any) -> Hello | Reply | Push | Invalidate:
        """Read until an event ``wanted`` accepts; watch events are kept in ``pushes``."""
        while True:
            found = None
            for event in self.receive_events():
                if type(event) is Reply and event.id == 0:
                    return event  # the server's goodbye: nothing behind it counts
                if type(event) is Push:
                    self.pushes.append(event)
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
        self.locals: dict[tuple[Any, ...], threading.local] = {}

    def connection(self, target: Target) -> SyncConnection:
        server = target.server
        local = self.locals.get(server)
        if local is None:
            with self.lock:
                local = self.locals.setdefault(server, threading.local())
        connection: SyncConnection | None = getattr(local, "connection", None)
        if connection is None or connection.closed or connection.pid != os.getpid():
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


class Lock:
    """``with ns._lock(name, timeout=None):`` -- see ``Namespace._lock``."""

    def __init__(self, ns: Namespace, name: str, timeout: float | None) -> None:
        self._ns, self._name, self._timeout = ns, name, timeout
        self._token = b""

    def __enter__(self) -> Lock:
        if self._token:
            raise RuntimeError(f"lock {self._name!r} is already held by this Lock object")
        token = os.urandom(16)
        self._ns._run(calls.acquire(self._ns._key, self._name, token, self._timeout))
        self._token = token
        return self

    def __exit__(self, *exc_info: object) -> None:
        token, self._token = self._token, b""
        self._ns._run(calls.release(self._ns._key, self._name, token))


class Watch:
    """An iterator of ``WatchEvent`` on a dedicated connection (see ``Namespace._watch``).

    ``revision`` is the namespace revision the watch started at; ``values`` the watched
    attributes at that revision (empty when resuming with ``since``).
    """

    def __init__(self, target: Target, names: tuple[str, ...], since: int | None) -> None:
        call = calls.watch(target.key, names, since)
        self._connection = SyncConnection(target)
        try:
            self._id, self.revision, values = self._connection.call(call.op, *call.args)
        except BaseException:
            self._connection.close()
            raise
        self.values = calls.decode_values(values)

    def next(self, timeout: float | None = None) -> calls.WatchEvent:
        """The next change; TimeoutError if none comes within ``timeout`` seconds."""
        push = self._connection.next_push(timeout)
        return calls.event_from_push(push.name, push.revision, push.value)

    def __iter__(self) -> Watch:
        return self

    def __next__(self) -> calls.WatchEvent:
        return self.next()

    def close(self) -> None:
        """Stop watching: closes the watch's connection."""
        self._connection.close()

    def __enter__(self) -> Watch:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __del__(self) -> None:
        connection = getattr(self, "_connection", None)
        if connection is not None:
            connection.close()


class _State:
    __slots__ = ("cache", "target")

    def __init__(self, target: Target) -> None:
        self.target = target
        self.cache: CacheConnection | None = None


class Namespace(ProxyBase):
    """A blocking proxy to a namespace on an aionamespace server.

    ``ns.x``, ``ns.x = v`` and ``del ns.x`` are round trips to the server; names starting with
    ``_`` stay on this proxy. Usually made by ``Manager.Namespace()``; to reach a namespace
    directly: ``Namespace(address, name=None, authkey=None)`` (``name=None`` creates a new
    anonymous one).
    """

    __slots__ = ()

    def _attach(self, target: Target) -> None:
        object.__setattr__(self, "_aionamespace", _State(target))

    def _call(self, op: str, *args: Any) -> Any:
        target = self._aionamespace.target
        return self._retrying(op, lambda: POOL.connection(target).call(op, *args))

    def _retrying(self, op: str, attempt: Callable[[], Any],
                  failed: ConnectionLost | None = None) -> Any:
        """``attempt()``, again after a lost connection when the retry policy allows
        (``failed``: the first attempt, made by a fast path, already failed so)."""
        retry = self._aionamespace.target.retry
        failures = 0
        while True:
            if failed is not None:
                failures += 1
                delay = retry.delay(op, failures, failed)
                if delay is None:
                    raise failed
                time.sleep(delay)  # back off before reconnecting (not synchronisation)
            try:
                return attempt()
            except ConnectionLost as exc:
                failed = exc

    def _run(self, call: calls.Call) -> Any:
        target = self._aionamespace.target
        if target.cache and call.changes:
            cache = CACHES.existing(target)
            if cache is not None:
                cache.forget(target.key, call.changes)
        return call.read(self._call(call.op, *call.args))

    @property
    def _key(self) -> str:
        return self._aionamespace.target.key  # type: ignore[no-any-return]

    def __getattribute__(self, name: str) -> Any:
        # Shared names are looked up here, not in __getattr__: that is only called after the
        # normal lookup has raised (and thrown away) an AttributeError, which would cost a
        # cached read a third of its time. Everything of the proxy's own starts with "_".
        if name[:1] == "_":
            return object.__getattribute__(self, name)
        state: _State = object.__getattribute__(self, "_aionamespace")
        if state.target.cache:
            cache = state.cache
            if cache is not None and cache.usable:  # the hot path: one dict lookup
                entry = cache.values.get((state.target.key, name), _ABSENT)
                if entry is not _ABSENT:
                    return entry if type(entry) not in SPECIAL_ENTRIES else entry_value(
                        entry, name)
            return self._retrying("get", lambda: self._cache().get(state.target.key, name))
        target = state.target
        try:  # the fast path: one round trip, no Call object, no closures
            return decode_value(POOL.connection(target).call("get", target.key, name))
        except ConnectionLost as exc:
            def attempt() -> Any:
                return decode_value(POOL.connection(target).call("get", target.key, name))
            return self._retrying("get", attempt, exc)

    def _cache(self) -> CacheConnection:
        state: _State = self._aionamespace
        state.cache = CACHES.connection(state.target)
        return state.cache

    def __setattr__(self, name: str, value: Any) -> None:
        check_attribute_name(name)
        if name.startswith("_"):
            object.__setattr__(self, name, value)
            return
        target = self._aionamespace.target
        if target.cache:
            self._run(calls.set_(target.key, name, value))  # forgets the cached value first
            return
        blob = encode_value(value)
        try:  # the fast path, as for reads
            POOL.connection(target).call("set", target.key, name, blob)
        except ConnectionLost as exc:
            self._retrying("set", lambda: POOL.connection(target).call(
                "set", target.key, name, blob), exc)

    def __delattr__(self, name: str) -> None:
        check_attribute_name(name)
        if name.startswith("_"):
            object.__delattr__(self, name)
            return
        self._run(calls.delete(self._key, name))

    def __str__(self) -> str:
        return format_namespace(self._run(calls.dump(self._key)))

    def _open(self, **defaults: Any) -> None:
        """Create the namespace on the server now, giving it the ``defaults`` it lacks."""
        self._run(calls.open_(self._key, defaults))

    # ------------------------------------------------------------------ atomic operations

    def _snapshot(self, *names: str) -> calls.Snapshot:
        """All attributes (or those of ``names`` that exist), read together; ``.revision``."""
        return self._run(calls.snapshot(self._key, names))  # type: ignore[no-any-return]

    def _update(self, **values: Any) -> int:
        """Set several attributes at once (one revision, all or nothing); returns it."""
        return self._run(calls.update(self._key, values))  # type: ignore[no-any-return]

    def _incr(self, name: str, by: int | float = 1) -> Any:
        """Add ``by`` on the server (a missing name starts at 0); returns the new value."""
        return self._run(calls.incr(self._key, name, by))

    def _append(self, name: str, *items: Any) -> int:
        """Extend a shared list in place (a missing name starts empty); returns its length."""
        return self._run(calls.append(self._key, name, items))  # type: ignore[no-any-return]

    def _setdefault(self, name: str, value: Any) -> Any:
        """Set ``name`` unless it is set; returns the value it holds afterwards."""
        return self._run(calls.setdefault(self._key, name, value))

    def _pop(self, name: str, *default: Any) -> Any:
        """Remove ``name`` and return its value (or ``default``, if given, when it is unset)."""
        try:
            return self._run(calls.pop(self._key, name))
        except AttributeError:
            if default:
                return default[0]
            raise

    def _cas(self, name: str, expected: Any, new: Any) -> bool:
        """Set ``name`` to ``new`` only if it equals ``expected`` (same type); whether it did."""
        return self._run(calls.cas(self._key, name, expected, new))  # type: ignore[no-any-return]

    # ------------------------------------------------------------------ watches and locks

    def _watch(self, *names: str, since: int | None = None) -> Watch:
        """Iterate over changes (of ``names``, or all) as the server pushes them.

        ``since=revision`` first replays what changed after that revision (HistoryExpired if
        the server no longer remembers that far). The watch has its own connection: close it
        (``with`` / ``break`` out of a ``for`` loop) when done.
        """
        return Watch(self._aionamespace.target, names, since)

    def _wait_for(self, name: str, predicate: Callable[[Any], bool] | None = None,
                  timeout: float | None = None) -> Any:
        """Block until ``predicate(value)`` holds (or, without one, until ``name`` is set
        again) and return the value; TimeoutError after ``timeout`` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._watch(name) as watch:
            if predicate is not None and name in watch.values and predicate(watch.values[name]):
                return watch.values[name]
            while True:
                remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
                event = watch.next(timeout=remaining)
                if not event.deleted and (predicate is None or predicate(event.value)):
                    return event.value

    def _lock(self, name: str, timeout: float | None = None) -> Lock:
        """A lock shared by every process using this server: ``with ns._lock("name"):``.

        Released on exit, or by the server as soon as this connection dies. ``timeout``
        seconds without getting it raise TimeoutError.
        """
        return Lock(self, name, timeout)

    def _keys(self) -> list[str]:
        """The keys of every namespace on this proxy's server (named and anonymous)."""
        return self._call("keys")  # type: ignore[no-any-return]

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
