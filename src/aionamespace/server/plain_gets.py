"""The commonest request answered without the op table: a plain get.

An async proxy pipelines its gets by the dozen, and each went through the dispatcher's
``_apply``, ``answer``, the op table, ``_get``, ``send_value`` and ``pack_frame``.
``Dispatcher.respond_some`` first asks ``plain_gets`` for a batch's answerer, which answers
each run of gets straight from the store, packed by the thread's Packer, when no cache tracks
the connection (checked per run: a ``track`` earlier in the batch counts), the namespace is
not anonymous and the value is small. Gets of one name in a row (many tasks reading it) read
the store once: nothing runs between two gets of a run, so its value stands. Anything else,
an error included, ends the run and is left to ``_apply``, so every reply is the bytes the
long way makes.
"""

from __future__ import annotations

from collections.abc import Callable, Container
from typing import Any

from ..protocol.events import REPLY_OK, Request
from ..protocol.frames import LARGE_VALUE_BYTES, frame_packer
from .anonymous import ANONYMOUS

__all__ = ["plain_gets"]


def plain_gets(
    get: Callable[[str, str], bytes], tracking: Container[Any], peer: object
) -> Callable[[list[Any], int, list[Any], int, float], tuple[int, int]]:
    """For one batch of ``peer``'s: ``answer(events, at, out, size, budget)`` answers the run
    of plain gets in ``events`` from ``at`` on into ``out``, one tight loop for the run (not a
    call per get), until another event, or until the answers' ``size`` passes ``budget``;
    it returns where it stopped and the size."""
    pack = frame_packer().pack

    def answer(
        events: list[Any], at: int, out: list[Any], size: int, budget: float
    ) -> tuple[int, int]:
        if peer in tracking:  # (a run holds gets alone: no track within it changes this)
            return at, size
        append = out.append
        end = len(events)
        last = None  # the (key, name) read last in this run, whose value is ``value``
        value = b""
        while at < end:
            event = events[at]
            if type(event) is not Request or event.op != "get":
                break
            args = event.args
            if args != last:  # (nothing runs between two gets of a run: the value stands)
                key, name = args
                if key[0] == ANONYMOUS:
                    break
                try:
                    value = get(key, name)
                except Exception:  # (the long way says what)
                    break
                if len(value) >= LARGE_VALUE_BYTES:
                    break
                last = args
            packed: bytes = pack([event.id, REPLY_OK, value])
            append(packed)
            size += len(packed)
            at += 1
            if size > budget:
                break
        return at, size

    return answer
