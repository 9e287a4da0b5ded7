"""A server restarted under idle proxies (issue 12, item 11): their first write failed,
reported as maybe applied, although it never reached any server.

The servers are ``python -m aionamespace serve`` processes (the tests' ``ServeProcess``:
``reliability.py`` puts ``tests/`` on the path), on a Unix socket and on TCP, really SIGKILLed
and started again at the same address. Each client kind is tried: the sync proxy, and the
async one on asyncio and on trio.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Iterator
from typing import Any

import anyio
import anyio.to_thread

from aionamespace import AsyncNamespace, ConnectionLost, Namespace
from server_processes import ServeProcess

from . import Attack, Row
from .client_attacks import socket_dir
from .harness import NO_HANG, ms

CLIENTS = ("sync", "asyncio", "trio")
WHERE = ("unix", "tcp")

# ---------------------------------------------------------------------------- item 11

RESTARTS = 5
MOMENT = 0.1  # seconds between the new server's readiness and the first write
FIRST_WRITE_BOUND = 1.0  # seconds: a reconnection and the write, no timeout waited out


@dataclasses.dataclass
class FirstWrites:
    """The first writes after each restart, as one client kind saw them."""

    durations: list[float] = dataclasses.field(default_factory=list)
    sent_failures: int = 0  # ConnectionLost(request_sent=True): the failure
    other_failures: list[str] = dataclasses.field(default_factory=list)

    def attempt_done(self, started: float, count: Any) -> None:
        self.durations.append(time.monotonic() - started)
        if count != 1:  # a fresh server's first _incr, applied once
            self.other_failures.append(f"returned {count!r}")

    def attempt_failed(self, exc: BaseException) -> None:
        if isinstance(exc, ConnectionLost) and exc.request_sent:
            self.sent_failures += 1
        else:
            self.other_failures.append(repr(exc)[:80])


def restart(servers: list[ServeProcess], backend: str) -> None:
    """SIGKILL the server, start a new one at its address, and give it a moment."""
    old = servers[-1]
    old.kill()
    servers.append(ServeProcess(old.address, backend))
    time.sleep(MOMENT)


def sync_first_writes(servers: list[ServeProcess], backend: str, rounds: int) -> FirstWrites:
    seen = FirstWrites()
    ns = Namespace(servers[-1].address, "board")
    try:
        for _ in range(rounds):
            ns._incr("count")  # the connection is open, then idle
            restart(servers, backend)
            started = time.monotonic()
            try:
                seen.attempt_done(started, ns._incr("count"))
            except Exception as exc:  # counted: the point
                seen.attempt_failed(exc)
    finally:
        ns._close()
    return seen


def async_first_writes(
    client: str, servers: list[ServeProcess], backend: str, rounds: int
) -> FirstWrites:
    async def main() -> FirstWrites:
        seen = FirstWrites()
        ns = AsyncNamespace(servers[-1].address, "board")
        try:
            for _ in range(rounds):
                await ns._incr("count")
                await anyio.to_thread.run_sync(restart, servers, backend)
                started = time.monotonic()
                try:
                    with anyio.fail_after(NO_HANG):
                        seen.attempt_done(started, await ns._incr("count"))
                except Exception as exc:  # counted: the point
                    seen.attempt_failed(exc)
        finally:
            await ns._close()
        return seen

    return anyio.run(main, backend=client)


@contextlib.contextmanager
def server_at(where: str, backend: str) -> Iterator[list[ServeProcess]]:
    """A server on a fresh Unix socket, or on a free TCP port of 127.0.0.1, and the servers
    started at its address after it (every one of them killed at the end)."""
    with socket_dir() as path:
        servers = [ServeProcess(path if where == "unix" else ("127.0.0.1", 0), backend)]
        try:
            yield servers
        finally:
            for server in servers:
                server.close()


def first_write(backend: str, scale: float) -> list[Row]:
    rounds = max(1, round(RESTARTS * min(1.0, scale * 20)))
    rows = []
    for client in CLIENTS:
        for where in WHERE:
            with server_at(where, backend) as servers:
                if client == "sync":
                    seen = sync_first_writes(servers, backend, rounds)
                else:
                    seen = async_first_writes(client, servers, backend, rounds)
            variant = f"{client} proxy, {where}"
            slowest = max(seen.durations, default=float("inf"))
            rows += [
                Row(
                    variant,
                    f"first writes failed as `request_sent=True` (failed otherwise, or not "
                    f"applied once), of {rounds}",
                    f"{seen.sent_failures} ({len(seen.other_failures)})"
                    + (f": {seen.other_failures[0]}" if seen.other_failures else ""),
                    "0 (0)",
                    seen.sent_failures == 0 and not seen.other_failures,
                ),
                Row(
                    variant,
                    f"first write's duration (slowest of {rounds})",
                    ms(slowest) if seen.durations else "none succeeded",
                    f"< {ms(FIRST_WRITE_BOUND)}",
                    slowest < FIRST_WRITE_BOUND,
                ),
            ]
    return rows


ATTACKS = [
    Attack(
        "11",
        "The first write after a server restart",
        f"A proxy writes (`_incr`), its connection then idle; the server is SIGKILLed and a "
        f"new one started at the same address, and {MOMENT * 1000:g} ms after it is ready the "
        f"proxy's first write is an `_incr`, with the default `Retry`; {RESTARTS} restarts "
        "for each client (the sync proxy, the async one on asyncio and on trio) on a Unix "
        "socket and on TCP. Measured: first writes that failed as `ConnectionLost("
        "request_sent=True)` (the issue's failure: the write had gone into the old server's "
        "dead connection, so it never reached any server, yet was reported as maybe applied), "
        "those that failed otherwise or were not applied exactly once (the new server's "
        "`_incr` must return 1), and how long the first write took (the sync proxy finds the "
        "old connection dead before sending, and its `Retry` sends the write again after its "
        "first backoff, 50 ms; the async ones send it on a new connection at once). Before "
        "the fix, the sync proxy on TCP and the trio proxies on TCP and Unix failed so.",
        first_write,
    ),
]
