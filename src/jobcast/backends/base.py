"""The Backend Protocol: the atomic steps a job's life is made of, and nothing else.

Every decision about a job (admission, start, end, cancel, requeue, take-back) lives in
:mod:`jobcast.lifecycle`, once; a backend makes the steps those decisions come down to, each
one atomically with its checks: in this process (:mod:`~jobcast.backends.local`), or in
Redis, where a script makes them for every process of a deployment.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol, TypedDict, Unpack

from .._execution import Publisher
from ..eventlog import EventLog
from ..events import Event
from ..jobs import Job, JobState
from ..schedules import ScheduleBook
from ..table import JobTable

__all__ = ["Backend", "Checks", "Refused", "Room"]

#: Whether a worker has room for one more job of a task, given how many it takes already.
Room = Callable[[str, int], bool]


class Refused(Exception):
    """A step's checks failed: the job was not in the state or the hands the step expected.

    ``reason`` is the state it is in, or ``gone``, ``finished``, ``owner``, ``twin`` (a job
    with equal params is active: ``other``) or ``full`` (the queue is at its limit).
    """

    def __init__(self, reason: str, other: Job | None = None) -> None:
        self.reason = reason
        self.other = other
        super().__init__(reason)


class Checks(TypedDict, total=False):
    """What a change checks and hands over, besides the job not having finished, and what it
    says on the way."""

    #: The state the job must be in.
    expect_state: JobState
    #: The worker that must hold it.
    owner: str
    #: The worker to hand it to (``""``: to none).
    hand_to: str
    #: Put it back on the queue.
    enqueue: bool
    #: A log line to publish first, in the same step: only a change that is made says it.
    line: str


class Backend(ScheduleBook, Protocol):
    """The jobs of a service, their queue and their events, and the schedules' states."""

    #: The jobs as this process knows them, and its event log (what the streams read).
    table: JobTable
    log: EventLog
    #: Whether queued jobs outlive the process (and so run after a restart).
    durable: bool

    async def admit(self, job: Job, *, twin: str) -> None:
        """Make ``job`` (queued) and queue it, once it is stored; raise :class:`Refused`
        (``twin``) when ``twin`` names an active job, (``full``) when the queue is full, or
        (``ticked``) when ``job`` is the tick of a schedule (``job.tick``) that has its job."""
        ...

    async def change(self, update: Job, name: str, **checks: Unpack[Checks]) -> None:
        """Record ``update`` (the job as it is to be) and publish event ``name``; raise
        :class:`Refused` when the job has finished or fails the :class:`Checks`."""
        ...

    async def delete(self, job: Job) -> None:
        """Remove the finished ``job`` and its events, and publish ``deleted``; raise
        :class:`Refused` (its state) when it has not finished, or (``gone``) when it is gone."""
        ...

    async def lines(self, job: Job, lines: list[str], *, owner: str | None = None) -> None:
        """Publish log lines of ``job`` (held by worker ``owner``, if one)."""
        ...

    async def history(
        self, job: Job, *, after: int, before: int, limit: int, names: tuple[str, ...]
    ) -> list[Event]:
        """The kept events of ``job`` with ids between ``after`` and ``before`` (both left
        out), oldest first, ``limit`` at most; only ``names``, if given."""
        ...

    def publisher(self, worker: str) -> Publisher:
        """Where worker ``worker`` publishes the progress and log lines of its jobs."""
        ...

    async def claim(self, worker: str, n: int, room: Room) -> list[Job]:
        """Take up to ``n`` queued jobs for ``worker`` that may run now, in the queue's
        order (priority, then age), where it has room."""
        ...

    async def release(self, job: Job) -> None:
        """``job`` has left its worker's hands (ended, refused or requeued)."""
        ...

    async def unclaim(self, job: Job) -> None:
        """Give back a job a worker claimed but never started (it is stopping)."""
        ...

    async def ask_to_stop(self, job: Job) -> None:
        """Ask the worker that runs ``job`` to stop it."""
        ...

    def listen(
        self, worker: str, *, on_cancel: Callable[[str], None], on_work: Callable[[], None]
    ) -> None:
        """Tell ``worker`` of the jobs it must stop, and when new work may be there (jobs
        queued, or a waiting job due)."""
        ...

    async def find(self, job_id: str) -> Job:
        """The job ``job_id``, waiting (briefly) for one another process has just made;
        raises :class:`~jobcast.UnknownJob`."""
        ...

    async def catch_up(self, seq: int) -> None:
        """Return once this process has the events up to ``seq`` that exist anywhere."""
        ...

    async def health(self) -> dict[str, Any]:
        """Readings for ``/healthz``; ``problem`` when the backend cannot take jobs."""
        ...
