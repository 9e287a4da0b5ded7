"""``Manager``: the stdlib ``SyncManager`` shape around an aionamespace server process.

``start()`` runs the server in a spawned child process (``python -m aionamespace serve
--parent-pipe``), with no configuration: by default it listens on a Unix socket in a private
0700 directory, with a random authkey. The child's stdin is a pipe from us: the first line
carries the authkey, and when we shut down, or die, it reads EOF and stops, so a crashed parent
never leaves a server behind. ``shutdown()`` asks for that, waits a
bounded time, then terminates and finally kills: it never hangs.

``connect()`` attaches to a server that is already running (another Manager's, or the CLI's).
"""

from __future__ import annotations

import json
import os
import secrets
import selectors
import shutil
import subprocess
import sys
import tempfile
import weakref
from types import TracebackType
from typing import Any

from ._errors import ConnectionLost
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
    the server process runs on ("asyncio" or "trio"). ``limits`` are its proxies'
    (``Limits.call_timeout``: how long a call waits for a silent server).
    """

    def __init__(
        self,
        address: Address | None = None,
        authkey: bytes | None = None,
        *,
        backend: str = "asyncio",
        limits: Limits | None = None,
    ) -> None:
        if authkey is not None and not isinstance(authkey, bytes):
            raise TypeError(f"authkey must be bytes, not {type(authkey).__name__}")
        self._requested = parse_address(address) if address is not None else None
        self._authkey = authkey
        self._backend = backend
        self._limits = limits  # the proxies' (call_timeout...), not the server's
        self._address: Address | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._finalizer: weakref.finalize[Any, Any] | None = None

    @property
    def address(self) -> Address:
        if self._address is None:
            raise RuntimeError("the manager is neither started nor connected")
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

    def start(self) -> None:
        """Spawn the server process and wait until it listens."""
        if self._address is not None:
            raise RuntimeError("the manager is already started or connected")
        private_dir = None
        address = self._requested
        if address is None:
            private_dir = tempfile.mkdtemp(prefix="aionamespace-")  # mode 0700
            address = os.path.join(private_dir, "ns.sock")
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
        self._finalizer = weakref.finalize(self, _stop_process, process, private_dir)
        if self._authkey is None:
            self._authkey = secrets.token_bytes(32)
        try:
            # The key goes through the pipe, never the command line (which `ps` shows).
            assert process.stdin is not None
            process.stdin.write(json.dumps({"authkey": self._authkey.hex()}).encode() + b"\n")
            process.stdin.flush()
            self._address = _read_ready_line(process)
        except BaseException:
            self._finalizer()
            raise
        self._process = process

    def connect(self) -> None:
        """Attach to a server that is already running at ``address``."""
        if self._requested is None:
            raise ValueError("connect() needs the address of a running server")
        if self._address is not None:
            raise RuntimeError("the manager is already started or connected")
        probe = Namespace._from_target(
            Target.create(self._requested, None, authkey=self._authkey, limits=self._limits)
        )
        try:
            probe._ping()
        finally:
            probe._close()
        self._address = self._requested

    def shutdown(self) -> None:
        """Stop the server process this manager started (bounded wait, then terminate)."""
        if self._finalizer is not None:
            self._finalizer()
        self._process = None
        self._address = None

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
        return Target.create(self.address, name, authkey=self._authkey, limits=self._limits)


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
    address = json.loads(line)["address"]
    return parse_address(tuple(address) if isinstance(address, list) else address)


def _stop_process(process: subprocess.Popen[bytes], private_dir: str | None) -> None:
    """Close the pipe (the child stops), wait, terminate, kill: bounded at every step."""
    try:
        for stream in (process.stdin, process.stdout):
            if stream is not None:
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
