"""``python -m aionamespace``: the command line, which lives in ``aionamespace.cli``."""

from __future__ import annotations

import sys

from .cli import AUTHKEY_ENV, main

__all__ = ["AUTHKEY_ENV", "main"]

if __name__ == "__main__":
    sys.exit(main())
