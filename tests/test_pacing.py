"""The async sender writes early only while nothing preempts it (asyncio_transport.Pacing),
on asyncio and on trio alike.

A crowded CPU is made for real: the test's thread and two spinning processes pinned to one
CPU, so that the scheduler preempts the test's thread between them. Then the sender writes
its outbox whole, once per loop iteration, instead of every WRITE_AT_FRAMES frames (each
early write would wake the server to preempt us again), and tries early writes again after
a stretch that doubles each time.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import anyio
import pytest
import trio

import aionamespace
from aionamespace.client import asyncio_transport
from aionamespace.client.asyncio_transport import WRITE_AT_FRAMES, Pacing
from aionamespace.client.requests import RequestTable

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="pins CPUs, counts preemptions per thread"
)

_SPIN = "import sys\nprint('spinning', flush=True)\nwhile True: pass\n"


@contextlib.contextmanager
def crowded_cpu() -> Iterator[None]:
    """This thread and two spinning processes on one CPU, for the block's duration."""
    mine = os.sched_getaffinity(0)
    cpu = min(mine)
    spinners: list[subprocess.Popen[str]] = []
    try:
        for _ in range(2):
            spinner = subprocess.Popen(
                [sys.executable, "-c", _SPIN], stdout=subprocess.PIPE, text=True
            )
            spinners.append(spinner)
            assert spinner.stdout is not None
            assert spinner.stdout.readline() == "spinning\n"
            os.sched_setaffinity(spinner.pid, {cpu})
        os.sched_setaffinity(0, {cpu})  # (0: the calling thread only, on Linux)
        yield
    finally:
        os.sched_setaffinity(0, mine)
        for spinner in spinners:
            spinner.kill()
            spinner.wait()
            assert spinner.stdout is not None
            spinner.stdout.close()


def _spin_looking(pacing: Pacing, until: float) -> None:
    while time.monotonic() < until and pacing.write_at == WRITE_AT_FRAMES:
        pacing.look()


def test_a_preempted_sender_writes_whole_then_tries_early_writes_again() -> None:
    pacing = Pacing()
    assert pacing.write_at == WRITE_AT_FRAMES
    with crowded_cpu():
        _spin_looking(pacing, time.monotonic() + 30)  # until a preemption is seen
    assert pacing.write_at == sys.maxsize
    assert (pacing.spells, pacing.backoff) == (1, 2)
    deadline = time.monotonic() + 30
    while pacing.spells:  # one spell of writing whole, then early writes are tried again
        assert time.monotonic() < deadline
        pacing.look()
    assert pacing.write_at == WRITE_AT_FRAMES


class _Clock:
    """The pacing's two readings, advanced by the test: seconds and this thread's preemptions.

    The real ones (a crowded CPU, as above) show that a preemption is seen; what the pacing
    then does with a sequence of looks is arithmetic, and a scheduler does not give a test
    the sequence it asks for, so this one is told."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.now, self.preempted = 100.0, 0
        monkeypatch.setattr(asyncio_transport, "perf_counter", lambda: self.now)
        monkeypatch.setattr(asyncio_transport, "_preemptions", lambda: self.preempted)

    def look(self, pacing: Pacing, *, preempted: bool) -> None:
        """One look a pacing period and a half after the last, preempted meanwhile or not."""
        self.now += 1.5 * asyncio_transport.PACING_SECONDS
        self.preempted += preempted
        pacing.look()


def test_stretches_of_writing_whole_double_up_to_the_bound(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = _Clock(monkeypatch)
    pacing = Pacing()
    stretches = []
    for _ in range(9):
        clock.look(pacing, preempted=True)  # preempted while trying early writes
        assert pacing.write_at == sys.maxsize
        stretches.append(pacing.spells)
        while pacing.spells:  # each spell writes whole, preempted or not
            assert pacing.write_at == sys.maxsize
            clock.look(pacing, preempted=True)
        assert pacing.write_at == WRITE_AT_FRAMES  # then early writes are tried again
    assert stretches == [1, 2, 4, 8, 16, 32, 64, 64, 64]
    assert Pacing.MAX_BACKOFF == 64


def test_a_stretch_of_early_writes_without_preemption_starts_the_doubling_over(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = _Clock(monkeypatch)
    pacing = Pacing()
    for _ in range(3):
        clock.look(pacing, preempted=True)
        while pacing.spells:
            clock.look(pacing, preempted=False)
    assert pacing.backoff == 8
    clock.look(pacing, preempted=False)  # a period of early writes, not preempted
    assert (pacing.write_at, pacing.backoff) == (WRITE_AT_FRAMES, 1)
    clock.look(pacing, preempted=True)
    assert (pacing.write_at, pacing.spells) == (sys.maxsize, 1)


def test_a_look_within_the_period_changes_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = _Clock(monkeypatch)
    pacing = Pacing()
    clock.preempted += 1
    clock.now += asyncio_transport.PACING_SECONDS / 2
    pacing.look()
    assert (pacing.write_at, pacing.spells) == (WRITE_AT_FRAMES, 0)
    clock.now += asyncio_transport.PACING_SECONDS
    pacing.look()  # the preemption is seen once the period has passed
    assert (pacing.write_at, pacing.spells) == (sys.maxsize, 1)


TASKS = 64


async def _rounds_once_preempted(
    ns: Any, everyone: Callable[..., Awaitable[None]], monkeypatch: Any, writes: list[int]
) -> dict[int, object]:
    """``TASKS`` tasks set then get their own name (``everyone`` runs them at once), in rounds
    until the sender has been seen preempted, then three rounds in that spell of writing
    whole, counted afresh in ``writes``: what each task got last."""
    got: dict[int, object] = {}

    async def set_then_get(i: int, rounds: int) -> None:
        for r in range(rounds):
            setattr(ns, f"v{i}", (i, r))
            got[i] = await getattr(ns, f"v{i}")
            assert got[i] == (i, r)

    ns.warm = 1
    await ns._flush()  # connected: the pacing is the connection's transport's
    pacing = ns._aionamespace.transport.pacing
    with anyio.fail_after(60):
        while pacing.write_at == WRITE_AT_FRAMES:  # until the sender has been preempted
            await everyone(set_then_get, 1)
        monkeypatch.setattr(asyncio_transport, "PACING_SECONDS", math.inf)
        assert pacing.write_at == sys.maxsize
        writes.clear()
        await everyone(set_then_get, 3)
    await ns._close()
    return got


@pytest.fixture
def manager() -> Iterator[aionamespace.Manager]:
    with aionamespace.Manager() as started:
        yield started


def test_tasks_on_a_crowded_cpu_share_whole_writes_and_read_their_own(
    manager: aionamespace.Manager, frames_per_write: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    """64 tasks set then get their own name: on a crowded CPU their frames go out in whole
    writes, longer than early writes can be (on main they never were), and each task reads
    back what it wrote.

    Once the sender has been seen preempted, the pacing stops looking, so that the rounds
    measured are all in one spell of writing whole: how long a spell lasts is the
    scheduler's to decide (the tests above tell the pacing what it sees)."""

    def everyone(set_then_get: Callable[[int, int], Awaitable[None]], rounds: int) -> Any:
        return asyncio.gather(*(set_then_get(i, rounds) for i in range(TASKS)))

    async def run() -> dict[int, object]:
        ns = manager.AsyncNamespace("paced")
        return await _rounds_once_preempted(ns, everyone, monkeypatch, frames_per_write)

    with crowded_cpu():
        got = asyncio.run(run())
    assert got == {i: (i, 2) for i in range(TASKS)}
    assert max(frames_per_write) > 2 * WRITE_AT_FRAMES, frames_per_write  # (early: past it)


def test_trio_tasks_on_a_crowded_cpu_share_whole_writes_and_read_their_own(
    manager: aionamespace.Manager, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same on trio: once its sender has been seen preempted, each batch of tasks the
    run resumes sends its frames in one write (on main the trio sender always wrote early),
    and each task reads back what it wrote. The pacing then stops looking, as above."""
    writes: list[int] = []  # frames per write: what each take of the outbox held
    take_outbox = RequestTable.take_outbox

    def counting_take(self: RequestTable) -> bytes:
        writes.append(len(self.outbox))
        return take_outbox(self)

    monkeypatch.setattr(RequestTable, "take_outbox", counting_take)

    async def everyone(set_then_get: Callable[[int, int], Awaitable[None]], rounds: int) -> None:
        async with trio.open_nursery() as nursery:
            for i in range(TASKS):
                nursery.start_soon(set_then_get, i, rounds)

    async def run() -> dict[int, object]:
        ns = manager.AsyncNamespace("paced")
        return await _rounds_once_preempted(ns, everyone, monkeypatch, writes)

    with crowded_cpu():
        got = trio.run(run)
    assert got == {i: (i, 2) for i in range(TASKS)}
    assert max(writes) > 2 * WRITE_AT_FRAMES, writes  # (early: a set and a get past it)


def test_early_writes_are_kept_while_nothing_is_looked_at(monkeypatch: pytest.MonkeyPatch) -> None:
    """With the pacing never looking (as tests/test_push.py pins it), writes stay early."""
    monkeypatch.setattr(asyncio_transport, "PACING_SECONDS", math.inf)
    pacing = Pacing()
    with crowded_cpu():
        until = time.monotonic() + 0.05
        while time.monotonic() < until:
            pacing.look()
    assert pacing.write_at == WRITE_AT_FRAMES
