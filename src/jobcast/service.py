"""The running service: what the API and the streams use, whichever backend runs the jobs."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any, Unpack

from ._limits import StartRate
from .backends.base import Backend
from .broadcast import Broadcaster
from .events import Event
from .exceptions import NotAccepting
from .jobs import TERMINAL_STATES, Job, JobState
from .lifecycle import Lifecycle, Placement
from .settings import Settings
from .table import Submitted
from .tasks import TaskRegistry

__all__ = ["STATE_KEY", "Service", "service_of"]

#: Where the lifespan's state holds the running service.
STATE_KEY = "jobcast"


class Service:
    """The service the routes and the streams use, whichever backend runs the jobs: the jobs
    as this process knows them, and the operations, which the lifecycle decides.

    :class:`~jobcast.runner.Runner` runs its jobs in this process; a
    :class:`~jobcast.cluster.hub.Hub` leaves them to the workers of a Redis deployment.
    """

    def __init__(
        self, registry: TaskRegistry, settings: Settings, backend: Backend, *, rate: StartRate
    ) -> None:
        self.registry = registry
        self.settings = settings
        self.backend = backend
        self.table = backend.table
        self.log = backend.log
        #: Writes the log's new events to every caught-up stream; the lifespan runs it.
        self.broadcaster = Broadcaster(self.log)
        self.rate = rate
        self.lifecycle = Lifecycle(registry, settings, backend)

    # -- the reads the API makes -----------------------------------------------------------------

    @property
    def jobs(self) -> dict[str, Job]:
        """Every job this process knows, by id."""
        return self.table.jobs

    def get(self, job_id: str) -> Job:
        return self.table.get(job_id)

    def shown(self, job_id: str) -> dict[str, Any]:
        """The job as clients may see it (as of its newest stored event)."""
        return self.table.shown(job_id)

    def newest(
        self, *, state: JobState | None = None, task: str | None = None, limit: int = 100
    ) -> list[dict[str, Any]]:
        return self.table.newest(state=state, task=task, limit=limit)

    def snapshot(self, task: str | None = None) -> list[dict[str, Any]]:
        return self.table.snapshot(task)

    async def find(self, job_id: str) -> Job:
        """:meth:`get`, waiting for a job another process has just made to reach this one."""
        return await self.backend.find(job_id)

    async def catch_up(self, seq: int) -> None:
        """Return once this process has the events up to ``seq`` that exist anywhere (or
        after a bounded wait); at once when there is nowhere else."""
        await self.backend.catch_up(seq)

    async def history(
        self, job: Job, *, after: int = 0, limit: int = 1000, names: tuple[str, ...] = ()
    ) -> list[Event]:
        """The events of ``job`` after ``after``, oldest first, ``limit`` at most, only
        ``names`` if given: from the event log, and before what it still holds from where
        the backend keeps them (the store, Redis)."""
        log = self.log
        after = max(after, job.first_seq - 1)
        found: list[Event] = []
        while after + 1 < (first := log.first_seq) and len(found) < limit:
            # The backend answers up to where memory began when it was asked; memory may
            # have dropped more meanwhile, which the backend is asked for in turn.
            found += await self.kept(job, after=after, limit=limit - len(found), names=names)
            after = first - 1
        for event in log.iter_after(after):
            if len(found) >= limit or event.seq > log.visible_seq:
                break
            if event.job_id == job.id and (not names or event.name in names):
                found.append(event)
        return found

    async def kept(
        self, job: Job, *, after: int, limit: int, names: tuple[str, ...] = ()
    ) -> list[Event]:
        """The events of ``job`` after ``after`` that the event log no longer holds, from
        where the backend keeps them, oldest first."""
        before = self.log.first_seq
        return await self.backend.history(job, after=after, before=before, limit=limit, names=names)

    async def logs(self, job_id: str, *, after: int = 0, limit: int = 1000) -> list[dict[str, Any]]:
        """The log lines of ``job_id`` after the line ``after``, oldest first, with their
        event ids. Raises :class:`~jobcast.UnknownJob`."""
        job = await self.find(job_id)
        events = await self.history(job, after=after, limit=limit, names=("log",))
        lines = []
        for event in events:
            data = event.data()
            lines.append({"id": event.seq, "ts": data["ts"], "line": data["line"]})
        return lines

    async def wait(self, job_id: str) -> dict[str, Any]:
        """The snapshot of ``job_id`` once it has ended, as clients see it (stored).

        Raises :class:`~jobcast.UnknownJob`, or :class:`~jobcast.NotAccepting` when the
        service stops first.
        """
        job = await self.find(job_id)
        while True:
            seen = self.log.visible_seq
            # From the table, where a backend may put a newer object for the job, or from
            # the one found if the table has dropped it since (only ended jobs are dropped).
            shown = self.jobs.get(job.id, job).shown or {}
            if shown.get("state") in TERMINAL_STATES:  # the values of a StrEnum
                return shown
            if self.log.closed:
                raise NotAccepting(f"the service stopped before job {job.id} ended")
            await self.log.wait(seen)

    async def health(self) -> dict[str, Any]:
        """Readings for ``/healthz``; ``problem`` when the service cannot take jobs."""
        return await self.backend.health()

    # -- the operations --------------------------------------------------------------------------

    async def submit(
        self, task_name: str, params: object, **placement: Unpack[Placement]
    ) -> Submitted:
        """Queue a job (see :meth:`~jobcast.lifecycle.Lifecycle.submit`)."""
        return await self.lifecycle.submit(task_name, params, **placement)

    async def schedules(self) -> list[dict[str, Any]]:
        """Each schedule as ``GET /api/schedules`` shows it."""
        schedules = list(self.registry.schedules.values())
        states = await self.backend.schedule_states([schedule.name for schedule in schedules])
        now = time.time()
        return [schedule.info(states[schedule.name], now) for schedule in schedules]

    async def pause(self, name: str) -> dict[str, Any]:
        """Pause a schedule: no job starts on it until it is resumed. Raises
        :class:`~jobcast.UnknownSchedule`."""
        return await self._set_paused(name, True)

    async def resume(self, name: str) -> dict[str, Any]:
        """Resume a schedule, counted from now: the due times it missed while paused are not
        made up for. Raises :class:`~jobcast.UnknownSchedule`."""
        return await self._set_paused(name, False)

    async def _set_paused(self, name: str, paused: bool) -> dict[str, Any]:
        schedule = self.registry.schedule(name)
        await self.backend.set_paused(name, paused, time.time())
        (state,) = (await self.backend.schedule_states([name])).values()
        return schedule.info(state, time.time())

    async def rerun(self, job_id: str) -> Submitted:
        """Queue a new job of the same task, with the same params and priority, as
        ``job_id``. Raises :class:`~jobcast.UnknownJob`, and what :meth:`submit` raises."""
        job = await self.find(job_id)
        return await self.submit(job.task, job.params, priority=job.priority)

    async def delete(self, job_id: str) -> None:
        """Remove a finished job and its events. Raises :class:`~jobcast.UnknownJob`, or
        :class:`~jobcast.JobActive` while it is queued or running."""
        await self.lifecycle.delete(await self.find(job_id))

    async def cancel(self, job_id: str) -> Job:
        """Cancel a queued job at once, or ask the worker running it to stop.

        Raises :class:`~jobcast.UnknownJob` or :class:`~jobcast.JobFinished`.
        """
        job = await self.find(job_id)
        await self.lifecycle.cancel(job)
        return self.table.jobs.get(job.id, job)

    async def shutdown(self) -> None:
        """Stop accepting jobs."""
        self.lifecycle.accepting = False


def service_of(scope: Mapping[str, Any]) -> Service:
    """The service a request's app runs, from the lifespan's state in its ASGI scope.

    Raises :class:`~jobcast.NotAccepting` when the app was not started with the JobCast's
    lifespan.
    """
    state = scope.get("state")
    service = state.get(STATE_KEY) if isinstance(state, Mapping) else None
    if service is None:
        raise NotAccepting(
            "the jobcast service is not running: serve the app with the JobCast's lifespan "
            "(FastAPI(lifespan=jobs.lifespan))"
        )
    return service  # type: ignore[no-any-return]
