"""An API process of a Redis deployment: the service its routes use, over the Redis backend.

It starts and cancels jobs through the lifecycle, whose steps the Redis backend makes with the
change script, and follows the event stream into its own event log and job table, which its
streams read: each event is read from Redis once, encoded nothing again, and fanned out
through the same cursors as a single process does. It also takes back the jobs of dead
workers, as every process of a deployment does.
"""

from __future__ import annotations

from typing import Any

from anyio.abc import TaskGroup
from redis.asyncio import Redis

from ..backends.redis import RedisBackend
from ..jobs import Job, JobState
from ..lifecycle import Lifecycle
from ..settings import Settings
from ..table import Submitted
from ..tasks import TaskRegistry

__all__ = ["Hub"]


class Hub:
    """The service an API process offers (see :class:`~jobcast.runner.Runner`), on Redis."""

    def __init__(self, registry: TaskRegistry, settings: Settings, backend: RedisBackend) -> None:
        self.registry = registry
        self.settings = settings
        self.backend = backend
        self.table = backend.table
        self.log = backend.log
        self.rate = backend.rate
        self.lifecycle = Lifecycle(registry, settings, backend)

    @classmethod
    async def load(cls, registry: TaskRegistry, settings: Settings, redis: Redis) -> Hub:
        """Load the jobs and the newest events from Redis; :meth:`start` follows on.

        Raises :class:`~jobcast.BackendUnavailable` when Redis cannot be reached.
        """
        backend = RedisBackend(redis, settings, None)
        await backend.load()
        return cls(registry, settings, backend)

    async def start(self, task_group: TaskGroup) -> Hub:
        """Follow the event stream, and take back the jobs of dead workers, in ``task_group``."""
        self.backend.task_group = task_group
        task_group.start_soon(self.backend.follow, name="jobcast redis events")
        task_group.start_soon(self.backend.take_back, self.lifecycle, name="jobcast reaper")
        return self

    # -- the reads the API makes -----------------------------------------------------------------

    @property
    def jobs(self) -> dict[str, Job]:
        return self.table.jobs

    def get(self, job_id: str) -> Job:
        return self.table.get(job_id)

    def shown(self, job_id: str) -> dict[str, Any]:
        return self.table.shown(job_id)

    def newest(
        self, *, state: JobState | None = None, task: str | None = None, limit: int = 100
    ) -> list[dict[str, Any]]:
        return self.table.newest(state=state, task=task, limit=limit)

    def snapshot(self, task: str | None = None) -> list[dict[str, Any]]:
        return self.table.snapshot(task)

    async def find(self, job_id: str) -> Job:
        return await self.backend.find(job_id)

    async def catch_up(self, seq: int) -> None:
        await self.backend.catch_up(seq)

    async def health(self) -> dict[str, Any]:
        return await self.backend.health()

    # -- the operations --------------------------------------------------------------------------

    async def submit(self, task_name: str, params: object) -> Submitted:
        """Queue a job for the workers (see :meth:`~jobcast.lifecycle.Lifecycle.submit`):
        the duplicate check and the queue limit hold across every API process, since Redis
        makes them in one step."""
        return await self.lifecycle.submit(task_name, params)

    async def cancel(self, job_id: str) -> Job:
        """Cancel a queued job at once, or ask the worker running it to stop.

        Raises :class:`~jobcast.UnknownJob`, :class:`~jobcast.JobFinished` or
        :class:`~jobcast.BackendUnavailable`.
        """
        job = await self.find(job_id)
        await self.lifecycle.cancel(job)
        return self.table.jobs.get(job.id, job)

    async def shutdown(self) -> None:
        """Stop accepting jobs. Jobs run on the workers, which go on."""
        self.lifecycle.accepting = False
