"""The command line's arguments: one parser, a subcommand per command."""

from __future__ import annotations

import argparse

from ..server.busypoll import DEFAULT_SPIN_SECONDS

__all__ = ["AUTHKEY_ENV", "make_parser"]

#: ``serve`` requires clients to know this key when the variable is set (its UTF-8 bytes).
AUTHKEY_ENV = "AIONAMESPACE_AUTHKEY"

DESCRIPTION = """\
``serve --unix PATH`` or ``serve --tcp HOST:PORT`` runs a server until Ctrl-C or SIGTERM, which
stop it cleanly (the socket file is removed). With AIONAMESPACE_AUTHKEY set in its environment,
clients must prove they know that key. ``demo`` runs the stdlib Namespace lesson on spawned
processes against an embedded server, then reads the same board with ``await``.

``get|set|del|dump|watch ADDRESS ...`` inspect and change a running server (ADDRESS: a Unix
socket path or HOST:PORT; values are given and shown as Python literals; the client side also
reads AIONAMESPACE_AUTHKEY). ``watch`` prints every change as it happens, until Ctrl-C.
"""


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m aionamespace",
        description=DESCRIPTION,
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
