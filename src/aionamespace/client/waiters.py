"""What a task waiting on the async proxy's connection waits with.

A ``Waiter`` stands for one task waiting for reply ``id`` (or, with ``until``, for every reply
up to that id; or, with ``wants_push``, for a watch event). It is woken through an event native
to the running loop: on asyncio a bare Future, elsewhere anyio's Event.

On asyncio's plain sockets, where replies are delivered by protocol callbacks, a request waits
on a bare Future instead of a Waiter: the reply's result (or error) is the Future's, and the
task resumes with it straight from asyncio's C code. ``settle`` finishes either kind.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any

import anyio
import anyio.lowlevel

__all__ = ["Waiter", "loop_identity", "new_event", "settle"]


def new_event() -> Any:
    """An event for the running loop: a bare Future on asyncio, else anyio's Event.

    Not asyncio.Event, which builds a Future in every wait() on top of its own Python
    bookkeeping; not anyio.Event(), which asks sniffio which library runs, on every call (a
    third of a pipelined request's cost); and not a Future subclass, which a Task waits on
    through Python-level callbacks instead of its C fast path (a tenth of a request)."""
    loop = asyncio._get_running_loop()
    return loop.create_future() if loop is not None else anyio.Event()


def loop_identity() -> object:
    """What identifies the running event loop, cheaply on asyncio."""
    loop = asyncio._get_running_loop()  # None, not an exception, outside asyncio: cheaper
    return loop if loop is not None else anyio.lowlevel.current_token()


class Waiter:
    """A task waiting for reply ``id`` (or, with ``until``, for every reply up to that id)."""

    __slots__ = ("done", "error", "id", "result", "until", "wakeup", "wants_push")

    def __init__(self, request_id: int = 0, until: int = 0, wants_push: bool = False) -> None:
        self.id = request_id
        self.until = until
        self.wants_push = wants_push
        self.done = False
        self.result: Any = None
        self.error: BaseException | None = None
        self.wakeup: Any = new_event()

    def finish(self, result: Any = None, error: BaseException | None = None) -> None:
        if self.done:  # the first outcome stands (a reply behind a goodbye changes nothing)
            return
        self.result, self.error, self.done = result, error, True
        self.wake()

    def wake(self) -> None:
        wakeup = self.wakeup
        if isinstance(wakeup, asyncio.Future):
            if not wakeup.done():  # (cancelled with the task that awaited it)
                wakeup.set_result(None)
        else:
            wakeup.set()

    def woken(self) -> Awaitable[Any]:
        """What to await until ``wake()`` (then ``done`` says whether it was finished)."""
        wakeup = self.wakeup
        return wakeup if isinstance(wakeup, asyncio.Future) else wakeup.wait()


def settle(waiter: Waiter | asyncio.Future[Any], result: Any = None,
           error: BaseException | None = None) -> None:
    """Give ``waiter`` its outcome (a Future whose task was cancelled is left as it is)."""
    if isinstance(waiter, Waiter):
        waiter.finish(result, error)
    elif not waiter.done():
        if error is None:
            waiter.set_result(result)
        else:
            waiter.set_exception(error)
