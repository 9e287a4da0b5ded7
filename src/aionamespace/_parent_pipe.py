"""The server's end of a ``Manager``'s private pipe (``serve --parent-pipe``).

The Manager that spawned the server holds the write end of its stdin, a pipe no other program
can reach. It writes one JSON line first (``ParentConfig``: the authkey, the ``Limits``, the
private directory it made, and, when ``start()`` was given one, the initializer), then nothing
until it asks the server to stop: any further byte means "stop", and so does EOF, which comes
when the Manager's process, and every process forked from it (they inherit the pipe), have
exited. The server answers on stdout with one JSON line: ``{"address": ...}`` once it listens,
or ``{"error": ...}`` if the initializer failed.

The server survives the terminal's Ctrl-C (``ignore_interrupts``): a SIGINT sent to the
program's process group is the program's to handle, and its shutdown handler may still need
the namespace. SIGTERM still stops it cleanly. An initializer may change that, as the stdlib's.

The initializer comes pickled, from the trusted parent over this private pipe, exactly as the
stdlib's spawn start method sends a ``Process`` target: by reference, so it must be a
module-level callable importable in a fresh interpreter (one of the main script's is found by
importing that script as ``__mp_main__``, as spawn does: ``multiprocessing.spawn.prepare``).
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import json
import os
import pickle
import signal
import sys
import traceback
from collections.abc import Callable
from typing import Any

import anyio

from .protocol.limits import Limits

__all__ = [
    "ParentConfig",
    "announce",
    "encode_config",
    "ignore_interrupts",
    "importing_main",
    "read_config",
    "remove_private_dir",
    "run_initializer",
    "watch_parent",
]

#: True while the server imports the parent's main script to find its initializer: a
#: ``Manager.start()`` then is an unguarded script starting servers recursively.
importing_main = False


@dataclasses.dataclass(frozen=True)
class ParentConfig:
    """What the Manager tells its server on the pipe's first line."""

    authkey: bytes | None = None
    limits: Limits = dataclasses.field(default_factory=Limits)
    private_dir: str | None = None  # the 0700 directory the Manager made for the socket
    preparation: bytes | None = None  # pickled multiprocessing.spawn.get_preparation_data()
    initializer: bytes | None = None  # pickled (initializer, initargs)
    data: str | None = None  # the data file (``serve --data``), and whether to fsync it
    fsync: bool = False
    store: str | None = None  # a Redis store's URL (``serve --store``), and its key prefix
    store_prefix: str | None = None
    store_timeout: float | None = None  # ``--store-timeout``, ``--store-lock-lease``
    store_lock_lease: float | None = None
    stop_requested: bool = False  # bytes after the first line: the Manager already said stop


def encode_config(
    authkey: bytes,
    limits: Limits,
    private_dir: str | None,
    initializer: Callable[..., object] | None,
    initargs: tuple[Any, ...],
    *,
    data: str | None = None,
    fsync: bool = False,
    store: str | None = None,
    store_prefix: str | None = None,
    store_timeout: float | None = None,
    store_lock_lease: float | None = None,
) -> bytes:
    """The Manager's first line (``initializer`` must pickle: TypeError if it does not)."""
    config: dict[str, Any] = {
        "authkey": authkey.hex(),
        "limits": dataclasses.asdict(limits),
        "private_dir": private_dir,
    }
    if data is not None:
        config.update(data=data, fsync=fsync)
    if store is not None:  # (its password, if any, crosses this private pipe only)
        config.update(store=store, store_prefix=store_prefix)
        config.update(store_timeout=store_timeout, store_lock_lease=store_lock_lease)
    if initializer is not None:
        from multiprocessing import spawn

        if not callable(initializer):
            raise TypeError(f"initializer must be callable, not {type(initializer).__name__}")
        try:
            pickled = pickle.dumps((initializer, tuple(initargs)))
        except Exception as exc:
            raise TypeError(
                "the initializer and its initargs are pickled to reach the server process: "
                f"use a module-level function ({exc})"
            ) from exc
        preparation = spawn.get_preparation_data("aionamespace-server")
        preparation.pop("authkey", None)  # multiprocessing's own key: not the server's business
        config["preparation"] = base64.b64encode(pickle.dumps(preparation)).decode()
        config["initializer"] = base64.b64encode(pickled).decode()
    return json.dumps(config).encode() + b"\n"


def read_config(fd: int) -> ParentConfig:
    """Read the first line, unbuffered: what follows it is the stop signal, not ours to eat."""
    data = b""
    while b"\n" not in data:
        chunk = os.read(fd, 65536)
        if not chunk:
            break
        data += chunk
    line, _, rest = data.partition(b"\n")
    config = json.loads(line or b"{}")

    def unpacked(key: str) -> bytes | None:
        text = config.get(key)
        return base64.b64decode(text) if text else None

    return ParentConfig(
        authkey=bytes.fromhex(config["authkey"]) if config.get("authkey") else None,
        limits=Limits(**config.get("limits", {})),
        private_dir=config.get("private_dir"),
        preparation=unpacked("preparation"),
        initializer=unpacked("initializer"),
        data=config.get("data"),
        fsync=bool(config.get("fsync", False)),
        store=config.get("store"),
        store_prefix=config.get("store_prefix"),
        store_timeout=config.get("store_timeout"),
        store_lock_lease=config.get("store_lock_lease"),
        # more bytes: the Manager already said stop; no whole line: it is already gone
        stop_requested=bool(rest) or b"\n" not in data,
    )


def ignore_interrupts() -> None:
    """The terminal's Ctrl-C is for the program, whose shutdown may still read the namespace."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def run_initializer(config: ParentConfig) -> str | None:
    """Call the Manager's initializer here, as the stdlib's manager does; why it failed, or None."""
    global importing_main
    if config.initializer is None:
        return None
    try:
        if config.preparation is not None:
            from multiprocessing import spawn

            importing_main = True
            try:
                spawn.prepare(pickle.loads(config.preparation))
            finally:
                importing_main = False
        initializer, initargs = pickle.loads(config.initializer)
        initializer(*initargs)
    except Exception as exc:
        traceback.print_exc()  # to the inherited stderr: the program's own
        return f"the initializer failed: {type(exc).__name__}: {exc}"
    return None


async def watch_parent(fd: int, stop: Callable[[], None], *, stop_requested: bool) -> None:
    """Call ``stop`` once the Manager writes a byte or goes away (EOF)."""
    os.set_blocking(fd, False)
    while not stop_requested:
        await anyio.wait_readable(fd)
        with contextlib.suppress(BlockingIOError):
            os.read(fd, 4096)  # a byte: stop; b"": EOF, stop too
            stop_requested = True
    stop()


def announce(message: dict[str, Any]) -> None:
    """One JSON line to the Manager."""
    print(json.dumps(message), flush=True)
    sys.stdout.flush()


def remove_private_dir(config: ParentConfig) -> None:
    """Remove the Manager's private directory once the server has removed its socket, so a
    Manager that died (SIGKILL) leaves nothing behind; only if empty: nothing else is ours."""
    if config.private_dir is not None:
        with contextlib.suppress(OSError):
            os.rmdir(config.private_dir)
