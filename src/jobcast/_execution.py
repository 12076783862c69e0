"""The jobs running now: one supervisor coroutine each, their progress, logs, cancel, timeouts.

Both the in-process :class:`~jobcast.runner.Runner` and a Redis
:class:`~jobcast.cluster.worker.Worker` run jobs through :class:`Execution`; they differ in
where jobs come from and where events go (:class:`Publisher`), not in how a job runs.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import anyio
from anyio.abc import TaskGroup

from . import _tqdm
from ._process import run_in_process
from ._threads import run_in_daemon_thread
from .commands import build_argv, run_command
from .context import JobContext
from .exceptions import JobCancelled
from .jobs import Job, JobError, JobState, ProgressMeter
from .settings import Settings
from .tasks import Task

__all__ = ["Execution", "Outcome", "Publisher", "Run", "finish", "requeue"]

logger = logging.getLogger("jobcast")

Reading = tuple[float, float | None, str | None]


class Publisher(Protocol):
    """Where a job's events go: the local event log, or Redis."""

    def state(self, job: Job, name: str) -> None:
        """Publish ``job``'s snapshot as event ``name`` (a state, or ``progress``)."""
        ...

    def lines(self, job: Job, lines: list[str]) -> None:
        """Publish log lines of ``job``, each as one ``log`` event."""
        ...


@dataclass(slots=True, frozen=True)
class Outcome:
    """How a run ended."""

    state: JobState
    result: Any = None
    error: JobError | None = None


@dataclass(slots=True, eq=False)
class Run:
    """A running job and what its supervisor needs to report on it."""

    job: Job
    task: Task
    ctx: JobContext
    meter: ProgressMeter
    reading: Reading | None = None  # the last progress reading published
    stopping: bool = False  # stopped by a shutdown rather than by a user
    failure: JobError | None = None  # the job fails with this whatever it returns
    scope: anyio.CancelScope = field(default_factory=anyio.CancelScope)
    published: int = 0  # log lines published
    dropped: int = 0  # log lines dropped past the limit


#: Called once a run has ended, with its outcome; the owner publishes the end.
OnEnd = Callable[[Run, Outcome], None]


class Execution:
    """Runs jobs under supervision and publishes what they do through a :class:`Publisher`.

    The caller decides when a job starts (limits, queue) and publishes its ``running`` event;
    :meth:`start` takes it from there, and ``on_end`` gets every run back exactly once.
    """

    def __init__(
        self,
        settings: Settings,
        task_group: TaskGroup,
        publisher: Publisher,
        on_end: OnEnd,
        *,
        host: str = "server",
    ) -> None:
        self.settings = settings
        self._host = host  # what a stopped job's error says stopped: the server, a worker
        self.runs: dict[str, Run] = {}
        self._task_group = task_group
        self._publisher = publisher
        self._on_end = on_end
        self._loop = asyncio.get_running_loop()
        self._per_task: Counter[str] = Counter()
        self._idle = anyio.Event()
        self._idle.set()
        _tqdm.install()  # tqdm bars made inside jobs report their progress

    def running(self, task_name: str) -> int:
        """How many jobs of ``task_name`` run now."""
        return self._per_task[task_name]

    def start(self, job: Job, task: Task) -> None:
        """Run ``job`` (already ``running``) under a supervisor in the task group."""
        ctx = JobContext(
            job.id,
            task.name,
            job.params,
            loop=self._loop,
            on_lines=lambda lines: self._publish_lines(run, lines),
        )
        run = Run(job, task, ctx, ProgressMeter(time.monotonic()))
        self.runs[job.id] = run
        self._per_task[task.name] += 1
        self._idle = anyio.Event()
        self._task_group.start_soon(self._supervise, run, name=f"jobcast job {job.id}")

    def cancel(self, job_id: str, failure: JobError | None = None) -> bool:
        """Ask a running job to stop (it ends ``cancelled``, or ``failed`` with ``failure``);
        return whether it was running here."""
        run = self.runs.get(job_id)
        if run is None:
            return False
        if failure is not None:
            run.failure = failure
        run.ctx.cancel()
        return True

    async def idle(self) -> None:
        """Return once no job runs."""
        await self._idle.wait()

    async def stop(self, grace_period: float) -> None:
        """Ask every run to stop, and cancel the supervisors still running after the grace
        period (their threads are abandoned); return once every run has ended."""
        for run in self.runs.values():
            run.stopping = True
            run.ctx.cancel()
        with anyio.move_on_after(grace_period):
            await self._idle.wait()
        for run in self.runs.values():
            run.scope.cancel()
        await self._idle.wait()

    # -- one run -------------------------------------------------------------------------------

    async def _supervise(self, run: Run) -> None:
        with run.scope:
            async with anyio.create_task_group() as reporters:
                reporters.start_soon(self._report_progress, run)
                outcome = await self._execute(run)
                reporters.cancel_scope.cancel()
            self._end(run, outcome)
            return
        # Shutdown outlasted the grace period: the thread is abandoned, the job recorded.
        error = JobError("Interrupted", f"the {self._host} stopped before the job could finish")
        self._end(run, Outcome(JobState.INTERRUPTED, error=error))

    async def _execute(self, run: Run) -> Outcome:
        task, ctx = run.task, run.ctx
        try:
            with anyio.move_on_after(task.timeout) as deadline:
                result = await self._call(task, ctx, run.job.params)
        except JobCancelled:
            return self._stopped(run)
        except Exception as exc:
            logger.error("job %s (task %s) failed", run.job.id, task.name, exc_info=exc)
            return Outcome(JobState.FAILED, error=JobError.from_exception(exc))
        if deadline.cancelled_caught:
            ctx.cancel()  # a cooperative task stops; one that does not is abandoned
            message = f"task {task.name!r} ran past its timeout of {task.timeout:g} s"
            return Outcome(JobState.FAILED, error=JobError("TimeoutError", message))
        if ctx.cancelled:
            return self._stopped(run)
        try:
            json.dumps(result, allow_nan=False)
        except (TypeError, ValueError) as exc:
            message = (
                f"task {task.name!r} returned a result that is not JSON-serialisable ({exc}); "
                "return dicts, lists, strings, numbers, booleans or None"
            )
            return Outcome(JobState.FAILED, error=JobError("ResultNotSerializable", message))
        return Outcome(JobState.SUCCEEDED, result=result)

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

    def _stopped(self, run: Run) -> Outcome:
        if run.stopping:
            error = JobError("Interrupted", f"the {self._host} stopped while the job was running")
            return Outcome(JobState.INTERRUPTED, error=error)
        return Outcome(JobState.CANCELLED)

    async def _report_progress(self, run: Run) -> None:
        while True:
            await anyio.sleep(self.settings.progress_interval)
            if self._read_progress(run):
                self._publisher.state(run.job, "progress")

    def _read_progress(self, run: Run) -> bool:
        """Update the job's progress from its context; return whether it changed."""
        reading = run.ctx.reading()
        if reading == run.reading:
            return False
        run.reading = reading
        run.job.progress = run.meter.read(*reading, now=time.monotonic())
        return True

    def _end(self, run: Run, outcome: Outcome) -> None:
        del self.runs[run.job.id]
        self._per_task[run.task.name] -= 1
        run.ctx._flush()  # log lines still pending go out before the terminal event
        if run.dropped:
            self._publisher.lines(
                run.job,
                [
                    f"{run.dropped} more log lines were dropped: a job keeps at most "
                    f"{self.settings.max_log_lines} (JOBCAST_MAX_LOG_LINES)"
                ],
            )
        self._read_progress(run)  # the final value rides on the terminal event
        if run.failure is not None:
            outcome = Outcome(JobState.FAILED, error=run.failure)
        if not self.runs:
            self._idle.set()
        self._on_end(run, outcome)

    def _publish_lines(self, run: Run, lines: list[str]) -> None:
        """Publish a run's log lines; past ``max_log_lines``, say so once and drop the rest:
        a job that logs without end must not fill the store and every stream without end."""
        cap = self.settings.max_log_lines
        room = max(cap - run.published, 0)
        if len(lines) > room:
            first_drop = not run.dropped
            run.dropped += len(lines) - room
            lines = lines[:room]
            if first_drop:
                lines.append(
                    f"log lines truncated: this job logged more than {cap} lines, the "
                    "rest are dropped (the server's limit is JOBCAST_MAX_LOG_LINES)"
                )
        run.published += len(lines)
        if lines:
            limit = self.settings.max_log_line
            self._publisher.lines(run.job, [line[:limit] for line in lines])


def finish(job: Job, outcome: Outcome) -> None:
    """Set ``job``'s end from ``outcome`` (publishing it is the caller's)."""
    job.state = outcome.state
    job.result = outcome.result
    job.error = outcome.error
    job.finished_at = time.time()


def requeue(job: Job) -> None:
    """Put a job that was running back to ``queued``, to run from the start."""
    job.state, job.started_at, job.progress = JobState.QUEUED, None, None
