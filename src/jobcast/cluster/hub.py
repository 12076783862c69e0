"""An API process of a Redis deployment: the service its routes use, over the Redis backend.

It starts and cancels jobs through the lifecycle, whose steps the Redis backend makes with the
change script, and follows the event stream into its own event log and job table, which its
streams read: each event is read from Redis once, encoded nothing again, and fanned out
through the same cursors as a single process does. It also takes back the jobs of dead
workers, as every process of a deployment does.
"""

from __future__ import annotations

from anyio.abc import TaskGroup
from redis.asyncio import Redis

from ..backends.redis import RedisBackend
from ..service import Service
from ..settings import Settings
from ..tasks import TaskRegistry

__all__ = ["Hub"]


class Hub(Service):
    """The service of an API process (see :class:`~jobcast.service.Service`), on Redis."""

    def __init__(self, registry: TaskRegistry, settings: Settings, backend: RedisBackend) -> None:
        super().__init__(registry, settings, backend, rate=backend.rate)
        self.backend: RedisBackend = backend

    @classmethod
    async def load(cls, registry: TaskRegistry, settings: Settings, redis: Redis) -> Hub:
        """Load the jobs and the newest events from Redis; :meth:`start` follows on.

        Raises :class:`~jobcast.BackendUnavailable` when Redis cannot be reached.
        """
        backend = RedisBackend(redis, settings, None)
        await backend.load()
        return cls(registry, settings, backend)

    async def start(self, task_group: TaskGroup) -> Hub:
        """Follow the event stream, take back the jobs of dead workers, and start the jobs of
        the schedules' ticks (as every process does), in ``task_group``."""
        self.backend.task_group = task_group
        task_group.start_soon(self.backend.follow, name="jobcast redis events")
        task_group.start_soon(self.backend.take_back, self.lifecycle, name="jobcast reaper")
        task_group.start_soon(self.lifecycle.scheduler().run, name="jobcast schedules")
        return self
