"""``serve``'s flags for ``Limits``: one per field, named after it, made from the dataclass.

``add_limit_flags(parser)`` adds ``--max-frame-bytes N`` and the others to any argparse parser
(a field added to ``Limits`` later gets its flag with no code here); its help is the field's
description (``protocol/limits.py``, next to the field). ``limits_from_flags(args)`` makes the
``Limits`` those flags ask for: the defaults, except where a flag was given. A field whose
type admits None (``float | None``) takes ``none`` too.
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


def _number(field: dataclasses.Field[object], flag: str) -> Callable[[str], int | float | None]:
    annotation = str(field.type)  # a string: protocol/limits.py has postponed annotations
    kind: type[int] | type[float] = (
        float if "float" in annotation or isinstance(field.default, float) else int
    )
    optional = "None" in annotation

    def parse(text: str) -> int | float | None:
        if optional and text.lower() == "none":
            return None
        try:
            value = kind(text)
        except ValueError:
            what = "an integer" if kind is int else "a number"
            raise argparse.ArgumentTypeError(
                f"{flag} takes {what}{' or none' if optional else ''}, not {text!r}"
            ) from None
        if not value >= 0:  # also refuses nan
            raise argparse.ArgumentTypeError(f"{flag} must not be negative, got {text!r}")
        return value

    parse.__name__ = kind.__name__  # argparse names the type in its own messages
    return parse


def _help(field: dataclasses.Field[object]) -> str:
    text = str(field.metadata.get("description", f"Limits.{field.name}"))
    default = field.default
    if isinstance(default, (int, float)) and not isinstance(default, bool):
        text += f" (default {default:_})"
    elif default is not dataclasses.MISSING:
        text += f" (default {default})"
    return text.replace("%", "%%")


def add_limit_flags(parser: argparse.ArgumentParser) -> None:
    """Add one flag per ``Limits`` field to ``parser`` (in a group of its own)."""
    group = parser.add_argument_group(
        "limits", "the server's bounds (aionamespace.Limits; README: Limits and failures)"
    )
    for field in dataclasses.fields(Limits):
        flag = limit_flag(field.name)
        group.add_argument(
            flag,
            dest=_DEST_PREFIX + field.name,
            type=_number(field, flag),
            default=argparse.SUPPRESS,  # absent unless given: Limits keeps its default
            metavar="SECONDS" if field.name.endswith(("timeout", "grace", "poll")) else "N",
            help=_help(field),
        )


def limits_from_flags(args: argparse.Namespace) -> Limits:
    """The ``Limits`` that ``add_limit_flags``'s flags in ``args`` ask for."""
    given = {
        field.name: getattr(args, _DEST_PREFIX + field.name)
        for field in dataclasses.fields(Limits)
        if hasattr(args, _DEST_PREFIX + field.name)
    }
    return Limits(**given)
