"""The command line: ``python -m aionamespace`` (or ``aionamespace``) and its commands.

One module per idea: ``parser`` (the arguments and their help), ``serve`` (running a server),
``client`` (get, set, del, dump and watch against a running server), ``info`` (what a server
holds and serves), ``data`` (backup, dump --data) and ``copy`` (a board into another). Every
error is one line on stderr: exit status 2 for a wrong command line, 1 for a command that
could not be carried out, 130 for Ctrl-C.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from .._errors import NamespaceError
from .parser import AUTHKEY_ENV, CommandFailed, UsageError, make_parser

__all__ = ["AUTHKEY_ENV", "main"]


def main(argv: Sequence[str] | None = None) -> int:
    parser = make_parser()
    args = parser.parse_args(argv)
    try:
        return _run(args)
    except UsageError as exc:
        print(f"{parser.prog} {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except CommandFailed as exc:
        print(f"aionamespace: {exc}", file=sys.stderr)
        return 1


def _run(args: argparse.Namespace) -> int:
    command = args.command
    if command == "demo":
        from .._demo import run_demo

        run_demo()
        return 0
    if command == "serve":
        from .serve import run_serve

        return run_serve(args)
    from .client import run_client_command

    try:
        return run_client_command(args)
    except KeyboardInterrupt:
        return 130
    except (NamespaceError, AttributeError, TypeError, ValueError) as exc:
        print(f"aionamespace: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
