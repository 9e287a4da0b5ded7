"""Nothing leaves before it is durable: the server's side of a store that commits.

A durable store (``Store.durable``: the SQLite store) holds its changes until ``commit`` has
written them. The server answers a change only once it is committed, and sends nothing that was
made after a change (a reply, a read of the changed value, a watch push, a lock handed over)
before that change is committed: a client never sees, and so never acts on, what a crash could
take back.

``Durability`` does it with *gates*. The store tells it of the first change after a commit
(``Store.on_change``); from then on (``holding``), whatever a connection is given to send goes
into its outbox behind the ``gate`` of the next commit (or of the running one, for output made
while it runs with no change since), which is opened once that commit is done.

Who commits: at the end of the batch that made a change, before its replies are written
(``settle``), the store commits it at once on the loop's thread if it can do so cheaply
(``Store.commit_inline``: a small commit without fsync, which costs less than waking a task to
do it), and the replies go out with no gate to wait at; otherwise, and for changes made outside
a batch (a timer freeing a namespace), a single committer task (``run``) does it, off the loop
if the store says so. While that commit runs the server goes on reading and applying: the
changes of every batch applied meanwhile go to the next commit, so commits group themselves,
one transaction for as many batches as arrived during the last (group commit, what ``--fsync``
relies on). When a commit ends and nothing changed meanwhile, ``holding`` ends and
output goes straight out again.

A *lone writer* is a connection whose changes alone made the last ``LONE_COMMITS`` commits (one
sync client writing, say). Its small commits are made at its batch's end even with fsync
(``commit_inline(lone=True)``): with no one else writing there is nothing to group its commit
with, and waking the committer, one more turn of the loop and the gate would cost the server
more Python than the commit itself (README's Durable rows). As soon as another connection (or a
timer) changes something, the changes are no longer one writer's, and commits go back to the
committer, which groups them.

With fsync a commit may also wait before it starts (*gathering*): when the changes waiting are
few against the last commit's (``GATHER_FRACTION``), the writers that commit answered are
likely to send as many again, and the commit waits for their batches, at most as long as the
last commit took (and ``MAX_GATHER_SECONDS``), so that they share its fsync.

An in-memory store is not durable: ``holding`` never becomes true, and what a connection sends
pays one attribute check for all this.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Protocol

import anyio

from .stores import Store

__all__ = ["GATHER_FRACTION", "LONE_COMMITS", "MAX_GATHER_SECONDS", "Durability", "Gate"]

#: Commits that a connection's changes alone must have made in a row before it is a lone writer.
LONE_COMMITS = 4
#: With fsync, a commit that would hold less than 1/GATHER_FRACTION of the last one's changes
#: waits for more (``_gathering``), at most as long as the last commit took, and never longer
#: than MAX_GATHER_SECONDS.
GATHER_FRACTION = 4
MAX_GATHER_SECONDS = 0.01


class Held(Protocol):
    """A connection with output behind a gate."""

    def gate_opened(self) -> None:
        """The gate its outbox waits at is open: send what follows it."""


class Gate:
    """Where a connection's output waits for a commit; ``open`` once the commit is done."""

    __slots__ = ("held", "open")

    def __init__(self) -> None:
        self.open = False
        self.held: list[Held] = []  # connections with output behind it

    def __len__(self) -> int:  # an outbox counts its items' lengths: a gate sends nothing
        return 0


class Durability:
    """The commits of one server's store, and the gate its connections' output waits at."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.holding = False  # output made now waits at ``gate``
        self.gate = Gate()  # opened when the next commit is done
        self._changed: anyio.Event | None = None
        self._dirty = False  # a change not yet handed to a commit
        self._committing: Gate | None = None  # the gate of the commit running
        self._failure: Exception | None = None  # of a commit at a batch's end, for ``run``
        #: A batch is being applied: its changes are committed at its end (``batch_ended``).
        self.batching = False
        # Whose changes wait for a commit: one connection's (``_writer``), or several's.
        self._writer: object | None = None
        self._several = False
        # The last commits' writer, and how many commits in a row held its changes alone.
        self._lone: object | None = None
        self._lone_commits = 0
        # With fsync: how many changes wait (the store's count), and the last commit's size
        # and duration (``_gathering``).
        self._waiting: Callable[[], int] | None = (
            getattr(store, "waiting", None) if getattr(store, "fsync", False) else None
        )
        self._last_size = 0
        self._last_seconds = 0.0
        if getattr(store, "durable", False):  # (a store the server awaits has no such flag)
            store.on_change = self._on_change

    def _on_change(self) -> None:
        self.holding = self._dirty = True
        if not self.batching:  # (a timer's change: no connection's)
            self._several = True
        if self.gate is self._committing:  # the running commit does not hold this change
            self.gate = Gate()
        if self._changed is not None and not self.batching:
            self._changed.set()

    def settle(self, connection: object) -> None:
        """During a batch of ``connection``'s, before its replies are written: commit what it
        changed so far now, if no commit is running and the store can do it on this thread
        (then the replies go straight out, with no gate to wait at)."""
        if not self._dirty or self._committing is not None:
            return
        # (a connection whose batch finds changes waiting counts as a writer of them)
        if self._writer is None:
            self._writer = connection
        elif self._writer is not connection:
            self._several = True
        lone = (
            self._lone is connection
            and not self._several
            and self._lone_commits >= LONE_COMMITS
            and not self._gathering()
        )
        gate = self.gate
        timed = self._waiting is not None  # (only gathering reads a commit's size and time)
        if timed:
            size, start = self._size(), time.monotonic()
        try:
            done = self.store.commit_inline(lone=lone)
        except Exception as exc:  # the committer raises it: the server stops (see run)
            self._failure = exc
            return
        if done:
            self._dirty = False
            self._taken()
            if timed:
                self._timed(size, start)
            self._opened(gate)

    def _size(self) -> int:
        return self._waiting() if self._waiting is not None else 0

    def _timed(self, size: int, start: float) -> None:
        self._last_size = size
        self._last_seconds = min(time.monotonic() - start, MAX_GATHER_SECONDS)

    def _gathering(self) -> bool:
        """With fsync: whether the changes waiting are few against the last commit's. Its
        writers were just answered and are likely to send as many again (64 tasks on one
        connection, whose writes would otherwise split into two groups taking turns, say: a
        commit of one write, then of 63, and so on), so the commit waits for them, at most
        as long as the last commit took: an fsync for all of them rather than two."""
        return self._waiting is not None and self._waiting() * GATHER_FRACTION < self._last_size

    def _taken(self) -> None:
        """A commit took what changed: count its writer's commits in a row."""
        writer = None if self._several else self._writer
        if writer is not None and writer is self._lone:
            self._lone_commits += 1
        else:
            self._lone, self._lone_commits = writer, int(writer is not None)
        self._writer = None
        self._several = False

    def batch_ended(self) -> None:
        """A batch of requests was applied: what it changed and ``settle`` could not commit
        goes to the committer task."""
        self.batching = False
        if self._dirty and self._changed is not None:
            self._changed.set()

    async def run(self) -> None:
        """Commit, and open the gates, for as long as the server serves (a task of its own).
        A commit that fails raises here, and the server stops: what it holds in memory is no
        longer what its store holds, so it must not answer as if it were."""
        while True:
            self._changed = changed = anyio.Event()
            if not self._dirty:
                await changed.wait()
            if self._failure is None and self._gathering():
                with anyio.move_on_after(self._last_seconds):
                    while self._dirty and self._gathering() and self._failure is None:
                        self._changed = changed = anyio.Event()
                        await changed.wait()  # (a batch ended: see what it brought)
            if self._failure is not None:
                raise self._failure
            if self._dirty:  # (else a lone writer's batch committed while this gathered)
                await self.commit()

    async def flush(self) -> None:
        """Commit what changed since the last commit, if anything did (the server stopping)."""
        if self._dirty:
            await self.commit()

    async def commit(self) -> None:
        """Commit what changed, then let out what waited for it. Output made during the commit
        waits for it too (it may have read what the commit writes), until a change comes that
        the commit does not hold: what follows that waits for the next commit."""
        self._committing = gate = self.gate
        self._dirty = False
        self._taken()
        size, start = self._size(), time.monotonic()
        try:
            await self.store.commit()
        finally:
            self._committing = None
        self._timed(size, start)
        self._opened(gate)

    def _opened(self, gate: Gate) -> None:
        """``gate``'s commit is done: let out what waited for it."""
        gate.open = True
        if self.gate is gate:
            self.gate = Gate()
        if not self._dirty:
            self.holding = False  # nothing changed during the commit: no need to hold
        for connection in gate.held:
            connection.gate_opened()
