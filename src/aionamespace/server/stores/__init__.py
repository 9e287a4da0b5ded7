"""Stores: where a server keeps its namespaces, behind one interface (``base.Store``)."""

from __future__ import annotations

from .base import (
    CHANGE_OVERHEAD_BYTES,
    Change,
    Changes,
    LazyValue,
    Store,
    StoreUsage,
    Value,
    materialised,
)
from .memory import MemoryStore
from .redis import RedisStore
from .sqlite import SQLiteStore

__all__ = [
    "CHANGE_OVERHEAD_BYTES",
    "Change",
    "Changes",
    "LazyValue",
    "MemoryStore",
    "RedisStore",
    "SQLiteStore",
    "Store",
    "StoreUsage",
    "Value",
    "materialised",
]
