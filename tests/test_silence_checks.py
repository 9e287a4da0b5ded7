"""The async transports' count of silent checks (``PipelinedTransport.check_silence``), driven
by hand: a request that waits through five checks without a byte from the server times out, so
never before ``call_timeout`` and at most a quarter of it later."""

from __future__ import annotations

from aionamespace.client.pipelined import AsyncState, PipelinedTransport
from aionamespace.client.proxy import Target
from aionamespace.client.requests import RequestTable


def transport() -> PipelinedTransport:
    table = RequestTable(Target.create("/nowhere.sock", "board"))
    return PipelinedTransport(AsyncState(table, bind=None))


def checks_until_timeout(link: PipelinedTransport) -> int:
    for count in range(1, 20):
        if link.check_silence() == "timeout":
            return count
    raise AssertionError("never timed out")


def test_a_request_times_out_on_the_fifth_silent_check() -> None:
    link = transport()
    link.table.inflight_writes.add(1)  # a write waits for its acknowledgement
    assert checks_until_timeout(link) == 5


def test_replies_read_while_nothing_waited_do_not_count_as_the_next_request_s() -> None:
    """Replies read before an idle look were the last requests' answers: the next request's
    silence starts at the next check, not one later (its timeout came a quarter late)."""
    link = transport()
    link.reads += 3  # answers to earlier requests, read
    assert link.check_silence() == "idle"  # nothing waits now
    link.table.inflight_writes.add(1)  # then a write, which the server never answers
    assert checks_until_timeout(link) == 5
