"""Watches of lists that appends grow, through the Dispatcher (PROTOCOL.md 11: pushes carry
whole values): every watcher gets the whole list of each revision, made once per revision
however many watch it, and never made for an append nobody watches.
"""

from __future__ import annotations

import pytest

from aionamespace.protocol.codec import encode_value
from aionamespace.server.stores.lists import StoredList
from dispatch_rig import Rig, ok, push


@pytest.fixture
def materialisations(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The length (items) of every list encoding the store makes, in order."""
    made: list[int] = []
    encoded = StoredList.encoded

    def counting(self: StoredList) -> bytes:
        if self._encoded is None:
            made.append(self.count)
        return encoded(self)

    monkeypatch.setattr(StoredList, "encoded", counting)
    return made


def test_watchers_of_a_list_share_one_encoding_per_revision(materialisations: list[int]) -> None:
    rig = Rig()
    writer = rig.connect()
    for i in range(1, 4):  # nobody watches: no list is ever encoded
        assert rig.send(writer, [i, "append", "k", "log", [encode_value(i)]]) == [ok(i, i)]
    assert materialisations == []
    watchers = [rig.connect() for _ in range(5)]
    watch_ids = [rig.watch(watcher, "k") for watcher in watchers]
    assert materialisations == [3]  # the watches' snapshots: one encoding, five replies
    assert rig.send(writer, [4, "append", "k", "log", [encode_value(4)]]) == [ok(4, 4)]
    assert materialisations == [3, 4]  # once, for five watchers
    whole = encode_value([1, 2, 3, 4])
    for watcher, watch_id in zip(watchers, watch_ids, strict=True):
        assert watcher.written() == [push(watch_id, 4, "log", whole)]
    assert rig.send(writer, [5, "get", "k", "log"]) == [ok(5, whole)]  # the same encoding
    assert materialisations == [3, 4]


def test_a_replay_rebuilds_each_version_of_a_list(materialisations: list[int]) -> None:
    rig = Rig()
    writer, watcher = rig.connect(), rig.connect()
    for i in range(1, 5):
        rig.send(writer, [i, "append", "k", "log", [encode_value(i), encode_value(-i)]])
    rig.send(writer, [5, "set", "k", "log", encode_value("replaced")])
    reply, *replayed = rig.send(watcher, [1, "watch", "k", ["log"], 1])
    watch_id = reply[2][0]
    assert replayed == [
        push(watch_id, 2, "log", encode_value([1, -1, 2, -2])),
        push(watch_id, 3, "log", encode_value([1, -1, 2, -2, 3, -3])),
        push(watch_id, 4, "log", encode_value([1, -1, 2, -2, 3, -3, 4, -4])),
        push(watch_id, 5, "log", encode_value("replaced")),
    ]
    assert materialisations == [8]  # the list as it was last: past versions are made afresh
