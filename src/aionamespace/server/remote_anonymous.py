"""The dispatcher's side of anonymous namespaces shared by the servers over one store.

A store whose servers share anonymous namespaces (``anonymous_registry``: a RedisStore's is
stores/redis_anonymous.py) gives ``RemoteDispatcher`` its ``registry`` argument; this class
then keeps them as ``SharedAnonymousNamespaces`` (anonymous.py) and asks the registry before a
request that needs it: ``_admit`` raises ``Unadmitted`` for a request naming an anonymous key
that neither its connection nor this server uses yet (not for one its connection used: that
costs what it costs without a registry), and the batch (remote_dispatch.py) applies what it
gathered before it, makes one registry call for every such key of its remaining requests
(``_ask_registry``: each key with the op of its first request, so that an ``open`` makes it),
and goes on. Keys the registry could not be asked about (``StoreUnavailable``) fail each
request naming them in that batch, without asking again.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, cast

from .._errors import StoreUnavailable
from ..protocol.connection import Request
from .anonymous import ANONYMOUS, AnonymousNamespaces, Registry, SharedAnonymousNamespaces
from .peer import Peer
from .remote_feed import FeedDispatcher, Gone

__all__ = ["MakeRegistry", "SharingDispatcher", "Unadmitted"]

#: Makes the registry of anonymous namespaces shared through the store, of a grace, the keys
#: this server uses, and what to tell when some were freed under it (a RedisStore's
#: ``anonymous_registry``).
MakeRegistry = Callable[[float, Callable[[], Any], Callable[[list[str]], None]], Registry]


class Unadmitted(Exception):
    """A request's anonymous key needs the registry's answer before it is applied."""


class SharingDispatcher(FeedDispatcher):
    """A ``FeedDispatcher`` whose anonymous namespaces may be shared (module docstring)."""

    def _share(self, registry: MakeRegistry | None) -> None:
        """Before ``Dispatcher.__init__``: the registry's maker, if the store shares them."""
        self._make_registry = registry
        #: The anonymous namespaces shared by the servers over the store, if they are.
        self.shared: SharedAnonymousNamespaces | None = None

    def _shared_anonymous(self, grace: float) -> AnonymousNamespaces | None:
        make = self._make_registry
        if make is None:
            return None
        self.shared = SharedAnonymousNamespaces(grace, functools.partial(make, grace))
        return cast(AnonymousNamespaces, self.shared)

    def _admit(self, peer: Peer, op: str, key: str) -> str | None:
        if key[:1] != ANONYMOUS or key in self._anonymous_used.get(peer, ()):
            return None
        shared = self.shared
        if shared is not None and shared.asks(peer, key):
            raise Unadmitted
        return super()._admit(peer, op, key)

    def _asks(self, peer: Peer, event: object) -> bool:
        """Whether ``event`` (served in turn) names an anonymous key that needs the registry."""
        if self.shared is None or type(event) is not Request or not event.args:
            return False
        key = event.args[0]
        return (
            type(key) is str
            and key[:1] == ANONYMOUS
            and key not in self._anonymous_used.get(peer, ())
            and self.shared.asks(peer, key)
        )

    async def _ask_registry(
        self, peer: Peer, events: list[Any], start: int, failed: dict[str, StoreUnavailable]
    ) -> None:
        """One registry call for the anonymous keys of ``events[start:]`` that need it (each
        with the op of its first request); those it could not ask about fail (``failed``)."""
        assert self.shared is not None
        asked: dict[str, str] = {}
        for event in events[start:]:
            if self._asks(peer, event):
                key = event.args[0]
                if key not in failed:
                    asked.setdefault(key, event.op)
        if not asked:
            return
        try:
            await self.shared.admit(peer, list(asked.items()), lambda: self._alive(peer))
        except StoreUnavailable as exc:
            for key in asked:
                failed[key] = exc
        if not self._alive(peer):
            raise Gone
