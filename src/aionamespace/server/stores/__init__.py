"""Stores: where a server keeps its namespaces, behind one interface (``base.Store``)."""

from __future__ import annotations

from .base import Change, Changes, Store
from .memory import DEFAULT_HISTORY, MemoryStore

__all__ = ["DEFAULT_HISTORY", "Change", "Changes", "MemoryStore", "Store"]
