"""The runner: the queue, the limits, one supervisor coroutine per running job, cancel.

Data flows one way: a supervisor turns what its task does into events, the event log numbers
and encodes them, and the streams read the log. Every state change goes through
:meth:`Runner._publish`, so the log, the store and the in-memory jobs never disagree.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import json
import logging
import os
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import anyio
from anyio.abc import TaskGroup

from . import _tqdm
from ._process import run_in_process
from ._threads import run_in_daemon_thread
from .commands import build_argv, run_command
from .context import JobContext
from .eventlog import EventLog
from .exceptions import (
    DuplicateJob,
    JobCancelled,
    JobFinished,
    NotAccepting,
    QueueFull,
    UnknownJob,
)
from .jobs import Job, JobError, JobState, ProgressMeter
from .settings import Settings
from .store import Store, WriteFailure
from .tasks import Task, TaskRegistry

__all__ = ["Runner", "Submitted"]

logger = logging.getLogger("jobcast")

Reading = tuple[float, float | None, str | None]


@dataclass(slots=True, eq=False)
class _LogBudget:
    """How many log lines a job has published, and how many past its limit were dropped."""

    published: int = 0
    dropped: int = 0


@dataclass(slots=True, eq=False)
class _Run:
    """A running job and what its supervisor needs to report on it."""

    job: Job
    task: Task
    ctx: JobContext
    meter: ProgressMeter
    reading: Reading | None = None  # the last progress reading published
    stopping: bool = False  # cancelled by shutdown rather than by a user
    failure: JobError | None = None  # the store lost its events: the job fails with this
    scope: anyio.CancelScope = field(default_factory=anyio.CancelScope)
    lines: _LogBudget = field(default_factory=_LogBudget)


class Submitted(NamedTuple):
    """What :meth:`Runner.submit` did: the job, and whether it is a new one."""

    job: Job
    created: bool


@dataclass(slots=True, frozen=True)
class _Outcome:
    state: JobState
    result: Any = None
    error: JobError | None = None


class Runner:
    """Queues jobs, runs them within the limits, and publishes everything they do."""

    def __init__(
        self,
        registry: TaskRegistry,
        log: EventLog,
        store: Store,
        settings: Settings,
        task_group: TaskGroup,
    ) -> None:
        self.registry = registry
        self.log = log
        self.settings = settings
        self._store = store
        self._task_group = task_group
        self._loop = asyncio.get_running_loop()
        _tqdm.install()  # tqdm bars made inside jobs report their progress
        self.jobs: dict[str, Job] = {}  # in creation order
        self._queue: deque[Job] = deque()
        self._runs: dict[str, _Run] = {}
        self._running_per_task: Counter[str] = Counter()
        self._accepting = True
        self._drained = anyio.Event()

    # -- the public operations -----------------------------------------------------------------

    def submit(self, task_name: str, params: object) -> Submitted:
        """Validate ``params``, queue a job of ``task_name`` and start it when there is room.

        A task that joins duplicates hands back the equal job already queued or running.
        Raises :class:`~jobcast.UnknownTask`, pydantic's ``ValidationError``,
        :class:`~jobcast.DuplicateJob`, :class:`~jobcast.QueueFull` or
        :class:`~jobcast.NotAccepting`; none changes anything.
        """
        if not self._accepting:
            raise NotAccepting("the server is shutting down")
        task = self.registry.get(task_name)
        values = task.validate(params)
        if task.duplicates != "allow":
            twin = self._active_twin(task.name, values)
            if twin is not None and task.duplicates == "join":
                return Submitted(twin, created=False)
            if twin is not None:
                raise DuplicateJob(twin.id, task.name, twin.snapshot())
        if len(self._queue) >= self.settings.max_queue:
            raise QueueFull(self.settings.max_queue, retry_after=5)
        job = Job(task=task.name, params=values, created_at=time.time())
        self.jobs[job.id] = job
        self._publish(job, JobState.QUEUED.value)
        self._queue.append(job)
        self._dispatch()
        self._evict()
        return Submitted(job, created=True)

    def _active_twin(self, task: str, params: dict[str, Any]) -> Job | None:
        # Params are validated to JSON data, so equal params compare equal as dicts.
        for job in itertools.chain(self._queue, (run.job for run in self._runs.values())):
            if job.task == task and job.params == params:
                return job
        return None

    def get(self, job_id: str) -> Job:
        try:
            return self.jobs[job_id]
        except KeyError:
            raise UnknownJob(job_id) from None

    def newest(
        self, *, state: JobState | None = None, task: str | None = None, limit: int = 100
    ) -> list[Job]:
        """Jobs, newest first, optionally of one state and one task."""
        found: list[Job] = []
        for job in reversed(self.jobs.values()):
            if (state is None or job.state is state) and (task is None or job.task == task):
                found.append(job)
                if len(found) >= limit:
                    break
        return found

    def cancel(self, job_id: str) -> Job:
        """Cancel a queued job at once, or ask a running one to stop.

        Raises :class:`~jobcast.UnknownJob` or :class:`~jobcast.JobFinished`.
        """
        job = self.get(job_id)
        if job.finished:
            raise JobFinished(job.id, job.state.value)
        if job.state is JobState.QUEUED:
            self._queue.remove(job)
            self._finish(job, _Outcome(JobState.CANCELLED))
        else:
            self._runs[job.id].ctx.cancel()
        return job

    def snapshot(self, task: str | None = None) -> list[dict[str, Any]]:
        """Every active job and the newest finished ones, newest first, as clients see them."""
        finished_left = self.settings.snapshot_jobs
        jobs: list[dict[str, Any]] = []
        for job in reversed(self.jobs.values()):
            if task is not None and job.task != task:
                continue
            if job.finished:
                if finished_left == 0:
                    continue
                finished_left -= 1
            jobs.append(job.snapshot())
        return jobs

    def restore(self, jobs: list[Job]) -> None:
        """Take back jobs a durable store kept, oldest first: queued ones run again.

        A job that was running when the process stopped cannot be resumed mid-way: it ends
        ``interrupted`` so that nothing stays ``running`` forever, or, when its task is
        declared ``retry_on_restart``, is queued again to run from the start (ahead of the
        jobs that were still waiting). A job whose task is no longer registered fails.
        """
        requeued: list[Job] = []
        waiting: list[Job] = []
        for job in jobs:
            self.jobs[job.id] = job
            if job.finished:
                continue
            if job.task not in self.registry:
                message = (
                    f"task {job.task!r} is no longer registered, so the job cannot run after "
                    "the restart; register the task again, or start another job"
                )
                self._finish(job, _Outcome(JobState.FAILED, error=JobError("UnknownTask", message)))
            elif job.state is JobState.QUEUED:
                waiting.append(job)
            elif self.registry.get(job.task).retry_on_restart:
                self._requeue(job, "the server stopped while the job was running")
                requeued.append(job)
            else:
                error = JobError("Interrupted", "the server stopped while the job was running")
                self._finish(job, _Outcome(JobState.INTERRUPTED, error=error))
        self._queue.extend(requeued + waiting)
        self._evict()
        self._dispatch()

    def store_failed(self, failure: WriteFailure) -> None:
        """Fail the unfinished jobs whose events or state the store could not keep.

        The store calls it on the event loop. A queued job fails at once; a running one is
        asked to stop and fails when it does, whatever it returns.
        """
        error = JobError("StoreError", str(failure.error))
        for job_id in failure.job_ids:
            job = self.jobs.get(job_id)
            if job is None or job.finished:
                continue
            run = self._runs.get(job_id)
            if run is not None:
                run.failure = error
                run.ctx.cancel()
            elif job in self._queue:
                self._queue.remove(job)
                self._finish(job, _Outcome(JobState.FAILED, error=error))

    async def shutdown(self) -> None:
        """Stop accepting jobs, stop the running ones within the grace period, record them.

        Queued jobs stay queued in a durable store (they run at the next start) and end
        ``interrupted`` otherwise. Running jobs are asked to stop; those still running after
        the grace period are abandoned (their threads run on, unwatched) and end
        ``interrupted`` too, or, in a durable store and when their task is declared
        ``retry_on_restart``, are queued again for the next start. Calling it again waits
        for the same end.
        """
        if not self._accepting:
            await self._drained.wait()
            return
        self._accepting = False
        if not self._store.durable:
            error = JobError("Interrupted", "the server stopped before the job started")
            for job in self._queue:
                self._finish(job, _Outcome(JobState.INTERRUPTED, error=error))
        self._queue.clear()
        for run in self._runs.values():
            run.stopping = True
            run.ctx.cancel()
        if not self._runs:
            self._drained.set()
            return
        with anyio.move_on_after(self.settings.grace_period):
            await self._drained.wait()
        for run in self._runs.values():
            run.scope.cancel()
        await self._drained.wait()

    # -- running jobs --------------------------------------------------------------------------

    def _dispatch(self) -> None:
        while self._accepting and self._queue and len(self._runs) < self.settings.max_workers:
            job = next((job for job in self._queue if self._has_room(job.task)), None)
            if job is None:
                return
            self._queue.remove(job)
            task = self.registry.get(job.task)
            lines = _LogBudget()
            ctx = JobContext(
                job.id,
                task.name,
                job.params,
                loop=self._loop,
                on_lines=functools.partial(self._publish_lines, job, budget=lines),
            )
            now = time.time()
            run = _Run(job, task, ctx, ProgressMeter(time.monotonic()), lines=lines)
            self._runs[job.id] = run
            self._running_per_task[task.name] += 1
            job.state, job.started_at = JobState.RUNNING, now
            self._publish(job, JobState.RUNNING.value)
            self._task_group.start_soon(self._supervise, run, name=f"jobcast job {job.id}")

    def _has_room(self, task_name: str) -> bool:
        limit = self.registry.get(task_name).max_concurrency
        return limit is None or self._running_per_task[task_name] < limit

    async def _supervise(self, run: _Run) -> None:
        with run.scope:
            async with anyio.create_task_group() as reporters:
                reporters.start_soon(self._report_progress, run)
                outcome = await self._execute(run)
                reporters.cancel_scope.cancel()
            self._close_run(run, outcome)
            return
        # Shutdown outlasted the grace period: the thread is abandoned, the job recorded.
        error = JobError("Interrupted", "the server stopped before the job could finish")
        self._close_run(run, _Outcome(JobState.INTERRUPTED, error=error))

    async def _execute(self, run: _Run) -> _Outcome:
        task, ctx = run.task, run.ctx
        try:
            with anyio.move_on_after(task.timeout) as deadline:
                result = await self._call(task, ctx, run.job.params)
        except JobCancelled:
            return self._stopped(run)
        except Exception as exc:
            logger.error("job %s (task %s) failed", run.job.id, task.name, exc_info=exc)
            return _Outcome(JobState.FAILED, error=JobError.from_exception(exc))
        if deadline.cancelled_caught:
            ctx.cancel()  # a cooperative task stops; one that does not is abandoned
            message = f"task {task.name!r} ran past its timeout of {task.timeout:g} s"
            return _Outcome(JobState.FAILED, error=JobError("TimeoutError", message))
        if ctx.cancelled:
            return self._stopped(run)
        try:
            json.dumps(result, allow_nan=False)
        except (TypeError, ValueError) as exc:
            message = (
                f"task {task.name!r} returned a result that is not JSON-serialisable ({exc}); "
                "return dicts, lists, strings, numbers, booleans or None"
            )
            return _Outcome(JobState.FAILED, error=JobError("ResultNotSerializable", message))
        return _Outcome(JobState.SUCCEEDED, result=result)

    async def _call(self, task: Task, ctx: JobContext, params: dict[str, Any]) -> Any:
        kill_grace = self.settings.kill_grace
        if task.command is not None:
            command = task.command
            return await run_command(
                build_argv(command.argv, params),
                ctx,
                kill_grace=kill_grace,
                cwd=command.cwd,
                # Python programs buffer a pipe's output; their lines should arrive live.
                env={**os.environ, "PYTHONUNBUFFERED": "1", **command.env},
                success_codes=command.success_codes,
                max_line=self.settings.max_log_line,
            )
        if task.mode == "process":
            return await run_in_process(
                task.func,
                ctx,
                params,
                nice=task.nice,
                kill_grace=kill_grace,
                interval=self.settings.progress_interval / 2,
            )

        def call() -> Any:
            with _tqdm.bound(ctx):
                return task.func(ctx, **params)

        return await run_in_daemon_thread(call, name=f"jobcast-{task.name}-{ctx.job_id[:8]}")

    def _stopped(self, run: _Run) -> _Outcome:
        if run.stopping:
            error = JobError("Interrupted", "the server stopped while the job was running")
            return _Outcome(JobState.INTERRUPTED, error=error)
        return _Outcome(JobState.CANCELLED)

    async def _report_progress(self, run: _Run) -> None:
        while True:
            await anyio.sleep(self.settings.progress_interval)
            if self._read_progress(run):
                self._publish(run.job, "progress")

    def _read_progress(self, run: _Run) -> bool:
        """Update the job's progress from its context; return whether it changed."""
        ctx = run.ctx
        reading = ctx.reading()
        if reading == run.reading:
            return False
        run.reading = reading
        run.job.progress = run.meter.read(*reading, now=time.monotonic())
        return True

    def _close_run(self, run: _Run, outcome: _Outcome) -> None:
        del self._runs[run.job.id]
        self._running_per_task[run.task.name] -= 1
        run.ctx._flush()  # log lines still pending go out before the terminal event
        if run.lines.dropped:
            limit = self.settings.max_log_lines
            self._publish_lines(
                run.job,
                [
                    f"{run.lines.dropped} more log lines were dropped: a job keeps at most "
                    f"{limit} (JOBCAST_MAX_LOG_LINES)"
                ],
            )
        self._read_progress(run)  # the final value rides on the terminal event
        if run.failure is not None:
            outcome = _Outcome(JobState.FAILED, error=run.failure)
        retry = run.task.retry_on_restart and self._store.durable
        if retry and run.stopping and outcome.state is JobState.INTERRUPTED:
            self._requeue(run.job, "the server is stopping")
        else:
            self._finish(run.job, outcome)
        if self._accepting:
            self._dispatch()
        elif not self._runs:
            self._drained.set()

    # -- publishing ----------------------------------------------------------------------------

    def _finish(self, job: Job, outcome: _Outcome) -> None:
        job.state = outcome.state
        job.result = outcome.result
        job.error = outcome.error
        job.finished_at = time.time()
        self._publish(job, outcome.state.value)

    def _requeue(self, job: Job, reason: str) -> None:
        """Put a job that was running back to ``queued``, to run from the start."""
        job.state, job.started_at, job.progress = JobState.QUEUED, None, None
        self._publish(job, JobState.QUEUED.value)
        self._publish_lines(job, [f"queued again, to run from the start: {reason}"])

    def _publish(self, job: Job, name: str) -> None:
        event = self.log.append(name, job_id=job.id, task=job.task, payload={"job": job.snapshot()})
        if not job.first_seq:
            job.first_seq = event.seq
        job.last_seq = event.seq
        self._store.record(event, job)

    def _publish_lines(self, job: Job, lines: list[str], budget: _LogBudget | None = None) -> None:
        """Publish a job's log lines; past ``max_log_lines`` (counted in ``budget``), say so
        once and drop the rest: a job that logs without end must not fill the store and
        every stream without end."""
        if budget is not None:
            cap = self.settings.max_log_lines
            room = max(cap - budget.published, 0)
            if len(lines) > room:
                first_drop = not budget.dropped
                budget.dropped += len(lines) - room
                lines = lines[:room]
                if first_drop:
                    lines.append(
                        f"log lines truncated: this job logged more than {cap} lines, the "
                        "rest are dropped (the server's limit is JOBCAST_MAX_LOG_LINES)"
                    )
            budget.published += len(lines)
        limit = self.settings.max_log_line
        for line in lines:
            payload = {"job_id": job.id, "line": line[:limit]}
            event = self.log.append("log", job_id=job.id, task=job.task, payload=payload)
            self._store.record(event, job)

    def _evict(self) -> None:
        excess = len(self.jobs) - self.settings.max_jobs
        if excess <= 0:
            return
        finished = (job.id for job in self.jobs.values() if job.finished)
        gone = list(itertools.islice(finished, excess))
        for job_id in gone:
            del self.jobs[job_id]
        self._store.forget(gone)
