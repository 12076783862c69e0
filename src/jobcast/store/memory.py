"""The in-memory store: nothing outlives the process."""

from __future__ import annotations

import time
from typing import Any

from ..events import Event
from ..jobs import Job
from .base import Recovered

__all__ = ["MemoryStore"]


class MemoryStore:
    """Keeps nothing beyond what the runner and the event log already hold in memory.

    Sequence numbers start from the wall clock in microseconds, so ids still increase across
    restarts even though the history itself is lost: a client that resumes with an id from
    before a restart gets ``reset`` and a fresh snapshot, never a reused id.
    """

    durable = False

    async def open(self) -> Recovered:
        return Recovered(next_seq=time.time_ns() // 1000)

    def record(self, event: Event, job: Job) -> None:
        pass

    def forget(self, job_ids: list[str]) -> None:
        pass

    def set_state(self, key: str, value: dict[str, Any]) -> None:
        pass

    def delete(self, job_id: str) -> None:
        pass

    async def history(
        self, job_id: str, *, after: int = 0, limit: int = 1000, names: tuple[str, ...] = ()
    ) -> list[Event]:
        return []  # what the event log holds in memory is all there is

    async def aclose(self) -> None:
        pass
