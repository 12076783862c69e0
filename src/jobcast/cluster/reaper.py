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
        self,
        redis: Redis,
        settings: Settings,
        registry: TaskRegistry,
        scripts: Scripts,
        *,
        worker: str | None = None,
    ) -> None:
        self._redis = redis
        self._registry = registry
        self._scripts = scripts
        self._keys = scripts.keys
        self._timeout = settings.heartbeat_timeout
        self._max_jobs = settings.max_jobs
        # A consumer of its own with no heartbeat: should it die holding an entry, the next
        # reaper takes that entry back too. A worker's reaper never takes its own jobs.
        self.name = f"reaper:{socket.gethostname()}:{os.getpid()}"
        self._spare = {self.name} if worker is None else {self.name, worker}

    async def run(self) -> None:
        hold_until = 0.0
        while True:
            await anyio.sleep(self._timeout / 4)
            try:
                if anyio.current_time() < hold_until:
                    await self._redis.ping()
                else:
                    await self.reap()
            except _REDIS_DOWN:
                # While nobody reaches Redis, heartbeats expire without their workers being
                # dead: once it is back, give every worker a full timeout to speak again.
                hold_until = anyio.current_time() + self._timeout

    async def reap(self) -> int:
        """Take back what dead workers held, and forget the workers gone; return how many
        jobs were taken back."""
        keys = self._keys
        await self._redis.zremrangebyrank(keys.jobs, 0, -(self._max_jobs + 1))  # the index
        try:
            consumers: Any = await self._redis.xinfo_consumers(keys.queue, GROUP)
        except ResponseError:  # no worker has created the group yet: nothing was taken
            return 0
        names = [consumer["name"] for consumer in consumers if consumer["name"] not in self._spare]
        if not names:
            return 0
        async with self._redis.pipeline(transaction=False) as pipe:
            for name in names:
                pipe.exists(keys.worker(name))
            alive = await pipe.execute()
        taken = 0
        for name, live in zip(names, alive, strict=True):
            if not live:
                taken += await self._take_all(name)
        return taken

    async def _take_all(self, consumer: str) -> int:
        """Take back every entry a dead consumer holds, then forget the consumer."""
        idle_ms = int(self._timeout * 1000)
        taken = 0
        while True:
            pending: Any = await self._redis.xpending_range(
                self._keys.queue, GROUP, min="-", max="+", count=100, consumername=consumer
            )
            if not pending:
                # Deleting a consumer drops what it holds: only once it holds nothing.
                await self._redis.xgroup_delconsumer(self._keys.queue, GROUP, consumer)
                return taken
            claimed: Any = await self._redis.xclaim(
                self._keys.queue,
                GROUP,
                self.name,
                min_idle_time=idle_ms,
                message_ids=[entry["message_id"] for entry in pending],
            )
            if not claimed:  # too fresh, or another reaper was first: next round
                return taken
            for entry_id, fields in claimed:
                taken += await self._take_back(entry_id, fields, consumer)

    async def _last_known(self, last: str | None) -> float | None:
        """When the job's newest event happened: the last moment it was known running."""
        if last is None:
            return None
        entries: Any = await self._redis.xrange(self._keys.events, f"{last}-0", f"{last}-0")
        return float(entries[0][1]["ts"]) if entries else None

    async def _take_back(self, entry_id: str, fields: dict[str, str], worker: str) -> int:
        keys = self._keys
        job_id = fields["j"]
        snap, state, holder, last = await self._redis.hmget(
            keys.job(job_id), "snap", "state", "worker", "last"
        )
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
                    # The line first: once queued, another worker may start the job at once.
                    line = f"queued again, to run from the start: {reason}"
                    await self._scripts.apply(Change.line(job, line))
                    requeue(job)
                    await self._scripts.apply(
                        Change.of(job, "queued", expect_worker=worker, set_worker="", enqueue=True)
                    )
                else:
                    error = JobError("Interrupted", reason)
                    at = await self._last_known(str(last) if last else None) or job.started_at
                    finish(job, Outcome(JobState.INTERRUPTED, error=error), at=at)
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
