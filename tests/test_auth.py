"""Authentication: mutual HMAC-SHA256 challenge-response; a wrong or missing key serves nothing."""

from __future__ import annotations

import os
import pickle
import socket
from collections.abc import Iterator

import msgpack
import pytest

from aionamespace import AsyncNamespace, AuthenticationError, Manager, Namespace, ServerThread
from aionamespace.client.blocking import POOL
from aionamespace.protocol.codec import encode_value

KEY = b"correct horse battery staple"


@pytest.fixture(params=["unix", "tcp"])
def keyed_server(request: pytest.FixtureRequest, short_tmp: str) -> Iterator[ServerThread]:
    address = os.path.join(short_tmp, "k.sock") if request.param == "unix" else ("127.0.0.1", 0)
    with ServerThread(address, authkey=KEY) as running:
        running_ns = Namespace(running.address, "vault", authkey=KEY)
        running_ns.secret = "kept"
        running_ns._close()
        yield running


def _vault_is_intact(server: ServerThread) -> None:
    ns = Namespace(server.address, "vault", authkey=KEY)
    assert ns._snapshot() == {"secret": "kept"}
    ns._close()


def test_right_key_is_served(keyed_server: ServerThread) -> None:
    ns = Namespace(keyed_server.address, "vault", authkey=KEY)
    assert ns.secret == "kept"
    ns._close()


@pytest.mark.parametrize("key", [b"wrong", None])
def test_wrong_or_missing_key_is_refused_and_changes_nothing(
    keyed_server: ServerThread, key: bytes | None
) -> None:
    ns = Namespace(keyed_server.address, "vault", authkey=key)
    with pytest.raises(AuthenticationError):
        ns.secret = "stolen"
    with pytest.raises(AuthenticationError):
        _ = ns.secret
    _vault_is_intact(keyed_server)


def test_client_with_a_key_refuses_a_server_without_one(server: ServerThread) -> None:
    with pytest.raises(AuthenticationError, match="does not use an authkey"):
        Namespace(server.address, authkey=KEY)  # creating an anonymous namespace: a round trip
    ns = Namespace(server.address, "board", authkey=KEY)
    with pytest.raises(AuthenticationError, match="does not use an authkey"):
        ns.x = 1


@pytest.mark.anyio
@pytest.mark.parametrize("key", [KEY, b"wrong", None])
async def test_async_auth_matrix(keyed_server: ServerThread, key: bytes | None) -> None:
    ns = AsyncNamespace(keyed_server.address, "vault", authkey=key)
    if key == KEY:
        assert await ns.secret == "kept"
    else:
        with pytest.raises(AuthenticationError):
            await ns.secret
    await ns._close()


def _raw_connect(server: ServerThread) -> socket.socket:
    address = server.address
    if isinstance(address, tuple):
        return socket.create_connection(address)
    sock = socket.socket(socket.AF_UNIX)
    sock.connect(address)
    return sock


def _read_frames(sock: socket.socket) -> list[object]:
    unpacker = msgpack.Unpacker(raw=False)
    while True:
        data = sock.recv(65536)
        if not data:
            return list(unpacker)
        unpacker.feed(data)


def test_pipelined_requests_after_a_bad_proof_are_never_applied(keyed_server: ServerThread) -> None:
    """An attacker may send hello, a guessed proof and requests in one write: none applies."""
    hello = {"protocol": "aionamespace", "version": 1, "challenge": os.urandom(32)}
    forged = [
        msgpack.packb(hello),
        msgpack.packb({"proof": os.urandom(32)}),
        msgpack.packb([1, "set", "vault", "secret", encode_value("stolen")]),
        msgpack.packb([2, "get", "vault", "secret"]),
    ]
    with _raw_connect(keyed_server) as sock:
        sock.sendall(b"".join(forged))
        frames = _read_frames(sock)  # the server answers, then closes
    assert frames[0]["protocol"] == "aionamespace"  # its hello, with its own proof
    assert frames[1] == [0, 1, "AuthenticationError", "authentication failed: wrong authkey"]
    assert len(frames) == 2
    _vault_is_intact(keyed_server)


def test_hello_without_a_challenge_gets_an_error_hello(keyed_server: ServerThread) -> None:
    with _raw_connect(keyed_server) as sock:
        sock.sendall(msgpack.packb({"protocol": "aionamespace", "version": 1}))
        frames = _read_frames(sock)
    assert frames == [
        {
            "protocol": "aionamespace",
            "error": ["AuthenticationError", "this server requires an authkey; none was given"],
        }
    ]


def test_the_key_never_crosses_the_socket(keyed_server: ServerThread) -> None:
    """Capture what a real client sends and receives: the key appears in neither direction."""
    ns = Namespace(keyed_server.address, "vault", authkey=KEY)
    assert ns.secret == "kept"
    transport = POOL.transport(ns._aionamespace.target)  # this thread's, already open
    hello = transport.protocol.send_hello()
    assert KEY not in hello
    assert KEY not in transport.protocol.handshake_reply()
    ns._close()


def test_manager_makes_a_random_key_and_pickled_proxies_carry_it() -> None:
    with Manager() as manager:
        assert isinstance(manager.authkey, bytes)
        assert len(manager.authkey) == 32
        ns = manager.Namespace(a=1)
        clone = pickle.loads(pickle.dumps(ns))
        assert clone.a == 1
        stranger = Namespace(manager.address, ns._aionamespace.target.key)
        with pytest.raises(AuthenticationError):
            _ = stranger.a
    with Manager(authkey=b"chosen") as manager:
        assert manager.authkey == b"chosen"
        assert Namespace(manager.address, "n", authkey=b"chosen")._snapshot() == {}


@pytest.mark.anyio
async def test_async_writes_refused_for_a_wrong_key_are_reported_once(
    keyed_server: ServerThread,
) -> None:
    ns = AsyncNamespace(keyed_server.address, "vault", authkey=b"wrong")
    ns.secret = "stolen"
    with pytest.raises(AuthenticationError):
        await ns._flush()
    await ns._flush()  # nothing is left queued: the write could never be delivered
    await ns._close()
    _vault_is_intact(keyed_server)
