"""``jobcast worker``: runs the jobs of a Redis deployment, on any machine.

A worker takes jobs from the queue stream through the consumer group, starts each with one
atomic change (so a cancel that came first wins), runs it exactly as a single process would
(:class:`~jobcast._execution.Execution`: threads, processes, commands), and publishes what it
does through a buffered :class:`RedisPublisher`. Its heartbeat key tells the others it is alive;
cancels reach it on a pub/sub channel, and through its heartbeat round should a message be
missed. SIGTERM drains it: it takes no more jobs, lets running ones finish within the grace
period, then stops them (``interrupted``, or queued again for ``retry_on_restart`` tasks).
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import signal
import socket
import time
from collections import deque
from typing import Any

import anyio
from anyio.abc import TaskGroup
from redis.asyncio import Redis
from redis.exceptions import ConnectionError, ResponseError, TimeoutError

from .._execution import Execution, Outcome, Run, finish, requeue
from ..events import encode_json
from ..exceptions import BackendUnavailable
from ..jobs import Job, JobError, JobState, now
from ..settings import Settings
from ..tasks import TaskRegistry
from ._redis import GROUP, Change, Refused, Scripts, connect
from .reaper import Reaper

__all__ = ["RedisPublisher", "Worker", "serve_worker"]

logger = logging.getLogger("jobcast")

_REDIS_DOWN = (ConnectionError, TimeoutError, OSError)
_BATCH = 500  # changes sent to Redis in one round trip


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
        self._pending: deque[Change | str] = deque()  # a str is a queue entry to acknowledge
        self._wake = anyio.Event()
        self._empty = anyio.Event()
        self._empty.set()

    def state(self, job: Job, name: str) -> None:
        self.send(Change.of(job, name, expect_worker=self._worker))

    def lines(self, job: Job, lines: list[str]) -> None:
        for line in lines:
            self.send(Change.line(job, line))

    def send(self, item: Change | str) -> None:
        """Queue a change, or the acknowledgement of a queue entry."""
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
            except _REDIS_DOWN as exc:
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
                    except Refused as refused:
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
                    pipe.xack(keys.queue, GROUP, item)
                    pipe.xdel(keys.queue, item)
            answers = await pipe.execute(raise_on_error=False)
        for answer in answers:
            if isinstance(answer, _REDIS_DOWN):
                raise answer
        return [answers[at] for at in answers_at]


class Worker:
    """Takes jobs from the queue and runs them, up to ``max_workers`` at once."""

    def __init__(
        self, registry: TaskRegistry, settings: Settings, redis: Redis, *, name: str | None = None
    ) -> None:
        self.registry = registry
        self.settings = settings
        self.name = name or f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"
        self._redis = redis
        self._scripts = Scripts.for_settings(redis, settings)
        self._keys = self._scripts.keys
        self._publisher = RedisPublisher(self._scripts, self.name, self._taken_back)
        self._entries: dict[str, str] = {}  # job id -> its queue entry
        self._held: deque[Job] = deque()  # taken, waiting for a slot of their task
        self._room = anyio.Event()
        self._stopping = False
        self._grace = anyio.CancelScope()
        self._execution: Execution | None = None

    def stop(self) -> None:
        """Take no more jobs and drain (what SIGTERM does); a second call stops running jobs
        without waiting for the grace period."""
        if self._stopping:
            self._grace.cancel()
        self._stopping = True
        self._room.set()

    async def run(self) -> None:
        """Run jobs until :meth:`stop`, then drain and return."""
        await self.join()
        async with anyio.create_task_group() as group:
            self._execution = Execution(
                self.settings, group, self._publisher, self._ended, host=f"worker {self.name}"
            )
            group.start_soon(self._publisher.run)
            group.start_soon(self._heartbeat)
            group.start_soon(self._listen_for_cancels)
            reaper = Reaper(
                self._redis, self.settings, self.registry, self._scripts, worker=self.name
            )
            group.start_soon(reaper.run)
            logger.info("worker %s takes jobs (up to %d at once)", self.name, self._slots)
            try:
                await self._take_jobs(group)
            finally:
                with anyio.CancelScope(shield=True):
                    await self._drain()
                    group.cancel_scope.cancel()
        try:
            await self._redis.delete(self._keys.worker(self.name))
            await self._redis.srem(self._keys.workers, self.name)
            mine: Any = await self._redis.xpending_range(
                self._keys.queue, GROUP, min="-", max="+", count=1, consumername=self.name
            )
            if not mine:  # holding nothing: leave the group (else a reaper takes it back)
                await self._redis.xgroup_delconsumer(self._keys.queue, GROUP, self.name)
        except _REDIS_DOWN:
            pass  # the key expires on its own, and a reaper forgets this worker

    @property
    def stopping(self) -> bool:
        return self._stopping

    @property
    def _slots(self) -> int:
        return self.settings.max_workers

    async def _rejoin(self) -> None:
        try:
            await self.join()
        except BackendUnavailable:
            await anyio.sleep(0.5)

    async def join(self) -> None:
        """Join the consumer group (creating it) and say this worker is alive."""
        try:
            await self._redis.xgroup_create(self._keys.queue, GROUP, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):  # the group exists already: join it
                raise
        except _REDIS_DOWN as exc:
            raise BackendUnavailable(str(self.settings.redis_url), str(exc)) from exc
        await self._beat()

    # -- taking jobs ---------------------------------------------------------------------------

    async def _take_jobs(self, group: TaskGroup) -> None:
        assert self._execution is not None
        runs = self._execution.runs
        while not self._stopping:
            await self._start_held()
            free = self._slots - len(runs) - len(self._held)
            if free <= 0:
                await self._room.wait()
                self._room = anyio.Event()
                continue
            try:
                answer: Any = await self._redis.xreadgroup(
                    GROUP,
                    self.name,
                    {self._keys.queue: ">"},
                    count=free,
                    block=250 if self._held else 1000,
                )
            except _REDIS_DOWN:
                await anyio.sleep(0.5)  # the publisher reports the outage
                continue
            except ResponseError as exc:
                if "NOGROUP" not in str(exc) and "UNBLOCKED" not in str(exc):
                    raise
                # The queue is gone (Redis lost its data, or it was flushed): make it again.
                logger.error("the job queue is gone from Redis (%s); joining it afresh", exc)
                await self._rejoin()
                continue
            for _, entries in answer:
                for entry_id, fields in entries:
                    job = Job.from_snapshot(json.loads(fields["s"]))
                    self._entries[job.id] = entry_id
                    self._held.append(job)

    async def _start_held(self) -> None:
        assert self._execution is not None
        for job in list(self._held):
            if job.task not in self.registry:
                self._held.remove(job)
                await self._refuse(job)
                continue
            task = self.registry.get(job.task)
            if task.max_concurrency is not None and (
                self._execution.running(task.name) >= task.max_concurrency
            ):
                continue
            self._held.remove(job)
            job.state, job.started_at = JobState.RUNNING, now()
            change = Change.of(job, "running", expect_state="queued", set_worker=self.name)
            try:
                await self._scripts.apply(change)
            except Refused as refused:
                if not await self._started_by_me(job, refused):
                    # Cancelled meanwhile, or taken back: not ours to run.
                    self._publisher.send(self._entries.pop(job.id))
                    continue
            except _REDIS_DOWN:
                job.state, job.started_at = JobState.QUEUED, None
                self._held.appendleft(job)
                return
            self._execution.start(job, task)

    async def _started_by_me(self, job: Job, refused: Refused) -> bool:
        """Whether a refused start had in fact been made: the client retries a command once
        when a connection drops, and the first try may have run before the drop."""
        if refused.reason != JobState.RUNNING.value:
            return False
        return bool(await self._redis.hget(self._keys.job(job.id), "worker") == self.name)

    async def _refuse(self, job: Job) -> None:
        message = (
            f"worker {self.name} has no task {job.task!r}; run the workers with the same "
            "tasks as the API processes (the same module:attr)"
        )
        finish(job, Outcome(JobState.FAILED, error=JobError("UnknownTask", message)))
        try:
            await self._scripts.apply(Change.of(job, job.state.value, expect_state="queued"))
        except Refused:
            pass
        self._publisher.send(self._entries.pop(job.id))

    async def _ended(self, run: Run, outcome: Outcome) -> None:
        job = run.job
        if run.stopping and run.task.retry_on_restart and outcome.state is JobState.INTERRUPTED:
            requeue(job)
            self._publisher.send(
                Change.of(job, "queued", expect_worker=self.name, set_worker="", enqueue=True)
            )
            self._publisher.lines(job, ["queued again, to run from the start: a worker stopped"])
        else:
            finish(job, outcome)
            self._publisher.state(job, outcome.state.value)
        self._publisher.send(self._entries.pop(job.id))
        self._room.set()

    def _taken_back(self, job_id: str, reason: str) -> None:
        assert self._execution is not None
        if self._execution.cancel(job_id):
            logger.warning("job %s is no longer this worker's (%s): stopping it", job_id, reason)

    # -- staying in touch ----------------------------------------------------------------------

    async def _beat(self) -> None:
        info = json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "at": time.time()})
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.set(
                self._keys.worker(self.name), info, px=int(self.settings.heartbeat_timeout * 1000)
            )
            pipe.sadd(self._keys.workers, self.name)
            await pipe.execute()

    async def _heartbeat(self) -> None:
        assert self._execution is not None
        while True:
            await anyio.sleep(self.settings.heartbeat_timeout / 3)
            try:
                await self._beat()
                ids = list(self._execution.runs)
                if ids:
                    async with self._redis.pipeline(transaction=False) as pipe:
                        for job_id in ids:
                            pipe.hget(self._keys.job(job_id), "cancel")
                        flags = await pipe.execute()
                    for job_id, flag in zip(ids, flags, strict=True):
                        if flag:
                            self._execution.cancel(job_id)
            except _REDIS_DOWN:
                pass  # the publisher reports the outage

    async def _listen_for_cancels(self) -> None:
        assert self._execution is not None
        while True:
            try:
                async with self._redis.pubsub() as pubsub:
                    await pubsub.subscribe(self._keys.cancel)
                    async for message in pubsub.listen():
                        if message["type"] == "message":
                            self._execution.cancel(message["data"])
            except _REDIS_DOWN:
                await anyio.sleep(0.5)

    async def _drain(self) -> None:
        assert self._execution is not None
        with self._grace:
            self._grace.deadline = anyio.current_time() + self.settings.grace_period
            await self._execution.idle()
        await self._execution.stop(self.settings.kill_grace)
        for job in self._held:  # taken but never started: back on the queue for the others
            try:
                entry: Any = {"j": job.id, "s": encode_json(job.snapshot())}
                await self._redis.xadd(self._keys.queue, entry)
            except _REDIS_DOWN:
                continue  # still ours once we are gone: the reaper puts it back
            self._publisher.send(self._entries.pop(job.id))
        self._held.clear()
        with anyio.move_on_after(self.settings.grace_period):
            await self._publisher.flushed()


async def serve_worker(registry: TaskRegistry, settings: Settings) -> None:
    """Run a worker until SIGTERM or Ctrl+C (drain), or a second one (stop at once)."""
    assert settings.redis_url is not None
    redis = connect(settings.redis_url)
    worker = Worker(registry, settings, redis)
    try:
        await worker.join()  # here, so that Redis being down is reported as itself
        async with anyio.create_task_group() as group:

            async def on_signals() -> None:
                with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                    async for signum in signals:
                        name = signal.Signals(signum).name
                        if worker.stopping:
                            logger.warning("second %s: stopping the running jobs now", name)
                        else:
                            logger.info("%s: draining; no more jobs are taken", name)
                        worker.stop()

            group.start_soon(on_signals)
            await worker.run()
            group.cancel_scope.cancel()
    finally:
        await redis.aclose()
