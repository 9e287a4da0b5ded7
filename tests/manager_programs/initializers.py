"""Initializers for ``Manager.start`` (a module the server process imports by name)."""

from __future__ import annotations

import json
import os
import signal


def record(path: str, word: str) -> None:
    """Write where it ran, with what, and what SIGINT does there."""
    with open(path, "w") as out:
        json.dump(
            {
                "pid": os.getpid(),
                "word": word,
                "sigint ignored": signal.getsignal(signal.SIGINT) == signal.SIG_IGN,
            },
            out,
        )


def fail() -> None:
    raise ZeroDivisionError("the initializer divided by zero")
