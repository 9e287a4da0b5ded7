"""The client commands: get, set, del, dump, watch, info, backup and copy."""

from __future__ import annotations

import argparse
import ast
import os
import shlex
import signal
import sys
import threading
from typing import Any

from .._errors import HistoryExpired, NamespaceGone
from ..client import calls
from ..client.proxy import Target
from ..client.sync import Namespace
from ..protocol.addresses import Address, format_address, parse_address
from .copy import copy_board
from .data import backup, dump_data_file
from .info import run_info
from .parser import AUTHKEY_ENV, CommandFailed, UsageError

__all__ = ["run_client_command"]


def _client_authkey() -> bytes | None:
    key_text = os.environ.get(AUTHKEY_ENV)
    return key_text.encode() if key_text else None


def run_client_command(args: argparse.Namespace) -> int:
    """Run get, set, del, dump, watch, info or backup; the library's errors are the caller's
    to print."""
    if threading.current_thread() is threading.main_thread():
        # Ctrl-C stops us whatever we inherited: a shell starts a background job (``&``)
        # with SIGINT ignored, and its children inherit that.
        signal.signal(signal.SIGINT, signal.default_int_handler)
    if args.command == "copy":
        return _copy(args)
    if args.command == "dump":
        positional = args.address_and_namespace
        if args.data is not None:
            if len(positional) > 1:
                raise UsageError("dump --data FILE takes a namespace at most, and no address")
            return dump_data_file(args.data, positional[0] if positional else None)
        if not 1 <= len(positional) <= 2:
            raise UsageError("dump wants ADDRESS [NAMESPACE], or --data FILE [NAMESPACE]")
        args.address, args.namespace = positional[0], (positional[1:] or [None])[0]
    address = _address(args.address)
    value = literal(args.value) if args.command == "set" else None  # before connecting
    authkey = _client_authkey()
    if args.command == "dump":
        return _dump(address, args.namespace, authkey)
    if args.command == "info":
        return run_info(address, authkey, args.json)
    if args.command == "backup":
        namespaces, names = backup(address, authkey, args.file)
        print(f"backed up {namespaces} namespace(s), {names} name(s), to {args.file}")
        return 0
    ns = Namespace(address, args.namespace, authkey=authkey)
    if args.command == "get":
        print(repr(getattr(ns, args.name)))
    elif args.command == "set":
        setattr(ns, args.name, value)
    elif args.command == "del":
        delattr(ns, args.name)
    else:
        _watch(ns, args.namespace, args.names, args.since)
    return 0


def _copy(args: argparse.Namespace) -> int:
    endpoints = list(args.endpoints)
    wanted = (args.from_data is None) + (args.to_data is None)
    if len(endpoints) != wanted:
        raise UsageError(
            "copy wants a source and a destination: each an address, or a data file "
            "(--from-data FILE, --to-data FILE)"
        )
    addresses = [_address(text) for text in endpoints]
    source = addresses.pop(0) if args.from_data is None else None
    destination = addresses.pop(0) if args.to_data is None else None
    if args.overwrite and destination is None:
        raise UsageError("--overwrite is for a destination server: --to-data makes a new file")
    namespaces, names = copy_board(
        source, args.from_data, destination, args.to_data, _client_authkey(), args.overwrite
    )
    into = args.to_data if destination is None else format_address(destination)
    print(f"copied {namespaces} namespace(s), {names} name(s), into {into}")
    return 0


def _address(text: str) -> Address:
    try:
        return parse_address(text)
    except ValueError as exc:
        raise UsageError(f"{exc} (an address is a Unix socket path or HOST:PORT)") from None


def literal(text: str) -> Any:
    """The value a Python literal stands for; UsageError saying how to quote it if not one."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        pass
    quoted = f"\"'{text}'\"" if _shell_safe(text) else shlex.quote(repr(text))
    raise UsageError(
        f"not a Python literal: {text} (values are Python literals, such as 42, 'text' or "
        f"[1, 2]; the shell takes one pair of quotes off, so a string needs two: {quoted})"
    )


def _shell_safe(text: str) -> bool:
    """Whether ``text`` can sit in '...' inside "..." for a POSIX shell, as it is."""
    return not any(char in text for char in "'\"\\$`!\n")


def _dump(address: Address, namespace: str | None, authkey: bytes | None) -> int:
    server = Namespace._from_target(Target.create(address, None, authkey=authkey))
    keys = server._keys()
    if namespace is not None:
        if namespace not in keys:
            raise CommandFailed(
                f"the server at {format_address(address)} holds no namespace {namespace!r} "
                "(dump with no name lists those it holds)"
            )
        keys = [namespace]
    elif not keys:
        print(
            f"aionamespace: the server at {format_address(address)} holds no namespaces",
            file=sys.stderr,
        )
    for key in keys:
        try:
            print(f"{key}: {Namespace(address, key, authkey=authkey)}")
        except NamespaceGone:
            pass  # an unused anonymous namespace, freed since the server listed it
    return 0


def _watch(ns: Namespace, namespace: str, names: list[str], since: int | None) -> None:
    try:
        watch = ns._watch(*names, since=since)
    except HistoryExpired:
        revision = ns._run(calls.exists(ns._aionamespace.target.key)).revision
        if since is not None and since > revision:
            raise CommandFailed(
                f"watch --since {since}: {namespace!r} is only at revision {revision} (was the "
                f"server restarted?): watch without --since, or --since {revision} or lower"
            ) from None
        raise CommandFailed(
            f"watch --since {since}: the server no longer keeps the changes after revision "
            f"{since} (its history is bounded): watch without --since to start from now"
        ) from None
    with watch:
        now = f"from revision {watch.revision}"
        if since is not None and since < watch.revision:
            now = f"since revision {since}: the changes up to {watch.revision}, then live"
        print(f"watching {namespace!r} {now} (Ctrl-C stops)", flush=True)
        for event in watch:
            change = "deleted" if event.deleted else f"= {event.value!r}"
            print(f"{event.revision:>8}  {event.name} {change}", flush=True)
