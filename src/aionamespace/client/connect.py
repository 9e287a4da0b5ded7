"""Opening the async proxy's connection: the handshake, then a connection ready for requests.

On an anyio stream (trio, and TLS on any backend): ``open_connection``. On a plain asyncio
socket: ``open_push_connection``, which runs the handshake on the bare non-blocking socket
(``loop.sock_*``), so that a server refusing us is heard out exactly as on a stream, and then
lets a transport take the socket over with a ``PushConnection`` protocol.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import anyio.abc
from anyio.streams.tls import TLSStream

from .._errors import TRANSPORT_ERRORS, ProtocolError, map_connection_errors
from ..protocol.connection import Address, ClientConnection, Hello, Reply
from .proxy import Target
from .push import READ_CHUNK_BYTES, PushConnection

__all__ = ["open_connection", "open_push_connection", "open_stream"]


async def open_stream(address: Address, ssl_context: ssl.SSLContext | None = None,
                      ) -> anyio.abc.ByteStream:
    if isinstance(address, tuple):
        if ssl_context is None:
            return await anyio.connect_tcp(*address)
        return await anyio.connect_tcp(*address, ssl_context=ssl_context,
                                       tls_standard_compatible=False)
    stream: anyio.abc.ByteStream = await anyio.connect_unix(address)
    if ssl_context is not None:
        stream = await TLSStream.wrap(stream, ssl_context=ssl_context,
                                      standard_compatible=False)
    return stream


async def open_connection(target: Target, protocol: ClientConnection) -> anyio.abc.ByteStream:
    """Connect to ``target`` and complete the handshake (hello, then the authkey proof), in
    at most ``Limits.handshake_timeout`` seconds."""
    timeout = target.limits.handshake_timeout
    with map_connection_errors(target.address, connecting=True, handshake_timeout=timeout), \
            anyio.fail_after(timeout):
        stream = await open_stream(target.address, target.ssl_context)
        try:
            await _handshake(target, protocol, stream.send, stream.receive)
        except BaseException:
            await anyio.aclose_forcefully(stream)
            raise
    return stream


async def open_push_connection(target: Target, protocol: ClientConnection) -> PushConnection:
    """Connect on a plain asyncio socket and complete the handshake (see open_connection).

    The handshake runs on the bare non-blocking socket (``loop.sock_*``), so that a server
    refusing us is heard out exactly as on a stream; the transport takes the socket after it.
    """
    loop = asyncio.get_running_loop()
    address = target.address
    timeout = target.limits.handshake_timeout
    with map_connection_errors(address, connecting=True, handshake_timeout=timeout), \
            anyio.fail_after(timeout):
        sock = await _connect(loop, address)
        try:
            await _handshake(target, protocol, lambda data: loop.sock_sendall(sock, data),
                             lambda: _receive(loop, sock))
            if isinstance(address, tuple):
                _, connection = await loop.create_connection(
                    lambda: PushConnection(target, protocol), sock=sock)
            else:
                _, connection = await loop.create_unix_connection(
                    lambda: PushConnection(target, protocol), sock=sock)
        except BaseException:
            sock.close()
            raise
    return connection


async def _handshake(target: Target, protocol: ClientConnection,
                     send: Callable[[bytes], Awaitable[object]],
                     receive: Callable[[], Awaitable[bytes]]) -> None:
    """Hello, the authkey proof, and with a cache the ``track`` request, over ``send`` and
    ``receive`` (a stream's, or a bare socket's): raise why the server will not have us."""
    protocol.reset()
    try:
        await send(protocol.send_hello())
    except TRANSPORT_ERRORS as unsent:
        try:  # a server refusing us at once may have said why
            with anyio.fail_after(1.0):
                data = await receive()
        except (*TRANSPORT_ERRORS, TimeoutError):
            raise unsent from None
        protocol.receive_data(data)  # raises that reason (ConnectionLost is an OSError)
        raise
    while not protocol.greeted:
        events = protocol.receive_data(await receive())
        if events and type(events[0]) is not Hello:
            raise ProtocolError("the server answered before greeting")
    proof = protocol.send_proof()
    if proof:
        await send(proof)
    if target.cache:  # client tracking: the server will invalidate what we get
        track_id, frame = protocol.send_request("track", True)
        await send(frame)
        while not any(type(event) is Reply and event.id == track_id
                      for event in protocol.receive_data(await receive())):
            pass


async def _connect(loop: asyncio.AbstractEventLoop, address: Address) -> socket.socket:
    candidates: list[tuple[int, Any]]
    if not isinstance(address, tuple):
        candidates = [(socket.AF_UNIX, address)]
    else:
        found = await loop.getaddrinfo(*address, type=socket.SOCK_STREAM)
        candidates = [(family, sockaddr) for family, _, _, _, sockaddr in found]
    error: OSError = OSError(f"no address for {address!r}")
    for family, sockaddr in candidates:
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setblocking(False)
            if family != socket.AF_UNIX:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            await loop.sock_connect(sock, sockaddr)
        except OSError as exc:
            sock.close()
            error = exc
            continue
        except BaseException:
            sock.close()
            raise
        return sock
    raise error


async def _receive(loop: asyncio.AbstractEventLoop, sock: socket.socket) -> bytes:
    data = await loop.sock_recv(sock, READ_CHUNK_BYTES)
    if not data:
        raise EOFError("the server closed the connection")
    return data
