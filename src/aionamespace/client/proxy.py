"""What the sync and async proxies share: identity, local ``_`` names, pickling, printing.

A proxy is a *target* (server address, namespace key, authkey) plus a connection. Only the
target is pickled (so a pickled proxy holds the authkey: treat it as a secret): a proxy sent
to another process (as a ``Process`` argument, through a ``Queue``, as a ``Pool`` initializer
argument) reconnects there by itself on first use. Local
``_underscore`` attributes are not pickled, exactly like the stdlib's proxies: a spawned child
does not see them, a forked child keeps them because it copies the parent's memory.

A proxy made with no name creates a new anonymous namespace on the server (``open`` with a
fresh random key: a round trip for ``Namespace``, the first queued write of an
``AsyncNamespace``); a proxy given a name, or unpickled, never creates one, so a proxy that
outlived its anonymous namespace (see ``Limits.anonymous_grace``) gets ``NamespaceGone``
instead of a new, empty namespace.

The attribute space belongs to the user, so the proxies define no public names at all; their own
operations start with ``_`` and their state sits in one slot, ``_aionamespace``.
"""

from __future__ import annotations

import dataclasses
import functools
import secrets
import ssl
from typing import TYPE_CHECKING, Any, cast

from .._errors import ConnectionLost, LockLost, ServerTimeout
from ..protocol.addresses import Address, format_address, parse_address
from ..protocol.codec import decode_value
from ..protocol.limits import Limits

if TYPE_CHECKING:
    from .transport import InProcess
from ..protocol.ops import SAFE_TO_RESEND

__all__ = ["ProxyBase", "Retry", "Target", "format_namespace"]

ANONYMOUS_PREFIX = "#"


@dataclasses.dataclass(frozen=True)
class Retry:
    """How a proxy retries after ``ConnectionLost`` (for instance while a server restarts).

    A request that never left (the connection could not be made) and a read (``get``,
    ``_snapshot``...) are tried up to ``attempts`` times in all, waiting ``backoff`` seconds,
    doubling each time up to ``max_backoff``. A write that may have reached the server is never
    sent again, so no write is ever applied twice: it raises ``ConnectionLost`` with
    ``request_sent`` true. A server that stopped answering (``ServerTimeout``) is not tried
    again: it would only make the caller wait as long once more, and ``LockLost`` is never
    retried either. ``Retry(attempts=1)`` turns retrying off.
    """

    attempts: int = 3
    backoff: float = 0.05
    max_backoff: float = 1.0

    def delay(self, op: str, failures: int, error: ConnectionLost) -> float | None:
        """Seconds to wait before trying ``op`` again after ``failures`` failures, or None."""
        if (
            failures >= self.attempts
            or (error.request_sent and op not in SAFE_TO_RESEND)
            or isinstance(error, ServerTimeout)
            or isinstance(error, LockLost)  # reconnecting would run as if the lock were held
        ):
            return None
        return float(min(self.max_backoff, self.backoff * 2 ** (failures - 1)))


@dataclasses.dataclass(frozen=True)
class Target:
    """Where a proxy points: everything a pickled proxy carries (never the SSL context)."""

    address: Address
    key: str
    named: bool
    authkey: bytes | None = dataclasses.field(default=None, repr=False)
    limits: Limits = dataclasses.field(default_factory=Limits)
    retry: Retry = dataclasses.field(default_factory=Retry)
    ssl_context: ssl.SSLContext | None = dataclasses.field(default=None, repr=False, compare=False)
    cache: bool = False
    #: A server in this process that opens transports with no socket (tests, embedding);
    #: ``address`` then only names it.
    in_process: InProcess | None = dataclasses.field(default=None, repr=False)

    @classmethod
    def create(
        cls,
        address: object,
        name: str | None,
        *,
        authkey: bytes | None = None,
        limits: Limits | None = None,
        retry: Retry | None = None,
        ssl_context: ssl.SSLContext | None = None,
        cache: bool = False,
    ) -> Target:
        limits = limits or Limits()
        if limits.call_timeout is not None and not limits.call_timeout > 0:
            raise ValueError(f"call_timeout must be None or > 0, not {limits.call_timeout!r}")
        if authkey is not None and not isinstance(authkey, bytes):
            raise TypeError(f"authkey must be bytes, not {type(authkey).__name__}")
        if name is None:
            # Anonymous namespaces get a random key made here (the proxy then creates the
            # namespace with ``open``); 128 random bits make a collision a non-event.
            key, named = ANONYMOUS_PREFIX + secrets.token_hex(16), False
        else:
            problem = limits.check_name(name)
            if problem is not None:
                raise ValueError(f"invalid namespace name {name!r}: {problem}")
            key, named = name, True
        in_process: InProcess | None = None
        if hasattr(address, "async_transport"):  # a server in this process
            in_process, address = cast("InProcess", address), f"unix:in-process-{id(address):x}"
        parsed = parse_address(address)
        if ssl_context is not None and isinstance(parsed, str) and ssl_context.check_hostname:
            raise ValueError(
                "TLS over a Unix socket has no host name to check: use an "
                "ssl_context with check_hostname = False"
            )
        return cls(
            parsed, key, named, authkey, limits, retry or Retry(), ssl_context, cache, in_process
        )

    @functools.cached_property
    def server(self) -> tuple[Any, ...]:
        """What a connection to the server depends on (proxies sharing it share connections).

        Made once (every sync call looks its transport up by it): a tuple made and hashed
        afresh on each call cost a get more than the rest of the pool's lookup. (A cached
        property writes the instance's dict directly, which a frozen dataclass allows.)"""
        return (self.address, self.authkey, self.ssl_context, self.in_process)

    @property
    def anonymous(self) -> bool:
        """Whether the key is an anonymous namespace's (freed by the server once unused)."""
        return self.key.startswith(ANONYMOUS_PREFIX)

    def describe(self) -> str:
        which = repr(self.key) if self.named else "anonymous"
        return f"{which} at {format_address(self.address)!r}"


def format_namespace(attributes: dict[str, bytes]) -> str:
    """``Namespace(a=1, b='x')``: the stdlib's format (sorted ``name=repr`` items)."""
    items = sorted(
        f"{name}={literal_repr(decode_value(blob))}"
        for name, blob in attributes.items()
        if not name.startswith("_")
    )
    return f"Namespace({', '.join(items)})"


def literal_repr(value: Any) -> str:
    """``repr(value)``, but integers too long for ``str()`` under the interpreter's limit
    (``sys.get_int_max_str_digits()``, 4300 digits by default) are written in hexadecimal,
    which ``ast.literal_eval`` reads back; the limit itself is left alone."""
    try:
        return repr(value)
    except ValueError:  # only an int can fail this way, at any depth
        return _long_int_repr(value)


def _long_int_repr(value: Any) -> str:
    cls = type(value)
    if cls is int:
        try:
            return repr(value)
        except ValueError:
            return hex(value)
    if cls is list:
        return f"[{', '.join(map(_long_int_repr, value))}]"
    if cls is tuple:
        inner = ", ".join(map(_long_int_repr, value))
        return f"({inner},)" if len(value) == 1 else f"({inner})"
    if cls is dict:
        pairs = (f"{_long_int_repr(k)}: {_long_int_repr(v)}" for k, v in value.items())
        return f"{{{', '.join(pairs)}}}"
    if cls is set or cls is frozenset:
        inner = ", ".join(map(_long_int_repr, value))
        if cls is set:
            return f"{{{inner}}}" if value else "set()"
        return f"frozenset({{{inner}}})" if value else "frozenset()"
    return repr(value)


def check_attribute_name(name: str) -> None:
    """Reject what could never be a shared attribute (the server would refuse it anyway)."""
    if not isinstance(name, str):
        raise TypeError(f"attribute name must be str, not {type(name).__name__}")


class ProxyBase:
    """Base of ``Namespace`` and ``AsyncNamespace``: routing of ``_`` names and pickling."""

    __slots__ = ("__dict__", "__weakref__", "_aionamespace")
    _aionamespace: Any  # the subclass's connection state; holds ``.target``

    def __init__(
        self,
        address: Address,
        name: str | None = None,
        /,
        *,
        authkey: bytes | None = None,
        limits: Limits | None = None,
        retry: Retry | None = None,
        ssl_context: ssl.SSLContext | None = None,
        cache: bool = False,
    ) -> None:
        self._attach(
            Target.create(
                address,
                name,
                authkey=authkey,
                limits=limits,
                retry=retry,
                ssl_context=ssl_context,
                cache=cache,
            )
        )
        if name is None:
            self._create({})

    @classmethod
    def _from_target(cls, target: Target) -> Any:
        """A proxy of ``target`` that creates nothing (unpickling, the Manager, server calls)."""
        return _rebuild(cls, target)

    def _attach(self, target: Target) -> None:
        """Give the proxy its connection state (subclasses: theirs)."""
        raise NotImplementedError

    def _create(self, initial: dict[str, Any]) -> Any:
        """Send ``open`` with ``initial``: it creates the proxy's new anonymous namespace (or a
        named one, if absent) with the values it lacks (subclasses: a round trip, or a queued
        write)."""
        raise NotImplementedError

    def __reduce__(self) -> tuple[Any, ...]:
        target = self._aionamespace.target
        if target.in_process is not None:
            raise TypeError(
                "a proxy of a server in this process cannot be pickled: it has "
                "no address another process could reach"
            )
        if target.ssl_context is not None:
            raise TypeError(
                "a proxy using TLS cannot be pickled (an ssl.SSLContext cannot "
                "be): make the proxy in the child process with its own context"
            )
        return (_rebuild, (type(self), target))

    def __repr__(self) -> str:
        return f"<aionamespace.{type(self).__name__} {self._aionamespace.target.describe()}>"


def _rebuild(cls: type[ProxyBase], target: Target) -> Any:
    """Unpickle a proxy: a fresh one, same target, no connection yet, no local attributes."""
    proxy: Any = object.__new__(cls)
    proxy._attach(target)
    return proxy
