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
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable

from .._errors import NamespaceGone
from .stores import Store
from .timers import CallLater

__all__ = ["ANONYMOUS", "AnonymousNamespaces"]

#: The first character of an anonymous namespace's key.
ANONYMOUS = "#"


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
                raise NamespaceGone(
                    f"the anonymous namespace {key!r} is not on this server: it was freed "
                    f"after no connection used it for {self.grace:g} seconds "
                    "(Limits.anonymous_grace), or never created"
                )
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
