"""The running service: what the API and the streams use, whichever backend runs the jobs."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ._limits import StartRate
from .backends.base import Backend
from .exceptions import NotAccepting
from .jobs import Job, JobState
from .lifecycle import Lifecycle
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

    async def health(self) -> dict[str, Any]:
        """Readings for ``/healthz``; ``problem`` when the service cannot take jobs."""
        return await self.backend.health()

    # -- the operations --------------------------------------------------------------------------

    async def submit(self, task_name: str, params: object) -> Submitted:
        """Queue a job (see :meth:`~jobcast.lifecycle.Lifecycle.submit`)."""
        return await self.lifecycle.submit(task_name, params)

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
