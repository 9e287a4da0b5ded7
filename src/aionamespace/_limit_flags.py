"""``serve``'s flags for ``Limits``: one per field, named after it, made from the dataclass.

``add_limit_flags(parser)`` adds ``--max-frame-bytes N`` and the others to any argparse parser
(a field added to ``Limits`` later gets its flag with no code here); its help is the field's
description (``protocol/limits.py``, next to the field). ``limits_from_flags(args)`` makes the
``Limits`` those flags ask for: the defaults, except where a flag was given.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Callable

from .protocol.limits import Limits

__all__ = ["add_limit_flags", "limit_flag", "limits_from_flags"]

#: The argparse destinations are prefixed, so no other option of the parser can collide.
_DEST_PREFIX = "limit_"


def limit_flag(name: str) -> str:
    """The flag of a ``Limits`` field: ``max_frame_bytes`` -> ``--max-frame-bytes``."""
    return "--" + name.replace("_", "-")


def _number(kind: type[int] | type[float], flag: str) -> Callable[[str], int | float]:
    def parse(text: str) -> int | float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{flag} takes {'an integer' if kind is int else 'a number'}, not {text!r}"
            ) from None
        if not value >= 0:  # also refuses nan
            raise argparse.ArgumentTypeError(f"{flag} must not be negative, got {text!r}")
        return value

    return parse


def add_limit_flags(parser: argparse.ArgumentParser) -> None:
    """Add one flag per ``Limits`` field to ``parser`` (in a group of its own)."""
    group = parser.add_argument_group(
        "limits", "the server's bounds (aionamespace.Limits; README: Limits and failures)"
    )
    for field in dataclasses.fields(Limits):
        kind = float if isinstance(field.default, float) else int
        flag = limit_flag(field.name)
        description = field.metadata.get("description", f"Limits.{field.name}").replace("%", "%%")
        if field.default is not dataclasses.MISSING:
            description += f" (default {field.default:_})"
        group.add_argument(
            flag,
            dest=_DEST_PREFIX + field.name,
            type=_number(kind, flag),
            metavar="SECONDS" if kind is float else "N",
            help=description,
        )


def limits_from_flags(args: argparse.Namespace) -> Limits:
    """The ``Limits`` that ``add_limit_flags``'s flags in ``args`` ask for."""
    given = {
        field.name: getattr(args, _DEST_PREFIX + field.name)
        for field in dataclasses.fields(Limits)
        if getattr(args, _DEST_PREFIX + field.name, None) is not None
    }
    return Limits(**given)
