"""Attacks through values and namespaces (issue 12, items 2, 13 and 15): values built to be
slow to check or compare, anonymous namespaces made by the hundred thousand, and ints too long
for ``str``.
"""

from __future__ import annotations

import ast
import secrets
import select
import subprocess
import sys
import threading
import time
from decimal import Decimal
from typing import Any

import msgpack

from aionamespace import Limits, Namespace
from aionamespace.protocol.codec import encode_value

from . import Attack, Row
from .harness import NO_HANG, Innocent, Sampler, call, mib, ms, next_frame, raw_connect, served

P = 2**61 - 1
STALL_BOUND = 1.0  # seconds an innocent client's get may take while a value is checked
LIMITS = Limits()


def _set_of(encoded: list[bytes]) -> bytes:
    """A SET value of already encoded items (an array 32 led by the SET marker)."""
    return b"\xdd" + (len(encoded) + 1).to_bytes(4, "big") + b"\xc7\x00\x03" + b"".join(encoded)


def equal_hashes(size: int) -> bytes:
    """About ``size`` bytes: distinct integers that all hash to 0 (multiples of 2**61 - 1)."""
    return _set_of([encode_value(k * P) for k in range(1, max(2, size // 12))])


def groups_of_equal_hashes(size: int, group: int) -> bytes:
    """About ``size`` bytes: distinct integers in groups of ``group`` that hash alike (as
    many as ``max_keys_per_hash`` allows: a valid value)."""
    return _set_of(
        [encode_value(g + m * P) for g in range(1, size // (9 * group) + 1) for m in range(group)]
    )


def big_int_beside_a_decimal(size: int) -> bytes:
    """About ``size`` bytes: an int and Decimal(7), which hash alike."""
    base = 1 << (size * 8)
    return _set_of([encode_value(base + (7 - base) % P), encode_value(Decimal(7))])


def _flood(path: str, requests: list[list[Any]]) -> tuple[list[Any], float, Innocent]:
    """Send ``requests`` on one connection while an innocent client gets; the last reply,
    how long it took, and the innocent client (its stall)."""
    with Innocent(path) as innocent:
        innocent.wait_for_gets()
        sock, frames = raw_connect(path)
        with sock:
            for request in requests[:-1]:
                assert call(sock, frames, *request)[1] == 0
            started = time.perf_counter()
            sock.sendall(msgpack.packb(requests[-1]))
            select.select([sock], [], [], 4 * NO_HANG)
            reply = next_frame(sock, frames)
            took = time.perf_counter() - started
        innocent.wait_for_gets()
    return reply, took, innocent


def hash_flood(backend: str, scale: float) -> list[Row]:
    rows = []
    with served(backend) as server:
        cases = [
            (f"a set of {n // 1000} KB of ints that hash alike", equal_hashes(n))
            for n in (389_000, 779_000)
        ] + [("a set of a 400 KB int and a Decimal of its hash", big_int_beside_a_decimal(400_000))]
        if scale < 1:
            cases = [(variant, equal_hashes(int(len(value) * scale))) for variant, value in cases]
        group = LIMITS.max_keys_per_hash
        allowed = max(10_000, int(16 * 1024 * 1024 * scale))
        cases.append(
            (
                f"a set of {mib(allowed)} of ints in groups of {group} that hash alike (as many "
                "as `max_keys_per_hash` allows: valid)",
                groups_of_equal_hashes(allowed, group),
            )
        )
        for variant, value in cases:
            reply, took, innocent = _flood(server.path, [[1, "set", "flood", "x", value]])
            refused = reply[:3] == [1, 1, "RemoteProtocolError"] and "hash" in reply[3]
            if "valid" in variant:
                refused = reply[:2] == [1, 0]  # stored, as it should be
            rows.append(
                Row(
                    f"`set` of {variant} ({len(value):,} bytes): "
                    f"{'stored' if reply[1] == 0 else 'refused'} in {ms(took)}",
                    "slowest get of an innocent client",
                    ms(innocent.stall),
                    f"< {ms(STALL_BOUND)} (before: 8 to 10 s at 389 KB, 40 s at 779 KB)"
                    + ("" if refused else f"; answer unexpected: {str(reply)[:80]}"),
                    refused and innocent.stall < STALL_BOUND and not innocent.errors,
                )
            )
        digits = max(1000, int(800_000 * scale))
        stored = encode_value([10**digits])
        reply, took, innocent = _flood(
            server.path,
            [
                [1, "set", "flood", "n", stored],
                [2, "cas", "flood", "n", encode_value([Decimal(1)]), encode_value("swapped")],
            ],
        )
        rows.append(
            Row(
                f"`cas` comparing an int of {digits:,} digits with a Decimal: "
                f"answered {reply[2]!r} in {ms(took)}",
                "slowest get of an innocent client",
                ms(innocent.stall),
                f"< {ms(STALL_BOUND)}",
                reply == [2, 0, False] and innocent.stall < STALL_BOUND and not innocent.errors,
            )
        )
    return rows


# ---------------------------------------------------------------------------- item 13

GRACE = 1.0  # the anonymous_grace of the server that frees (the default is 300 s)
ROUNDS = 5


def _open_many(path: str, count: int, first_id: int = 1) -> tuple[int, int]:
    """``count`` opens of fresh anonymous keys, pipelined on one connection that then
    closes; how many were created and how many got LimitExceeded."""
    sock, frames = raw_connect(path)
    with sock:
        data = b"".join(
            msgpack.packb([first_id + i, "open", f"#{secrets.token_hex(16)}", {}])
            for i in range(count)
        )
        sender = threading.Thread(target=sock.sendall, args=(data,))
        sender.start()
        created = refused = 0
        for _ in range(count):
            reply = next_frame(sock, frames)
            created += reply[1] == 0
            refused += reply[1:3] == [1, "LimitExceeded"]
        sender.join(NO_HANG)
    return created, refused


def _namespaces(path: str) -> int:
    sock, frames = raw_connect(path)
    with sock:
        return len(call(sock, frames, 1, "keys")[2])


def anonymous_namespaces(backend: str, scale: float) -> list[Row]:
    limit = LIMITS.max_namespaces
    sent = max(150, int(1.5 * limit * scale))
    with served(backend) as server, Sampler(server) as sampler:
        created, refused = _open_many(server.path, sent)
        growth = sampler.growth()
        per_namespace = growth / max(1, created)
        held = _namespaces(server.path)
    expected = min(sent, limit)
    per_round = max(100, int(20_000 * scale))
    left: list[int] = []
    with served(backend, limits={"anonymous_grace": GRACE}) as server:
        sizes = [server.rss()]
        sock, frames = raw_connect(server.path)
        with sock:
            for _ in range(ROUNDS):
                _open_many(server.path, per_round)
                deadline = time.monotonic() + GRACE + NO_HANG
                while (count := _namespaces(server.path)) and time.monotonic() < deadline:
                    time.sleep(0.1)
                left.append(count)
                sizes.append(server.rss())
            gone = call(sock, frames, 1, "get", f"#{secrets.token_hex(16)}", "x")
    first, later = sizes[1] - sizes[0], sizes[-1] - sizes[1]
    return [
        Row(
            f"{sent:,} opens of fresh anonymous keys (45 bytes each), connection kept "
            f"(default limits): {created:,} created, {refused:,} LimitExceeded",
            "namespaces held; server RSS growth (per namespace)",
            f"{held:,}; {mib(growth)} ({per_namespace:,.0f} bytes)",
            f"`max_namespaces` ({limit:,}) (before: unbounded, 1.1 KB each for ever)",
            created == expected and held == expected and refused == sent - expected,
        ),
        Row(
            f"{ROUNDS} rounds of {per_round:,} anonymous namespaces opened by a connection that "
            f"then closes (`anonymous_grace={GRACE:g}`)",
            "namespaces left after each grace; RSS growth in round 1, in rounds 2 to "
            f"{ROUNDS} together; a freed key's error",
            f"{left}; {mib(first)}, {mib(later)}; {gone[2]}",
            f"0 each; rounds 2 to {ROUNDS} < round 1 (never freed: {ROUNDS - 1} x round 1); "
            "NamespaceGone",
            not any(left) and later < first and gone[2] == "NamespaceGone",
        ),
    ]


# ---------------------------------------------------------------------------- item 15

PRINT_BOUND = 5.0  # seconds for str(ns) and the CLI's dump of a namespace holding the int


def long_int_printing(backend: str, scale: float) -> list[Row]:
    digits = max(4_301, int(100_000 * scale))
    huge = 10**digits + 1
    with served(backend) as server:
        with Namespace(server.path, "big") as ns:
            ns.n = huge
            ns.nested = {"k": [huge, 1]}
            started = time.perf_counter()
            text = str(ns)
            took = time.perf_counter() - started
            expected = f"Namespace(n={hex(huge)}, nested={{'k': [{hex(huge)}, 1]}})"
            readable = text == expected and ast.literal_eval(hex(huge)) == huge
        started = time.perf_counter()
        dumped = subprocess.run(
            [sys.executable, "-m", "aionamespace", "dump", server.path, "big"],
            capture_output=True,
            text=True,
            timeout=NO_HANG,
            check=False,
        )
        dump_took = time.perf_counter() - started
    dump_ok = dumped.returncode == 0 and hex(huge) in dumped.stdout and not dumped.stderr
    return [
        Row(
            f"a namespace holding an int of {digits:,} digits (over Python's 4,300)",
            "`str(ns)`; `python -m aionamespace dump`",
            f"{ms(took)}, reads back: {readable}; {ms(dump_took)}, exit {dumped.returncode}",
            f"no ValueError, < {PRINT_BOUND:g} s each",
            readable and took < PRINT_BOUND and dump_ok and dump_took < PRINT_BOUND,
        )
    ]


ATTACKS = [
    Attack(
        "2",
        "Hash flooding froze the server",
        "One `set` whose value is a set of ints that all hash alike (multiples of 2**61 - 1; "
        "389 KB, then 779 KB, the issue's sizes), then a set holding a 400 KB int and a "
        "Decimal of the same hash, then a `cas` comparing a stored int of 800,000 digits with "
        "a Decimal (Python converts the int to compare them: quadratic). Measured: the "
        "slowest get of an innocent client meanwhile, and the time to the flooder's answer. "
        "The server now checks a value in time linear in its size without building sets or "
        "dicts, refuses more than `max_keys_per_hash` keys sharing a hash, and compares such "
        "values by their bytes. Last, a valid value: a 16 MiB set of ints in groups of "
        "`max_keys_per_hash` (8) that hash alike, which the check accepts and stores.",
        hash_flood,
    ),
    Attack(
        "13",
        "Anonymous namespaces were never freed",
        "150,000 `open`s of fresh anonymous keys (45-byte requests) on one connection of a "
        "server with the default limits; then, on a server whose `anonymous_grace` is 1 s "
        "(the default, 300 s, is too long to wait out here), five rounds of 20,000 made by a "
        "connection that then closes. Measured: the namespaces the server holds (`keys`), "
        "its RSS, and what a request naming a freed key gets.",
        anonymous_namespaces,
    ),
    Attack(
        "15",
        "Ints over 4,300 digits broke `str(ns)` and the CLI's `dump`",
        "A namespace holding an int of 100,000 digits, alone and nested: `str(ns)` on a sync "
        "proxy and `python -m aionamespace dump` used to raise ValueError (Python's limit on "
        "int to str conversion); they print such ints in hexadecimal, which reads back.",
        long_int_printing,
    ),
]
