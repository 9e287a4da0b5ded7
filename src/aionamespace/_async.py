"""``AsyncNamespace``: the awaitable proxy, an anyio shell around the protocol.

Many tasks share one connection per proxy, with no background task required:

* every operation encodes its frame at once and appends it to the *outbox*; whoever holds the
  send lock sends the whole outbox in one write, so concurrent requests are pipelined and
  ``ns.x = v`` (which cannot await) is sent, in order, by the next await on the proxy;
* replies are matched by request id. One waiting task at a time is the *reader*: it reads
  chunks and hands each reply to its owner's event; when its own reply arrives it passes the
  role to another waiter. A cancelled waiter's reply is read and dropped, never delivered to
  anyone else;
* inside ``async with ns:`` a pump task sends queued writes as soon as they are made and reads
  their acknowledgements.

While a large outbox is being sent, a helper reads concurrently, so a server blocked on
answering us can never deadlock against us blocked on sending to it.
"""

from __future__ import annotations

from collections.abc import Generator
from types import TracebackType
from typing import Any

import anyio
import anyio.abc
import anyio.lowlevel

from ._codec import decode_value, encode_value
from ._errors import ConnectionLost, ProtocolError, map_connection_errors
from ._protocol import Address, ClientConnection, Hello, Limits, Reply
from ._proxy import ProxyBase, Target, check_attribute_name

__all__ = ["AsyncNamespace"]

READ_CHUNK_BYTES = 256 * 1024
CONCURRENT_READ_ABOVE_BYTES = 64 * 1024
_WRITE_OPS = ("set", "del")


async def open_stream(address: Address) -> anyio.abc.ByteStream:
    if isinstance(address, tuple):
        return await anyio.connect_tcp(*address)
    return await anyio.connect_unix(address)


class _Waiter:
    """A task waiting for reply ``id`` (or, with ``until``, for every reply up to that id)."""

    __slots__ = ("done", "error", "id", "result", "until", "wakeup")

    def __init__(self, request_id: int = 0, until: int = 0) -> None:
        self.id = request_id
        self.until = until
        self.done = False
        self.result: Any = None
        self.error: BaseException | None = None
        self.wakeup = anyio.Event()

    def finish(self, result: Any = None, error: BaseException | None = None) -> None:
        self.result, self.error, self.done = result, error, True
        self.wakeup.set()


class _State:
    """Connection state of one AsyncNamespace, bound to the event loop that first used it."""

    def __init__(self, target: Target) -> None:
        self.target = target
        self.protocol = ClientConnection(target.limits, target.authkey)
        self.outbox: list[tuple[int, bytes]] = []  # (request id, frame), not sent yet
        self.queued_writes: set[int] = set()  # write ids in the outbox
        self.inflight_writes: set[int] = set()  # write ids sent, not yet acknowledged
        self.write_errors: list[BaseException] = []
        self.loop: object = None
        self.stream: anyio.abc.ByteStream | None = None
        self.last_error: BaseException | None = None
        self.waiting: dict[_Waiter, None] = {}  # every task waiting on this connection
        self.by_id: dict[int, _Waiter] = {}
        self.reading = False
        self.send_lock: anyio.Lock | None = None
        self.connect_lock: anyio.Lock | None = None
        self.kick: anyio.Event | None = None  # set while a pump task runs (async with)
        self.pump_group: anyio.abc.TaskGroup | None = None

    def bind(self) -> None:
        """Bind to the running event loop (a proxy unpickled or reused in a new loop rebinds)."""
        loop = anyio.lowlevel.current_token()
        if self.loop == loop:
            return
        if self.stream is not None:  # left over from a loop that has ended: drop it
            self.stream = None
            self.lost(ConnectionLost("the event loop that opened the connection has ended"))
        self.loop = loop
        self.send_lock = anyio.Lock()
        self.connect_lock = anyio.Lock()
        self.reading = False

    def lost(self, error: BaseException) -> None:
        """The connection is gone: fail every waiter; keep unsent writes for the next one."""
        self.stream = None
        self.last_error = error
        if self.inflight_writes:
            count = len(self.inflight_writes)
            self.inflight_writes.clear()
            self.write_errors.append(ConnectionLost(
                f"{count} write(s) were sent but not acknowledged before the connection was "
                f"lost ({error}); they may or may not have been applied"))
        self.outbox = [(i, frame) for i, frame in self.outbox if i in self.queued_writes]
        for waiter in list(self.waiting):
            waiter.finish(error=error)

    def dispatch(self, reply: Reply) -> None:
        if reply.id == 0:  # the server is dropping the connection and says why
            self.lost(reply.error or ConnectionLost("the server closed the connection"))
            return
        if reply.id in self.inflight_writes:
            self.inflight_writes.discard(reply.id)
            if reply.error is not None:
                self.write_errors.append(reply.error)
        waiter = self.by_id.pop(reply.id, None)
        if waiter is not None:
            waiter.finish(reply.result, reply.error)
        for waiter in list(self.waiting):
            if waiter.until and not waiter.done and reply.id >= waiter.until:
                waiter.finish()

    def wake_next_reader(self) -> None:
        for waiter in self.waiting:
            if not waiter.done:
                waiter.wakeup.set()
                return


class _PendingGet:
    """What ``ns.name`` returns: awaiting it fetches the value (no coroutine until awaited)."""

    __slots__ = ("_name", "_proxy")

    def __init__(self, proxy: AsyncNamespace, name: str) -> None:
        self._proxy, self._name = proxy, name

    def __await__(self) -> Generator[Any, None, Any]:
        return self._proxy._get(self._name).__await__()

    def __repr__(self) -> str:
        return f"<pending read of {self._name!r}: await it>"


class AsyncNamespace(ProxyBase):
    """An awaitable proxy: ``await ns.x``; ``ns.x = v`` and ``del ns.x`` are queued in order.

    ``await ns._flush()`` waits until every queued write is acknowledged and raises the first
    failure. Use ``async with ns:`` (or ``await ns._close()``) to release the connection.
    """

    __slots__ = ()

    def __init__(self, address: Address, name: str | None = None, /, *,
                 authkey: bytes | None = None, limits: Limits | None = None) -> None:
        self._attach(Target.create(address, name, authkey, limits))

    def _attach(self, target: Target) -> None:
        object.__setattr__(self, "_aionamespace", _State(target))

    # ------------------------------------------------------------------ attribute protocol

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")
        return _PendingGet(self, name)

    def __setattr__(self, name: str, value: Any) -> None:
        check_attribute_name(name)
        if name.startswith("_"):
            object.__setattr__(self, name, value)
            return
        self._queue_write("set", self._aionamespace.target.key, name, encode_value(value))

    def __delattr__(self, name: str) -> None:
        check_attribute_name(name)
        if name.startswith("_"):
            object.__delattr__(self, name)
            return
        self._queue_write("del", self._aionamespace.target.key, name)

    def _queue_write(self, op: str, *args: Any) -> None:
        state: _State = self._aionamespace
        request_id, frame = state.protocol.send_request(op, *args)
        state.outbox.append((request_id, frame))
        state.queued_writes.add(request_id)
        if state.kick is not None:
            state.kick.set()

    async def _get(self, name: str) -> Any:
        return decode_value(await self._request("get", self._aionamespace.target.key, name))

    # ------------------------------------------------------------------ operations

    async def _open(self, **defaults: Any) -> None:
        """Create the namespace on the server now, giving it the ``defaults`` it lacks."""
        encoded = {name: encode_value(value) for name, value in defaults.items()}
        await self._request("open", self._aionamespace.target.key, encoded)

    async def _snapshot(self) -> dict[str, Any]:
        """Every shared attribute, as a dict, in one round trip."""
        blobs = await self._request("dump", self._aionamespace.target.key)
        return {name: decode_value(blob) for name, blob in blobs.items()}

    async def _ping(self) -> None:
        """One round trip; raises ConnectionLost if the server is unreachable."""
        await self._request("ping")

    async def _flush(self) -> None:
        """Send every queued write, wait for all acknowledgements, raise the first failure."""
        state: _State = self._aionamespace
        state.bind()
        try:
            if state.outbox:
                await self._connect()
                await self._drain()
        except ConnectionLost:
            if not state.write_errors:
                raise
            # else: the loss is already recorded against the writes it hit; report it once
        if state.inflight_writes:
            await self._wait(_Waiter(until=max(state.inflight_writes)))
        errors, state.write_errors = state.write_errors, []
        if errors:
            raise errors[0]

    async def _close(self) -> None:
        """Flush queued writes, then close the connection (a later use reconnects)."""
        state: _State = self._aionamespace
        try:
            if state.outbox or state.inflight_writes:
                await self._flush()
        finally:
            stream = state.stream
            state.lost(ConnectionLost("the proxy was closed"))
            if stream is not None:
                await anyio.aclose_forcefully(stream)

    async def __aenter__(self) -> AsyncNamespace:
        state: _State = self._aionamespace
        state.bind()
        if state.pump_group is not None:
            raise RuntimeError("this AsyncNamespace is already in an 'async with' block")
        group = anyio.create_task_group()
        await group.__aenter__()
        state.pump_group, state.kick = group, anyio.Event()
        group.start_soon(self._pump)
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        state: _State = self._aionamespace
        group, state.pump_group, state.kick = state.pump_group, None, None
        try:
            await self._close()
        finally:
            if group is not None:
                group.cancel_scope.cancel()
                await group.__aexit__(None, None, None)

    # ------------------------------------------------------------------ the I/O shell

    async def _request(self, op: str, *args: Any) -> Any:
        state: _State = self._aionamespace
        state.bind()
        request_id, frame = state.protocol.send_request(op, *args)
        waiter = _Waiter(request_id)
        state.by_id[request_id] = waiter
        state.outbox.append((request_id, frame))
        try:
            await self._connect()
            await self._drain()
            await self._wait(waiter)
        finally:
            state.by_id.pop(request_id, None)
            if not waiter.done:  # failed or cancelled: if the frame was never sent, drop it
                state.outbox = [(i, frame) for i, frame in state.outbox if i != request_id]
        if waiter.error is not None:
            raise waiter.error
        return waiter.result

    async def _connect(self) -> None:
        state: _State = self._aionamespace
        if state.stream is not None:
            return
        assert state.connect_lock is not None
        async with state.connect_lock:
            if state.stream is not None:
                return
            address = state.target.address
            with map_connection_errors(address, connecting=True):
                stream = await open_stream(address)
                try:
                    state.protocol.reset()
                    await stream.send(state.protocol.send_hello())
                    while not state.protocol.greeted:
                        events = state.protocol.receive_data(await stream.receive())
                        if events and type(events[0]) is not Hello:
                            raise ProtocolError("the server answered before greeting")
                    proof = state.protocol.send_proof()
                    if proof:
                        await stream.send(proof)
                except BaseException:
                    await anyio.aclose_forcefully(stream)
                    raise
            state.stream, state.last_error = stream, None

    async def _drain(self) -> None:
        """Send the whole outbox (coalesced); a task finding the lock taken waits its turn."""
        state: _State = self._aionamespace
        assert state.send_lock is not None
        async with state.send_lock:
            while state.outbox and state.stream is not None:
                batch, state.outbox = state.outbox, []
                for request_id, _ in batch:
                    if request_id in state.queued_writes:
                        state.queued_writes.discard(request_id)
                        state.inflight_writes.add(request_id)
                data = b"".join(frame for _, frame in batch)
                # Shielded: a frame half sent would desynchronise the stream for every task.
                with anyio.CancelScope(shield=True):
                    await self._send(state.stream, data)

    async def _send(self, stream: anyio.abc.ByteStream, data: bytes) -> None:
        state: _State = self._aionamespace
        try:
            with map_connection_errors(state.target.address):
                if len(data) <= CONCURRENT_READ_ABOVE_BYTES:
                    await stream.send(data)
                    return
                helper = _Waiter()
                async with anyio.create_task_group() as group:
                    group.start_soon(self._wait, helper)
                    await stream.send(data)
                    helper.finish()
                    group.cancel_scope.cancel()
        except ConnectionLost as exc:
            if state.stream is stream:
                state.lost(exc)
            await anyio.aclose_forcefully(stream)
            raise

    async def _wait(self, waiter: _Waiter) -> None:
        """Wait until ``waiter`` is done, taking the reader role whenever nobody holds it."""
        state: _State = self._aionamespace
        state.waiting[waiter] = None
        try:
            while not waiter.done:
                if state.reading:
                    await waiter.wakeup.wait()
                    if not waiter.done:
                        waiter.wakeup = anyio.Event()
                    continue
                state.reading = True
                try:
                    while not waiter.done:
                        await self._read_once()
                finally:
                    state.reading = False
                    del state.waiting[waiter]
                    state.wake_next_reader()
        finally:
            state.waiting.pop(waiter, None)

    async def _read_once(self) -> None:
        state: _State = self._aionamespace
        stream = state.stream
        if stream is None:
            state.lost(state.last_error or ConnectionLost("not connected"))
            return
        try:
            with map_connection_errors(state.target.address):
                data = await stream.receive(READ_CHUNK_BYTES)
            events = state.protocol.receive_data(data)
        except (ConnectionLost, ProtocolError) as exc:
            if state.stream is stream:
                state.lost(exc)
                await anyio.aclose_forcefully(stream)
            return
        for event in events:
            if type(event) is Reply:
                state.dispatch(event)
        if state.stream is not stream:  # the server said goodbye in one of those frames
            await anyio.aclose_forcefully(stream)

    async def _pump(self) -> None:
        """Inside ``async with``: send writes as they are queued and read their acks."""
        state: _State = self._aionamespace
        while state.kick is not None:
            kick = state.kick
            await kick.wait()
            if state.kick is kick:
                state.kick = anyio.Event()
            try:
                if state.outbox:
                    await self._connect()
                    await self._drain()
                if state.inflight_writes:
                    await self._wait(_Waiter(until=max(state.inflight_writes)))
            except ConnectionLost:
                pass  # unsent writes stay queued; _flush reconnects and reports
