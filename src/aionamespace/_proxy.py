"""What the sync and async proxies share: identity, local ``_`` names, pickling, printing.

A proxy is a *target* (server address, namespace key, authkey) plus a connection. Only the
target is pickled (so a pickled proxy holds the authkey: treat it as a secret): a proxy sent
to another process (as a ``Process`` argument, through a ``Queue``, as a ``Pool`` initializer
argument) reconnects there by itself on first use. Local
``_underscore`` attributes are not pickled, exactly like the stdlib's proxies: a spawned child
does not see them, a forked child keeps them because it copies the parent's memory.

The attribute space belongs to the user, so the proxies define no public names at all; their own
operations start with ``_`` and their state sits in one slot, ``_aionamespace``.
"""

from __future__ import annotations

import dataclasses
import secrets
from typing import Any

from ._codec import decode_value
from ._protocol import Address, Limits, format_address, parse_address

__all__ = ["ProxyBase", "Target", "format_namespace"]

ANONYMOUS_PREFIX = "#"


@dataclasses.dataclass(frozen=True)
class Target:
    """Where a proxy points: everything a pickled proxy carries."""

    address: Address
    key: str
    named: bool
    authkey: bytes | None = dataclasses.field(default=None, repr=False)
    limits: Limits = dataclasses.field(default_factory=Limits)

    @classmethod
    def create(cls, address: object, name: str | None, authkey: bytes | None = None,
               limits: Limits | None = None) -> Target:
        limits = limits or Limits()
        if authkey is not None and not isinstance(authkey, bytes):
            raise TypeError(f"authkey must be bytes, not {type(authkey).__name__}")
        if name is None:
            # Anonymous namespaces get a random key made here, so creating one needs no round
            # trip; 128 random bits make a collision with anyone else's key a non-event.
            return cls(parse_address(address), ANONYMOUS_PREFIX + secrets.token_hex(16), False,
                       authkey, limits)
        problem = limits.check_name(name)
        if problem is not None:
            raise ValueError(f"invalid namespace name {name!r}: {problem}")
        return cls(parse_address(address), name, True, authkey, limits)

    def describe(self) -> str:
        which = repr(self.key) if self.named else "anonymous"
        return f"{which} at {format_address(self.address)!r}"


def format_namespace(attributes: dict[str, bytes]) -> str:
    """``Namespace(a=1, b='x')``: the stdlib's format (sorted ``name=repr`` items)."""
    items = sorted(f"{name}={decode_value(blob)!r}" for name, blob in attributes.items()
                   if not name.startswith("_"))
    return f"Namespace({', '.join(items)})"


def check_attribute_name(name: str) -> None:
    """Reject what could never be a shared attribute (the server would refuse it anyway)."""
    if not isinstance(name, str):
        raise TypeError(f"attribute name must be str, not {type(name).__name__}")


class ProxyBase:
    """Base of ``Namespace`` and ``AsyncNamespace``: routing of ``_`` names and pickling."""

    __slots__ = ("__dict__", "__weakref__", "_aionamespace")
    _aionamespace: Any  # the subclass's connection state; holds ``.target``

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, (type(self), self._aionamespace.target))

    def __repr__(self) -> str:
        return f"<aionamespace.{type(self).__name__} {self._aionamespace.target.describe()}>"


def _rebuild(cls: type[ProxyBase], target: Target) -> Any:
    """Unpickle a proxy: a fresh one, same target, no connection yet, no local attributes."""
    proxy: Any = object.__new__(cls)
    proxy._attach(target)
    return proxy
