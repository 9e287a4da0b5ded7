"""TLS: the auth matrix, the ways a handshake fails, pickling, and values over a TLS stream.

Certificates come from ``trustme``: one CA, a server certificate for 127.0.0.1 and localhost,
and a second CA nobody's certificate chains to. Every server test runs on an asyncio server and
on a trio server (``ServerThread(..., backend=...)``); every async test also runs on asyncio
and trio clients (the ``anyio_backend`` fixture), so each client meets each server.
"""

from __future__ import annotations

import datetime
import decimal
import pickle
import random
import socket
import ssl
import time
import uuid
from collections.abc import Iterator
from typing import Any

import anyio
import msgpack
import pytest
import trustme

from aionamespace import (
    AsyncNamespace,
    AuthenticationError,
    ConnectionLost,
    Limits,
    Namespace,
    Retry,
    ServerThread,
)
from aionamespace.protocol.connection import PROTOCOL_NAME

KEY = b"tls and a key"
NO_RETRY = Retry(attempts=1)  # a refused handshake fails at once instead of after backoff
FOUR_MIB = 4 * 1024 * 1024


pytestmark = pytest.mark.usefixtures("collect_garbage")


# ---------------------------------------------------------------------------- certificates


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def server_ctx(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1", "localhost").configure_cert(context)
    return context


@pytest.fixture(scope="module")
def client_ctx(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context()
    ca.configure_trust(context)
    return context


@pytest.fixture(scope="module")
def stranger_ctx() -> ssl.SSLContext:
    """A client context trusting another CA: no certificate of ours verifies against it."""
    context = ssl.create_default_context()
    trustme.CA().configure_trust(context)
    return context


@pytest.fixture
def tls_server(
    server_backend: str,
    server_ctx: ssl.SSLContext,
    client_ctx: ssl.SSLContext,
) -> Iterator[ServerThread]:
    """A TLS server with an authkey, holding ``vault.secret == "kept"``."""
    with ServerThread(
        ("127.0.0.1", 0), backend=server_backend, authkey=KEY, ssl_context=server_ctx
    ) as running:
        with Namespace(running.address, "vault", authkey=KEY, ssl_context=client_ctx) as ns:
            ns.secret = "kept"
        yield running


@pytest.fixture
def plain_server(server_backend: str) -> Iterator[ServerThread]:
    with ServerThread(("127.0.0.1", 0), backend=server_backend) as running:
        yield running


def vault_is_intact(server: ServerThread, client_ctx: ssl.SSLContext) -> None:
    with Namespace(server.address, "vault", authkey=KEY, ssl_context=client_ctx) as ns:
        assert ns._snapshot() == {"secret": "kept"}


def assert_connection_lost(error: BaseException) -> None:
    """ConnectionLost, and never a raw ssl or socket error (the cause may be one)."""
    assert type(error) is ConnectionLost
    assert not isinstance(error, ssl.SSLError)


# ---------------------------------------------------------------------------- auth matrix


def test_right_key_over_tls_is_served(tls_server: ServerThread, client_ctx: ssl.SSLContext) -> None:
    with Namespace(tls_server.address, "vault", authkey=KEY, ssl_context=client_ctx) as ns:
        assert ns.secret == "kept"
        ns.more = [1, 2]
        assert ns._snapshot() == {"secret": "kept", "more": [1, 2]}


@pytest.mark.parametrize("key", [b"wrong", None], ids=["wrong-key", "no-key"])
def test_wrong_or_missing_key_over_tls_is_refused(
    tls_server: ServerThread, client_ctx: ssl.SSLContext, key: bytes | None
) -> None:
    with Namespace(tls_server.address, "vault", authkey=key, ssl_context=client_ctx) as ns:
        with pytest.raises(AuthenticationError):
            ns.secret = "stolen"
        with pytest.raises(AuthenticationError):
            _ = ns.secret
    vault_is_intact(tls_server, client_ctx)


@pytest.mark.anyio
@pytest.mark.parametrize("key", [KEY, b"wrong", None], ids=["right-key", "wrong-key", "no-key"])
async def test_async_auth_matrix_over_tls(
    tls_server: ServerThread, client_ctx: ssl.SSLContext, key: bytes | None
) -> None:
    ns = AsyncNamespace(tls_server.address, "vault", authkey=key, ssl_context=client_ctx)
    with anyio.fail_after(10):
        try:
            if key == KEY:
                assert await ns.secret == "kept"
                ns.more = "async"
                await ns._flush()
                assert await ns._snapshot() == {"secret": "kept", "more": "async"}
            else:
                with pytest.raises(AuthenticationError):
                    await ns.secret
                with pytest.raises(AuthenticationError):
                    await ns._update(secret="stolen")
        finally:
            await ns._close()
    if key != KEY:
        await anyio.to_thread.run_sync(vault_is_intact, tls_server, client_ctx)


def test_a_tls_client_with_a_key_refuses_a_tls_server_without_one(
    server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext
) -> None:
    with (
        ServerThread(("127.0.0.1", 0), ssl_context=server_ctx) as running,
        Namespace(running.address, "board", authkey=KEY, ssl_context=client_ctx) as ns,
        pytest.raises(AuthenticationError, match="does not use an authkey"),
    ):
        ns.x = 1


# ---------------------------------------------------------------------------- failed handshakes


def test_plaintext_sync_client_against_a_tls_server(tls_server: ServerThread) -> None:
    with Namespace(tls_server.address, "vault", authkey=KEY, retry=NO_RETRY) as ns:
        with pytest.raises(ConnectionLost) as caught:
            _ = ns.secret
        assert_connection_lost(caught.value)


@pytest.mark.anyio
async def test_plaintext_async_client_against_a_tls_server(tls_server: ServerThread) -> None:
    ns = AsyncNamespace(tls_server.address, "vault", authkey=KEY, retry=NO_RETRY)
    with anyio.fail_after(10):
        with pytest.raises(ConnectionLost) as caught:
            await ns.secret
        assert_connection_lost(caught.value)
        await ns._close()


def test_tls_sync_client_against_a_plaintext_server(
    plain_server: ServerThread, client_ctx: ssl.SSLContext
) -> None:
    with Namespace(plain_server.address, "n", ssl_context=client_ctx, retry=NO_RETRY) as ns:
        with pytest.raises(ConnectionLost) as caught:
            ns.x = 1
        assert_connection_lost(caught.value)
    with Namespace(plain_server.address, "n") as plain:  # and the server still serves
        plain.x = 2
        assert plain.x == 2


@pytest.mark.anyio
async def test_tls_async_client_against_a_plaintext_server(
    plain_server: ServerThread, client_ctx: ssl.SSLContext
) -> None:
    ns = AsyncNamespace(plain_server.address, "n", ssl_context=client_ctx, retry=NO_RETRY)
    with anyio.fail_after(10):
        with pytest.raises(ConnectionLost) as caught:
            await ns.x
        assert_connection_lost(caught.value)
        with pytest.raises(ConnectionLost) as caught:
            await ns._update(x=1)
        assert_connection_lost(caught.value)
        await ns._close()


def test_sync_client_trusting_another_ca_is_refused(
    tls_server: ServerThread, stranger_ctx: ssl.SSLContext
) -> None:
    with Namespace(
        tls_server.address, "vault", authkey=KEY, ssl_context=stranger_ctx, retry=NO_RETRY
    ) as ns:
        with pytest.raises(ConnectionLost, match="certificate verify failed") as caught:
            _ = ns.secret
    assert_connection_lost(caught.value)
    assert isinstance(caught.value.__cause__, ssl.SSLCertVerificationError)


@pytest.mark.anyio
async def test_async_client_trusting_another_ca_is_refused(
    tls_server: ServerThread,
    stranger_ctx: ssl.SSLContext,
) -> None:
    ns = AsyncNamespace(
        tls_server.address, "vault", authkey=KEY, ssl_context=stranger_ctx, retry=NO_RETRY
    )
    with anyio.fail_after(10):
        with pytest.raises(ConnectionLost, match="certificate verify failed") as caught:
            await ns.secret
        await ns._close()
    assert_connection_lost(caught.value)
    assert isinstance(caught.value.__cause__, ssl.SSLCertVerificationError)


def test_a_certificate_for_another_host_is_refused(
    server_backend: str, ca: trustme.CA, client_ctx: ssl.SSLContext
) -> None:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("board.example").configure_cert(context)  # signed by our CA, wrong name
    with (
        ServerThread(("127.0.0.1", 0), backend=server_backend, ssl_context=context) as running,
        Namespace(running.address, "n", ssl_context=client_ctx, retry=NO_RETRY) as ns,
    ):
        with pytest.raises(ConnectionLost, match="certificate verify failed") as caught:
            ns.x = 1
    assert_connection_lost(caught.value)


def test_failed_handshakes_leave_the_tls_server_serving(
    tls_server: ServerThread, client_ctx: ssl.SSLContext, stranger_ctx: ssl.SSLContext
) -> None:
    for context in (None, stranger_ctx, None, stranger_ctx):
        with (
            Namespace(
                tls_server.address, "vault", authkey=KEY, ssl_context=context, retry=NO_RETRY
            ) as ns,
            pytest.raises(ConnectionLost),
        ):
            _ = ns.secret
    vault_is_intact(tls_server, client_ctx)


def test_a_silent_client_of_a_tls_server_is_dropped_after_the_handshake_timeout(
    server_ctx: ssl.SSLContext,
    client_ctx: ssl.SSLContext,
    server_backends: list[str],
) -> None:
    for backend in server_backends:
        with ServerThread(
            ("127.0.0.1", 0),
            backend=backend,
            ssl_context=server_ctx,
            limits=Limits(handshake_timeout=0.3),
        ) as running:
            address = running.address
            assert isinstance(address, tuple)
            # Says nothing at all, not even a TLS ClientHello.
            with socket.create_connection(address, timeout=5) as raw:
                start = time.monotonic()
                assert read_to_eof(raw) == b""
                assert time.monotonic() - start < 2.0, backend
            # Completes TLS, then never says hello: refused inside TLS.
            with (
                socket.create_connection(address, timeout=5) as raw,
                client_ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
            ):
                start = time.monotonic()
                frames = unpack_all(read_tls_to_eof(tls))
                assert time.monotonic() - start < 2.0, backend
            assert frames == [
                {
                    "protocol": PROTOCOL_NAME,
                    "error": [
                        "RemoteProtocolError",
                        "no hello and authentication within 0.3 seconds",
                    ],
                }
            ]
            with Namespace(address, "n", ssl_context=client_ctx) as ns:
                ns.alive = backend
                assert ns.alive == backend


def read_to_eof(sock: socket.socket) -> bytes:
    received = bytearray()
    while chunk := sock.recv(65536):
        received += chunk
    return bytes(received)


def read_tls_to_eof(sock: ssl.SSLSocket) -> bytes:
    """Everything until the peer closes; a TLS close without close_notify counts as EOF."""
    received = bytearray()
    try:
        while chunk := sock.recv(65536):
            received += chunk
    except (ssl.SSLEOFError, ConnectionResetError):
        pass
    return bytes(received)


def unpack_all(data: bytes) -> list[Any]:
    unpacker = msgpack.Unpacker(raw=False)
    unpacker.feed(data)
    return list(unpacker)


# ---------------------------------------------------------------------------- pickling


def test_pickling_a_tls_proxy_raises_a_clear_type_error(client_ctx: ssl.SSLContext) -> None:
    address = ("127.0.0.1", 1)  # never contacted: pickling needs no server
    for proxy in (
        Namespace(address, "n", ssl_context=client_ctx),
        AsyncNamespace(address, "n", ssl_context=client_ctx),
    ):
        with pytest.raises(
            TypeError,
            match=r"proxy using TLS cannot be pickled.*"
            r"in the child process with its own context",
        ):
            pickle.dumps(proxy)
    plain = pickle.loads(pickle.dumps(Namespace(address, "n")))  # without TLS it still pickles
    assert plain._aionamespace.target.key == "n"


# ---------------------------------------------------------------------------- values


def sample_values() -> dict[str, Any]:
    return {
        "none": None,
        "flag": True,
        "small": -7,
        "big": 2**100,
        "negbig": -(2**70),
        "real": 1.5,
        "text": "caf\u00e9 \u2603",
        "raw": b"\x00\xff",
        "mutable": bytearray(b"ab"),
        "nested": [1, [2, (3, {4})]],
        "pair": (1, "a"),
        "tags": {"x", "y"},
        "frozen": frozenset({1}),
        "mapping": {"a": (1,), 2: None},
        "z": 1 + 2j,
        "when": datetime.datetime(2024, 5, 17, 12, 30, tzinfo=datetime.timezone.utc),
        "day": datetime.date(2024, 5, 17),
        "hour": datetime.time(8, 15),
        "span": datetime.timedelta(days=2, seconds=3),
        "price": decimal.Decimal("9.99"),
        "id": uuid.UUID(int=42),
        "payload": random.Random(4).randbytes(FOUR_MIB),
    }


def assert_same_values(got: dict[str, Any], expected: dict[str, Any]) -> None:
    assert got.keys() == expected.keys()
    for name, value in expected.items():
        assert type(got[name]) is type(value), name
        assert got[name] == value, name


def test_values_round_trip_over_tls(tls_server: ServerThread, client_ctx: ssl.SSLContext) -> None:
    values = sample_values()
    with Namespace(tls_server.address, "values", authkey=KEY, ssl_context=client_ctx) as ns:
        for name, value in values.items():
            setattr(ns, name, value)
        for name, value in values.items():
            got = getattr(ns, name)
            assert type(got) is type(value), name
            assert got == value, name
        assert_same_values(dict(ns._snapshot()), values)
        ns._update(payload=values["payload"][::-1], small=8)
        assert ns.payload == values["payload"][::-1]
    with Namespace(tls_server.address, "values", authkey=KEY, ssl_context=client_ctx) as other:
        assert other.small == 8  # another connection sees the same values
        assert len(other.payload) == FOUR_MIB


@pytest.mark.anyio
async def test_values_round_trip_over_tls_async(
    tls_server: ServerThread, client_ctx: ssl.SSLContext
) -> None:
    values = sample_values()
    ns = AsyncNamespace(tls_server.address, "avalues", authkey=KEY, ssl_context=client_ctx)
    with anyio.fail_after(30):
        try:
            for name, value in values.items():
                setattr(ns, name, value)
            await ns._flush()
            for name, value in values.items():
                got = await getattr(ns, name)
                assert type(got) is type(value), name
                assert got == value, name
            async with anyio.create_task_group() as group:  # concurrent 4 MiB reads, one stream
                results: list[bytes] = []

                async def read_payload() -> None:
                    results.append(await ns.payload)

                for _ in range(4):
                    group.start_soon(read_payload)
            assert results == [values["payload"]] * 4
            assert_same_values(dict(await ns._snapshot()), values)
        finally:
            await ns._close()
