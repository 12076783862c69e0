"""The Store Protocol every backend implements."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from ..events import Event
from ..jobs import Job

__all__ = ["Recovered", "Store"]


@dataclass(slots=True)
class Recovered:
    """What a store hands back when it opens: the jobs and the tail of the event log."""

    next_seq: int
    jobs: list[Job] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)


class Store(Protocol):
    """Persistence behind the runner and the event log.

    The runner keeps the live state in memory and calls :meth:`record` for every event it
    publishes, on the event loop: implementations must not block there (queue the write and
    commit elsewhere, in batches).
    """

    #: Whether jobs outlive the process: queued jobs then wait for the next start.
    durable: bool

    async def open(self) -> Recovered:
        """Open the store and return what it holds."""
        ...

    def record(self, event: Event, job: Job) -> None:
        """Keep ``event`` and the state of ``job`` after it. Must not block."""
        ...

    def forget(self, job_ids: list[str]) -> None:
        """Drop finished jobs that fell out of retention. Must not block."""
        ...

    async def aclose(self) -> None:
        """Flush what is pending and close."""
        ...
