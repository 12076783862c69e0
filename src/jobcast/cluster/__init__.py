"""Scale-out on Redis: API processes (:mod:`.hub`) and workers (:mod:`.worker`) on any machine
share one event log, one job table and one job queue.

Needs redis-py: ``pip install 'jobcast[redis]'``.
"""

from __future__ import annotations

try:
    import redis  # noqa: F401
except ImportError as exc:  # pragma: no cover - the dev install has it
    raise ImportError(
        "JOBCAST_REDIS_URL is set, but redis-py is not installed; run: pip install 'jobcast[redis]'"
    ) from exc

from ..backends._redis import connect

__all__ = ["connect"]
