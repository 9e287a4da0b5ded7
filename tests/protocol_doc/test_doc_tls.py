"""The whole protocol inside TLS (2, 14): the handshake and HMAC authentication included, on TCP
and on Unix sockets; a plain client gets nothing from a TLS server.
"""

from __future__ import annotations

import contextlib
import os
import ssl

import pytest
import trustme

from aionamespace import Namespace, ServerThread
from doc_client import HELLO, KEY, Client, collect_pushes
from doc_values import encode


@pytest.fixture(scope="module")
def tls_contexts() -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """A server context with a certificate for 127.0.0.1 and localhost; a client trusting it."""
    authority = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    authority.issue_cert("127.0.0.1", "localhost").configure_cert(server_context)
    client_context = ssl.create_default_context()
    authority.configure_trust(client_context)
    return server_context, client_context


@pytest.mark.parametrize("transport", ["tcp", "unix"])
def test_tls(
    short_tmp: str,
    tls_contexts: tuple[ssl.SSLContext, ssl.SSLContext],
    transport: str,
    server_backend: str,
) -> None:
    """The whole protocol inside TLS, the handshake and HMAC authentication included."""
    server_context, client_context = tls_contexts
    address = ("127.0.0.1", 0) if transport == "tcp" else os.path.join(short_tmp, "tls.sock")
    with ServerThread(
        address, backend=server_backend, authkey=KEY, ssl_context=server_context
    ) as server:
        with Client(server.address, client_context) as client:
            assert isinstance(client.sock, ssl.SSLSocket)
            assert client.sock.version() in ("TLSv1.2", "TLSv1.3")
            assert len(client.handshake(KEY)["challenge"]) == 32
            assert client.result("set", "vault", "secret", encode((1, 2))) == 1
            watch_id = client.result("watch", "vault", None, None)[0]
            if transport == "tcp":  # the real proxy checks the host name it connects to
                with Namespace(
                    server.address, "vault", authkey=KEY, ssl_context=client_context
                ) as ns:
                    assert ns.secret == (1, 2)
                    ns.answer = 42
            else:
                with connect_tls(server.address, client_context) as other:
                    assert other.result("set", "vault", "answer", encode(42)) == 2
            assert collect_pushes(client, 1) == [[watch_id, 2, "answer", encode(42)]]
        with Client(server.address) as plain:  # plain msgpack to a TLS server
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                plain.send(HELLO)
            received = b""
            with contextlib.suppress(ConnectionResetError):
                while chunk := plain.sock.recv(65536):
                    received += chunk
            assert b"aionamespace" not in received  # no hello, no frame: only the end


def connect_tls(address: str | tuple[str, int], context: ssl.SSLContext) -> Client:
    client = Client(address, context)
    try:
        client.handshake(KEY)
    except BaseException:
        client.sock.close()
        raise
    return client
