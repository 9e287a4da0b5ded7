"""The reader role of the stream transport (trio, TLS): someone always reads while anyone waits.

On an anyio stream one waiting task at a time reads for all; when it is done it wakes another
to take over. A task woken to read may leave without reading (cancelled, or finished by someone
else, like the helper that reads while a large outbox is sent): it must then pass the role on,
or every other waiter sleeps until its deadline. These tests drive ``StreamTransport.wait``
over an in-memory stream, on asyncio (the transport TLS takes there).
"""

from __future__ import annotations

import asyncio

import anyio
import anyio.abc
import pytest

from aionamespace.client.pipelined import AsyncState
from aionamespace.client.proxy import Target
from aionamespace.client.requests import RequestTable, Waiter
from aionamespace.client.stream_transport import StreamTransport
from aionamespace.protocol.frames import pack_frame
from deadlines import async_wait_until

pytestmark = pytest.mark.parametrize("anyio_backend", ["asyncio"])


class FedStream(anyio.abc.ByteStream):
    """A stream whose reads are what the test feeds it."""

    def __init__(self) -> None:
        self.fed: asyncio.Queue[bytes] = asyncio.Queue()

    async def receive(self, max_bytes: int = 65536) -> bytes:
        return await self.fed.get()

    async def send(self, item: bytes) -> None:
        pass

    async def send_eof(self) -> None:
        pass

    async def aclose(self) -> None:
        pass


def greeted_transport() -> tuple[StreamTransport, FedStream]:
    state = AsyncState(RequestTable(Target.create("/nowhere.sock", "k")), StreamTransport)
    transport = state.bound()
    assert isinstance(transport, StreamTransport)
    transport.table.protocol.greeted = True
    stream = FedStream()
    transport.link = stream
    return transport, stream


@pytest.mark.anyio
async def test_a_waiter_woken_to_read_then_cancelled_passes_the_role_on() -> None:
    transport, stream = greeted_transport()
    reader, woken, last = (Waiter(transport.new_wakeup) for _ in range(3))
    woken_task: asyncio.Task[None]
    # Cancel the woken waiter's task the moment it is woken, before it runs (this callback is
    # registered before the task awaits the same future, so it runs first).
    woken.wakeup.add_done_callback(lambda _: woken_task.cancel())
    reader_task = asyncio.ensure_future(transport.wait(reader))
    await asyncio.sleep(0)  # it takes the reader role and waits for bytes
    woken_task = asyncio.ensure_future(transport.wait(woken))
    last_task = asyncio.ensure_future(transport.wait(last))
    await asyncio.sleep(0)
    assert transport.reading
    reader.finish()
    stream.fed.put_nowait(pack_frame([0, 3, "k", "n"]))  # any frame: the reader reads it, is done
    await reader_task  # and wakes the next waiter (``woken``), which is cancelled at once
    with pytest.raises(asyncio.CancelledError):
        await woken_task
    # the last waiter must have been handed the role (it then reads: no event says so)
    await async_wait_until(lambda: transport.reading, "the last waiter reads")
    last.finish()
    stream.fed.put_nowait(pack_frame([0, 3, "k", "n"]))
    await last_task


@pytest.mark.anyio
async def test_a_waiter_woken_to_read_then_finished_elsewhere_passes_the_role_on() -> None:
    """The send helper's case: woken to read, then finished by the sender before it reads."""
    transport, stream = greeted_transport()
    reader, helper, last = (Waiter(transport.new_wakeup) for _ in range(3))
    helper.wakeup.add_done_callback(lambda _: helper.finish())  # the send completed meanwhile
    reader_task = asyncio.ensure_future(transport.wait(reader))
    await asyncio.sleep(0)
    helper_task = asyncio.ensure_future(transport.wait(helper))
    last_task = asyncio.ensure_future(transport.wait(last))
    await asyncio.sleep(0)
    reader.finish()
    stream.fed.put_nowait(pack_frame([0, 3, "k", "n"]))
    await reader_task
    await helper_task  # it leaves without reading
    await async_wait_until(lambda: transport.reading, "the last waiter reads")
    last.finish()
    stream.fed.put_nowait(pack_frame([0, 3, "k", "n"]))
    await last_task
