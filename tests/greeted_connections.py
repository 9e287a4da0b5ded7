"""Both sans-IO state machines past the hello, and what their events must look like.

``greeted_server`` and ``greeted_client`` are a ``ServerConnection`` and a ``ClientConnection``
that have taken the other side's hello, ready for requests or replies; ``refusal_error`` and
``only_replies`` check the events they return.
"""

from __future__ import annotations

from typing import Any

from aionamespace.protocol.connection import (
    ClientConnection,
    Hello,
    Limits,
    Refusal,
    Reply,
    ServerConnection,
)
from handmade_frames import HELLO


def greeted_server(limits: Limits | None = None) -> ServerConnection:
    server = ServerConnection(limits)
    events = server.receive_data(HELLO)
    assert len(events) == 1
    assert type(events[0]) is Hello
    assert server.greeted
    return server


def refusal_error(events: list[Any]) -> Exception:
    """The error of the Refusal that must end ``events``."""
    assert events, "expected a Refusal, got no events"
    assert type(events[-1]) is Refusal, f"expected a Refusal last, got {events!r}"
    assert all(type(event) is not Refusal for event in events[:-1])
    error: Exception = events[-1].error
    return error


def only_replies(events: list[Hello | Reply]) -> list[Reply]:
    replies = [event for event in events if isinstance(event, Reply)]
    assert len(replies) == len(events), f"expected only replies, got {events!r}"
    return replies


def greeted_client(limits: Limits | None = None) -> ClientConnection:
    client = ClientConnection(limits)
    events = client.receive_data(ServerConnection(limits).send_hello())
    assert len(events) == 1
    assert type(events[0]) is Hello
    assert client.greeted
    return client
