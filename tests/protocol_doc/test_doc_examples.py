"""The document's hex examples are the library's bytes: the worked examples (which a real server
must answer byte for byte), the authentication test vector and the value examples.
"""

from __future__ import annotations

import datetime as dt
import decimal
import uuid
from typing import Any

from aionamespace import ServerThread
from doc_client import (
    ERROR,
    HELLO,
    OK,
    PUSH,
    Client,
    client_proof,
    connect,
    pack,
    recv_exactly,
    server_proof,
)
from doc_values import assert_same, decode, encode
from protocol_md import doc_examples, hex_bytes


def test_worked_examples_match_the_library(server: ServerThread) -> None:
    # The doc tests alone use the library's internals: they are the reference the document shows.
    from aionamespace import ConnectionLost
    from aionamespace.protocol.codec import encode_value
    from aionamespace.protocol.connection import ClientConnection, ServerConnection

    examples = {name: hex_bytes(block) for name, block in doc_examples().items()}
    server.server.store.epoch = "9f2c4e1a07b35d68"  # the document's (a real one is random)
    empty, full = encode_value("empty"), encode_value("full")
    assert (empty, full) == (encode("empty"), encode("full"))

    reference = ClientConnection()
    assert examples["client-hello"] == reference.send_hello() == pack(HELLO)
    expected_requests = {
        "set-request": ("set", "board", "item", empty),
        "get-request": ("get", "board", "item"),
        "missing-request": ("get", "board", "missing"),
        "watch-request": ("watch", "board", ["item"], None),
    }
    for request_id, (name, (op, *args)) in enumerate(expected_requests.items(), start=1):
        assert examples[name] == reference.send_request(op, *args)[1], name
        assert examples[name] == pack([request_id, op, *args]), name
    assert examples["set-reply"] == ServerConnection.send_result(1, 1) == pack([1, OK, 1])
    assert examples["watch-reply"] == ServerConnection.send_result(4, [1, 1, {"item": empty}])
    assert examples["watch-push"] == ServerConnection.send_event(1, 2, "item", full)
    assert examples["watch-push"] == pack([0, PUSH, 1, 2, "item", full])
    greeted = ServerConnection()
    greeted.receive_data(pack(HELLO))
    goodbye = greeted.send_refusal(ConnectionLost("the server is shutting down"))
    assert examples["goodbye"] == goodbye
    assert examples["goodbye"] == pack([0, ERROR, "ConnectionLost", "the server is shutting down"])

    # Replay the client's side against a real server; its answers must be the documented bytes
    with Client(server.address) as client:
        for sent, answered in [
            ("client-hello", "server-hello"),
            ("set-request", "set-reply"),
            ("get-request", "get-reply"),
            ("missing-request", "missing-reply"),
            ("watch-request", "watch-reply"),
        ]:
            client.sock.sendall(examples[sent])
            assert recv_exactly(client.sock, len(examples[answered])) == examples[answered], sent
        with connect(server) as other:  # another client sets item = "full"
            assert other.result("set", "board", "item", full) == 2
        push = examples["watch-push"]
        assert recv_exactly(client.sock, len(push)) == push
    with Client(server.address) as client:
        client.sock.sendall(examples["bad-hello"])
        assert recv_exactly(client.sock, 4096) == examples["hello-refusal"]


def test_auth_test_vector_matches_the_library() -> None:
    from aionamespace.protocol import auth as _auth

    examples = doc_examples()
    key, client_challenge, server_challenge = b"secret", bytes(range(32)), bytes(range(32, 64))
    documented = hex_bytes(examples["auth-server-proof"])
    assert documented == server_proof(key, client_challenge, server_challenge)
    assert documented == _auth.server_proof(key, client_challenge, server_challenge)
    documented = hex_bytes(examples["auth-client-proof"])
    assert documented == client_proof(key, client_challenge, server_challenge)
    assert documented == _auth.client_proof(key, client_challenge, server_challenge)


VALUE_EXAMPLES: list[tuple[str, Any]] = [
    ("None", None),
    ("True", True),
    ("-1", -1),
    ("2**64 - 1", 2**64 - 1),
    ("0.5", 0.5),
    ("'é'", "é"),
    ("b'\\x00'", b"\x00"),
    ("[1, 'a']", [1, "a"]),
    ("{'a': 1}", {"a": 1}),
    ("2**64", 2**64),
    ("-(2**64)", -(2**64)),
    ("-(2**71)", -(2**71)),
    ("(1, 'a')", (1, "a")),
    ("()", ()),
    ("{1, 2}", {1, 2}),
    ("frozenset({'x'})", frozenset({"x"})),
    ("bytearray(b'ab')", bytearray(b"ab")),
    ("1.5-2j", 1.5 - 2j),
    (
        "datetime(2024, 5, 17, 13, 45, 30, 123456, tzinfo=timezone(timedelta(hours=2)))",
        dt.datetime(2024, 5, 17, 13, 45, 30, 123456, tzinfo=dt.timezone(dt.timedelta(hours=2))),
    ),
    ("datetime(2024, 5, 17, 13, 45)", dt.datetime(2024, 5, 17, 13, 45)),
    ("date(2024, 5, 17)", dt.date(2024, 5, 17)),
    ("time(13, 45, 30, tzinfo=timezone.utc)", dt.time(13, 45, 30, tzinfo=dt.timezone.utc)),
    (
        "timedelta(days=-1, seconds=5, microseconds=7)",
        dt.timedelta(days=-1, seconds=5, microseconds=7),
    ),
    ("Decimal('-3.14')", decimal.Decimal("-3.14")),
    (
        "UUID('12345678-1234-5678-1234-567812345678')",
        uuid.UUID("12345678-1234-5678-1234-567812345678"),
    ),
    ("{(1, 2): None}", {(1, 2): None}),
    ("[(1,), {2}]", [(1,), {2}]),
]


def test_value_examples_match_the_library() -> None:
    from aionamespace.protocol.codec import decode_value, encode_value

    lines = doc_examples()["values"].strip().splitlines()
    labels = [line.partition("#")[2].strip() for line in lines]
    assert labels == [label for label, _ in VALUE_EXAMPLES]
    for line, (label, value) in zip(lines, VALUE_EXAMPLES, strict=True):
        documented = bytes.fromhex(line.partition("#")[0])
        assert documented == encode_value(value) == encode(value), label
        assert_same(decode(documented), value)
        assert_same(decode_value(documented), value)
