"""Attacks on the server's memory by ordinary use and by clients that do not read (issue 12,
items 3, 4, 6 and 7): the growth of a real server's RSS, beside a bound derived from the
``Limits`` that must hold it.
"""

from __future__ import annotations

import contextlib
import os
import socket
import time
from typing import Any

import msgpack

from aionamespace import HistoryExpired, Limits, Namespace
from aionamespace.protocol.frames import MAX_IDLE_UNPACKERS, POOLED_BUFFER_BYTES

from . import Attack, Row
from .harness import (
    MIB,
    NO_HANG,
    Innocent,
    Sampler,
    blast,
    call,
    mib,
    ms,
    next_frame,
    raw_connect,
    served,
)

LIMITS = Limits()
#: What a server may grow by beyond what an attack's bound counts: the interpreter's heap,
#: socket buffers, the allocator's granularity (RSS is counted in pages it keeps).
ALLOWANCE = 32 * MIB
INNOCENT_BOUND = 0.5  # seconds an innocent client's get may take while an attack is on
BACKLOG = LIMITS.max_reply_backlog_bytes


def _growth_row(variant: str, growth: int, bound: int, counted: str, before: str) -> Row:
    return Row(
        variant,
        "server RSS growth (peak)",
        mib(growth),
        f"< {mib(bound)}: {counted} + {mib(ALLOWANCE)} (before: {before})",
        growth < bound,
    )


def _innocent_row(variant: str, innocent: Innocent) -> Row:
    return Row(
        variant,
        "slowest get of an innocent client",
        ms(innocent.stall),
        f"< {ms(INNOCENT_BOUND)}",
        innocent.stall < INNOCENT_BOUND and not innocent.errors,
    )


# ---------------------------------------------------------------------------- item 3


def history(backend: str, scale: float) -> list[Row]:
    appends = max(20, int(2000 * scale))
    overwrites = max(10, int(600 * scale))
    rows = []
    with served(backend) as server, Namespace(server.path, "log") as ns:
        ns._ping()
        item = b"x" * 1000
        with Sampler(server) as sampler:
            for _ in range(appends):
                ns._append("log", item)
            growth = sampler.growth()
        log_bytes = appends * (len(item) + 3)
        bound = 2 * log_bytes + ALLOWANCE  # the list, and the items its history counts
        with ns._watch(since=appends - 10) as watch:
            replayed = [len(watch.next(timeout=NO_HANG).value) for _ in range(10)]
        whole = replayed == list(range(appends - 9, appends + 1)) and len(ns.log) == appends
        rows.append(
            _growth_row(
                f"{appends:,} `_append`s of 1 KB (a {mib(log_bytes)} log); replayed whole: {whole}",
                growth if whole else bound,
                bound,
                "the log, and the items its revisions count",
                "1.98 GB",
            )
        )
    with served(backend) as server, Namespace(server.path, "big") as ns:
        ns._ping()
        value = os.urandom(MIB)
        with Sampler(server) as sampler:
            for _ in range(overwrites):
                ns.value = value
            growth = sampler.growth()
        try:
            ns._watch(since=0)
            expired = False
        except HistoryExpired:
            expired = True
        bound = LIMITS.max_history_bytes + MIB + ALLOWANCE
        rows.append(
            _growth_row(
                f"{overwrites} overwrites of a 1 MiB value; `watch(since=0)` then raises "
                f"HistoryExpired: {expired}",
                growth if expired or overwrites < 64 else bound,
                bound,
                "`max_history_bytes`, the value",
                "640 MB",
            )
        )
    return rows


# ---------------------------------------------------------------------------- item 4


def watch_amplification(backend: str, scale: float) -> list[Row]:
    revisions = max(20, int(1600 * scale))
    watches = max(20, int(2000 * scale))
    rows = []
    with served(backend) as server:
        with Namespace(server.path, "log") as ns:
            for _ in range(revisions):
                ns.entry = os.urandom(40_000)
        history_bytes = revisions * 40_000
        sock, frames = raw_connect(server.path)
        with sock, Innocent(server.path) as innocent, Sampler(server) as sampler:
            requests = b"".join(msgpack.packb([i, "watch", "log", None, 0]) for i in range(1, 21))
            sock.sendall(requests)
            time.sleep(2.0)  # the attacker reads nothing: the window measured
            innocent.wait_for_gets()
            unread = sampler.growth()
            pushed = replies = 0
            while replies < 20 or pushed < 20 * revisions:  # and then every replay, whole
                frame = next_frame(sock, frames)
                if frame[0] == 0:
                    pushed += 1
                else:
                    replies += 1
            growth = sampler.growth()
        whole = pushed == 20 * revisions
        variant = (
            f"20 `watch(since=0)` in one {len(requests)}-byte write, history of {revisions:,} "
            f"values of 40 KB ({mib(history_bytes)}), unread for 2 s, then read: "
            f"{pushed:,} changes, whole: {whole}"
        )
        bound = 2 * BACKLOG + ALLOWANCE
        rows.append(
            _growth_row(
                variant,
                max(unread, growth) if whole else bound,
                bound,
                "2 x `max_reply_backlog_bytes` (the budget, a replay in the making)",
                "1.2 to 2.1 GB, never freed",
            )
        )
        rows.append(_innocent_row(variant, innocent))
    with served(backend) as server:
        watcher, frames = raw_connect(server.path)
        with watcher:
            watcher.sendall(
                b"".join(
                    msgpack.packb([i, "watch", "k", None, None]) for i in range(1, watches + 1)
                )
            )
            while next_frame(watcher, frames)[0] != watches:
                pass
            with Sampler(server) as sampler, Namespace(server.path, "k") as ns:
                ns.x = os.urandom(256 * 1024)
                time.sleep(1.5)  # the watcher reads nothing: the window measured
                growth = sampler.growth()
        bound = LIMITS.max_push_backlog_bytes + ALLOWANCE
        rows.append(
            _growth_row(
                f"{watches:,} watches on one connection that does not read, one 256 KiB write",
                growth,
                bound,
                "`max_push_backlog_bytes`",
                "1 to 2 GB",
            )
        )
    return rows


# ---------------------------------------------------------------------------- item 6


def _eight_decoders(clients: list[tuple[socket.socket, Any]], size: int, base: int) -> int:
    """Eight sets of ``size`` bytes, unfinished all at once, then finished, then deleted; how
    many were stored."""
    value = msgpack.packb(b"x" * size)
    frames = [msgpack.packb([base, "set", "big", f"v{i}", value]) for i in range(8)]
    cut = size - MIB // 2
    for (sock, _), frame in zip(clients, frames, strict=True):  # eight decoders at once
        sock.sendall(frame[:cut])
    for (sock, _), frame in zip(clients, frames, strict=True):
        sock.sendall(frame[cut:])
    stored = sum(next_frame(sock, unpacker)[:2] == [base, 0] for sock, unpacker in clients)
    del frames, value
    sock, unpacker = clients[0]
    for i in range(8):
        call(sock, unpacker, base + 1 + i, "del", "big", f"v{i}")
    return stored


def decoder_pool(backend: str, scale: float) -> list[Row]:
    size = max(MIB, int(40 * MIB * scale))
    with served(backend) as server, contextlib.ExitStack() as stack:
        clients = [raw_connect(server.path) for _ in range(8)]
        for sock, _ in clients:
            stack.enter_context(sock)
        before = server.rss()
        stored = _eight_decoders(clients, size, 100)
        after = server.rss()
        stored += _eight_decoders(clients, size, 200)
        again = server.rss() - after
    kept = min(size, LIMITS.max_history_bytes)  # the history keeps the last value it can
    pool = MAX_IDLE_UNPACKERS * POOLED_BUFFER_BYTES  # what the pool of idle decoders may keep
    bound = kept + pool + 2 * ALLOWANCE  # the allocator keeps part of what passed through
    return [
        Row(
            f"8 sets of {mib(size)} decoded at once, then deleted ({stored}/16 stored in two "
            "rounds)",
            "server RSS growth left after the first round; the second round's on top",
            f"{mib(after - before)}; {mib(again)}",
            f"< {mib(bound)}: the history's last value, the idle decoders' pool ({mib(pool)}) "
            f"+ {mib(2 * ALLOWANCE)}; < {mib(ALLOWANCE)} (before: 380 MB, for good)",
            after - before < bound and again < ALLOWANCE and stored == 16,
        )
    ]


# ---------------------------------------------------------------------------- item 7


def unread_dumps(backend: str, scale: float) -> list[Row]:
    clients = max(2, int(20 * scale))
    large = max(2, int(48 * scale))
    small = max(100, int(16_000 * scale))
    with served(backend) as server:
        with Namespace(server.path, "big") as ns:
            for i in range(large):
                setattr(ns, f"large{i}", os.urandom(MIB))
            for start in range(0, small, 1000):
                ns._update(**{f"small{i}": os.urandom(1000) for i in range(start, start + 1000)})
        held = large * MIB + small * 1000
        socks: list[socket.socket] = []
        try:
            with Innocent(server.path) as innocent, Sampler(server) as sampler:
                for _ in range(clients):
                    sock, _ = raw_connect(server.path)
                    socks.append(sock)
                    blast(sock, b"".join(msgpack.packb([i, "dump", "big"]) for i in (1, 2, 3)))
                time.sleep(1.5)  # nobody reads: the window measured
                innocent.wait_for_gets()
                growth = sampler.growth()
        finally:
            for sock in socks:
                sock.close()
    variant = f"{clients} clients each send 3 `dump`s of a namespace holding {mib(held)}, read none"
    bound = clients * 2 * BACKLOG + ALLOWANCE
    return [
        _growth_row(
            variant,
            growth,
            bound,
            f"{clients} x 2 x `max_reply_backlog_bytes` (the budget, a reply in the making)",
            "1 to 1.3 GB",
        ),
        _innocent_row(variant, innocent),
    ]


ATTACKS = [
    Attack(
        "3",
        "The history held whole values: ordinary use ran out of memory",
        "2,000 `_append`s of 1 KB through a sync proxy (each revision of the history used to "
        "hold a copy of the whole list), then, on a fresh server, 600 overwrites of a 1 MiB "
        "value (the history was bounded by its count alone). The history is now bounded by "
        "`max_history_bytes` as well, and an append counts what it appended.",
        history,
    ),
    Attack(
        "4",
        "Watch amplification",
        "A history of 1,600 values of 40 KB (64 MB: values under 64 KiB are copied into the "
        "frames that carry them), then 20 `watch(since=0)` requests in one write from a "
        "client that reads nothing for 2 s, then reads every replay; separately, 2,000 watches "
        "on one connection that does not read and one ordinary 256 KiB write. Replays and "
        "pushes now count against the connection's output budget: a replay is produced as the "
        "client reads it, and one pushed value is one value and 2,000 small headers.",
        watch_amplification,
    ),
    Attack(
        "6",
        "Decoders kept their grown buffers for ever",
        "Eight clients send a 40 MiB `set` each, all unfinished at once (eight decoders grown to "
        "40 MiB), then finish them; then all eight values are deleted. Measured: the server's "
        "RSS growth left afterwards (the pool of idle msgpack Unpackers used to keep every "
        "buffer; it now keeps at most 16 Unpackers whose buffers never grew past 256 KiB). The "
        "allowance is twice the others' here: the allocator keeps part of the 320 MiB that "
        "passed through it, which the next values reuse; so the same round again must add "
        "next to nothing (what was held for good grew with each round).",
        decoder_pool,
    ),
    Attack(
        "7",
        "A client that does not read held one whole reply of any size",
        "20 clients each send 3 `dump`s of a namespace holding 64 MB (48 values of 1 MiB, "
        "16,000 of 1 KB) and read nothing, for 1.5 s. A reply larger than the budget is now "
        "produced as the client reads it, and stored values go out as stored, never copied.",
        unread_dumps,
    ),
]
