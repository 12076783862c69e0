"""Where jobs live and events go: one :class:`~jobcast.backends.base.Backend` Protocol, one
module per backend (this process, or Redis)."""

from __future__ import annotations

from .base import Backend, Refused
from .local import LocalBackend

__all__ = ["Backend", "LocalBackend", "Refused"]
