"""Whether the Redis node a store's subscriber (re)connects to continues the replication
history of the master it saw serving the same shard before: if not, Redis may have lost data
under the board, and the store starts a new epoch (redis_follow.py says what that does).

**What is compared.** A node is known by what it serves, not by its address: the subscriber
remembers, per followed slot of a cluster (the one master of a standalone Redis), the
replication id (``master_replid``) and offset of the master that confirmed its subscription
there (``Seen``). When it connects to a master of those slots again, that master's
``INFO replication`` says which history it continues (``verdict``), as ``PSYNC`` judges a
replica that asks to continue:

* the same ``master_replid``: the same history; the offset seen must not be ahead of the
  master's (a master restarted from an older RDB file keeps its id, not the writes since);
* its ``master_replid2`` is the old id: it was a replica that took over at
  ``second_repl_offset``; if that is not past the offset seen, it lacks writes the old master
  acknowledged: lost. Else only the old master can tell whether it acknowledged more after
  the store last read its offset (the subscriber reads it only when it connects: reading it
  with every write would cost a command per batch), so the old master is asked
  (``handed_over``): demoted to a replica of the new one and continued by a partial resync
  from where the new one took over, it had nothing more (PSYNC refuses a replica ahead of its
  master's ``second_repl_offset``; a full resync drops what it had). Unreachable, ahead,
  resyncing in full, or undecided within the store's timeout: lost, as when unsure. A
  standalone Redis has one address: a master that moved under it (Sentinel) cannot be
  asked, so a new replication id there is always a loss;
* another history at the same address: lost (a restart from an AOF, a replica promoted
  behind a moved address). Another history at another address of a cluster is a slot that
  moved to another shard (resharding keeps the keys), not judged here: a key seen to go back
  there is told as lost (redis_follow.py).

A replica (a stale slot map sends a subscription there: it serves its master's shard
channels) is not compared: its offset trails its master's.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

__all__ = ["Replication", "Seen", "handed_over", "verdict"]

#: What ``verdict`` says of a node: it continues the history seen, lost data, serves another
#: history (a slot that moved to another shard), or took over (ask the old master).
Verdict = Literal["continues", "lost", "other", "ask"]


@dataclasses.dataclass(frozen=True)
class Replication:
    """A node's ``INFO replication``, the fields compared."""

    role: bytes
    replid: bytes
    replid2: bytes
    offset: int
    second_offset: int
    link_up: bool  # a replica's link to its master is up
    syncing: bool  # a replica is loading a full copy of its master's data

    @classmethod
    def parse(cls, text: bytes) -> Replication:
        info = dict(line.split(b":", 1) for line in text.splitlines() if b":" in line)
        return cls(
            role=info.get(b"role", b"").strip(),
            replid=info.get(b"master_replid", b"").strip(),
            replid2=info.get(b"master_replid2", b"").strip(),
            offset=int(info.get(b"master_repl_offset", b"0")),
            second_offset=int(info.get(b"second_repl_offset", b"-1")),
            link_up=info.get(b"master_link_status", b"").strip() == b"up",
            syncing=info.get(b"master_sync_in_progress", b"0").strip() == b"1",
        )

    @property
    def master(self) -> bool:
        return self.role == b"master"


@dataclasses.dataclass(frozen=True)
class Seen:
    """The master a slot's subscription was confirmed on: its address ("" standalone), its
    replication id and its offset when the subscriber connected to it."""

    node: str
    replid: bytes
    offset: int


def verdict(seen: Seen, node: str, now: Replication) -> Verdict:
    """How the master ``now`` at ``node`` stands to the history ``seen`` (module docstring)."""
    if now.replid == seen.replid:
        return "continues" if now.offset >= seen.offset else "lost"
    if now.replid2 == seen.replid:
        if now.second_offset - 1 < seen.offset or node == seen.node:
            return "lost"  # it lacks what was seen, or its old master cannot be asked
        return "ask"
    return "lost" if node == seen.node else "other"


def handed_over(seen: Seen, new: Replication, old: Replication) -> bool | None:
    """Whether the old master (``old``, its state now) handed everything over to the one that
    took over (``new``): True, False, or None while it cannot tell yet."""
    if old.master:
        if old.replid == seen.replid and old.offset < new.second_offset:
            return None  # not demoted yet (and it may take writes until it is)
        return False  # ahead of the new master, or another history since
    if old.syncing:
        return False  # a full resync: what it had is dropped
    if not old.link_up:
        return None  # demoted, its link to the new master not made yet
    return (
        old.replid == new.replid
        and old.replid2 == seen.replid
        and old.second_offset <= new.second_offset
    )
