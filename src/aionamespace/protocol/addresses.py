"""Addresses, sans-IO: a Unix socket path, or a ``(host, port)`` pair for TCP.

Users give them as a path, ``"unix:PATH"``, ``(host, port)``, ``"host:port"``,
``"tcp://host:port"`` or ``"[::1]:port"``; ``parse_address`` makes them one of the two forms and
``format_address`` writes them back so that ``parse_address`` reads the same address again.
"""

from __future__ import annotations

from typing import Union

__all__ = ["Address", "format_address", "parse_address"]

#: A Unix socket path, or a (host, port) pair for TCP.
Address = Union[str, "tuple[str, int]"]


def parse_address(address: object) -> Address:
    """Normalise a user-supplied address: a Unix path, ``(host, port)`` or ``"host:port"``."""
    if isinstance(address, tuple):
        if len(address) != 2 or not isinstance(address[0], str):
            raise ValueError(f"a TCP address is (host, port), not {address!r}")
        return (address[0], _port(address[1]))
    if not isinstance(address, str) or not address:
        raise ValueError(f"an address is a Unix socket path or (host, port), not {address!r}")
    if address.startswith("unix:"):
        return address[len("unix:") :]
    if address.startswith("tcp:"):
        address = address[len("tcp:") :].lstrip("/")
    elif "/" in address or ":" not in address:
        return address
    host, sep, port = address.rpartition(":")
    if not sep:
        raise ValueError(f"a TCP address is HOST:PORT, not {address!r}")
    return (host.strip("[]") or "127.0.0.1", _port(port))


def _port(port: object) -> int:
    if not isinstance(port, (int, str)) or isinstance(port, bool):
        raise ValueError(f"invalid TCP port {port!r}")
    try:
        value = int(port)
    except ValueError:
        raise ValueError(f"invalid TCP port {port!r}") from None
    if not 0 <= value <= 65535:
        raise ValueError(f"TCP port {value} is out of range")
    return value


def format_address(address: Address) -> str:
    """The address as the CLI prints it and parse_address reads it back."""
    if isinstance(address, tuple):
        host, port = address
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        plain = parse_address(address) == address
    except ValueError:
        plain = False
    return address if plain else f"unix:{address}"
