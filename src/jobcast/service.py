"""What the API and the streams need from a running service, whichever runs the jobs."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from ._limits import StartRate
from .eventlog import EventLog
from .exceptions import NotAccepting
from .jobs import Job, JobState
from .settings import Settings
from .table import Submitted
from .tasks import TaskRegistry

__all__ = ["STATE_KEY", "Service", "service_of"]

#: Where the lifespan's state holds the running service.
STATE_KEY = "jobcast"


class Service(Protocol):
    """A :class:`~jobcast.runner.Runner` (one process runs its own jobs) or a
    :class:`~jobcast.cluster.hub.Hub` (workers run them, Redis connects the processes)."""

    registry: TaskRegistry
    settings: Settings
    log: EventLog

    @property
    def jobs(self) -> dict[str, Job]:
        """Every job this process knows, by id."""
        ...

    @property
    def rate(self) -> StartRate:
        """How many jobs each client may start."""
        ...

    async def submit(self, task_name: str, params: object) -> Submitted: ...

    async def cancel(self, job_id: str) -> Job: ...

    def get(self, job_id: str) -> Job: ...

    def shown(self, job_id: str) -> dict[str, Any]:
        """The job as clients may see it (as of its newest stored event)."""
        ...

    async def find(self, job_id: str) -> Job:
        """:meth:`get`, waiting for a job another process has just made to reach this one."""
        ...

    def newest(
        self, *, state: JobState | None = None, task: str | None = None, limit: int = 100
    ) -> list[dict[str, Any]]: ...

    def snapshot(self, task: str | None = None) -> list[dict[str, Any]]: ...

    async def catch_up(self, seq: int) -> None:
        """Return once this process has the events up to ``seq`` that exist anywhere (or
        after a bounded wait); at once when there is nowhere else."""
        ...

    async def health(self) -> dict[str, Any]:
        """Readings for ``/healthz``."""
        ...

    async def shutdown(self) -> None: ...


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
