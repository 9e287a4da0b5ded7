"""The client commands: get, set, del, dump and watch, against a running server."""

from __future__ import annotations

import argparse
import ast
import os

from .._errors import NamespaceGone
from ..client.proxy import Target
from ..client.sync import Namespace
from ..protocol.connection import parse_address
from .parser import AUTHKEY_ENV

__all__ = ["run_client_command"]


def _client_authkey() -> bytes | None:
    key_text = os.environ.get(AUTHKEY_ENV)
    return key_text.encode() if key_text else None


def run_client_command(args: argparse.Namespace) -> int:
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
