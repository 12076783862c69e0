"""The Store Protocol every backend implements."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from ..events import Event
from ..exceptions import StoreError
from ..jobs import Job

__all__ = ["Recovered", "ReportsWrites", "Store"]


@dataclass(slots=True)
class Recovered:
    """What a store hands back when it opens: the jobs and the tail of the event log.

    ``jobs`` are oldest first, and so are ``events``, the newest stored ones. New events are
    numbered on from the last of ``events``, or from ``next_seq`` when there are none.
    ``state`` holds the values kept with :meth:`Store.set_state`.
    """

    next_seq: int
    jobs: list[Job] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    state: dict[str, dict[str, Any]] = field(default_factory=dict)


class Store(Protocol):
    """Persistence behind the runner and the event log.

    The runner keeps the live state in memory and calls :meth:`record` for every event it
    publishes, on the event loop: implementations must not block there (queue the write and
    commit elsewhere, in batches).
    """

    #: Whether jobs outlive the process: queued jobs then wait for the next start.
    durable: bool

    async def open(self) -> Recovered:
        """Open the store and return what it holds.

        Raises :class:`~jobcast.exceptions.StoreError` when the store cannot be used.
        """
        ...

    def record(self, event: Event, job: Job) -> None:
        """Keep ``event`` and the state of ``job`` after it. Must not block."""
        ...

    def forget(self, job_ids: list[str]) -> None:
        """Drop finished jobs that fell out of retention. Must not block."""
        ...

    def set_state(self, key: str, value: dict[str, Any]) -> None:
        """Keep ``value`` (JSON) under ``key``, as of the events recorded before it (a
        schedule's state). Must not block."""
        ...

    def delete(self, job_id: str) -> None:
        """Drop a finished job and its events (but its ``deleted`` event). Must not block."""
        ...

    async def history(
        self, job_id: str, *, after: int = 0, limit: int = 1000, names: tuple[str, ...] = ()
    ) -> list[Event]:
        """The kept events of ``job_id`` after ``after``, oldest first, ``limit`` at most;
        only those named ``names``, if given."""
        ...

    async def aclose(self) -> None:
        """Flush what is pending and close."""
        ...


@runtime_checkable
class ReportsWrites(Protocol):
    """A store that writes after :meth:`Store.record` returned, and says how it went.

    The app holds events back from the streams until the store reports them stored, so
    nothing a client saw is contradicted after a crash: an id it saw is never handed out
    again, and a job it saw end has ended in the store too. A store that cannot write (a
    full disk) keeps what it could not write, tries again until it can, and says so
    meanwhile: the service then refuses new jobs and answers 503 on ``/healthz``.
    """

    def on_stored(self, callback: Callable[[int], None]) -> None:
        """Have ``callback(seq)`` called on the event loop once every event up to ``seq`` has
        been written, or its failure reported."""
        ...

    def on_health(self, callback: Callable[[StoreError | None], None]) -> None:
        """Have ``callback(problem)`` called on the event loop when writes start failing,
        and ``callback(None)`` once they succeed again."""
        ...
