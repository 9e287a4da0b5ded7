"""What waits to be sent to one connection: its ``Outbox``, the same for both shells.

The dispatcher hands a connection *output* (protocol/pieces.py): pieces, which may be the very
bytes a store holds, and Producers, which make their pieces as they are sent. An Outbox keeps
them in order as they are (references: nothing is copied into it), counts the bytes they stand
for (``size``), and gives the shell the next bytes to send (``take``):

* small pieces joined into one of about CHUNK_BYTES: the only copy made here, of at most that;
* a large piece as it is, or, when larger than SEND_BYTES, in views of that size (a view
  copies nothing, and a transport that cannot send it at once copies at most that much:
  asyncio's transports of Python 3.10 and 3.11 copy what the socket does not take into a
  bytearray of their own);
* a Producer's next piece, made only when it is the next to send.

So what a client that does not read pins on the server is what its Outbox references, and at
most about one piece inside the transport: the shells take the next piece only once the
transport has sent the last (trio) or drained below its low-water mark (asyncio).

With a durable store, output can wait behind a *gate* (durability.py): ``take`` gives nothing
past a gate until it is open.
"""

from __future__ import annotations

import collections
from collections.abc import Iterable

from ..protocol.frames import LARGE_VALUE_BYTES
from ..protocol.pieces import CHUNK_BYTES, Output, Producer
from .durability import Gate, Held

__all__ = ["SEND_BYTES", "Outbox", "apart"]

#: The most a shell hands its transport at once: the send buffer a connection that is sent large
#: values gets (shells.LARGE_SEND_BUFFER_BYTES), and a chunk more, so that a value of 1 MiB
#: with its encoding's header leaves whole, in one system call.
SEND_BYTES = 1024 * 1024 + CHUNK_BYTES

Piece = bytes | memoryview

#: An outbox's items when nothing waits.
NOTHING: tuple[()] = ()


class Outbox:
    """A connection's output not sent yet, in order; ``size`` is about how many bytes it is."""

    __slots__ = ("gate", "items", "size")

    def __init__(self) -> None:
        # In order. A deque only while something waits: an empty one holds a block of slots
        # (about 600 bytes), which would be most of what an idle connection costs.
        self.items: collections.deque[Piece | Producer | Gate] | tuple[()] = NOTHING
        self.size = 0  # the pieces' bytes, and what the Producers say they will still make
        self.gate: Gate | None = None  # the last gate put in

    def hold(self, gate: Gate, connection: Held) -> None:
        """What is put from now on waits for ``gate`` to open (which tells ``connection``)."""
        if gate is not self.gate:
            self.gate = gate
            self._items().append(gate)
            gate.held.append(connection)

    def __bool__(self) -> bool:
        return bool(self.items)

    def put(self, output: Output) -> None:
        if isinstance(output, Producer):
            self._items().append(output)
            self.size += output.remaining
        elif output:
            self._items().append(output)
            self.size += len(output)

    def _items(self) -> collections.deque[Piece | Producer | Gate]:
        items = self.items
        if items is NOTHING:
            items = self.items = collections.deque()
        return items  # type: ignore[return-value]

    def put_all(self, outputs: Iterable[Output]) -> None:
        for output in outputs:
            self.put(output)

    def clear(self) -> None:
        """Forget everything (the connection is gone): the references go with it."""
        self.items = NOTHING
        self.size = 0
        self.gate = None

    def take(self) -> Piece | None:
        """The next bytes to send (see the module's docstring), or None if nothing waits."""
        piece = self._take()
        if not self.items:
            self.items = NOTHING  # (its deque's block goes)
        return piece

    def _take(self) -> Piece | None:
        first = self._first()
        if first is None:
            return None
        items: collections.deque[Piece | Producer | Gate] = self.items  # type: ignore[assignment]
        if len(first) >= CHUNK_BYTES:
            if len(first) > SEND_BYTES:
                view = memoryview(first)
                items[0], first = view[SEND_BYTES:], view[:SEND_BYTES]
            else:
                items.popleft()
            self.size -= len(first)
            return first
        items.popleft()
        parts = [first]
        total = len(first)
        while total < CHUNK_BYTES:
            piece = self._first()
            if piece is None or len(piece) >= CHUNK_BYTES:
                break
            items.popleft()
            parts.append(piece)
            total += len(piece)
        self.size -= total
        return first if len(parts) == 1 else b"".join(parts)

    def _first(self) -> Piece | None:
        """The first piece; made by the first Producer if that is what comes first (the
        Producer stays behind its piece, for the next); None before a gate still closed."""
        items: collections.deque[Piece | Producer | Gate] = self.items  # type: ignore[assignment]
        while items:
            first = items[0]
            if first.__class__ is Gate:
                if not first.open:
                    return None
                items.popleft()
                continue
            if not isinstance(first, Producer):
                return first  # type: ignore[return-value]
            before = first.remaining
            piece = first.next()
            if piece is None:
                items.popleft()
                self.size -= before
            elif piece:
                self.size += len(piece) - (before - first.remaining)
                items.appendleft(piece)
                return piece
        return None


def apart(frames: list[Output]) -> bool:
    """Whether ``frames`` must not be joined into one buffer: a Producer, a stored value (a
    large one, referenced), or too many bytes to copy at once."""
    total = 0
    for frame in frames:
        if type(frame) is not bytes or len(frame) >= LARGE_VALUE_BYTES:
            return True
        total += len(frame)
    return total > SEND_BYTES
