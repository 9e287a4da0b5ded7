"""Anonymous namespaces: which connections use them, and freeing those no proxy can reach.

An anonymous namespace (a key starting with ``#``) is created by ``open`` alone. A connection
*uses* it once it has sent a request naming it; the server keeps it while a connection that
used it is open, then ``Limits.anonymous_grace`` seconds more, for proxies in transit (pickled
into a queue, or into a child process still starting), then frees it. A request naming one the
server does not hold gets ``NamespaceGone``: never a new, empty namespace in its place.

``Dispatcher.answer`` looks in ``used`` itself, so that a request on a namespace its connection
used before pays one set lookup; ``first_use`` does the rest, once per connection and key.

The store is reached through two callables, so that a store the server awaits fits too:
``create`` makes the namespace at its first ``open`` (None: the ``open`` request itself does,
and ``undo_first_use`` takes the use back if it fails), ``drop`` frees it (it may only start
the drop, and call ``free_later`` if the drop fails, so that the namespace is not forgotten).

**Shared by the servers over one store.** Over a store that keeps a registry of who uses each
anonymous namespace (a Redis board: stores/redis_anonymous.py), ``SharedAnonymousNamespaces``
applies the same rule across every server: "the server holds it" becomes "the registry holds
it". A connection's first use of a key this server does not use yet asks the registry first
(``admit``, one round trip, awaited before the request is applied); a key this server already
uses costs what it costs above. The registry frees a namespace once no server used it for the
grace, whichever server sweeps; this server only tells it when its own last connection using a
key closes.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Sequence
from typing import Protocol

from .._errors import NamespaceGone
from .stores import Store
from .timers import CallLater

__all__ = ["ANONYMOUS", "AnonymousNamespaces", "Registry", "SharedAnonymousNamespaces"]

#: The first character of an anonymous namespace's key.
ANONYMOUS = "#"


def gone(key: str, grace: float, where: str = "on this server") -> NamespaceGone:
    return NamespaceGone(
        f"the anonymous namespace {key!r} is not {where}: it was freed after no connection "
        f"used it for {grace:g} seconds (Limits.anonymous_grace), or never created"
    )


class AnonymousNamespaces:
    """The anonymous namespaces of one store, and the connections that use them."""

    def __init__(
        self,
        call_later: CallLater,
        grace: float,
        *,
        create: Callable[[str], None] | None,
        drop: Callable[[str], None],
        held: Iterable[str] = (),
    ) -> None:
        self.grace = grace
        self._create, self._drop = create, drop
        self._call_later = call_later
        self.used: dict[object, set[str]] = {}  # connection -> anonymous keys it used
        self._users: dict[str, int] = {}  # anonymous key held -> connections that used it
        self._unused: dict[str, Callable[[], None]] = {}  # key in its grace -> cancels its end
        for key in held:  # (a store of its own may hold some already)
            if key[:1] == ANONYMOUS:
                self._users[key] = 0
                self._unused_from_now(key)

    @classmethod
    def of_store(cls, store: Store, call_later: CallLater, grace: float) -> AnonymousNamespaces:
        """Those of a store that answers at once: created and dropped in it."""
        return cls(
            call_later,
            grace,
            create=lambda key: store.open(key, {}),
            drop=store.drop,
            held=store.keys(),
        )

    def first_use(self, connection: object, op: str, key: str) -> None:
        """``connection`` names the anonymous namespace ``key`` for the first time: it uses it
        from now on (``open`` creates it if absent); NamespaceGone if the server does not hold
        it (and it does not become a user)."""
        if key not in self._users:
            if op != "open":
                raise gone(key, self.grace)
            if self._create is not None:
                self._create(key)  # (LimitExceeded at max_namespaces)
            self._users[key] = 0
        self._users[key] += 1
        self.used.setdefault(connection, set()).add(key)
        cancel_end = self._unused.pop(key, None)
        if cancel_end is not None:
            cancel_end()

    def holds(self, key: str) -> bool:
        """Whether the anonymous namespace ``key`` is held (used, or in its grace period)."""
        return key in self._users

    def connection_lost(self, connection: object) -> None:
        """The connection is gone: the namespaces it alone used start their grace period."""
        for key in self.used.pop(connection, ()):
            self._leaves(key)

    def undo_first_use(self, connection: object, key: str) -> None:
        """The ``open`` that was to create ``key`` for ``connection`` failed: it does not use it
        (unused, the namespace is freed after its grace, in case a later request made it)."""
        used = self.used.get(connection)
        if used is not None and key in used:
            used.discard(key)
            self._leaves(key)

    def free_later(self, key: str) -> None:
        """Freeing ``key`` failed: try again after another grace period, unless it is used."""
        if key not in self._users:
            self._users[key] = 0
            self._unused_from_now(key)

    def _leaves(self, key: str) -> None:
        users = self._users[key] - 1
        self._users[key] = users
        if not users:
            self._unused_from_now(key)

    def _unused_from_now(self, key: str) -> None:
        self._unused[key] = self._call_later(self.grace, functools.partial(self._free, key))

    def _free(self, key: str) -> None:
        """The grace period of an unused anonymous namespace is over: free it."""
        if self._users.get(key) == 0:
            del self._users[key], self._unused[key]
            self._drop(key)


class Registry(Protocol):
    """Where the servers over one store record their uses (stores/redis_anonymous.py)."""

    async def use(self, keys: Sequence[tuple[str, bool]]) -> list[str]: ...
    def leave(self, key: str) -> None: ...
    def take_back(self, key: str) -> bool: ...
    def leaving(self, key: str) -> bool: ...
    async def run(self) -> None: ...


#: The keys this server uses (a registry reads them); what a registry tells of keys freed.
Held = Callable[[], Iterable[str]]
Gone = Callable[[list[str]], None]

#: Where a namespace is when a registry says it is gone.
SHARED = "held by the servers sharing this store"


class SharedAnonymousNamespaces:
    """``AnonymousNamespaces``' interface over a registry shared by the servers of a store
    (see the module's docstring). The registry is made with this object's ``held`` and
    ``gone`` (``make_registry(held, gone)``)."""

    def __init__(
        self,
        grace: float,
        make_registry: Callable[[Held, Gone], Registry],
    ) -> None:
        self.grace = grace
        self.used: dict[object, set[str]] = {}  # connection -> anonymous keys it used
        #: Keys this server uses in the registry -> its connections that use them.
        self._users: dict[str, int] = {}
        #: Connection -> keys the registry said are gone, for the requests that asked.
        self._refused: dict[object, set[str]] = {}
        self.registry = make_registry(self._users.keys, self._gone)

    def asks(self, connection: object, key: str) -> bool:
        """Whether a first use of ``key`` by ``connection`` needs the registry first."""
        if key in self._users or self.registry.leaving(key):
            return False
        refused = self._refused.get(connection)
        return refused is None or key not in refused

    async def admit(
        self, connection: object, keys: Sequence[tuple[str, str]], alive: Callable[[], bool]
    ) -> None:
        """Ask the registry for the first uses of ``keys`` ((key, op) pairs) by
        ``connection``: it uses those held (an ``open`` makes its key if absent); the others
        are gone (``first_use`` says so). StoreUnavailable if the registry did not answer."""
        answers = await self.registry.use([(key, op == "open") for key, op in keys])
        living = alive()
        for (key, _), answer in zip(keys, answers, strict=True):
            if answer == "gone":
                if living:
                    self._refused.setdefault(connection, set()).add(key)
                continue
            count = self._users.get(key)
            if not living:  # gone meanwhile: this server's use ends, unless others use it
                if count is None:
                    self.registry.leave(key)
                continue
            if count is None:
                self.registry.take_back(key)  # (a leave queued meanwhile is moot)
                self._users[key] = 1
            elif key not in self.used.get(connection, ()):
                self._users[key] = count + 1
            else:
                continue
            self.used.setdefault(connection, set()).add(key)

    def first_use(self, connection: object, op: str, key: str) -> None:
        """``connection`` names ``key`` for the first time, its registry answer known (or
        this server uses it already): it uses it from now on, or NamespaceGone."""
        refused = self._refused.get(connection)
        if refused is not None and key in refused:
            refused.discard(key)
            if not refused:
                del self._refused[connection]
            raise gone(key, self.grace, SHARED)
        count = self._users.get(key)
        if count is None:
            if not self.registry.take_back(key):  # (the dispatcher asks first: never so)
                raise gone(key, self.grace, SHARED)
            count = 0
        self._users[key] = count + 1
        self.used.setdefault(connection, set()).add(key)

    def holds(self, key: str) -> bool:
        """Whether this server uses ``key`` (a first use then needs no registry)."""
        return key in self._users or self.registry.leaving(key)

    def connection_lost(self, connection: object) -> None:
        """The connection is gone: this server's use of the keys it alone used ends."""
        self._refused.pop(connection, None)
        for key in self.used.pop(connection, ()):
            users = self._users[key] - 1
            if users:
                self._users[key] = users
            else:
                del self._users[key]
                self.registry.leave(key)

    def undo_first_use(self, connection: object, key: str) -> None:
        """(Nothing: a failed ``open`` still used the namespace, as PROTOCOL.md section 6 says
        of any request; it is freed after its connection closes, and the grace.)"""

    def free_later(self, key: str) -> None:
        """(Nothing: the registry's sweeps free what a failed drop left.)"""

    def _gone(self, keys: list[str]) -> None:
        """The registry freed these while this server's connections used them (it could not
        renew for a whole lease): those connections are dropped, their clients told so."""
        doomed = set(keys)
        for key in doomed:
            self._users.pop(key, None)
        for connection, used in list(self.used.items()):
            if used & doomed:
                used -= doomed
                drop = getattr(connection, "drop", None)
                if drop is not None:
                    drop()
