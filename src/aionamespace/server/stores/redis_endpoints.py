"""Where the Redis store's own connections (redis_link.py) connect, and how: an ``Endpoint``
made from a redis-py client's connection settings (its socket path or host and port, TLS with
that client's SSL context, ``AUTH`` and ``SELECT``: RESP2, no ``HELLO``)."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any

from .redis_wire import pack

__all__ = ["Endpoint", "endpoint_of"]


@dataclass(frozen=True)
class Endpoint:
    """Where a link connects, and how (from a redis-py client's connection settings)."""

    name: str
    path: str | None = None
    host: str = "localhost"
    port: int = 6379
    tls: ssl.SSLContext | None = None
    server_hostname: str | None = None
    username: str | None = None
    password: str | None = None
    db: int = 0
    connect_timeout: float | None = None

    def open(self, loop: asyncio.AbstractEventLoop, protocol: asyncio.Protocol) -> Awaitable[Any]:
        """The connection of ``protocol`` to this endpoint being made (await it, bounded)."""
        if self.path is not None:
            return loop.create_unix_connection(lambda: protocol, self.path)
        return loop.create_connection(
            lambda: protocol,
            self.host,
            self.port,
            ssl=self.tls,
            server_hostname=self.server_hostname,
        )

    def handshake(self) -> list[bytes]:
        """The commands a new connection sends before any other."""
        commands = []
        if self.password is not None:
            user = () if self.username is None else (self.username,)
            commands.append(pack("AUTH", *user, self.password))
        if self.db:
            commands.append(pack("SELECT", self.db))
        return commands


def endpoint_of(connection_class: Any, options: dict[str, Any]) -> Endpoint:
    """The endpoint of a redis-py connection class and its keyword arguments (a client's
    pool's ``connection_kwargs``, a cluster node's)."""
    username, password = options.get("username"), options.get("password")
    provider = options.get("credential_provider")
    if provider is not None:
        credentials = provider.get_credentials()
        username, password = (None, *credentials) if len(credentials) == 1 else credentials
    path = options.get("path")
    host, port = options.get("host", "localhost"), int(options.get("port", 6379))
    context = None
    from redis.asyncio.connection import SSLConnection

    if isinstance(connection_class, type) and issubclass(connection_class, SSLConnection):
        context = connection_class(**options).ssl_context.get()  # the client's own TLS settings
    return Endpoint(
        name=f"unix://{path}" if path else f"{host}:{port}",
        path=path,
        host=host,
        port=port,
        tls=context,
        server_hostname=host if context is not None and context.check_hostname else None,
        username=username,
        password=password,
        db=int(options.get("db") or 0),
        connect_timeout=options.get("socket_connect_timeout"),
    )
