"""The command line: ``python -m aionamespace`` (or ``aionamespace``) and its commands.

One module per idea: ``parser`` (the arguments and their help), ``serve`` (running a server),
``client`` (get, set, del, dump and watch against a running server).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from .._errors import NamespaceError
from .parser import AUTHKEY_ENV, make_parser

__all__ = ["AUTHKEY_ENV", "main"]


def main(argv: Sequence[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    if args.command == "demo":
        from .._demo import run_demo

        run_demo()
        return 0
    if args.command == "serve":
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
