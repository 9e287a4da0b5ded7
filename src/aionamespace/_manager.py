"""``Manager``: the stdlib ``SyncManager`` shape around an aionamespace server process.

``start()`` runs the server in a spawned child process (``python -m aionamespace serve
--parent-pipe``), with no configuration: by default it listens on a Unix socket in a private
0700 directory, with a random authkey. The child's stdin is a pipe from us: its first line
carries the authkey, the ``Limits`` and the initializer (``_parent_pipe.py``, the other end);
a later byte asks it to stop, and EOF, which comes when this process and every process forked
from it have exited (or died), stops it too, so a crashed parent never leaves a server behind.
``shutdown()`` asks, waits a bounded time, then terminates and finally kills: it never hangs.

Only the process that started the server stops it or removes its files (as the stdlib's
``util.Finalize``, which checks the process id): a forked child that exits, normally or by
``shutdown()``, leaves them to its parent. Once that parent is gone, the server removes them.

``connect()`` attaches to a server that is already running (another Manager's, or the CLI's).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import secrets
import selectors
import shutil
import subprocess
import sys
import tempfile
import weakref
from collections.abc import Callable, Iterable
from types import TracebackType
from typing import Any

from . import _parent_pipe
from ._errors import ConnectionLost, DataFileError, StoreUnavailable
from .client.asynchronous import AsyncNamespace
from .client.locks import AsyncLock as _AsyncLock
from .client.locks import Lock as _Lock
from .client.proxy import Target
from .client.sync import Namespace
from .protocol.connection import Address, format_address, parse_address
from .protocol.limits import Limits

__all__ = ["Manager"]

#: The namespace key of the locks ``Manager.Lock()`` makes (locks do not create namespaces:
#: ``Manager.Lock("jobs")`` is ``manager.Namespace(LOCKS_NAMESPACE)._lock("jobs")``).
LOCKS_NAMESPACE = "aionamespace.locks"
START_TIMEOUT_SECONDS = 60.0
SHUTDOWN_GRACE_SECONDS = 2.0


class Manager:
    """Start (or connect to) an aionamespace server and make proxies for its namespaces.

    ``address`` is a Unix socket path or a ``(host, port)`` pair (port 0: any free port); by
    default ``start()`` picks a private Unix socket. ``authkey`` (bytes) is the shared secret
    clients must prove they know; ``start()`` makes a random one when none is given, and the
    proxies carry it (also when pickled into child processes). ``backend`` is the event loop
    the server process runs on ("asyncio" or "trio"). ``limits`` are the bounds of the server
    ``start()`` runs (it hands them over) and of this manager's proxies. ``data`` (a path) keeps
    the server's namespaces in an SQLite file, so that they survive it (README, "Durable
    namespaces"), and ``fsync=True`` syncs every commit to disk; ``start()`` raises
    DataFileError if the file cannot be used. ``store`` (a store URL: ``redis://``,
    ``rediss://``, ``unix://``, ``redis+cluster://``) keeps them in Redis instead, under
    ``store_prefix``, shared with every server over the same board (README, "Scaling out"):
    the server runs on asyncio, and ``start()`` raises StoreUnavailable if Redis cannot be
    reached, DataFileError if the board there is of another version's layout.
    ``store_timeout`` and ``store_lock_lease`` (seconds; None: the server's defaults) are
    ``serve``'s ``--store-timeout`` and ``--store-lock-lease``; a URL without a password takes
    the one in ``AIONAMESPACE_STORE_PASSWORD``, as ``serve`` does (the server inherits this
    process's environment; the URL itself reaches it over its private pipe, never its
    command line).
    """

    def __init__(
        self,
        address: Address | None = None,
        authkey: bytes | None = None,
        *,
        backend: str = "asyncio",
        limits: Limits | None = None,
        data: str | os.PathLike[str] | None = None,
        fsync: bool = False,
        store: str | None = None,
        store_prefix: str = "aionamespace",
        store_timeout: float | None = None,
        store_lock_lease: float | None = None,
    ) -> None:
        if fsync and data is None:
            raise ValueError("fsync=True needs a data file: Manager(data=PATH, fsync=True)")
        seconds = {"store_timeout": store_timeout, "store_lock_lease": store_lock_lease}
        if store is not None:
            check_store(store, store_prefix, data, backend, seconds)
        else:
            for name, value in seconds.items():
                if value is not None:
                    raise ValueError(f"{name} applies to a Redis store: Manager(store=URL, ...)")
        self._store, self._store_prefix = store, store_prefix
        self._store_seconds = seconds
        self._data = os.path.abspath(data) if data is not None else None
        self._fsync = fsync
        if authkey is not None and not isinstance(authkey, bytes):
            raise TypeError(f"authkey must be bytes, not {type(authkey).__name__}")
        if limits is not None and not isinstance(limits, Limits):
            raise TypeError(f"limits must be an aionamespace.Limits, not {type(limits).__name__}")
        self._requested = parse_address(address) if address is not None else None
        self._authkey = authkey
        self._backend = backend
        self.limits = limits or Limits()
        self._address: Address | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._owner_pid: int | None = None  # the process that started the server
        self._finalizer: weakref.finalize[Any, Any] | None = None

    @property
    def address(self) -> Address:
        if self._address is None:
            raise RuntimeError(
                "the manager is not started: call manager.start() first (or use "
                "'with Manager() as manager:'), or connect() to a running server"
            )
        return self._address

    @property
    def authkey(self) -> bytes | None:
        """The key clients authenticate with (made at ``start()`` if none was given)."""
        return self._authkey

    def __repr__(self) -> str:
        state = "started" if self._process else "connected" if self._address else "idle"
        where = f" at {format_address(self._address)!r}" if self._address else ""
        return f"<aionamespace.Manager {state}{where}>"

    # ------------------------------------------------------------------ lifecycle

    def start(
        self,
        initializer: Callable[..., object] | None = None,
        initargs: Iterable[Any] = (),
    ) -> Manager:
        """Spawn the server process, wait until it listens, and return this manager.

        ``initializer(*initargs)`` runs in the server process before it serves, as the
        stdlib's; it is pickled by reference, so a module-level function (``_parent_pipe.py``).
        The server ignores the terminal's Ctrl-C (SIGINT) unless the initializer says
        otherwise: it stops when this manager shuts down or this process is gone.
        """
        if self._address is not None:
            raise RuntimeError("the manager is already started or connected")
        if _parent_pipe.importing_main:
            raise RuntimeError(
                "Manager.start() ran while the server imported the main module to find its "
                "initializer: guard your program with 'if __name__ == \"__main__\":'"
            )
        if self._authkey is None:
            self._authkey = secrets.token_bytes(32)
        private_dir = None
        address = self._requested
        if address is None:
            private_dir = tempfile.mkdtemp(prefix="aionamespace-")  # mode 0700
            address = os.path.join(private_dir, "ns.sock")
        try:
            # The key goes through the pipe, never the command line (which `ps` shows).
            config = _parent_pipe.encode_config(
                self._authkey,
                self.limits,
                private_dir,
                initializer,
                tuple(initargs),
                data=self._data,
                fsync=self._fsync,
                store=self._store,
                store_prefix=self._store_prefix,
                **self._store_seconds,
            )
        except BaseException:
            if private_dir is not None:
                os.rmdir(private_dir)
            raise
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "aionamespace",
                "serve",
                "--parent-pipe",
                "--backend",
                self._backend,
                *_address_args(address),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=_child_environment(),
        )
        owner = os.getpid()
        self._finalizer = weakref.finalize(self, _stop_process, process, private_dir, owner)
        try:
            assert process.stdin is not None
            process.stdin.write(config)
            process.stdin.flush()
            self._address = _read_ready_line(process)
        except BaseException:
            self._finalizer()
            raise
        self._process = process
        self._owner_pid = owner
        return self

    def connect(self) -> None:
        """Attach to a server that is already running at ``address``."""
        if self._requested is None:
            raise ValueError("connect() needs the address of a running server")
        if self._address is not None:
            raise RuntimeError("the manager is already started or connected")
        probe = Namespace._from_target(
            Target.create(self._requested, None, authkey=self._authkey, limits=self.limits)
        )
        try:
            probe._ping()
        finally:
            probe._close()
        self._address = self._requested

    def shutdown(self) -> None:
        """Stop the server process this manager started (bounded wait, then terminate).

        In any other process (a forked child), or for a manager that ``connect()``-ed, it
        only detaches this manager: the server is left to the process that started it.
        """
        if self._finalizer is not None:
            self._finalizer()  # does nothing in a forked child (_stop_process)
        self._process = None
        self._owner_pid = None
        self._address = None

    def join(self, timeout: float | None = None) -> None:
        """Wait until the server process exits, at most ``timeout`` seconds (None: no bound),
        as the stdlib's; it does not ask it to stop. Once it has exited, the manager is as
        after ``shutdown()``."""
        process = self._process
        if process is None:
            return
        if os.getpid() != self._owner_pid:
            raise RuntimeError("only the process that started the server can join it")
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            return
        self.shutdown()

    def __enter__(self) -> Manager:
        if self._address is None:
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.shutdown()

    # ------------------------------------------------------------------ proxies

    def Namespace(self, name: str | None = None, /, **initial: Any) -> Namespace:
        """A blocking proxy: a new anonymous namespace, or the one called ``name``.

        ``initial`` values are set on a new namespace; on an existing named one they only fill
        in names it lacks (so every process may pass the same defaults).
        """
        ns: Namespace = Namespace._from_target(self._target(name))
        # One round trip, like the stdlib's (a dead server fails here): it creates an anonymous
        # namespace with its initial values, or opens a named one.
        ns._create(initial)
        return ns

    def AsyncNamespace(self, name: str | None = None, /, **initial: Any) -> AsyncNamespace:
        """An awaitable proxy (see ``Namespace`` for ``name`` and ``initial``).

        A new anonymous namespace, or initial values, take one blocking round trip, as
        ``Manager.Namespace``: they exist before the proxy can be handed to another process.
        This thread's connection made them, so it keeps an anonymous one in use.
        """
        target = self._target(name)
        if name is None or initial:
            Namespace._from_target(target)._create(initial)
        return AsyncNamespace._from_target(target)  # type: ignore[no-any-return]

    def Lock(self, name: str | None = None) -> _Lock:
        """A lock shared by every process using this server, as ``SyncManager.Lock()``'s:
        pickle it into children (it carries the address, the authkey and the lock's name,
        never a held state); the server frees it when its holder's connection dies.
        ``name=None`` makes a new lock; ``Lock("jobs")`` is the same lock in every process.
        """
        ns = Namespace._from_target(self._target(LOCKS_NAMESPACE))
        return _Lock(ns, name or _new_lock_name())

    def AsyncLock(self, name: str | None = None) -> _AsyncLock:
        """``Lock``'s twin for async code: ``async with lock:``. It has a connection of its
        own: ``await lock.aclose()`` when done with it."""
        ns = AsyncNamespace._from_target(self._target(LOCKS_NAMESPACE))
        return _AsyncLock(ns, name or _new_lock_name(), own=True)

    def _target(self, name: str | None) -> Target:
        return Target.create(self.address, name, authkey=self._authkey, limits=self.limits)


def check_store(
    store: str, prefix: str, data: object, backend: str, seconds: dict[str, float | None]
) -> None:
    """Refuse, before any process starts, what a Redis store's server could not serve."""
    from .cli.serve_store import STORE_PASSWORD_ENV
    from .server.stores.redis_client import redis_py
    from .server.stores.redis_urls import parse_store_url

    if data is not None:
        raise ValueError("store= and data= exclude each other: the board is in one place")
    if backend != "asyncio":
        raise ValueError(
            f"a Redis store is served on asyncio (redis-py's asyncio client), not {backend}"
        )
    url = parse_store_url(store)  # ValueError naming what is wrong, never the password
    if url.password is not None and os.environ.get(STORE_PASSWORD_ENV):
        raise ValueError(f"the store URL has a password and {STORE_PASSWORD_ENV} gives one too")
    if not isinstance(prefix, str) or "{" in prefix or "}" in prefix:
        raise ValueError(f"store_prefix is a str without braces, not {prefix!r}")
    for name, value in seconds.items():
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError(f"{name} is a number of seconds, not {type(value).__name__}")
        if not 0 < value < math.inf:
            raise ValueError(f"{name} wants seconds above 0 (and finite), not {value!r}")
    redis_py()  # ImportError saying how to install it


def _new_lock_name() -> str:
    return f"lock-{secrets.token_hex(16)}"  # 128 random bits: nobody else's


def _address_args(address: Address) -> list[str]:
    if isinstance(address, tuple):
        return ["--tcp", format_address(address)]
    return ["--unix", address]


def _child_environment() -> dict[str, str]:
    """The child imports this very copy of aionamespace, whatever sys.path trick found it."""
    env = dict(os.environ)
    package_parent = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_parent, env.get("PYTHONPATH")]))
    return env


def _read_ready_line(process: subprocess.Popen[bytes]) -> Address:
    """Wait (bounded) for the child's one JSON line announcing its address."""
    assert process.stdout is not None
    with selectors.DefaultSelector() as selector:
        selector.register(process.stdout, selectors.EVENT_READ)
        if not selector.select(START_TIMEOUT_SECONDS):
            raise ConnectionLost(f"the server process did not start in {START_TIMEOUT_SECONDS}s")
    line = process.stdout.readline()
    if not line:
        code = process.wait(timeout=5)
        raise ConnectionLost(f"the server process exited with code {code} before listening")
    message = json.loads(line)
    if "error" in message:
        process.wait(timeout=5)
        if message.get("type") == "DataFileError":  # its data file (board) cannot be used
            raise DataFileError(message["error"])
        if message.get("type") == "StoreUnavailable":  # its Redis cannot be reached
            raise StoreUnavailable(message["error"])
        raise ConnectionLost(f"the server process did not start: {message['error']}")
    address = message["address"]
    return parse_address(tuple(address) if isinstance(address, list) else address)


def _stop_process(
    process: subprocess.Popen[bytes], private_dir: str | None, owner_pid: int
) -> None:
    """Ask the child to stop, wait, terminate, kill: bounded at every step. Only in the
    process that started it: a forked child's exit (or ``shutdown()``) leaves it alone."""
    if os.getpid() != owner_pid:
        return
    try:
        if process.stdin is not None:
            # A byte asks it to stop even while forked children still hold the pipe open.
            with contextlib.suppress(OSError):
                process.stdin.write(b"stop\n")
                process.stdin.flush()
        for stream in (process.stdin, process.stdout):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()
        try:
            process.wait(timeout=SHUTDOWN_GRACE_SECONDS)
        except subprocess.TimeoutExpired:
            process.terminate()
            try:
                process.wait(timeout=SHUTDOWN_GRACE_SECONDS)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
    finally:
        if private_dir is not None:
            shutil.rmtree(private_dir, ignore_errors=True)
