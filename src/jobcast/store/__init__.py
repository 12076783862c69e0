"""Where jobs and events are kept: one :class:`Store` Protocol, one module per backend."""

from __future__ import annotations

from .base import Recovered, Store
from .memory import MemoryStore

__all__ = ["MemoryStore", "Recovered", "Store"]
