"""Taking back the jobs of workers that stopped answering.

A worker keeps a heartbeat key alive while it runs; the jobs it took stay pending in the
queue's consumer group until it acknowledges them. An entry pending for longer than the
heartbeat timeout, held by a consumer whose heartbeat expired, belongs to a dead worker (killed,
or cut off from Redis): its job ends ``interrupted``, or, for a task declared
``retry_on_restart``, goes back on the queue for another worker. Every API process and every
worker runs a reaper; ``XCLAIM`` and the change script's checks make sure each job is taken
back once.
"""

from __future__ import annotations

import json
import logging
import os
import socket
from typing import Any

import anyio
from redis.asyncio import Redis
from redis.exceptions import ConnectionError, ResponseError, TimeoutError

from .._execution import Outcome, finish, requeue
from ..jobs import Job, JobError, JobState
from ..settings import Settings
from ..tasks import TaskRegistry
from ._redis import GROUP, Change, Refused, Scripts

__all__ = ["Reaper"]

logger = logging.getLogger("jobcast")

_REDIS_DOWN = (ConnectionError, TimeoutError, OSError)


class Reaper:
    """Finds the jobs of dead workers and takes them back, every quarter of the timeout."""

    def __init__(
        self, redis: Redis, settings: Settings, registry: TaskRegistry, scripts: Scripts
    ) -> None:
        self._redis = redis
        self._registry = registry
        self._scripts = scripts
        self._keys = scripts.keys
        self._timeout = settings.heartbeat_timeout
        # A consumer of its own with no heartbeat: should it die holding an entry, the next
        # reaper takes that entry back too.
        self.name = f"reaper:{socket.gethostname()}:{os.getpid()}"

    async def run(self) -> None:
        while True:
            try:
                await self.reap()
            except _REDIS_DOWN:
                pass  # whoever follows the events reports it; try again next round
            await anyio.sleep(self._timeout / 4)

    async def reap(self) -> int:
        """Take back what dead workers held; return how many jobs."""
        idle_ms = int(self._timeout * 1000)
        try:
            pending: Any = await self._redis.xpending_range(
                self._keys.queue, GROUP, min="-", max="+", count=100, idle=idle_ms
            )
        except ResponseError:  # no worker has created the group yet: nothing was taken
            return 0
        consumers = sorted({entry["consumer"] for entry in pending})
        if not consumers:
            return 0
        async with self._redis.pipeline(transaction=False) as pipe:
            for consumer in consumers:
                pipe.exists(self._keys.worker(consumer))
            alive = await pipe.execute()
        dead = {consumer for consumer, live in zip(consumers, alive, strict=True) if not live}
        taken = 0
        for entry in pending:
            if entry["consumer"] not in dead:
                continue
            claimed: Any = await self._redis.xclaim(
                self._keys.queue,
                GROUP,
                self.name,
                min_idle_time=idle_ms,
                message_ids=[entry["message_id"]],
            )
            for entry_id, fields in claimed:  # empty when another reaper was first
                taken += await self._take_back(entry_id, fields, entry["consumer"])
        for consumer in dead - {self.name}:
            left = await self._redis.xpending_range(
                self._keys.queue, GROUP, min="-", max="+", count=1, consumername=consumer
            )
            if not left:  # deleting a consumer drops what it holds: only once it holds nothing
                await self._redis.xgroup_delconsumer(self._keys.queue, GROUP, consumer)
        return taken

    async def _take_back(self, entry_id: str, fields: dict[str, str], worker: str) -> int:
        keys = self._keys
        job_id = fields["j"]
        snap, state, holder = await self._redis.hmget(keys.job(job_id), "snap", "state", "worker")
        taken = 0
        if state == JobState.RUNNING.value and holder == worker and snap is not None:
            job = Job.from_snapshot(json.loads(snap))
            reason = (
                f"the worker running it ({worker}) stopped answering for "
                f"{self._timeout:g} s: killed, or cut off from Redis"
            )
            task = self._registry.get(job.task) if job.task in self._registry else None
            try:
                if task is not None and task.retry_on_restart:
                    requeue(job)
                    await self._scripts.apply(
                        Change.of(job, "queued", expect_worker=worker, set_worker="", enqueue=True)
                    )
                    line = f"queued again, to run from the start: {reason}"
                    await self._scripts.apply(Change.line(job, line))
                else:
                    error = JobError("Interrupted", reason)
                    finish(job, Outcome(JobState.INTERRUPTED, error=error))
                    await self._scripts.apply(Change.of(job, job.state.value, expect_worker=worker))
                taken = 1
                logger.warning("job %s taken back: %s", job_id, reason)
            except Refused:
                pass  # it changed hands meanwhile: nothing to take back
        elif state == JobState.QUEUED.value:
            # Taken by that worker but never started: back on the queue for the others.
            await self._redis.xadd(keys.queue, dict[Any, Any](fields))
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.xack(keys.queue, GROUP, entry_id)
            pipe.xdel(keys.queue, entry_id)
            await pipe.execute()
        return taken
