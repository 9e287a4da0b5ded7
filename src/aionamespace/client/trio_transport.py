"""The async transport on trio's plain sockets: one reader task, each reply straight to its task.

A connection has one reader, a trio system task (``trio.lowlevel.spawn_system_task``) that
waits until the socket is readable, reads a chunk, parses every frame in it and resumes each
reply's task with ``trio.lowlevel.reschedule``: a task waiting for a reply is parked in
``wait_task_rescheduled`` with no Event, no reader role to pass on, and no wake-up of a task
that has nothing to do (``stream_transport.py``, which TLS keeps, wakes two tasks per reply).
``await ns.x`` is one coroutine, ``TrioTransport.call``, as on asyncio (``asyncio_transport``):
it encodes the request, writes the outbox when ``WRITE_AT_FRAMES`` are queued while nothing
preempts the sender (``asyncio_transport.Pacing``, as on asyncio), else once every task ready
to run has queued its frame, and parks.

Writes go straight to the non-blocking socket; what it does not take waits in a backlog that
the sending task flushes (``wait_writable``), shielded and bounded by ``call_timeout``, while
the reader keeps reading: a server blocked on answering us never deadlocks against us.

Cancelling a parked task withdraws its request by the table's rules (``requests.py``): a frame
not sent yet leaves the outbox, a reply that still comes is dropped. The reader ends when the
connection closes (``close_link`` tells trio first, ``notify_closing``), or with the run, closing
the connection: a proxy never closed holds it until then, as an asyncio loop holds its own.
"""

from __future__ import annotations

import math
import os
import socket
from typing import Any

import anyio
import anyio.abc
import trio
import trio.lowlevel

from .._errors import ConnectionLost, ProtocolError
from .asyncio_transport import Pacing
from .calls import Operation
from .liveness import IDLE_CHECK_SECONDS, handshake_timeout, left_while_idle
from .pipelined import AsyncState, PipelinedTransport, handshake
from .stream_transport import open_stream
from .transport import connection_lost, map_connection_errors

__all__ = ["Parked", "TrioLink", "TrioTransport"]

READ_CHUNK_BYTES = 256 * 1024

_current_task = trio.lowlevel.current_task
_current_token = trio.lowlevel.current_trio_token
_park = trio.lowlevel.wait_task_rescheduled
_reschedule = trio.lowlevel.reschedule
_ABORTED = trio.lowlevel.Abort.SUCCEEDED
_wait_readable = trio.lowlevel.wait_readable


class Parked:
    """One request's waiter: its task, resumed by the reply (``requests.FutureLike``).

    The reply may come before the task parks (while it sends, say): it is then kept, and the
    task takes it without parking. A task cancelled while parked withdraws its request.

    A reply resumes the task with the waiter itself as what ``wait_task_rescheduled`` unwraps
    (``unwrap``: the result, or the error raised), not with an ``outcome.Value`` made for it:
    one object fewer per reply, and one call.
    """

    __slots__ = ("error", "finished", "parked", "result", "task", "withdrawn")

    def __init__(self, task: trio.lowlevel.Task) -> None:
        self.task = task
        self.parked = self.finished = self.withdrawn = False
        self.result: Any = None
        self.error: BaseException | None = None

    def done(self) -> bool:
        return self.finished or self.withdrawn

    def cancelled(self) -> bool:
        return self.withdrawn

    def cancel(self) -> bool:
        if self.finished:
            return False
        self.withdrawn = True
        return True

    def exception(self) -> BaseException | None:
        return self.error

    def set_result(self, result: Any, /) -> None:
        self.result, self.finished = result, True
        if self.parked:
            self.parked = False
            _reschedule(self.task, self)  # type: ignore[arg-type]  # (unwraps as one)

    def set_exception(self, exception: BaseException, /) -> None:
        self.error, self.finished = exception, True
        if self.parked:
            self.parked = False
            _reschedule(self.task, self)  # type: ignore[arg-type]

    def unwrap(self) -> Any:
        """What the parked task's ``wait_task_rescheduled`` returns, as ``outcome``'s would."""
        error = self.error
        if error is not None:
            try:
                raise error
            finally:
                del error  # (no cycle through this frame's traceback)
        return self.result

    def abort(self, raise_cancel: object) -> trio.lowlevel.Abort:
        """trio cancels the parked task: nothing will resume it (the caller withdraws)."""
        self.parked = False
        self.withdrawn = True
        return _ABORTED

    # The waiter is its own abort function (``wait_task_rescheduled(waiter)``): no bound
    # method made for each park.
    __call__ = abort


class TrioLink:
    """One connection: its socket (non-blocking), and the process that opened it (a forked
    child closes its copy, and never shuts the parent's connection down)."""

    __slots__ = ("closed", "pid", "sock")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.pid = os.getpid()
        self.closed = False


class TrioTransport(PipelinedTransport):
    """Many tasks, one connection on one trio run (see the module's docstring)."""

    def __init__(self, state: AsyncState) -> None:
        super().__init__(state)
        self.token = _current_token()
        self.link: TrioLink | None = None
        self.backlog = bytearray()  # written, not taken by the socket yet: sent before more
        self.buffer = memoryview(bytearray(READ_CHUNK_BYTES))
        self.pacing = Pacing()  # when to write early: as on asyncio
        # Liveness (liveness.py): the reader's wait ends at ``next_check`` to look at the
        # connection's silence, while something waits (``watched``; a call arms it).
        self.watched = self.period is None
        self.next_check = math.inf
        self.watch_scope: trio.CancelScope | None = None
        self.fresh_until = 0.0  # until then the link was in use: no idle check (_freshen)

    def current(self) -> bool:
        try:
            return _current_token() is self.token
        except RuntimeError:
            return False

    def new_wakeup(self) -> trio.Event:
        return trio.Event()

    async def call(
        self,
        operation: Operation,
        args: tuple[Any, ...],
        failures: int = 0,
    ) -> Any:
        try:
            token: object = _current_token()
        except RuntimeError:
            token = None
        if token is not self.token:
            return await self.state.bound().call(operation, args, failures)
        table = self.table
        if not table.waiters:  # (an idle link: did its server leave it meanwhile?)
            self._freshen()
        waiter = Parked(_current_task())
        request_id = table.request(operation, args, waiter)
        try:
            link = self.link
            if link is None:
                await self.connect()
                await self.drain()
            elif len(table.outbox) >= self.pacing.write_at and not self.backlog:
                self._write(link)  # the server starts on these meanwhile
                if self.backlog and not self.sending:
                    await self.drain()
            elif not self.sending:
                await self.drain()
            if not self.watched:
                self._watch()
            if waiter.finished:  # (answered while we sent)
                if waiter.error is not None:
                    raise waiter.error
                result = waiter.result
            else:
                waiter.parked = True
                result = await _park(waiter)
        except BaseException as exc:
            error = table.unanswered(request_id, waiter, exc)
            if isinstance(error, ConnectionLost):
                return await self.retry(operation, args, error, failures)
            raise error  # noqa: B904 (its own cause, if any)
        read = operation.read
        return result if read is None else read(result)

    # ------------------------------------------------------------------ writing

    async def drain(self) -> None:
        """Send the outbox, coalescing what concurrent tasks queue meanwhile: when other
        requests are in flight, the sender first lets every task ready to run queue its frame
        (a shielded checkpoint), so that one write carries them all."""
        if self.sending:
            return
        self.sending = True
        try:
            if len(self.table.waiters) > 1:
                self.pacing.look()
                await trio.lowlevel.cancel_shielded_checkpoint()
            link = self.link
            if link is not None:
                self._write(link)
                if self.backlog:
                    await self._flush_backlog(link)
        finally:
            self.sending = False

    def _write(self, link: TrioLink) -> None:
        """Hand the outbox to the socket in one write (what it does not take waits in the
        backlog); ConnectionLost if the connection has ended."""
        table = self.table
        if not table.outbox or self.link is not link:
            return
        before = table.sent_through
        data = table.take_outbox()
        if self.backlog:
            self.backlog += data
            return
        try:
            sent = link.sock.send(data)
        except BlockingIOError:
            sent = 0
        except OSError as exc:
            table.unsent(before)  # a send that failed delivered nothing
            raise self._broken(exc, link) from exc
        if sent < len(data):
            self.backlog += memoryview(data)[sent:]

    async def _flush_backlog(self, link: TrioLink) -> None:
        """Wait until the socket has taken the backlog (and what is queued meanwhile). It
        cannot be cancelled: a frame half sent would desynchronise the stream. A server that
        takes nothing for ``call_timeout`` is taken for frozen."""
        timeout = self.target.limits.call_timeout
        deadline = trio.current_time() + timeout if timeout is not None else math.inf
        with trio.CancelScope(shield=True, deadline=deadline) as scope:
            while self.backlog and self.link is link:
                try:
                    await trio.lowlevel.wait_writable(link.sock)
                    sent = link.sock.send(self.backlog)
                except BlockingIOError:
                    continue
                except trio.ClosedResourceError:
                    break  # closed meanwhile: lost() said why
                except OSError as exc:
                    raise self._broken(exc, link) from exc
                del self.backlog[:sent]
                if not self.backlog:
                    self._write(link)
        if scope.cancelled_caught and self.link is link:
            self.lost(self.timed_out(), link)  # (every waiter hears it: nothing to raise)

    def _broken(self, exc: BaseException, link: TrioLink) -> ConnectionLost:
        """``exc`` broke the connection: drop it, and the error to raise."""
        error = connection_lost(exc, self.target.address) or ConnectionLost(str(exc))
        self.lost(error, link)
        return error

    async def _drain_quietly(self) -> None:
        try:
            await self.drain()
        except ConnectionLost:
            pass  # (lost already: said so)

    # ------------------------------------------------------------------ reading

    async def wait(self, waiter: Any) -> None:
        # The reader delivers every reply: a waiter only waits.
        if not self.watched:
            self._watch()
        while not waiter.done:
            await waiter.woken()
            if not waiter.done:
                waiter.rearm()

    def _watch(self) -> None:
        """Something waits: look at the connection's silence in a quarter of call_timeout."""
        assert self.period is not None
        self.watched = True
        self.next_check = trio.current_time() + self.period
        if self.watch_scope is not None:
            self.watch_scope.deadline = self.next_check

    async def _read(self, link: TrioLink) -> None:
        """The connection's reader: hands what arrives to the table until the link closes."""
        sock = link.sock
        try:
            while not link.closed:
                # One scope per look at the connection's silence, not one per chunk read:
                # a scope with a deadline is registered and unregistered with the run.
                with trio.CancelScope(deadline=self.next_check) as scope:
                    self.watch_scope = scope
                    while not link.closed:
                        await _wait_readable(sock)
                        self._read_chunk(link)
                self.watch_scope = None
                if scope.cancelled_caught:
                    self._look(link)
        except trio.ClosedResourceError:
            pass  # closed by close_link, which said why
        except trio.Cancelled:  # the run is ending: its connection with it
            self.lost(ConnectionLost("the trio run that opened the connection has ended"), link)
            raise
        except Exception as exc:  # a system task must not raise: its run would crash
            error = ConnectionLost(f"the connection's reader failed: {exc!r}")
            error.__cause__ = exc
            self.lost(error, link)
        finally:
            self.watch_scope = None

    def _read_chunk(self, link: TrioLink) -> None:
        """Read what the socket holds and hand it to the table (nothing, if it holds nothing);
        an end, a reset, garbage or a goodbye drops the link."""
        protocol = self.table.protocol
        try:
            large = protocol.large_value()
            if large is None:
                count = link.sock.recv_into(self.buffer)
                events: list[Any] = protocol.receive_frames(self.buffer[:count])
            else:
                count = link.sock.recv_into(large)
                events = protocol.large_received(count) if count else []
        except BlockingIOError:
            return
        except ProtocolError as exc:
            self.lost(exc, link)
            return
        except OSError as exc:
            self._broken(exc, link)
            return
        if not count:
            self.lost(
                ConnectionLost(
                    "lost the connection to the aionamespace server at "
                    f"{self.target.address!r}: the server closed the connection"
                ),
                link,
            )
            return
        self.reads += 1  # the server is alive (liveness.py)
        if events:
            goodbye = self.table.receive(events)
            if goodbye is not None:  # the server said goodbye in one of those frames
                self.lost(goodbye, link)

    async def freshen(self) -> None:
        self._freshen()

    def _freshen(self) -> None:
        """Before sending on a link with nothing in flight and unused for a while: look at
        what waits there (an end of stream, a reset, a goodbye) in a read that cannot block,
        so that a server that left while it was idle is found before a request is lost in it
        (the request then goes out on a new connection; liveness.py). The reader would find
        the same, but only once the run polls for I/O again."""
        link, table = self.link, self.table
        if link is None or table.waiters or table.inflight_writes:
            return
        now = trio.current_time()
        if now <= self.fresh_until:
            return
        self.fresh_until = now + IDLE_CHECK_SECONDS
        try:
            waiting = link.sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        except BlockingIOError:
            return  # nothing there
        except OSError:
            waiting = b""
        if waiting:
            self._read_chunk(link)  # (the reader, woken later, finds nothing left)
        else:
            why = "it closed the connection"
            self.lost(left_while_idle(self.target.address, why), link)

    def _look(self, link: TrioLink) -> None:
        """The reader's periodic look at the connection (``check_silence``)."""
        verdict = self.check_silence()
        if verdict == "timeout":
            self.lost(self.timed_out(), link)
        elif verdict == "idle":
            self.watched, self.next_check = False, math.inf
        else:
            assert self.period is not None
            self.next_check = trio.current_time() + self.period
            if verdict == "ping":
                try:
                    self._write(link)
                except ConnectionLost:
                    return  # (lost already: said so)
                if self.backlog and not self.sending:
                    trio.lowlevel.spawn_system_task(self._drain_quietly)

    # ------------------------------------------------------------------ the link

    async def open_link(self) -> TrioLink:
        target = self.target
        timeout = handshake_timeout(target.limits)
        with (
            map_connection_errors(target.address, connecting=True, handshake_timeout=timeout),
            anyio.fail_after(timeout),
        ):
            stream = await open_stream(target.address)
            try:
                await handshake(self.table.protocol, stream.send, stream.receive)
                sock = stream.extra(anyio.abc.SocketAttribute.raw_socket)
            except BaseException:
                await anyio.aclose_forcefully(stream)
                raise
        link = TrioLink(sock)
        self.backlog.clear()
        self.watched, self.next_check = self.period is None, math.inf  # (a call arms it)
        trio.lowlevel.spawn_system_task(self._read, link, name="aionamespace reader")
        return link

    def close_link(self, link: TrioLink) -> None:
        if link.closed:
            return
        link.closed = True
        self.backlog.clear()  # (the table reports what it held)
        sock = link.sock
        if self.current():
            trio.lowlevel.notify_closing(sock)  # the reader's wait ends at once
        if link.pid == os.getpid():  # (a forked child must not end its parent's connection)
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        sock.close()
