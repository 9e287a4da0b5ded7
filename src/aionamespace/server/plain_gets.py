"""The commonest request answered without the op table: a plain get.

An async proxy pipelines its gets by the dozen, and each went through the dispatcher's
``_apply``, ``answer``, the op table, ``_get``, ``send_value`` and ``pack_frame``.
``Dispatcher.respond_some`` first asks ``plain_gets`` for a batch's answerer, which answers a
get straight from the store, packed by the thread's Packer, when no cache tracks the
connection (checked per get: a ``track`` earlier in the batch counts), the namespace is not
anonymous and the value is small. Anything else, an error included, it leaves to ``_apply``
(None), so every reply is the bytes the long way makes.
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
) -> Callable[[Any], bytes | None]:
    """For one batch of ``peer``'s: event -> the reply to a plain get, or None."""
    pack = frame_packer().pack

    def answer(event: Any) -> bytes | None:
        if type(event) is not Request or event.op != "get" or peer in tracking:
            return None
        key, name = event.args
        if key[0] == ANONYMOUS:
            return None
        try:
            value = get(key, name)
        except Exception:  # (the long way says what)
            return None
        if len(value) >= LARGE_VALUE_BYTES:
            return None
        packed: bytes = pack([event.id, REPLY_OK, value])
        return packed

    return answer
