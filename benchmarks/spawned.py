"""Spawned processes that a benchmark drives over pipes, one pipe each.

compare.py's workers (8 processes getting), many_connections.py's crowd (1,000 connections
from 8 processes) and growth_watchers.py's watchers all start the same way and talk the same
way: a process gets its end of a pipe as its first argument, sends tuples whose first item
says what they are (``("error", why)`` when it failed), and ends when it reads ``None`` or
when its pipe closes. ``Spawned`` holds them: start, receive (an error or silence becomes a
``RuntimeError`` naming who), and close, killing what does not end.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import multiprocessing.connection
from collections.abc import Callable
from types import TracebackType
from typing import Any

__all__ = ["Spawned"]

#: How long a process has to end after it was told to, before it is killed.
END_TIMEOUT = 10.0


class Spawned:
    """``count`` spawned processes running ``target(conn, *args)``; ``who`` names one of them
    in errors ("a worker")."""

    def __init__(
        self, count: int, target: Callable[..., None], args: tuple[Any, ...], who: str
    ) -> None:
        self.who = who
        context = multiprocessing.get_context("spawn")
        self.processes: list[Any] = []
        self.conns: list[multiprocessing.connection.Connection] = []
        try:
            for _ in range(count):
                parent, child = context.Pipe()
                process = context.Process(target=target, daemon=True, args=(child, *args))
                process.start()
                child.close()
                self.processes.append(process)
                self.conns.append(parent)
        except BaseException:
            self.close()
            raise

    def __enter__(self) -> Spawned:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def message(
        self, conn: multiprocessing.connection.Connection, timeout: float, what: str = "answer"
    ) -> tuple[Any, ...]:
        """The next message from ``conn``'s process, within ``timeout`` seconds."""
        if not conn.poll(timeout):
            raise RuntimeError(f"{self.who} sent no {what} within {timeout:.0f} s")
        message = conn.recv()
        if message[0] == "error":
            raise RuntimeError(f"{self.who} failed: {message[1]}")
        return tuple(message)

    def value(self, conn: multiprocessing.connection.Connection, timeout: float) -> Any:
        """The value of the next ``(kind, value)`` message from ``conn``'s process."""
        return self.message(conn, timeout)[1]

    def close(self) -> None:
        """Tell every process to end; kill those still running after ``END_TIMEOUT``."""
        for conn in self.conns:
            with contextlib.suppress(Exception):
                conn.send(None)
        for conn, process in zip(self.conns, self.processes, strict=False):
            process.join(END_TIMEOUT)
            if process.is_alive():
                process.kill()
                process.join()
            with contextlib.suppress(Exception):
                conn.close()
