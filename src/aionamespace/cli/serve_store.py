"""``serve``'s store: the server's own memory, a data file (``--data``), or a Redis board
(``--store URL``) that other servers share; and the one line said when it cannot be used.

**A store that cannot be reached at start is refused** (exit status 1, one line naming the store,
its password never shown): the server does not listen at all. An operator who mistyped a host
or a password learns it at once from the command's exit, not later from every client's
``StoreUnavailable``; a service manager (systemd's ``Restart=on-failure``, a Kubernetes
restart policy) starts it again, with the back-off it already has. Once serving, a Redis that
goes away is another matter: each call fails promptly with ``StoreUnavailable`` and the server
recovers by itself when Redis is back (README, "Scaling out").
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
from typing import Any

from .._errors import DataFileError, NamespaceError
from .._parent_pipe import ParentConfig
from ..protocol.limits import Limits
from ..server.stores import RedisStore, SQLiteStore, Store
from ..server.stores.redis_urls import parse_store_url
from .parser import CommandFailed, UsageError

__all__ = [
    "DEFAULT_STORE_PREFIX",
    "DEFAULT_STORE_TIMEOUT",
    "STORE_PASSWORD_ENV",
    "cannot_start",
    "check_store_flags",
    "make_store",
]

#: The key prefix of a Redis board (several boards may share one Redis under other prefixes).
DEFAULT_STORE_PREFIX = "aionamespace"
#: Seconds a call waits for Redis before it fails with StoreUnavailable.
DEFAULT_STORE_TIMEOUT = 5.0
#: The Redis password, when the URL has none: a command line is visible to the host's other
#: users (``ps``), the environment is not (redis-cli's ``REDISCLI_AUTH`` is the precedent).
STORE_PASSWORD_ENV = "AIONAMESPACE_STORE_PASSWORD"


def check_store_flags(args: argparse.Namespace) -> None:
    """Refuse flags that contradict each other (usage errors), before anything starts."""
    if args.store is None:
        for flag, value in (
            ("--store-prefix", args.store_prefix),
            ("--store-timeout", args.store_timeout),
            ("--store-lock-lease", args.store_lock_lease),
        ):
            if value is not None:
                raise UsageError(f"{flag} applies to --store URL (a Redis board)")
        if args.fsync and not args.data and not args.parent_pipe:
            raise UsageError("--fsync needs --data FILE (it says how the data file is written)")
        return
    for flag, given in (("--data", args.data), ("--fsync", args.fsync)):
        if given:
            raise UsageError(
                f"--store and {flag} exclude each other: the board is either in Redis "
                "(--store URL) or in a data file (--data FILE)"
            )
    if args.backend != "asyncio":
        raise UsageError(
            f"--store runs on --backend asyncio (redis-py's asyncio client), not {args.backend}"
        )
    try:
        url = parse_store_url(args.store)
    except ValueError as exc:  # (the message never shows a password)
        raise UsageError(f"--store: {exc}") from None
    if url.password is not None and os.environ.get(STORE_PASSWORD_ENV):
        raise UsageError(
            f"--store's URL has a password and {STORE_PASSWORD_ENV} gives one too: give one"
        )
    if args.store_prefix is not None and ("{" in args.store_prefix or "}" in args.store_prefix):
        raise UsageError(
            f"--store-prefix holds no braces (hash tags follow it): {args.store_prefix!r}"
        )
    for flag, seconds in (
        ("--store-timeout", args.store_timeout),
        ("--store-lock-lease", args.store_lock_lease),
    ):
        if seconds is not None and not 0 < seconds < math.inf:
            raise UsageError(f"{flag} wants seconds above 0 (and finite), not {seconds:g}")


def make_store(
    args: argparse.Namespace, parent: ParentConfig | None, limits: Limits
) -> Store | RedisStore | None:
    """The store the flags (or a Manager's config) ask for; None: the server's memory.
    CommandFailed when it cannot be made (the library's error as its cause)."""
    if parent is not None:
        url, prefix = _with_password(parent.store), parent.store_prefix
        timeout, lock_lease = parent.store_timeout, parent.store_lock_lease
        data, fsync = parent.data, parent.fsync
    else:
        url, prefix = _with_password(args.store), args.store_prefix
        timeout, lock_lease = args.store_timeout, args.store_lock_lease
        data, fsync = args.data, args.fsync
    if url is not None:
        options: dict[str, Any] = {"prefix": prefix or DEFAULT_STORE_PREFIX}
        options["timeout"] = timeout or DEFAULT_STORE_TIMEOUT
        if lock_lease is not None:
            options["lock_lease"] = lock_lease
        try:
            return RedisStore(url, limits, **options)
        except ImportError as exc:  # redis-py is an extra
            raise CommandFailed(str(exc)) from exc
        except ValueError as exc:  # (the Manager and the CLI checked theirs already)
            raise CommandFailed(f"the store URL: {exc}") from exc
    if not data:
        return None
    try:
        return SQLiteStore(data, limits, fsync=fsync)
    except DataFileError as exc:
        raise CommandFailed(str(exc)) from exc


def _with_password(url: str | None) -> str | None:
    """``url`` with the password of ``STORE_PASSWORD_ENV`` if it has none (a Manager's server
    inherits its environment: the same rule)."""
    password = os.environ.get(STORE_PASSWORD_ENV)
    if url is None or not password:
        return url
    return dataclasses.replace(parse_store_url(url), password=password).url()


def cannot_start(error: NamespaceError) -> str:
    """One line saying why the server could not start over its store."""
    return f"cannot serve: {error}"
