"""The handshake (3): the hellos, the hello error form, the connection limit, the handshake
timeout, and HMAC authentication.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator

import pytest

from aionamespace import Limits, Namespace, ServerThread
from doc_client import ERROR, HELLO, KEY, Client, connect, pack
from doc_values import decode, encode


def test_handshake(server: ServerThread) -> None:
    with Client(server.address) as client:
        hello = client.handshake()
        assert hello["max_frame_bytes"] == 64 * 1024 * 1024
        assert client.result("ping") is None


def test_wrong_version_gets_the_hello_error_form(server: ServerThread) -> None:
    with Client(server.address) as client:
        client.send({"protocol": "aionamespace", "version": 2})
        (hello,) = client.receive()
        assert set(hello) == {"protocol", "error"}
        assert hello["protocol"] == "aionamespace"
        error_type, message = hello["error"]
        assert error_type == "RemoteProtocolError"
        assert "version" in message
        assert client.at_eof()


def test_client_hello_with_an_error_is_refused(server: ServerThread) -> None:
    with Client(server.address) as client:
        client.send({**HELLO, "error": ["RemoteError", "from a client"]})
        (hello,) = client.receive()
        assert set(hello) == {"protocol", "error"}
        assert hello["error"][0] == "RemoteProtocolError"
        assert client.at_eof()


def test_max_connections(short_tmp: str, server_backend: str) -> None:
    """One connection too many gets the hello error form at once, unasked (3, 3.3, 8)."""
    limits = Limits(max_connections=2)
    with ServerThread(
        os.path.join(short_tmp, "m.sock"), backend=server_backend, limits=limits
    ) as server:
        with connect(server) as first, connect(server) as second:
            with Client(server.address) as third:  # sends nothing: the server speaks first
                assert third.receive() == [
                    {
                        "protocol": "aionamespace",
                        "error": ["ConnectionLost", "the server is at its limit of 2 connections"],
                    }
                ]
                assert third.at_eof()
            assert first.result("ping") is None  # the others are unaffected
            assert second.result("ping") is None
        deadline = time.monotonic() + 5
        while True:  # once the server has seen them close, a new client is served
            with Client(server.address) as fourth:
                fourth.send(HELLO)
                (hello,) = fourth.receive()
                if "version" in hello:
                    assert fourth.result("ping") is None
                    break
            assert time.monotonic() < deadline, hello
            time.sleep(0.05)


def test_handshake_timeout(short_tmp: str, server_backend: str) -> None:
    """No hello within handshake_timeout: the hello error form, then the end (3, 3.3, 8)."""
    refusal = {
        "protocol": "aionamespace",
        "error": ["RemoteProtocolError", "no hello and authentication within 0.3 seconds"],
    }
    with ServerThread(
        os.path.join(short_tmp, "h.sock"),
        backend=server_backend,
        limits=Limits(handshake_timeout=0.3),
    ) as server:
        with (
            Client(server.address) as silent,
            Client(server.address) as slow,
            Client(server.address) as prompt,
        ):
            started = time.monotonic()
            slow.sock.sendall(pack(HELLO)[:-1])  # all of the hello but its last byte
            prompt.send(HELLO)
            assert silent.receive() == [refusal]
            assert time.monotonic() - started >= 0.25
            assert silent.at_eof()
            assert slow.receive() == [refusal]
            assert slow.at_eof()
            assert prompt.receive()[0]["version"] == 1
            time.sleep(0.4)  # the deadline is long past: a client that said hello is served
            assert prompt.result("ping") is None


def test_handshake_timeout_covers_the_proof(short_tmp: str, server_backend: str) -> None:
    """With an authkey, a hello without its proof in time: a connection-level error (3.4, 7.3)."""
    with ServerThread(
        os.path.join(short_tmp, "p.sock"),
        backend=server_backend,
        authkey=KEY,
        limits=Limits(handshake_timeout=0.3),
    ) as server:
        with Client(server.address) as client:
            client.send({**HELLO, "challenge": os.urandom(32)})
            hello, error = client.receive(2)
            assert hello["version"] == 1
            assert "proof" in hello
            assert error == [
                0,
                ERROR,
                "RemoteProtocolError",
                "no hello and authentication within 0.3 seconds",
            ]
            assert client.at_eof()


@pytest.fixture(params=["unix", "tcp"])
def keyed_server(request: pytest.FixtureRequest, short_tmp: str) -> Iterator[ServerThread]:
    address = os.path.join(short_tmp, "k.sock") if request.param == "unix" else ("127.0.0.1", 0)
    with ServerThread(address, authkey=KEY) as running:
        yield running


def test_authentication(keyed_server: ServerThread) -> None:
    with Client(keyed_server.address) as client:
        hello = client.handshake(KEY)
        assert len(hello["challenge"]) == 32
        assert client.result("set", "vault", "secret", encode((1, 2))) == 1
        with Namespace(keyed_server.address, "vault", authkey=KEY) as ns:
            assert ns.secret == (1, 2)
            ns.answer = 42
        assert decode(client.result("get", "vault", "answer")) == 42


def test_wrong_proof_is_refused(keyed_server: ServerThread) -> None:
    with Client(keyed_server.address) as client:
        client.send({**HELLO, "challenge": os.urandom(32)})
        (hello,) = client.receive()
        assert set(hello) >= {"challenge", "proof"}
        client.send({"proof": bytes(32)}, [1, "ping"])  # the request must never run
        (error,) = client.receive()
        assert error[:3] == [0, ERROR, "AuthenticationError"]
        assert client.at_eof()


def test_missing_challenge_is_refused(keyed_server: ServerThread) -> None:
    with Client(keyed_server.address) as client:
        client.send(HELLO)
        (hello,) = client.receive()
        assert set(hello) == {"protocol", "error"}
        assert hello["error"][0] == "AuthenticationError"
        assert client.at_eof()
