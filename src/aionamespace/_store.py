"""The attribute store: the server's only state, behind a small interface.

A store maps a namespace *key* to its attributes, each attribute an encoded value (the bytes
``_codec.encode_value`` made). The server never looks inside values to store or serve them, so
another store (persistent, or backed by Redis) only has to keep bytes.

Methods are synchronous on purpose: the server applies every frame of a chunk in one go,
without awaiting between them, and an in-memory store never needs to wait.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

__all__ = ["MemoryStore", "Store", "missing_attribute"]


def missing_attribute(name: str) -> AttributeError:
    """The error for a name a namespace does not hold, worded like the stdlib's."""
    return AttributeError(f"'Namespace' object has no attribute {name!r}")


class Store(Protocol):
    """What the server needs from a store. Keys and names arrive already validated."""

    def open(self, key: str, defaults: Mapping[str, bytes]) -> None:
        """Get or create the namespace ``key``; set the ``defaults`` it lacks."""

    def get(self, key: str, name: str) -> bytes:
        """The value of ``name``; AttributeError if unset."""

    def set(self, key: str, name: str, value: bytes) -> None:
        """Set ``name`` (creating the namespace if it does not exist yet)."""

    def delete(self, key: str, name: str) -> None:
        """Remove ``name``; AttributeError if unset."""

    def dump(self, key: str) -> dict[str, bytes]:
        """Every attribute of the namespace (empty if it does not exist)."""


class MemoryStore:
    """Namespaces in a dict of dicts, living as long as the server."""

    def __init__(self) -> None:
        self._namespaces: dict[str, dict[str, bytes]] = {}

    def open(self, key: str, defaults: Mapping[str, bytes]) -> None:
        attributes = self._namespaces.setdefault(key, {})
        for name, value in defaults.items():
            attributes.setdefault(name, value)

    def get(self, key: str, name: str) -> bytes:
        try:
            return self._namespaces[key][name]
        except KeyError:
            raise missing_attribute(name) from None

    def set(self, key: str, name: str, value: bytes) -> None:
        attributes = self._namespaces.get(key)
        if attributes is None:
            attributes = self._namespaces[key] = {}
        attributes[name] = value

    def delete(self, key: str, name: str) -> None:
        try:
            del self._namespaces[key][name]
        except KeyError:
            raise missing_attribute(name) from None

    def dump(self, key: str) -> dict[str, bytes]:
        return dict(self._namespaces.get(key, {}))
