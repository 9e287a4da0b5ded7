"""``serve``: run a server until Ctrl-C or SIGTERM (or, started by a Manager, stdin's end)."""

from __future__ import annotations

import argparse
import contextlib
import errno
import functools
import importlib
import math
import os
import signal
import socket
import ssl
import stat
import sys
from collections.abc import Callable
from typing import Any

import anyio
import anyio.abc

from .._errors import NamespaceError
from .._limit_flags import limits_from_flags
from .._parent_pipe import (
    ParentConfig,
    announce,
    ignore_interrupts,
    read_config,
    remove_private_dir,
    run_initializer,
    watch_parent,
)
from ..protocol.connection import Address, format_address, parse_address
from ..protocol.limits import Limits
from ..server.busypoll import DEFAULT_SPIN_SECONDS, busy_poll_loop_factory
from ..server.server import Server
from ..server.stores import SQLiteStore, Store
from ..server.stores.remote import RemoteStore
from .parser import AUTHKEY_ENV, CommandFailed, UsageError
from .serve_store import cannot_start, check_store_flags, make_store

__all__ = ["run_serve", "serve"]


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
    store: Store | RemoteStore | None = None,
) -> None:
    """Run a server at ``address`` until a signal (or, for a ``parent`` Manager, its word)."""
    _raise_open_file_limit()
    server = Server(address, authkey=authkey, ssl_context=ssl_context, limits=limits, store=store)

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


def run_serve(args: argparse.Namespace) -> int:
    """``serve``: check the flags, then serve until a signal; one line for any error."""
    address = _address(args)
    loop_factory = _loop_factory(args)  # (checks the flags before anything is loaded)
    ssl_context = _ssl_context(args)
    check_store_flags(args)
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
    try:
        store = make_store(args, parent, limits)
    except CommandFailed as exc:
        if parent is None:
            raise
        _tell_parent(parent, exc)
        return 1
    options: dict[str, object] = {} if loop_factory is None else {"loop_factory": loop_factory}
    try:
        anyio.run(
            functools.partial(
                serve,
                address,
                authkey=authkey,
                parent=parent,
                ssl_context=ssl_context,
                limits=limits,
                store=store,
            ),
            backend=args.backend,
            backend_options=options,
        )
    except BaseException as exc:  # the task groups' ExceptionGroup around what went wrong
        error = _alone(exc)
        if isinstance(error, OSError):
            raise CommandFailed(cannot_listen(address, error)) from None
        if isinstance(error, NamespaceError):  # the store: unreachable, another layout
            failed = CommandFailed(cannot_start(error))
            failed.__cause__ = error
            if parent is None:
                raise failed from error
            _tell_parent(parent, failed)
            return 1
        raise
    finally:
        if isinstance(store, SQLiteStore):
            store.close()
        if parent is not None:
            remove_private_dir(parent)
    return 0


def _tell_parent(parent: ParentConfig, failed: CommandFailed) -> None:
    """Tell the Manager why the server does not start (the library error's type, for it to
    raise the same), and remove its private directory."""
    cause = failed.__cause__
    announce({"error": str(failed), "type": type(cause).__name__ if cause else None})
    remove_private_dir(parent)


def _address(args: argparse.Namespace) -> Address:
    if args.unix is not None:
        if not args.unix:
            raise UsageError("--unix wants the path of the socket to make")
        return str(args.unix)
    text = args.tcp
    try:
        address = parse_address(f"tcp:{text}")
    except ValueError:
        address = None
    if isinstance(address, tuple):
        return address
    problem = _port_problem(text) if ":" in text else None
    if problem is not None:
        raise UsageError(f"--tcp {text}: {problem}")
    raise UsageError(
        f"--tcp wants HOST:PORT, not {text!r} (for example 127.0.0.1:7000, or "
        "localhost:0 for any free port)"
    )


def _port_problem(text: str) -> str | None:
    """Why the port of HOST:PORT ``text`` is not one, or None."""
    port = text.rpartition(":")[2]
    if not port.isdigit():
        return f"{port!r} is not a port number"
    if int(port) > 65535:
        return f"port {int(port)} is out of range (0 to 65535; 0 picks any free port)"
    return None


def _loop_factory(args: argparse.Namespace) -> Callable[[], Any] | None:
    """The asyncio loop the flags ask for (None: the backend's own); refuses flags that the
    backend or loop chosen would ignore, and a backend or loop that is not installed."""
    if args.backend != "asyncio":
        for flag, value in (("--loop", args.loop), ("--busy-poll-us", args.busy_poll_us)):
            if value is not None:
                raise UsageError(f"{flag} applies to --backend asyncio, not {args.backend}")
        _require(args.backend, f"--backend {args.backend}", "trio")
        return None
    if args.loop == "uvloop":
        if args.busy_poll_us is not None:
            raise UsageError("--busy-poll-us applies to the asyncio loop: uvloop cannot poll")
        uvloop = _require("uvloop", "--loop uvloop", "uvloop")
        return uvloop.new_event_loop  # type: ignore[no-any-return]
    spin = DEFAULT_SPIN_SECONDS * 1e6 if args.busy_poll_us is None else args.busy_poll_us
    if not (spin >= 0 and math.isfinite(spin)):
        raise UsageError(f"--busy-poll-us wants microseconds (0 or more), not {spin:g}")
    if spin == 0:
        return None
    return functools.partial(busy_poll_loop_factory, spin / 1e6)


def _require(module: str, flag: str, extra: str) -> Any:
    """Import an optional dependency, or say how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise CommandFailed(
            f"{flag} needs {module}, which is not installed here: "
            f"pip install 'aionamespace[{extra}]'"
        ) from None


def _ssl_context(args: argparse.Namespace) -> ssl.SSLContext | None:
    if args.tls_cert is None:
        if args.tls_key is not None:
            raise UsageError(
                "--tls-key needs --tls-cert (the certificate it is the key of); "
                "without both the server would not use TLS"
            )
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(args.tls_cert, args.tls_key)
    except (OSError, ssl.SSLError) as exc:
        files = args.tls_cert if args.tls_key is None else f"{args.tls_cert} and {args.tls_key}"
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise CommandFailed(
            f"cannot load the TLS certificate and key from {files}: {why}"
        ) from None
    return context


def cannot_listen(address: Address, error: OSError) -> str:
    """One line saying why the server cannot listen at ``address``, and what to do."""
    where = f"cannot listen on {format_address(address)}"
    if isinstance(address, str):
        directory = os.path.dirname(os.path.abspath(address))
        if isinstance(error, FileNotFoundError) and not os.path.isdir(directory):
            return f"{where}: the directory {directory} does not exist (create it first)"
        if error.errno == errno.EADDRINUSE:
            if _is_socket(address):
                return f"{where}: another server listens there (stop it, or choose another path)"
            return f"{where}: a file that is not a socket is there (remove it, or choose another)"
    elif error.errno == errno.EADDRINUSE:
        return (
            f"{where}: the address is in use (stop what listens there, choose another port, "
            "or port 0 for any free one)"
        )
    elif isinstance(error, socket.gaierror):
        return f"{where}: unknown host {address[0]!r} ({error.strerror})"
    if error.errno in (errno.EACCES, errno.EPERM):
        return f"{where}: permission denied (choose a path, or a port above 1023, you may use)"
    return f"{where}: {error.strerror or error}"


def _is_socket(path: str) -> bool:
    try:
        return stat.S_ISSOCK(os.stat(path).st_mode)
    except OSError:
        return False


def _alone(error: BaseException) -> BaseException:
    """The one exception inside nested exception groups of one exception each."""
    while True:
        inner = getattr(error, "exceptions", None)
        if not isinstance(inner, tuple) or len(inner) != 1:
            return error
        error = inner[0]
