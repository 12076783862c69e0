"""An API process of a Redis deployment: it starts and cancels jobs through Redis, and follows
the event stream into its own event log and job table, which its streams read.

Each API process reads every event from Redis once (``XREAD BLOCK``), encodes nothing again
(:meth:`~jobcast.events.Event.from_json`), and fans out through the same cursors as a single
process does. The job table is rebuilt from the snapshots the events carry, so it and the log
always stand at the same event: a stream's first snapshot and what follows never disagree.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from dataclasses import dataclass
from typing import Any

import anyio
from anyio.abc import TaskGroup
from redis.asyncio import Redis
from redis.exceptions import ConnectionError, TimeoutError

from .._execution import Outcome, finish
from ..eventlog import EventLog
from ..events import Event
from ..exceptions import (
    BackendUnavailable,
    DuplicateJob,
    JobFinished,
    NotAccepting,
    QueueFull,
    UnknownJob,
)
from ..jobs import Job, JobState, now
from ..settings import Settings, without_password
from ..table import JobTable, Submitted
from ..tasks import TaskRegistry
from ._redis import Change, Keys, Refused, Scripts, SharedRate, decode_event
from .reaper import Reaper

__all__ = ["Hub"]

logger = logging.getLogger("jobcast")

#: Events read from Redis in one go: a burst batches, and catching up stays responsive.
_READ_COUNT = 2000
#: How long a request waits for its own change to come back through the event stream.
_ECHO_TIMEOUT = 5.0
_REDIS_DOWN = (ConnectionError, TimeoutError, OSError)
#: What an event can change of a job.
_CHANGING = ("state", "progress", "started_at", "finished_at", "result", "error")


class Hub(JobTable):
    """The service an API process offers (see :class:`~jobcast.runner.Runner`), on Redis."""

    def __init__(
        self,
        registry: TaskRegistry,
        log: EventLog,
        settings: Settings,
        redis: Redis,
        *,
        after: int,
        epoch: str,
    ) -> None:
        super().__init__()
        self.registry = registry
        self.log = log
        self.settings = settings
        self._redis = redis
        self._scripts = Scripts.for_settings(redis, settings)
        self._keys = self._scripts.keys
        self._after = after  # the newest event loaded
        self._epoch = epoch  # changes when Redis loses its data
        self._url = without_password(str(settings.redis_url))
        self.rate = SharedRate(redis, self._keys, settings.jobs_per_minute, url=self._url)
        self._accepting = True

    # -- starting ------------------------------------------------------------------------------

    @classmethod
    async def load(cls, registry: TaskRegistry, settings: Settings, redis: Redis) -> Hub:
        """Load the jobs and the newest events from Redis; :meth:`start` follows on.

        Raises :class:`~jobcast.BackendUnavailable` when Redis cannot be reached.
        """
        state = await _State.read(redis, settings)
        log = EventLog(maxlen=settings.event_buffer, next_seq=state.first)
        hub = cls(registry, log, settings, redis, after=state.last, epoch=state.epoch)
        state.fill(hub.jobs, log)
        return hub

    async def start(self, task_group: TaskGroup) -> Hub:
        """Follow the event stream, and take back the jobs of dead workers, in ``task_group``."""
        task_group.start_soon(self._follow, self._after, name="jobcast redis events")
        reaper = Reaper(self._redis, self.settings, self.registry, self._scripts)
        task_group.start_soon(reaper.run, name="jobcast reaper")
        return self

    # -- the public operations -----------------------------------------------------------------

    async def submit(self, task_name: str, params: object) -> Submitted:
        """Validate ``params`` and queue a job of ``task_name`` for the workers.

        Raises what :meth:`Runner.submit <jobcast.runner.Runner.submit>` raises, and
        :class:`~jobcast.BackendUnavailable` when Redis cannot be reached. The duplicate check
        and the queue limit hold across every API process: Redis makes them in one step.
        """
        if not self._accepting:
            raise NotAccepting("the server is shutting down")
        task = self.registry.get(task_name)
        values = task.validate(params)
        job = Job(task=task.name, params=values, created_at=now())
        twin = self._keys.twin(task.name, values) if task.duplicates != "allow" else ""
        change = Change.of(
            job, JobState.QUEUED.value, create=True, enqueue=True, twin=twin, set_worker=""
        )
        try:
            seq = await self._apply(change)
        except Refused as refused:
            if refused.reason == "exists":
                # The client retried the script after a dropped connection, and the first
                # try had made the job (its id is new, so it can be no other's).
                return Submitted(self.jobs.get(job.id, job), created=True)
            if refused.reason == "full":
                raise QueueFull(self.settings.max_queue, retry_after=5) from None
            if refused.reason != "twin":
                raise
            other = Job.from_snapshot(json.loads(refused.twin_snapshot))
            if task.duplicates == "join":
                await self._caught_up(other.last_seq)
                other.shown = other.snapshot()
                return Submitted(self.jobs.get(other.id, other), created=False)
            raise DuplicateJob(other.id, task.name, other.snapshot()) from None
        await self._caught_up(seq)
        return Submitted(self.jobs.get(job.id, job), created=True)

    async def cancel(self, job_id: str) -> Job:
        """Cancel a queued job at once, or ask the worker running it to stop.

        Raises :class:`~jobcast.UnknownJob`, :class:`~jobcast.JobFinished` or
        :class:`~jobcast.BackendUnavailable`.
        """
        job = await self.find(job_id)
        if job.finished:
            raise JobFinished(job.id, job.state.value)
        if job.state is JobState.QUEUED:
            cancelled = Job.from_snapshot(job.snapshot())
            finish(cancelled, Outcome(JobState.CANCELLED))
            change = Change.of(cancelled, JobState.CANCELLED.value, expect_state="queued")
            try:
                await self._caught_up(await self._apply(change))
                return self.jobs.get(job.id, cancelled)
            except Refused as refused:
                if refused.reason in ("finished", "gone"):
                    raise JobFinished(job.id, "finished") from None
                # A worker started it meanwhile: ask that worker.
        key = self._keys.job(job.id)
        try:
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.hset(key, "cancel", "1")
                pipe.publish(self._keys.cancel, job.id)
                await pipe.execute()
        except _REDIS_DOWN as exc:
            raise BackendUnavailable(self._url, str(exc)) from exc
        return job

    async def health(self) -> dict[str, Any]:
        """Whether Redis answers, how many jobs wait, and how many workers are alive (none:
        queued jobs wait until a ``jobcast worker`` starts)."""
        keys = self._keys
        try:
            queued = await self._redis.scard(keys.waiting)
            members: Any = await self._redis.smembers(keys.workers)
            names: list[str] = sorted(members)
            async with self._redis.pipeline(transaction=False) as pipe:
                for name in names:
                    pipe.exists(keys.worker(name))
                alive = await pipe.execute() if names else []
            gone = [name for name, live in zip(names, alive, strict=True) if not live]
            if gone:
                await self._redis.srem(keys.workers, *gone)
        except _REDIS_DOWN as exc:
            problem = BackendUnavailable(self._url, str(exc))
            return {"redis": f"unreachable ({exc})", "problem": str(problem)}
        workers = len(names) - len(gone)
        running = sum(not job.finished and job.started_at is not None for job in self.jobs.values())
        return {"redis": "ok", "workers": workers, "running": running, "queued": queued}

    async def find(self, job_id: str) -> Job:
        """A job of the table; one started through another API process a moment ago, which
        this one has not read yet, once it has.

        Raises :class:`~jobcast.UnknownJob`, or :class:`~jobcast.BackendUnavailable` when
        the job is not here and Redis cannot say whether it exists.
        """
        job = self.jobs.get(job_id)
        if job is not None:
            return job
        try:
            last = await self._redis.hget(self._keys.job(job_id), "last")
        except _REDIS_DOWN as exc:
            raise BackendUnavailable(self._url, str(exc)) from exc
        if last is None:
            raise UnknownJob(job_id)
        await self._caught_up(int(last))
        return self.get(job_id)

    async def catch_up(self, seq: int) -> None:
        """Wait until the event stream has brought ``seq`` here, if Redis handed it out."""
        if seq <= self.log.last_seq:
            return
        try:
            handed_out = int(await self._redis.get(self._keys.seq) or 0)
        except _REDIS_DOWN:
            return  # the stream says what it can: a reset, and the snapshot
        if seq <= handed_out:
            await self._caught_up(seq)

    async def shutdown(self) -> None:
        """Stop accepting jobs. Jobs run on the workers, which go on."""
        self._accepting = False

    # -- following the event stream ------------------------------------------------------------

    async def _follow(self, after: int) -> None:
        down_since: float | None = None
        while True:
            try:
                answer: Any = await self._redis.xread(
                    {self._keys.events: f"{after}-0"}, count=_READ_COUNT, block=1000
                )
            except _REDIS_DOWN as exc:
                if down_since is None:
                    down_since = time.monotonic()
                    logger.error(
                        "lost Redis at %s (%s); streams go on and catch up once it is back",
                        self._url,
                        exc,
                    )
                await anyio.sleep(0.5)
                continue
            if down_since is not None:
                logger.warning(
                    "Redis at %s is back after %.1f s", self._url, time.monotonic() - down_since
                )
                down_since = None
                if await self._lost_data():
                    after = await self._reload(
                        "Redis came back without its data (does it run without persistence?): "
                        "the jobs it held are gone from the service; run redis-server with "
                        "appendonly yes"
                    )
                    continue
            for _, entries in answer:
                first = int(entries[0][0].partition("-")[0])
                if first > after + 1:  # ids are consecutive: Redis trimmed what we had not read
                    after = await self._reload(
                        f"events {after + 1} to {first - 1} were trimmed from Redis before this "
                        "process read them: it fell behind (a long pause?); raise "
                        "JOBCAST_RETAIN_EVENTS if it happens often"
                    )
                    break
                after = self._apply_entries(entries)

    async def _lost_data(self) -> bool:
        try:
            epoch = await self._redis.get(self._keys.epoch)
        except _REDIS_DOWN:
            return False  # asked again after the next outage
        return bool(epoch != self._epoch)

    async def _reload(self, why: str) -> int:
        """Start again from what Redis holds now: some of the history is gone, ``why``."""
        logger.error("Redis at %s: %s; starting over from what it holds", self._url, why)
        while True:
            try:
                state = await _State.read(self._redis, self.settings)
                break
            except BackendUnavailable:
                await anyio.sleep(0.5)
        self._epoch = state.epoch
        self.jobs.clear()
        self.log.restart(state.first)  # open streams start over: reset, then a snapshot
        state.fill(self.jobs, self.log)
        return state.last

    def _apply_entries(self, entries: list[tuple[str, dict[str, str]]]) -> int:
        events = [decode_event(entry_id, fields) for entry_id, fields in entries]
        jobs = self.jobs
        for event, (_, fields) in zip(events, entries, strict=True):
            known = jobs.get(event.job_id)
            if event.name == "log" or (known is not None and event.seq <= known.last_seq):
                continue  # loaded at start already newer than this event
            snapshot = json.loads(fields["d"])["job"]
            job = Job.from_snapshot(snapshot)
            job.shown = snapshot  # what Redis streams is stored there already
            if known is None:
                job.first_seq = event.seq
                jobs[job.id] = known = job
            else:  # in place: a stream holds on to the job it opened with
                for name in _CHANGING:
                    setattr(known, name, getattr(job, name))
                known.shown = snapshot
            known.last_seq = event.seq
        self.log.extend(events)
        self.evict()
        return events[-1].seq

    async def _caught_up(self, seq: int) -> None:
        """Wait until the event stream has brought ``seq`` here, so what the caller reads
        next (the job table, a stream) already shows its own change."""
        with anyio.move_on_after(_ECHO_TIMEOUT):
            while self.log.last_seq < seq and not self.log.closed:
                await self.log.wait(self.log.last_seq)

    async def _apply(self, change: Change) -> int:
        try:
            return await self._scripts.apply(change)
        except _REDIS_DOWN as exc:
            raise BackendUnavailable(self._url, str(exc)) from exc


@dataclass(slots=True)
class _State:
    """What Redis holds at one moment: the newest events and the jobs."""

    epoch: str
    last: int  # the newest event id handed out
    events: list[Event]
    jobs: list[Job]

    @property
    def first(self) -> int:
        """The id the log starts at."""
        return self.events[0].seq if self.events else self.last + 1

    @classmethod
    async def read(cls, redis: Redis, settings: Settings) -> _State:
        keys = Keys(settings.redis_prefix)
        try:
            await redis.set(keys.epoch, uuid.uuid4().hex, nx=True)
            last = await Scripts.for_settings(redis, settings).last_seq()
            async with redis.pipeline(transaction=True) as pipe:  # one moment in time
                pipe.get(keys.epoch)
                pipe.xrevrange(keys.events, count=settings.event_buffer)
                pipe.zrevrange(keys.jobs, 0, settings.max_jobs - 1)
                epoch, entries, ids = await pipe.execute()
            async with redis.pipeline(transaction=False) as pipe:
                for job_id in ids:
                    pipe.hmget(keys.job(job_id), "snap", "first", "last")
                rows = await pipe.execute() if ids else []
        except _REDIS_DOWN as exc:
            raise BackendUnavailable(str(settings.redis_url), str(exc)) from exc
        events = [decode_event(entry_id, fields) for entry_id, fields in reversed(entries)]
        jobs = []
        for snap, first, last_seq in reversed(rows):
            if snap is not None:  # else finished long ago: its record expired
                job = Job.from_snapshot(shown := json.loads(snap))
                job.shown = shown
                job.first_seq, job.last_seq = int(first), int(last_seq)
                jobs.append(job)
        return cls(epoch, events[-1].seq if events else last, events, jobs)

    def fill(self, table: dict[str, Job], log: EventLog) -> None:
        log.extend(self.events)
        for job in self.jobs:
            table[job.id] = job
