"""Command line: ``python -m aionamespace serve|demo|get|set|del|dump|watch``.

``serve --unix PATH`` or ``serve --tcp HOST:PORT`` runs a server until Ctrl-C or SIGTERM, which
stop it cleanly (the socket file is removed). With AIONAMESPACE_AUTHKEY set in its environment,
clients must prove they know that key. ``demo`` runs the stdlib Namespace lesson on spawned
processes against an embedded server, then reads the same board with ``await``.

``get|set|del|dump|watch ADDRESS ...`` inspect and change a running server (ADDRESS: a Unix
socket path or HOST:PORT; values are given and shown as Python literals; the client side also
reads AIONAMESPACE_AUTHKEY). ``watch`` prints every change as it happens, until Ctrl-C.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import functools
import os
import signal
import ssl
import sys
from collections.abc import Callable, Sequence

import anyio
import anyio.abc

from ._errors import NamespaceError, NamespaceGone
from ._limit_flags import add_limit_flags, limits_from_flags
from ._parent_pipe import (
    ParentConfig,
    announce,
    ignore_interrupts,
    read_config,
    remove_private_dir,
    run_initializer,
    watch_parent,
)
from .client.proxy import Target
from .client.sync import Namespace
from .protocol.connection import Address, format_address, parse_address
from .protocol.limits import Limits
from .server.busypoll import DEFAULT_SPIN_SECONDS, busy_poll_loop_factory
from .server.server import Server

__all__ = ["AUTHKEY_ENV", "main"]

#: ``serve`` requires clients to know this key when the variable is set (its UTF-8 bytes).
AUTHKEY_ENV = "AIONAMESPACE_AUTHKEY"


async def _stop_on_signal(
    stop: Callable[[], None],
    *signals_handled: signal.Signals,
    task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
) -> None:
    with anyio.open_signal_receiver(*signals_handled) as signals:
        task_status.started()  # handlers installed: from now on a signal stops us cleanly
        async for _ in signals:
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
    parent: ParentConfig | None = None,
    ssl_context: ssl.SSLContext | None = None,
    limits: Limits | None = None,
) -> None:
    """Run a server at ``address`` until a signal (or, for a ``parent`` Manager, its word)."""
    _raise_open_file_limit()
    server = Server(address, authkey=authkey, ssl_context=ssl_context, limits=limits)

    async def run(*, task_status: anyio.abc.TaskStatus[Address]) -> None:
        await server.serve(task_status=task_status)
        group.cancel_scope.cancel()  # served and said goodbye: stop the watchers too

    # A Manager's server leaves Ctrl-C to the program (_parent_pipe.py): it stops when told.
    stop_signals = [signal.SIGTERM] if parent else [signal.SIGINT, signal.SIGTERM]
    async with anyio.create_task_group() as group:
        await group.start(_stop_on_signal, server.stop, *stop_signals)
        bound = await group.start(run)
        if parent:
            stop, fd = server.stop, sys.stdin.fileno()
            group.start_soon(
                functools.partial(watch_parent, stop_requested=parent.stop_requested), fd, stop
            )
            announce({"address": bound})
        else:
            print(f"aionamespace: serving on {format_address(bound)} (Ctrl-C stops)", flush=True)
    if not parent:
        print("aionamespace: stopped", flush=True)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m aionamespace",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True)
    serve_cmd = commands.add_parser("serve", help="run a server until Ctrl-C")
    where = serve_cmd.add_mutually_exclusive_group(required=True)
    where.add_argument("--unix", metavar="PATH", help="listen on a Unix socket (mode 0600)")
    where.add_argument("--tcp", metavar="HOST:PORT", help="listen on TCP (port 0: any free port)")
    serve_cmd.add_argument("--backend", choices=["asyncio", "trio"], default="asyncio")
    serve_cmd.add_argument(
        "--loop",
        choices=["asyncio", "uvloop"],
        default="asyncio",
        help="with --backend asyncio: the event loop (uvloop: pip install aionamespace[uvloop];"
        " slower than the default's busy polling on one client's round trips: see README)",
    )
    serve_cmd.add_argument(
        "--busy-poll-us",
        type=float,
        default=DEFAULT_SPIN_SECONDS * 1e6,
        metavar="US",
        help="asyncio only: poll this long before sleeping, trading CPU for latency "
        "(default %(default)s; 0 disables)",
    )
    serve_cmd.add_argument(
        "--tls-cert",
        metavar="FILE",
        help="serve TLS with this certificate chain (PEM); with --tls-key",
    )
    serve_cmd.add_argument("--tls-key", metavar="FILE", help="the certificate's private key")
    serve_cmd.add_argument("--parent-pipe", action="store_true", help=argparse.SUPPRESS)
    add_limit_flags(serve_cmd)
    commands.add_parser("demo", help="the Namespace lesson on spawned processes, then asyncio")
    get_cmd = commands.add_parser("get", help="print one attribute")
    set_cmd = commands.add_parser("set", help="set one attribute to a Python literal")
    del_cmd = commands.add_parser("del", help="delete one attribute")
    for command in (get_cmd, set_cmd, del_cmd):
        command.add_argument("address", help="a Unix socket path or HOST:PORT")
        command.add_argument("namespace", help="the namespace's name (or anonymous key)")
        command.add_argument("name", help="the attribute")
    set_cmd.add_argument("value", help="a Python literal: 42, 'text', [1, 2], {'a': (1, 2)}")
    dump_cmd = commands.add_parser("dump", help="print namespaces and their attributes")
    dump_cmd.add_argument("address")
    dump_cmd.add_argument("namespace", nargs="?", help="only this one (default: all)")
    watch_cmd = commands.add_parser("watch", help="print changes as they happen")
    watch_cmd.add_argument("address")
    watch_cmd.add_argument("namespace")
    watch_cmd.add_argument("names", nargs="*", help="only these attributes (default: all)")
    watch_cmd.add_argument(
        "--since",
        type=int,
        metavar="REVISION",
        help="first replay the changes made after this revision",
    )
    return parser


def _client_authkey() -> bytes | None:
    key_text = os.environ.get(AUTHKEY_ENV)
    return key_text.encode() if key_text else None


def _run_client_command(args: argparse.Namespace) -> int:
    address = parse_address(args.address)
    authkey = _client_authkey()
    if args.command == "dump":
        if args.namespace:
            print(f"{args.namespace}: {Namespace(address, args.namespace, authkey=authkey)}")
            return 0
        server = Namespace._from_target(Target.create(address, None, authkey=authkey))
        for key in server._keys():
            try:
                print(f"{key}: {Namespace(address, key, authkey=authkey)}")
            except NamespaceGone:
                pass  # an unused anonymous namespace, freed since the server listed it
        return 0
    ns = Namespace(address, args.namespace, authkey=authkey)
    if args.command == "get":
        print(repr(getattr(ns, args.name)))
    elif args.command == "set":
        try:
            value = ast.literal_eval(args.value)
        except (ValueError, SyntaxError) as exc:
            raise ValueError(f"not a Python literal: {args.value!r} ({exc})") from None
        setattr(ns, args.name, value)
    elif args.command == "del":
        delattr(ns, args.name)
    else:
        with ns._watch(*args.names, since=args.since) as watch:
            print(
                f"watching {args.namespace!r} from revision {watch.revision} (Ctrl-C stops)",
                flush=True,
            )
            for event in watch:
                change = "deleted" if event.deleted else f"= {event.value!r}"
                print(f"{event.revision:>8}  {event.name} {change}", flush=True)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "demo":
        from ._demo import run_demo

        run_demo()
        return 0
    if args.command != "serve":
        try:
            return _run_client_command(args)
        except KeyboardInterrupt:
            return 130
        except (NamespaceError, AttributeError, TypeError, ValueError) as exc:
            print(f"aionamespace: {type(exc).__name__}: {exc}", file=sys.stderr)
            return 1
    address: Address = args.unix if args.unix else parse_address(f"tcp:{args.tcp}")
    parent = None
    if args.parent_pipe:  # a Manager started us: its first line says the key, limits, ...
        ignore_interrupts()
        parent = read_config(sys.stdin.fileno())
        failure = run_initializer(parent)
        if failure is not None:
            announce({"error": failure})
            remove_private_dir(parent)
            return 1
        authkey, limits = parent.authkey, parent.limits
    else:
        key_text = os.environ.get(AUTHKEY_ENV)
        authkey = key_text.encode() if key_text else None
        limits = limits_from_flags(args)
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
    try:
        anyio.run(
            functools.partial(
                serve,
                address,
                authkey=authkey,
                parent=parent,
                ssl_context=ssl_context,
                limits=limits,
            ),
            backend=args.backend,
            backend_options=options,
        )
    finally:
        if parent is not None:
            remove_private_dir(parent)
    return 0


if __name__ == "__main__":
    sys.exit(main())
