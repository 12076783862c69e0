"""The Redis backend: the jobs of a deployment in Redis, shared by every API process and
every ``jobcast worker``.

Every step goes through the one change script (:mod:`jobcast.backends._redis`), which makes
its checks and its change in one atomic step for every process. The event log is a Redis
stream that each API process follows into its own :class:`~jobcast.eventlog.EventLog` and
job table; the queue is two sorted sets (the jobs that may run, in order, and those waiting
for their time), from which a worker claims with one script. A worker's own
steps (progress, lines, its jobs' ends, releases) go through a buffered
:class:`RedisPublisher`, in order, and are held while Redis is down. Workers keep heartbeat
keys; whatever a worker whose heartbeat expired held is taken back (:meth:`take_back`), once,
by whichever process sees it first.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Unpack

import anyio
from anyio.abc import TaskGroup
from redis.asyncio import Redis
from redis.exceptions import ConnectionError, TimeoutError

from .._execution import Publisher
from ..eventlog import EventLog
from ..events import Event
from ..exceptions import BackendUnavailable, UnknownJob
from ..jobs import Job, JobState
from ..schedules import ScheduleState
from ..settings import Settings, without_password
from ..table import JobTable
from ._redis import (
    Change,
    Keys,
    Scripts,
    SharedRate,
    decode_event,
)
from ._redis import Refused as ScriptRefused
from .base import Checks, Refused, Room

if TYPE_CHECKING:
    from ..lifecycle import Lifecycle

__all__ = ["RedisBackend", "RedisPublisher"]

logger = logging.getLogger("jobcast")

REDIS_DOWN = (ConnectionError, TimeoutError, OSError)
_BATCH = 500  # changes sent to Redis in one round trip
#: Events read from Redis in one go: a burst batches, and catching up stays responsive.
_READ_COUNT = 2000
#: How long a request waits for its own change to come back through the event stream.
_ECHO_TIMEOUT = 5.0
#: Seconds at most between two looks at the queue by a worker, should a message be missed.
_LOOK_EVERY = 1.0


class RedisPublisher:
    """Sends a worker's events to Redis in order, in batches, and retries while Redis is down.

    ``state`` and ``lines`` only queue (they run on the event loop, often from a job's
    thread hand-off); one task sends. A change Redis refuses (the job was taken back from this
    worker) is reported to ``on_refused``.
    """

    def __init__(self, scripts: Scripts, worker: str, on_refused: Any) -> None:
        self._scripts = scripts
        self._worker = worker
        self._on_refused = on_refused
        self._pending: deque[Change | str] = deque()  # a str: the id of a job to release
        self._wake = anyio.Event()
        self._empty = anyio.Event()
        self._empty.set()

    def state(self, job: Job, name: str) -> None:
        self.send(Change.of(job, name, expect_worker=self._worker))

    def lines(self, job: Job, lines: list[str]) -> None:
        for line in lines:
            self.send(Change.line(job, line))

    def send(self, item: Change | str) -> None:
        """Queue a change, or the release of a job this worker no longer holds."""
        self._pending.append(item)
        self._empty = anyio.Event() if self._empty.is_set() else self._empty
        self._wake.set()

    async def flushed(self) -> None:
        """Return once everything queued so far has reached Redis."""
        await self._empty.wait()

    async def run(self) -> None:
        down_since: float | None = None
        while True:
            if not self._pending:
                self._empty.set()
                await self._wake.wait()
                self._wake = anyio.Event()
                continue
            batch = [self._pending[i] for i in range(min(_BATCH, len(self._pending)))]
            try:
                answers = await self._send(batch)
            except REDIS_DOWN as exc:
                if down_since is None:
                    down_since = time.monotonic()
                    logger.error(
                        "lost Redis (%s); holding %d events until it is back", exc, len(batch)
                    )
                await anyio.sleep(0.5)
                continue
            if down_since is not None:
                logger.warning("Redis is back after %.1f s", time.monotonic() - down_since)
                down_since = None
            for _ in batch:
                self._pending.popleft()
            for item, answer in zip(batch, answers, strict=True):
                if isinstance(item, Change):
                    try:
                        Scripts.result(answer)
                    except ScriptRefused as refused:
                        self._on_refused(item.job_id, refused.reason)

    async def _send(self, batch: list[Change | str]) -> list[Any]:
        keys = self._scripts.keys
        async with self._scripts.redis.pipeline(transaction=False) as pipe:
            answers_at: list[int] = []
            for item in batch:
                answers_at.append(len(pipe))
                if isinstance(item, Change):
                    await self._scripts.apply(item, pipe)
                else:
                    pipe.srem(keys.claimed(self._worker), item)
            answers = await pipe.execute(raise_on_error=False)
        for answer in answers:
            if isinstance(answer, REDIS_DOWN):
                raise answer
        return [answers[at] for at in answers_at]


class RedisBackend:
    """A deployment's jobs in Redis, as one process (an API process, a worker) sees them.

    An API process :meth:`follow` s the event stream into ``log`` and ``table``; a worker
    process leaves them empty.
    """

    durable = True

    def __init__(self, redis: Redis, settings: Settings, task_group: TaskGroup | None) -> None:
        self.settings = settings
        self.log = EventLog(maxlen=settings.event_buffer)  # filled by load() and follow()
        self.table = JobTable()
        self.table.settings = settings
        self._redis = redis
        #: Where its background tasks run (publishers, heartbeats); set before they start.
        self.task_group = task_group
        self._scripts = Scripts.for_settings(redis, settings)
        self._keys = self._scripts.keys
        self._url = without_password(str(settings.redis_url))
        self.rate = SharedRate(redis, self._keys, settings.jobs_per_minute, url=self._url)
        self._publishers: dict[str, RedisPublisher] = {}
        self._claims: dict[str, str] = {}  # job id -> the worker here that claimed it
        self._holding: dict[str, set[str]] = {}  # worker -> the ids of the jobs it runs
        self._on_cancel: dict[str, Callable[[str], None]] = {}
        self._following = False
        self._epoch = ""
        self._after = 0

    # -- the Backend Protocol --------------------------------------------------------------------

    async def admit(self, job: Job, *, twin: str) -> None:
        key = self._keys.twin(twin) if twin else ""
        change = Change.of(
            job,
            JobState.QUEUED.value,
            create=True,
            enqueue=True,
            twin=key,
            set_worker="",
            schedule="" if job.tick is None else job.schedule or "",
            tick=job.tick,
        )
        try:
            seq = await self._apply(change)
        except ScriptRefused as refused:
            if refused.reason == "exists":
                # The client retried the script after a dropped connection, and the first try
                # had made the job (its id is new, so it can be no other's).
                return
            if refused.reason != "twin":
                raise Refused(refused.reason) from None
            other = Job.from_snapshot(json.loads(refused.twin_snapshot))
            await self._caught_up(other.last_seq)
            raise Refused("twin", self.table.jobs.get(other.id, other)) from None
        await self._caught_up(seq)

    async def change(self, update: Job, name: str, **checks: Unpack[Checks]) -> None:
        owner, hand_to = checks.get("owner"), checks.get("hand_to")
        expect = checks.get("expect_state")
        change = Change.of(
            update,
            name,
            expect_state="" if expect is None else expect.value,
            expect_worker=owner or "",
            set_worker=hand_to,
            enqueue=checks.get("enqueue", False),
            line=checks.get("line"),
        )
        if hand_to == "" and owner is not None:
            self._holding.get(owner, set()).discard(update.id)
        publisher = self._publishers.get(owner) if owner is not None else None
        if publisher is not None:
            publisher.send(change)  # a worker's own step: in order, held while Redis is down
            return
        try:
            seq = await self._apply(change)
        except ScriptRefused as refused:
            if (
                refused.reason == JobState.RUNNING.value
                and hand_to
                and await self._holds(hand_to, update.id)
            ):
                seq = 0  # the client retried a start whose first try had been made
            else:
                raise Refused(refused.reason) from None
        if hand_to:
            self._holding.setdefault(hand_to, set()).add(update.id)
        if self._following and seq:
            await self._caught_up(seq)

    async def delete(self, job: Job) -> None:
        try:
            seq = await self._apply(Change.deleted(job))
        except ScriptRefused as refused:
            raise Refused(refused.reason) from None
        await self._caught_up(seq)

    async def lines(self, job: Job, lines: list[str], *, owner: str | None = None) -> None:
        publisher = self._publishers.get(owner) if owner is not None else None
        if publisher is not None:
            publisher.lines(job, lines)
            return
        for line in lines:
            await self._apply(Change.line(job, line))

    async def history(
        self, job: Job, *, after: int, before: int, limit: int, names: tuple[str, ...]
    ) -> list[Event]:
        found: list[Event] = []
        start = f"{after + 1}-0"
        try:
            while len(found) < limit:
                entries: Any = await self._redis.xrange(
                    self._keys.events, start, f"{before - 1}-0", count=_READ_COUNT
                )
                for entry_id, fields in entries:
                    if fields["j"] == job.id and (not names or fields["n"] in names):
                        found.append(decode_event(entry_id, fields))
                if len(entries) < _READ_COUNT:
                    break
                start = f"({entries[-1][0]}"
        except REDIS_DOWN as exc:
            raise BackendUnavailable(self._url, str(exc)) from exc
        return found[:limit]

    def publisher(self, worker: str) -> Publisher:
        publisher = self._publishers.get(worker)
        if publisher is None:
            publisher = RedisPublisher(self._scripts, worker, self._taken_back)
            self._publishers[worker] = publisher
            self._group().start_soon(publisher.run, name=f"jobcast publisher {worker}")
        return publisher

    async def claim(self, worker: str, n: int, room: Room) -> list[Job]:
        try:
            snapshots = await self._scripts.claim(worker, n)
        except REDIS_DOWN:
            return []  # the publisher reports the outage; the worker looks again
        jobs = [Job.from_snapshot(json.loads(snapshot)) for snapshot in snapshots]
        for job in jobs:
            self._claims[job.id] = worker
        return jobs

    async def release(self, job: Job) -> None:
        worker = self._claims.pop(job.id, None)
        if worker is None:
            return
        self._holding.get(worker, set()).discard(job.id)
        self._publishers[worker].send(job.id)  # released after the job's last step

    async def ask_to_stop(self, job: Job) -> None:
        key = self._keys.job(job.id)
        try:
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.hset(key, "cancel", "1")
                pipe.publish(self._keys.cancel, job.id)
                await pipe.execute()
        except REDIS_DOWN as exc:
            raise BackendUnavailable(self._url, str(exc)) from exc

    def listen(
        self, worker: str, *, on_cancel: Callable[[str], None], on_work: Callable[[], None]
    ) -> None:
        self._on_cancel[worker] = on_cancel
        self._group().start_soon(self._heartbeat, worker, on_cancel, name="jobcast heartbeat")
        self._group().start_soon(self._messages, on_cancel, on_work, name="jobcast messages")
        self._group().start_soon(self._due, on_work, name="jobcast due jobs")

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
        except REDIS_DOWN as exc:
            problem = BackendUnavailable(self._url, str(exc))
            return {"redis": f"unreachable ({exc})", "problem": str(problem)}
        workers = sum(map(bool, alive))  # the reaper forgets the others
        jobs = self.table.jobs.values()
        running = sum(not job.finished and job.started_at is not None for job in jobs)
        return {"redis": "ok", "workers": workers, "running": running, "queued": queued}

    # -- the schedules (ScheduleBook) ------------------------------------------------------------

    async def schedule_states(self, names: list[str]) -> dict[str, ScheduleState]:
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                for name in names:
                    pipe.hmget(self._keys.schedule(name), "tick", "paused", "last_job")
                rows = await pipe.execute() if names else []
        except REDIS_DOWN as exc:
            raise BackendUnavailable(self._url, str(exc)) from exc
        return {
            name: ScheduleState(None if tick is None else float(tick), paused == "1", last)
            for name, (tick, paused, last) in zip(names, rows, strict=True)
        }

    async def start_counting(self, name: str, since: float) -> None:
        try:
            await self._redis.hsetnx(self._keys.schedule(name), "tick", repr(since))
        except REDIS_DOWN as exc:
            raise BackendUnavailable(self._url, str(exc)) from exc

    async def set_paused(self, name: str, paused: bool, tick: float) -> None:
        key = self._keys.schedule(name)
        try:
            if paused:
                await self._redis.hset(key, "paused", "1")
            else:  # ticks missed while paused are not made up for
                await self._redis.hset(key, mapping={"paused": "0", "tick": repr(tick)})
        except REDIS_DOWN as exc:
            raise BackendUnavailable(self._url, str(exc)) from exc

    # -- an API process --------------------------------------------------------------------------

    async def load(self) -> None:
        """Load the jobs and the newest events (:meth:`follow` goes on from there).

        Raises :class:`~jobcast.BackendUnavailable` when Redis cannot be reached.
        """
        state = await _State.read(self._redis, self.settings)
        self.log = EventLog(maxlen=self.settings.event_buffer, next_seq=state.first)
        self._epoch, self._after = state.epoch, state.last
        state.fill(self.table.jobs, self.log)

    async def follow(self) -> None:
        """Follow the event stream into the log and the table, for as long as it runs."""
        self._following = True
        await self._follow(self._after)

    async def find(self, job_id: str) -> Job:
        """A job of the table; one started through another API process a moment ago, which
        this one has not read yet, once it has.

        Raises :class:`~jobcast.UnknownJob`, or :class:`~jobcast.BackendUnavailable` when
        the job is not here and Redis cannot say whether it exists.
        """
        job = self.table.jobs.get(job_id)
        if job is not None:
            return job
        try:
            last = await self._redis.hget(self._keys.job(job_id), "last")
        except REDIS_DOWN as exc:
            raise BackendUnavailable(self._url, str(exc)) from exc
        if last is None:
            raise UnknownJob(job_id)
        await self._caught_up(int(last))
        return self.table.get(job_id)

    async def catch_up(self, seq: int) -> None:
        """Wait until the event stream has brought ``seq`` here, if Redis handed it out."""
        if seq <= self.log.last_seq:
            return
        try:
            handed_out = int(await self._redis.get(self._keys.seq) or 0)
        except REDIS_DOWN:
            return  # the stream says what it can: a reset, and the snapshot
        if seq <= handed_out:
            await self._caught_up(seq)

    async def _follow(self, after: int) -> None:
        down_since: float | None = None
        while True:
            try:
                answer: Any = await self._redis.xread(
                    {self._keys.events: f"{after}-0"}, count=_READ_COUNT, block=1000
                )
            except REDIS_DOWN as exc:
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
        except REDIS_DOWN:
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
        self.table.jobs.clear()
        self.log.restart(state.first)  # open streams start over: reset, then a snapshot
        state.fill(self.table.jobs, self.log)
        return state.last

    def _apply_entries(self, entries: list[tuple[str, dict[str, str]]]) -> int:
        events = [decode_event(entry_id, fields) for entry_id, fields in entries]
        jobs = self.table.jobs
        for event, (_, fields) in zip(events, entries, strict=True):
            known = jobs.get(event.job_id)
            if event.name == "deleted":
                jobs.pop(event.job_id, None)
                continue
            if event.name == "log" or (known is not None and event.seq <= known.last_seq):
                continue  # loaded at start already newer than this event
            snapshot = json.loads(fields["d"])["job"]
            job = Job.from_snapshot(snapshot)
            job.shown = snapshot  # what Redis streams is stored there already
            if known is None:
                job.first_seq = event.seq
                jobs[job.id] = known = job
            else:  # in place: a stream holds on to the job it opened with
                known.update(job)
                known.shown = snapshot
            known.last_seq = event.seq
        self.log.extend(events)
        self.table.evict()
        return events[-1].seq

    async def _caught_up(self, seq: int) -> None:
        """Wait until the event stream has brought ``seq`` here, so what the caller reads
        next (the job table, a stream) already shows its own change."""
        if not self._following:
            return
        with anyio.move_on_after(_ECHO_TIMEOUT):
            while self.log.last_seq < seq and not self.log.closed:
                await self.log.wait(self.log.last_seq)

    # -- a worker --------------------------------------------------------------------------------

    async def join(self, worker: str) -> None:
        """Say ``worker`` is alive (its heartbeat), ready to take jobs."""
        try:
            await self._beat(worker)
        except REDIS_DOWN as exc:
            raise BackendUnavailable(self._url, str(exc)) from exc

    async def leave(self, worker: str) -> None:
        """Say ``worker`` is gone; it is forgotten at once if it holds nothing (else a reaper
        takes back what it holds)."""
        try:
            await self._redis.delete(self._keys.worker(worker))
            if not await self._redis.scard(self._keys.claimed(worker)):
                await self._redis.srem(self._keys.workers, worker)
        except REDIS_DOWN:
            pass  # the key expires on its own, and a reaper forgets this worker

    async def unclaim(self, job: Job) -> None:
        """Put back on the queue a job this worker took but never started."""
        worker = self._claims.pop(job.id, None)
        if worker is None:
            return
        self._holding.get(worker, set()).discard(job.id)
        try:
            await self._scripts.unclaim(worker, job.id)
        except REDIS_DOWN:
            pass  # still its own once it is gone: a reaper puts it back

    async def flushed(self, worker: str, seconds: float) -> None:
        """Wait, ``seconds`` at most, until the steps of ``worker`` have reached Redis."""
        publisher = self._publishers.get(worker)
        if publisher is not None:
            with anyio.move_on_after(seconds):
                await publisher.flushed()

    async def _beat(self, worker: str) -> None:
        info = json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "at": time.time()})
        async with self._redis.pipeline(transaction=False) as pipe:
            timeout_ms = int(self.settings.heartbeat_timeout * 1000)
            pipe.set(self._keys.worker(worker), info, px=timeout_ms)
            pipe.sadd(self._keys.workers, worker)
            await pipe.execute()

    async def _heartbeat(self, worker: str, on_cancel: Callable[[str], None]) -> None:
        while True:
            await anyio.sleep(self.settings.heartbeat_timeout / 3)
            try:
                await self._beat(worker)
                ids = sorted(self._holding.get(worker, ()))
                if ids:  # a cancel whose message was missed
                    async with self._redis.pipeline(transaction=False) as pipe:
                        for job_id in ids:
                            pipe.hget(self._keys.job(job_id), "cancel")
                        flags = await pipe.execute()
                    for job_id, flag in zip(ids, flags, strict=True):
                        if flag:
                            on_cancel(job_id)
            except REDIS_DOWN:
                pass  # the publisher reports the outage

    async def _messages(
        self, on_cancel: Callable[[str], None], on_work: Callable[[], None]
    ) -> None:
        """Cancels, and news of jobs put on the queue, as they are published."""
        keys = self._keys
        while True:
            try:
                async with self._redis.pubsub() as pubsub:
                    await pubsub.subscribe(keys.cancel, keys.work)
                    async for message in pubsub.listen():
                        if message["type"] != "message":
                            continue
                        if message["channel"] == keys.work:
                            on_work()
                        else:
                            on_cancel(message["data"])
            except REDIS_DOWN:
                await anyio.sleep(0.5)

    async def _due(self, on_work: Callable[[], None]) -> None:
        """Wake the worker when the next waiting job is due, and every second anyway (a
        message it missed, a job a reaper put back)."""
        while True:
            try:
                first: Any = await self._redis.zrange(self._keys.later, 0, 0, withscores=True)
            except REDIS_DOWN:
                first = []
            wait = _LOOK_EVERY
            if first:
                wait = min(_LOOK_EVERY, max(0.001, float(first[0][1]) - time.time()))
            await anyio.sleep(wait)
            on_work()

    def _taken_back(self, job_id: str, reason: str) -> None:
        # A step of a worker here was refused: the job is no longer its (taken back).
        for worker, held in self._holding.items():
            stop = self._on_cancel.get(worker)
            if job_id in held and stop is not None:
                logger.warning("job %s is no longer %s's (%s): stopping it", job_id, worker, reason)
                stop(job_id)

    def _group(self) -> TaskGroup:
        if self.task_group is None:
            raise RuntimeError("the Redis backend has no task group to run in yet")
        return self.task_group

    async def _holds(self, worker: str, job_id: str) -> bool:
        return bool(await self._redis.hget(self._keys.job(job_id), "worker") == worker)

    async def _apply(self, change: Change) -> int:
        try:
            return await self._scripts.apply(change)
        except REDIS_DOWN as exc:
            raise BackendUnavailable(self._url, str(exc)) from exc

    # -- taking back the jobs of dead workers -----------------------------------------------------

    async def take_back(self, lifecycle: Lifecycle, *, spare: str | None = None) -> None:
        """Find the jobs of workers that stopped answering and take them back through the
        lifecycle, every quarter of the heartbeat timeout; runs in every process."""
        timeout = self.settings.heartbeat_timeout
        self._spare = set() if spare is None else {spare}  # a worker never takes its own
        self._lifecycle = lifecycle
        hold_until = 0.0
        while True:
            await anyio.sleep(timeout / 4)
            try:
                if anyio.current_time() < hold_until:
                    await self._redis.ping()
                else:
                    await self.reap()
            except REDIS_DOWN:
                # While nobody reaches Redis, heartbeats expire without their workers being
                # dead: once it is back, give every worker a full timeout to speak again.
                hold_until = anyio.current_time() + timeout

    async def reap(self) -> int:
        """Take back what dead workers held, and forget the workers gone; return how many
        jobs were taken back."""
        keys = self._keys
        await self._redis.zremrangebyrank(keys.jobs, 0, -(self.settings.max_jobs + 1))  # the index
        members: Any = await self._redis.smembers(keys.workers)
        names = sorted(set(members) - self._spare)
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

    async def _take_all(self, worker: str) -> int:
        """Take back every job a dead worker holds, then forget the worker."""
        keys = self._keys
        held: Any = await self._redis.smembers(keys.claimed(worker))
        taken = 0
        for job_id in sorted(held):
            taken += await self._take_back(job_id, worker)
        if not await self._redis.scard(keys.claimed(worker)):
            await self._redis.srem(keys.workers, worker)
        return taken

    async def _last_known(self, last: str | None) -> float | None:
        """When the job's newest event happened: the last moment it was known running."""
        if last is None:
            return None
        entries: Any = await self._redis.xrange(self._keys.events, f"{last}-0", f"{last}-0")
        return float(entries[0][1]["ts"]) if entries else None

    async def _take_back(self, job_id: str, worker: str) -> int:
        keys = self._keys
        snap, state, holder, last = await self._redis.hmget(
            keys.job(job_id), "snap", "state", "worker", "last"
        )
        if state == JobState.QUEUED.value:
            # Taken by that worker but never started: back on the queue for the others.
            await self._scripts.unclaim(worker, job_id)
            return 0
        taken = 0
        if state == JobState.RUNNING.value and holder == worker and snap is not None:
            job = Job.from_snapshot(json.loads(snap))
            reason = (
                f"the worker running it ({worker}) stopped answering for "
                f"{self.settings.heartbeat_timeout:g} s: killed, or cut off from Redis"
            )
            at = await self._last_known(str(last) if last else None) or job.started_at
            await self._lifecycle.gone(job, worker, reason, at=at)
            taken = 1
        await self._redis.srem(keys.claimed(worker), job_id)
        return taken


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
        except REDIS_DOWN as exc:
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
