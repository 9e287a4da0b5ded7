"""Every ``Limits`` field from ``Manager(limits=...)`` and from ``serve``'s flags (issue 13.5).

The value that prompted it: 100 MiB, over the default ``max_frame_bytes`` (64 MiB). Raised on
the server, it must also pass through proxies that were given no limits at all: they honour
the ``max_frame_bytes`` their server announces in its hello, both ways.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import threading
from collections.abc import Callable

import anyio
import pytest

from aionamespace import AsyncNamespace, Limits, Manager, Namespace
from aionamespace._limit_flags import add_limit_flags, limit_flag, limits_from_flags
from aionamespace.protocol.connection import Address
from server_processes import ServeProcess

MIB = 1024 * 1024
BIG = 100 * MIB
RAISED = 128 * MIB


def big_value() -> bytes:
    return (b"0123456789abcdef" * (BIG // 16))[:BIG]


def in_a_new_thread(read: Callable[[], object]) -> object:
    """Run ``read()`` in a new thread (the sync proxy opens a new connection per thread) and
    return what it returned, or raise what it raised."""
    seen: list[object] = []
    failed: list[BaseException] = []

    def run() -> None:
        try:
            seen.append(read())
        except BaseException as exc:
            failed.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    if failed:
        raise failed[0]
    return seen[0]


def round_trips_with_default_limits(address: Address, authkey: bytes | None) -> None:
    """Proxies given no limits write and read BIG: they honour the server's announcement."""
    value = big_value()

    def sync_side() -> bool:
        ns = Namespace(address, "big", authkey=authkey)
        ns.copy = value
        return bool(ns.copy == value)

    assert in_a_new_thread(sync_side)

    async def async_side() -> bool:
        async with AsyncNamespace(address, "big", authkey=authkey) as ns:
            # A write is checked when it is queued: before the server's hello, against the
            # proxy's own limit. Once greeted, the server's.
            await ns._ping()
            ns.again = value
            return bool(await ns.again == value and await ns.copy == value)

    assert anyio.run(async_side)


def test_a_100_mib_value_after_raising_the_limit_from_the_manager() -> None:
    value = big_value()
    with Manager(limits=Limits(max_frame_bytes=RAISED)) as manager:
        ns = manager.Namespace("big")
        ns.value = value
        assert ns.value == value
        round_trips_with_default_limits(manager.address, manager.authkey)
    with Manager() as manager:  # the default still refuses it, clearly, before sending
        ns = manager.Namespace("big")
        with pytest.raises(ValueError, match="max_frame_bytes"):
            ns.value = value
        assert not hasattr(ns, "value")


def test_a_100_mib_value_after_raising_the_limit_from_serve(short_tmp: str) -> None:
    path = os.path.join(short_tmp, "big.sock")
    server = ServeProcess(path, "asyncio", limit_flag("max_frame_bytes"), str(RAISED))
    try:
        round_trips_with_default_limits(path, None)
    finally:
        server.close()


def test_serve_has_a_flag_for_every_limit_field() -> None:
    import argparse

    parser = argparse.ArgumentParser()
    add_limit_flags(parser)
    fields = dataclasses.fields(Limits)
    argv: list[str] = []
    for number, field in enumerate(fields, 1):
        argv += [limit_flag(field.name), str(type(field.default)(number))]
    assert limits_from_flags(parser.parse_args(argv)) == Limits(
        **{field.name: type(field.default)(number) for number, field in enumerate(fields, 1)}
    )
    assert limits_from_flags(parser.parse_args([])) == Limits()
    for field in fields:  # a description next to the field becomes the flag's help
        assert field.metadata.get("description"), f"Limits.{field.name} has no description"
        assert field.metadata["description"] in " ".join(parser.format_help().split())


@pytest.mark.parametrize("bad", ["-1", "lots", "nan"])
def test_a_bad_limit_flag_is_refused_clearly(bad: str) -> None:
    finished = subprocess.run(
        [
            sys.executable,
            "-m",
            "aionamespace",
            "serve",
            "--unix",
            "x.sock",
            "--max-frame-bytes",
            bad,
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert finished.returncode == 2
    assert "--max-frame-bytes" in finished.stderr


def test_the_manager_refuses_limits_that_are_not_limits() -> None:
    with pytest.raises(TypeError, match="Limits"):
        Manager(limits={"max_frame_bytes": 1})  # type: ignore[arg-type]
