"""A frozen server (issue 12, item 12): SIGSTOPped, it hung every call for ever.

The servers are ``python -m aionamespace serve`` processes (the tests' ``ServeProcess``:
``reliability.py`` puts ``tests/`` on the path), on a Unix socket and on TCP, really stopped
(SIGSTOP, always continued after). Each client kind is tried: the sync proxy, and the async
one on asyncio and on trio, each with a short ``Limits.call_timeout``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import anyio

from aionamespace import AsyncNamespace, Limits, Namespace, ServerTimeout
from server_processes import ServeProcess

from . import Attack, Row
from .harness import NO_HANG, ms
from .restart_attacks import CLIENTS, WHERE, server_at

# ---------------------------------------------------------------------------- item 12

CALL_TIMEOUT = 1.0  # Limits.call_timeout of every proxy here (its default is longer)
LIMITS = Limits(call_timeout=CALL_TIMEOUT)
FREEZES = 3
#: How late past its timeout a frozen server may be reported: the async proxies look at a
#: connection's silence every quarter of the timeout (so up to 1.25 times it, liveness.py),
#: and a loaded machine schedules late (by far less than this).
MARGIN = 0.5
GET_BOUND = 1.25 * CALL_TIMEOUT + MARGIN
#: A lock wait is cut once the server was silent for a timeout and then left a ping
#: unanswered for another (the async proxies: each seen up to a quarter late).
FROZEN_WAIT_BOUND = 2.5 * CALL_TIMEOUT + MARGIN
LONG_WAIT = 3 * CALL_TIMEOUT  # a lock wait on a live server, past the timeout


@contextlib.contextmanager
def frozen(server: ServeProcess) -> Iterator[None]:
    """The server process stopped (SIGSTOP) for the block, continued (SIGCONT) after."""
    os.kill(server.process.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(server.process.pid, signal.SIGCONT)


@dataclasses.dataclass
class Freezes:
    """A client's calls to a frozen server: how long each took to raise ServerTimeout."""

    waits: list[float] = dataclasses.field(default_factory=list)
    errors: list[str] = dataclasses.field(default_factory=list)  # anything else
    works_after: bool = False  # once continued, the proxy works again
    lock_wait: str = "-"  # a lock wait past the timeout on a live server: how it ended
    frozen_lock_wait: float | None = None  # a lock wait on a frozen server: its ServerTimeout

    def timed_out(self, started: float, exc: BaseException | None) -> None:
        if isinstance(exc, ServerTimeout):
            self.waits.append(time.monotonic() - started)
        else:
            self.errors.append("answered" if exc is None else repr(exc)[:80])


def sync_freezes(server: ServeProcess, rounds: int, locks: bool) -> Freezes:
    seen = Freezes()
    ns = Namespace(server.address, "board", limits=LIMITS)
    try:
        ns.x = 1
        for _ in range(rounds):
            _ = ns.x  # the connection is open when the server freezes
            with frozen(server):
                started = time.monotonic()
                try:
                    _ = ns.x
                    seen.timed_out(started, None)
                except Exception as exc:  # counted: the point
                    seen.timed_out(started, exc)
        seen.works_after = ns.x == 1
        if locks:
            seen.lock_wait = sync_lock_wait(server)
            seen.frozen_lock_wait = sync_frozen_lock_wait(server)
    finally:
        ns._close()
    return seen


def sync_lock_wait(server: ServeProcess) -> str:
    """This thread holds a lock for LONG_WAIT while another thread waits for it."""
    holder = Namespace(server.address, "board", limits=LIMITS)

    def wait() -> str:
        waiter = Namespace(server.address, "board", limits=LIMITS)
        started = time.monotonic()
        try:
            with waiter._lock("ledger", timeout=NO_HANG):
                return f"yes, after {time.monotonic() - started:.1f} s"
        except Exception as exc:  # the point: it must not raise
            return f"no: {exc!r}"[:80]
        finally:
            waiter._close()

    try:
        with holder._lock("ledger"):
            result: list[str] = []
            thread = threading.Thread(target=lambda: result.append(wait()))
            thread.start()
            time.sleep(LONG_WAIT)  # the wait measured, not a synchronisation
        thread.join(NO_HANG)
        return result[0] if result else "no: still waiting"
    finally:
        holder._close()


def sync_frozen_lock_wait(server: ServeProcess) -> float | None:
    """A lock held by another thread, waited for while the server is frozen."""
    holder = Namespace(server.address, "board", limits=LIMITS)
    held, done = threading.Event(), threading.Event()

    def hold() -> None:
        with holder._lock("ledger"):
            held.set()
            done.wait(NO_HANG)
        holder._close()

    thread = threading.Thread(target=hold)
    thread.start()
    waiter = Namespace(server.address, "board", limits=LIMITS)
    try:
        held.wait(NO_HANG)
        waiter._ping()
        with frozen(server):
            started = time.monotonic()
            try:
                with waiter._lock("ledger", timeout=NO_HANG):
                    return None
            except ServerTimeout:
                return time.monotonic() - started
            except Exception:  # reported as no ServerTimeout
                return None
    finally:
        done.set()
        thread.join(NO_HANG)
        waiter._close()


def async_freezes(client: str, server: ServeProcess, rounds: int, locks: bool) -> Freezes:
    async def main() -> Freezes:
        seen = Freezes()
        ns = AsyncNamespace(server.address, "board", limits=LIMITS)
        try:
            ns.x = 1
            for _ in range(rounds):
                await ns.x
                with frozen(server):
                    started = time.monotonic()
                    try:
                        with anyio.fail_after(NO_HANG):
                            await ns.x
                        seen.timed_out(started, None)
                    except Exception as exc:  # counted: the point
                        seen.timed_out(started, exc)
            seen.works_after = await ns.x == 1
            if locks:
                seen.lock_wait = await async_lock_wait(server)
                seen.frozen_lock_wait = await async_frozen_lock_wait(server)
        finally:
            await ns._close()
        return seen

    return anyio.run(main, backend=client)


async def with_two(
    server: ServeProcess, body: Callable[[AsyncNamespace, AsyncNamespace], Awaitable[Any]]
) -> Any:
    """``body(holder, waiter)``: two async proxies, each with a connection of its own."""
    holder = AsyncNamespace(server.address, "board", limits=LIMITS)
    waiter = AsyncNamespace(server.address, "board", limits=LIMITS)
    try:
        return await body(holder, waiter)
    finally:
        await waiter._close()
        await holder._close()


async def async_lock_wait(server: ServeProcess) -> str:
    async def body(holder: AsyncNamespace, waiter: AsyncNamespace) -> str:
        result: list[str] = []

        async def wait() -> None:
            started = time.monotonic()
            try:
                async with waiter._lock("ledger", timeout=NO_HANG):
                    result.append(f"yes, after {time.monotonic() - started:.1f} s")
            except Exception as exc:  # the point: it must not raise
                result.append(f"no: {exc!r}"[:80])

        async with anyio.create_task_group() as group:
            async with holder._lock("ledger"):
                group.start_soon(wait)
                await anyio.sleep(LONG_WAIT)  # the wait measured, not a synchronisation
        return result[0] if result else "no: still waiting"

    return str(await with_two(server, body))


async def async_frozen_lock_wait(server: ServeProcess) -> float | None:
    async def body(holder: AsyncNamespace, waiter: AsyncNamespace) -> float | None:
        async with holder._lock("ledger"):
            await waiter._ping()
            with frozen(server):
                started = time.monotonic()
                try:
                    with anyio.fail_after(NO_HANG):
                        async with waiter._lock("ledger"):
                            return None
                except ServerTimeout:
                    return time.monotonic() - started
                except Exception:  # reported as no ServerTimeout
                    return None

    waited: float | None = await with_two(server, body)
    return waited


def frozen_server(backend: str, scale: float) -> list[Row]:
    rounds = max(1, round(FREEZES * min(1.0, scale * 20)))
    rows = []
    for where in WHERE:
        for client in CLIENTS:
            with server_at(where, backend) as servers:
                locks = where == "unix"
                if client == "sync":
                    seen = sync_freezes(servers[0], rounds, locks)
                else:
                    seen = async_freezes(client, servers[0], rounds, locks)
            rows += freeze_rows(f"{client} proxy, {where}", rounds, seen, locks)
    return rows


def freeze_rows(variant: str, rounds: int, seen: Freezes, locks: bool) -> list[Row]:
    slowest = max(seen.waits, default=float("inf"))
    fastest = min(seen.waits, default=0.0)
    rows = [
        Row(
            f"{variant}: a get of a SIGSTOPped server",
            f"time to `ServerTimeout` (fastest, slowest of {rounds}); works once continued",
            f"{ms(fastest)}, {ms(slowest)}; {'yes' if seen.works_after else 'no'}"
            + (f"; {len(seen.errors)} not timed out: {seen.errors[0]}" if seen.errors else ""),
            f"{ms(CALL_TIMEOUT)} to {ms(GET_BOUND)}; yes",
            not seen.errors
            and len(seen.waits) == rounds
            and CALL_TIMEOUT <= fastest
            and slowest < GET_BOUND
            and seen.works_after,
        )
    ]
    if locks:
        waited = seen.frozen_lock_wait
        rows += [
            Row(
                f"{variant}: a lock wait of {LONG_WAIT:g} s on a live server",
                "got the lock, no error",
                seen.lock_wait,
                "yes",
                seen.lock_wait.startswith("yes"),
            ),
            Row(
                f"{variant}: a lock wait on a SIGSTOPped server",
                "time to `ServerTimeout`",
                ms(waited) if waited is not None else "no ServerTimeout",
                f"{ms(2 * CALL_TIMEOUT)} to {ms(FROZEN_WAIT_BOUND)}",
                waited is not None and 2 * CALL_TIMEOUT <= waited < FROZEN_WAIT_BOUND,
            ),
        ]
    return rows


ATTACKS = [
    Attack(
        "12",
        "A frozen server hung every call",
        f"Every proxy here has `Limits(call_timeout={CALL_TIMEOUT:g})` (a short timeout, so "
        "that the run is short; the documented default is 10 s). The server is SIGSTOPped "
        "(and continued after each measure) while a get waits for it, "
        f"{FREEZES} times for each client (the sync proxy, the async one on asyncio and on "
        "trio) on a Unix socket and on TCP; on the Unix socket, a lock wait of "
        f"{LONG_WAIT:g} s on a live server (past the timeout: a liveness ping must keep it "
        "going), and one on a frozen server. Measured: the time from the get to "
        "`ServerTimeout` (bound: from the timeout to 1.25 times it, as the async proxies "
        f"check silence every quarter of it, plus {MARGIN:g} s for a loaded machine), whether "
        "the proxy works once the server continues, whether the long wait got its lock, and "
        "when the frozen wait raised (bound: a timeout of silence, then another for the "
        "unanswered ping, each up to a quarter late, plus the same margin). Before the fix, "
        "every call hung for ever. Two findings: the async proxies raise after 1.5 times the "
        "timeout, not 1.25 (the first silence check after an idle spell only catches up with "
        "replies read before the request, so the five silent checks start a quarter late), "
        "within the margin; and an async lock wait on a frozen server raises one handshake "
        "timeout (`min(handshake_timeout, call_timeout)`) after its `ServerTimeout` was "
        "decided, because the failed acquire withdraws its wait on a new connection to the "
        "frozen server (the server frees the waits of a lost connection by itself).",
        frozen_server,
    ),
]
