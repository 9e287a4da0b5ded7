"""The command line's arguments: one parser, a subcommand per command, every one described.

Errors in the command line itself are usage errors: one line on stderr, exit status 2, whether
argparse finds them (a missing argument) or a command does (``UsageError``: flags that
contradict each other, an address that cannot be one). Errors met while carrying out a valid
command exit with status 1 (``CommandFailed``, or one of the library's errors).
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import NoReturn

from .._limit_flags import add_limit_flags
from ..server.busypoll import DEFAULT_SPIN_SECONDS

__all__ = ["AUTHKEY_ENV", "CommandFailed", "UsageError", "make_parser", "program_name"]

#: ``serve`` requires clients to know this key when the variable is set (its UTF-8 bytes), and
#: the client commands prove they know it.
AUTHKEY_ENV = "AIONAMESPACE_AUTHKEY"


class UsageError(Exception):
    """The command line is wrong (flags that contradict each other...): exit status 2."""


class CommandFailed(Exception):
    """A valid command could not be carried out (the address is in use...): exit status 1."""


def program_name() -> str:
    """How the user ran us: ``aionamespace`` (the script) or ``python -m aionamespace``."""
    name = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    if not name or name in ("__main__.py", "-c", "-m"):
        return "python -m aionamespace"
    return name


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        """One line, as every other error of the command line (argparse's prints the usage
        too): what is wrong, and where to read more."""
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


DESCRIPTION = """\
Share Python values between processes through an aionamespace server.

  serve   run a server on a Unix socket or TCP, until Ctrl-C
  get, set, del, dump, watch, info
          read and change a running server from the shell (values are Python literals)
  demo    the stdlib's Namespace lesson on spawned processes, then the same board from asyncio
"""

AUTHKEY_HELP = f"""\
{AUTHKEY_ENV}: when set, the server requires its clients to prove they know this key
(its UTF-8 bytes; it never crosses the socket), and the client commands prove it.
"""

ADDRESS_HELP = "where the server listens: a Unix socket path, or HOST:PORT for TCP"
NAMESPACE_HELP = "the namespace's name (or an anonymous namespace's key, as dump lists them)"


def make_parser() -> argparse.ArgumentParser:
    prog = program_name()
    parser = _Parser(
        prog=prog,
        description=DESCRIPTION,
        epilog=f"{AUTHKEY_HELP}\nEach command has its own help: {prog} COMMAND --help",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(
        dest="command", required=True, metavar="COMMAND", title="commands"
    )
    _serve_command(commands)
    commands.add_parser(
        "demo",
        help="the stdlib's Namespace lesson, on a server of its own",
        description="Start a server, share a namespace with spawned processes as the stdlib's "
        "Namespace lesson does, then read it from asyncio; explains each step as it goes.",
    )
    _client_commands(commands)
    return parser


def _serve_command(commands: argparse._SubParsersAction[_Parser]) -> None:
    serve_cmd = commands.add_parser(
        "serve",
        help="run a server until Ctrl-C",
        description="Run a server until Ctrl-C or SIGTERM, which stop it cleanly (a Unix socket "
        "file is removed). The first line printed says where it listens.",
        epilog=AUTHKEY_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    where = serve_cmd.add_mutually_exclusive_group(required=True)
    where.add_argument(
        "--unix", metavar="PATH", help="listen on a Unix socket at PATH (made with mode 0600)"
    )
    where.add_argument(
        "--tcp",
        metavar="HOST:PORT",
        help="listen on TCP (port 0: any free port, printed when listening)",
    )
    serve_cmd.add_argument(
        "--backend",
        choices=["asyncio", "trio"],
        default="asyncio",
        help="the async library the server runs on (default asyncio; trio: "
        "pip install 'aionamespace[trio]')",
    )
    serve_cmd.add_argument(
        "--loop",
        choices=["asyncio", "uvloop"],
        help="with --backend asyncio: the event loop (default asyncio; uvloop: pip install "
        "'aionamespace[uvloop]', slower than the default's busy polling on one client's round "
        "trips: see README)",
    )
    serve_cmd.add_argument(
        "--busy-poll-us",
        type=float,
        metavar="US",
        help="with the asyncio loop: poll this many microseconds before sleeping, trading CPU "
        f"for latency (default {DEFAULT_SPIN_SECONDS * 1e6:g}; 0 disables)",
    )
    serve_cmd.add_argument(
        "--tls-cert",
        metavar="FILE",
        help="serve TLS with this certificate chain (PEM, with the private key unless "
        "--tls-key gives it)",
    )
    serve_cmd.add_argument(
        "--tls-key", metavar="FILE", help="with --tls-cert: the certificate's private key (PEM)"
    )
    serve_cmd.add_argument(
        "--data",
        metavar="FILE",
        help="keep the namespaces in this SQLite file (made 0600 if absent): an acknowledged"
        " write survives a crash of the server, and a server started on the file finds them",
    )
    serve_cmd.add_argument(
        "--fsync",
        action="store_true",
        help="with --data: sync every commit to disk, so that it survives a power loss too",
    )
    serve_cmd.add_argument(
        "--store",
        metavar="URL",
        help="keep the board in Redis, shared with every server given the same URL and "
        "prefix: redis://[user:password@]host[:port][/db], rediss://... (TLS), "
        "unix:///path/redis.sock, redis+cluster://host:port[,host:port...] (needs "
        "pip install 'aionamespace[redis]'; --backend asyncio; refused if Redis cannot be "
        "reached at start). AIONAMESPACE_STORE_PASSWORD in the environment gives the "
        "password instead of the URL (which ps shows)",
    )
    serve_cmd.add_argument(
        "--store-prefix",
        metavar="PREFIX",
        help="with --store: the prefix of every Redis key of the board, so that several "
        "boards share one Redis (default aionamespace)",
    )
    serve_cmd.add_argument(
        "--store-timeout",
        type=float,
        metavar="SECONDS",
        help="with --store: a call fails with StoreUnavailable after this long without an "
        "answer from Redis (default 5)",
    )
    serve_cmd.add_argument(
        "--store-lock-lease",
        type=float,
        metavar="SECONDS",
        help="with --store: a lock held through a server that dies passes on this long after "
        "the server last renewed it, and its uses of anonymous namespaces end then "
        "(default 10)",
    )
    serve_cmd.add_argument("--parent-pipe", action="store_true", help=argparse.SUPPRESS)
    add_limit_flags(serve_cmd)


def _client_commands(commands: argparse._SubParsersAction[_Parser]) -> None:
    def command(
        name: str, summary: str, description: str, address: str | None = ADDRESS_HELP
    ) -> argparse.ArgumentParser:
        made = commands.add_parser(
            name,
            help=summary,
            description=description,
            epilog=AUTHKEY_HELP,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        if address is not None:
            made.add_argument("address", help=address)
        return made

    get_cmd = command("get", "print one attribute", "Print an attribute's value, as Python.")
    set_cmd = command(
        "set",
        "set one attribute to a Python literal",
        "Set an attribute to a Python literal. The shell takes one pair of quotes off: a "
        "string needs a second pair, as in \"'running'\".",
    )
    del_cmd = command("del", "delete one attribute", "Delete an attribute.")
    for each in (get_cmd, set_cmd, del_cmd):
        each.add_argument("namespace", help=NAMESPACE_HELP)
        each.add_argument("name", help="the attribute's name")
    set_cmd.add_argument("value", help="a Python literal: 42, 'text', [1, 2], {'a': (1, 2)}, None")
    dump_cmd = command(
        "dump",
        "print namespaces and their attributes",
        "Print a namespace's attributes, or every namespace's: a running server's, or a data "
        "file's that no server has open (--data FILE, then no address).",
        address=None,
    )
    dump_cmd.add_argument(
        "address_and_namespace",
        nargs="*",
        metavar="ADDRESS [NAMESPACE]",
        help=f"{ADDRESS_HELP}; then only this namespace (default: all)",
    )
    dump_cmd.add_argument(
        "--data", metavar="FILE", help="read this data file instead of a running server"
    )
    backup_cmd = command(
        "backup",
        "copy a running server's board into a new data file",
        "Copy the whole board of a running server, as it is at one instant, into a new data "
        "file (the server streams it; FILE is written here, and must not exist). A server "
        "started with --data FILE serves the copy.",
    )
    backup_cmd.add_argument("file", help="the data file to write")
    copy_cmd = command(
        "copy",
        "copy every namespace of one board into another",
        "Copy every namespace of a board, as it is at one instant, into another: from a\n"
        "running server or a data file no server has open (--from-data FILE), into a running\n"
        "server (whatever store it keeps its board in) or a new data file (--to-data FILE).\n"
        "For example, from a file to a server over Redis:\n\n"
        "  aionamespace copy --from-data board.db /run/aionamespace.sock\n\n"
        "A namespace the destination server already holds is refused unless --overwrite.",
        address=None,
    )
    copy_cmd.add_argument(
        "endpoints",
        nargs="*",
        metavar="SOURCE DESTINATION",
        help=f"the source's and the destination's address ({ADDRESS_HELP}), unless given as "
        "data files",
    )
    copy_cmd.add_argument("--from-data", metavar="FILE", help="copy from this data file")
    copy_cmd.add_argument("--to-data", metavar="FILE", help="copy into this new data file")
    copy_cmd.add_argument(
        "--overwrite",
        action="store_true",
        help="write into namespaces the destination server already holds (the source's "
        "names replace its own; names only it has are kept)",
    )
    watch_cmd = command(
        "watch",
        "print changes as they happen",
        "Print each change of a namespace as it happens (its revision, the name, the new "
        "value), until Ctrl-C.",
    )
    watch_cmd.add_argument("namespace", help=NAMESPACE_HELP)
    watch_cmd.add_argument("names", nargs="*", help="only these attributes (default: all)")
    watch_cmd.add_argument(
        "--since",
        type=int,
        metavar="REVISION",
        help="first print the changes made after this revision (as printed by an earlier "
        "watch), then the new ones",
    )
    info_cmd = command(
        "info",
        "print what a running server holds and serves",
        "Print a running server's version, uptime, connections, namespaces, memory held, "
        "locks, watches, operations served and limits.",
    )
    info_cmd.add_argument("--json", action="store_true", help="print it as one JSON object")
