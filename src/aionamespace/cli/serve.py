"""``serve``: run a server until Ctrl-C or SIGTERM (or, started by a Manager, stdin's end)."""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import signal
import ssl
import sys
from collections.abc import Callable

import anyio
import anyio.abc

from ..protocol.connection import Address, format_address, parse_address
from ..server.busypoll import busy_poll_loop_factory
from ..server.server import Server
from .parser import AUTHKEY_ENV

__all__ = ["run_serve", "serve"]


async def _stop_on_signal(
    stop: Callable[[], None],
    *,
    task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
) -> None:
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        task_status.started()  # handlers installed: from now on a signal stops us cleanly
        async for _ in signals:
            stop()


async def _stop_on_parent_exit(stop: Callable[[], None]) -> None:
    """Stop when stdin reaches EOF: the Manager that spawned us closed it, or died."""
    fd = sys.stdin.fileno()
    os.set_blocking(fd, False)
    while True:
        await anyio.wait_readable(fd)
        try:
            if not os.read(fd, 4096):
                break
        except BlockingIOError:
            continue
    stop()


def _raise_open_file_limit() -> None:
    """A server holds a descriptor per client: lift the soft limit (often 1024) to the hard one."""
    try:
        import resource
    except ImportError:  # pragma: no cover - not on this platform
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))


async def serve(
    address: Address,
    *,
    authkey: bytes | None = None,
    parent_pipe: bool = False,
    ssl_context: ssl.SSLContext | None = None,
) -> None:
    """Run a server at ``address`` until a signal (or, with ``parent_pipe``, stdin EOF)."""
    _raise_open_file_limit()
    server = Server(address, authkey=authkey, ssl_context=ssl_context)

    async def run(*, task_status: anyio.abc.TaskStatus[Address]) -> None:
        await server.serve(task_status=task_status)
        group.cancel_scope.cancel()  # served and said goodbye: stop the watchers too

    async with anyio.create_task_group() as group:
        await group.start(_stop_on_signal, server.stop)
        bound = await group.start(run)
        if parent_pipe:
            group.start_soon(_stop_on_parent_exit, server.stop)
            print(json.dumps({"address": bound}), flush=True)
        else:
            print(f"aionamespace: serving on {format_address(bound)} (Ctrl-C stops)", flush=True)
    if not parent_pipe:
        print("aionamespace: stopped", flush=True)


def run_serve(args: argparse.Namespace) -> int:
    address: Address = args.unix if args.unix else parse_address(f"tcp:{args.tcp}")
    if args.parent_pipe:  # a Manager started us: its first line says what key to require
        config = json.loads(sys.stdin.buffer.readline() or b"{}")
        authkey = bytes.fromhex(config["authkey"]) if config.get("authkey") else None
    else:
        key_text = os.environ.get(AUTHKEY_ENV)
        authkey = key_text.encode() if key_text else None
    options: dict[str, object] = {}
    if args.backend == "asyncio" and args.loop == "uvloop":
        import uvloop  # the optional extra

        options["loop_factory"] = uvloop.new_event_loop
    elif args.backend == "asyncio" and args.busy_poll_us > 0:
        options["loop_factory"] = functools.partial(busy_poll_loop_factory, args.busy_poll_us / 1e6)
    ssl_context = None
    if args.tls_cert:
        ssl_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ssl_context.load_cert_chain(args.tls_cert, args.tls_key)
    anyio.run(
        functools.partial(
            serve, address, authkey=authkey, parent_pipe=args.parent_pipe, ssl_context=ssl_context
        ),
        backend=args.backend,
        backend_options=options,
    )
    return 0
