"""Where jobs and events are kept: one :class:`Store` Protocol, one module per backend."""

from __future__ import annotations

from .base import Recovered, ReportsWrites, Store
from .memory import MemoryStore
from .sqlite import SqliteStore

__all__ = ["MemoryStore", "Recovered", "ReportsWrites", "SqliteStore", "Store"]
