"""The jobs running now: one supervisor coroutine each, their progress, logs, cancel, timeouts.

Both the in-process :class:`~jobcast.runner.Runner` and a Redis
:class:`~jobcast.cluster.worker.Worker` run jobs through :class:`Execution`; they differ in
where jobs come from and where events go (:class:`Publisher`), not in how a job runs.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import anyio
from anyio.abc import TaskGroup

from . import _tqdm
from ._wire import NotJson, check_json, describe, finite
from .context import JobContext
from .events import encode_json_bytes
from .exceptions import JobCancelled, TaskError
from .jobs import Job, JobError, JobState, ProgressMeter, now
from .settings import Settings
from .tasks import Task

__all__ = ["Execution", "Outcome", "Publisher", "Run", "finish", "requeue"]

logger = logging.getLogger("jobcast")

Reading = tuple[float, float | None, str | None]

#: Characters kept of a progress message (it rides on every progress event).
MAX_PROGRESS_MESSAGE = 1000


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
    #: What the task raised (a timeout: a ``TimeoutError``): what a retry is decided on.
    cause: BaseException | None = None


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
OnEnd = Callable[[Run, Outcome], Awaitable[None]]


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
        on_freed: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.settings = settings
        self._host = host  # what a stopped job's error says stopped: the server, a worker
        self.runs: dict[str, Run] = {}
        self._task_group = task_group
        self._publisher = publisher
        self._on_end = on_end
        self._on_freed = on_freed  # called once a run's slot is free again
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
            on_lines=lambda lines: self._take_lines(run, lines),
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
        elif not run.job.cancelling:
            run.job.cancelling = True  # clients see it until the job ends
            self._publisher.state(run.job, "progress")
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
        # Whatever goes wrong in here is this job's problem: nothing but cancellation may
        # leave a supervisor, since the task group it runs in is the whole service's.
        try:
            outcome = await self._outcome(run)
        except Exception as exc:
            outcome = self._internal_error(run, "running", exc)
        try:
            await self._end(run, outcome)
        except Exception as exc:
            failure = self._internal_error(run, "publishing the end of", exc)
            try:
                await self._on_end(run, failure)
            except Exception:
                logger.exception(
                    "job %s is left unfinished: its end cannot be published", run.job.id
                )
        finally:
            # Only now: whoever waits for every run to end finds its end recorded.
            if self.runs.pop(run.job.id, None) is not None:
                self._per_task[run.task.name] -= 1
                if not self.runs:
                    self._idle.set()
        if self._on_freed is not None:
            await self._on_freed()

    async def _outcome(self, run: Run) -> Outcome:
        with run.scope:
            async with anyio.create_task_group() as reporters:
                reporters.start_soon(self._report_progress, run)
                outcome = await self._execute(run)
                reporters.cancel_scope.cancel()
            return outcome
        # Shutdown outlasted the grace period: the thread is abandoned, the job recorded.
        error = JobError.interrupted(f"the {self._host} stopped before the job could finish")
        return Outcome(JobState.INTERRUPTED, error=error)

    def _internal_error(self, run: Run, when: str, exc: Exception) -> Outcome:
        """A failure of jobcast's own (a bug): it fails the job, and the service goes on."""
        logger.error(
            "jobcast failed while %s job %s (task %s); the job fails, the service goes on",
            when,
            run.job.id,
            run.task.name,
            exc_info=exc,
        )
        cause: BaseException = exc
        while isinstance(cause, BaseExceptionGroup) and len(cause.exceptions) == 1:
            cause = cause.exceptions[0]
        message = (
            f"jobcast failed while {when} the job ({describe(type(cause).__name__, 100)}: "
            f"{describe(cause, 500)}); the server log has the details: please report it"
        )
        return Outcome(JobState.FAILED, error=JobError("InternalError", message))

    async def _execute(self, run: Run) -> Outcome:
        task, ctx = run.task, run.ctx
        try:
            with anyio.move_on_after(task.timeout) as deadline:
                result = await task.executor.run(ctx, run.job.params, self.settings)
        except JobCancelled:
            return self._stopped(run)
        except TaskError as exc:
            self._log_failure(run, exc)
            return self._failed(run, exc)
        except Exception as exc:
            logger.error("job %s (task %s) failed", run.job.id, task.name, exc_info=exc)
            return self._failed(run, exc)
        if deadline.cancelled_caught:
            ctx.cancel()  # a cooperative task stops; one that does not is abandoned
            message = f"task {task.name!r} ran past its timeout of {task.timeout:g} s"
            logger.warning("job %s (task %s) failed: %s", run.job.id, task.name, message)
            timeout = TimeoutError(message)
            return Outcome(JobState.FAILED, error=JobError.from_exception(timeout), cause=timeout)
        if ctx.cancelled:
            return self._stopped(run)
        return self._succeeded(task, result)

    @staticmethod
    def _failed(run: Run, exc: Exception) -> Outcome:
        """Failure with ``exc``; a job asked to stop meanwhile is not tried again for it."""
        cause = None if run.ctx.cancelled else exc
        return Outcome(JobState.FAILED, error=JobError.from_exception(exc), cause=cause)

    def _succeeded(self, task: Task, result: Any) -> Outcome:
        """Success with ``result``, when JSON can carry it and it is not too large."""
        try:
            check_json(result, name="the result")
        except NotJson as exc:
            message = (
                f"task {task.name!r} returned a result that is not JSON-serialisable: {exc}; "
                "return dicts, lists, strings, finite numbers, booleans or None"
            )
            return Outcome(JobState.FAILED, error=JobError("ResultNotSerializable", message))
        size = len(encode_json_bytes(result))
        limit = self.settings.max_result_bytes
        if size > limit:
            message = (
                f"task {task.name!r} returned a result of {size:,} bytes as JSON, more than "
                f"the {limit:,} a job may keep (JOBCAST_MAX_RESULT_BYTES); write large data "
                "to a file and return its path"
            )
            return Outcome(JobState.FAILED, error=JobError("ResultTooLarge", message))
        return Outcome(JobState.SUCCEEDED, result=result)

    def _log_failure(self, run: Run, exc: TaskError) -> None:
        """A task's own exception in a worker process logs its traceback; a program that
        failed logs one line: jobcast's own frames would tell the operator nothing."""
        job, task = run.job, run.task
        if exc.trace:
            logger.error("job %s (task %s) failed", job.id, task.name, exc_info=exc)
            return
        first = describe(exc.message).partition("\n")[0]
        logger.error(
            "job %s (task %s) failed: %s: %s (its output is in the job's log: "
            "GET /api/jobs/%s/events)",
            job.id,
            task.name,
            exc.type_name,
            first,
            job.id,
        )

    def _stopped(self, run: Run) -> Outcome:
        if run.stopping:
            error = JobError.interrupted(f"the {self._host} stopped while the job was running")
            return Outcome(JobState.INTERRUPTED, error=error)
        return Outcome(JobState.CANCELLED)

    async def _report_progress(self, run: Run) -> None:
        while True:
            await anyio.sleep(self.settings.progress_interval)
            if self._read_progress(run):
                self._publisher.state(run.job, "progress")

    def _read_progress(self, run: Run) -> bool:
        """Update the job's progress from its context; return whether it changed.

        A task may report anything: numbers that are not finite (or not numbers) are
        dropped, and the message is made safe text of bounded length.
        """
        reading = run.ctx.reading()
        if reading == run.reading:
            return False
        run.reading = reading
        current, total, message = reading
        previous = run.job.progress
        number = finite(current)
        if number is None:
            number = 0.0 if previous is None else previous.current
        text = None if message is None else describe(message, MAX_PROGRESS_MESSAGE)
        run.job.progress = run.meter.read(number, finite(total), text, now=time.monotonic())
        return True

    async def _end(self, run: Run, outcome: Outcome) -> None:
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
        await self._on_end(run, outcome)

    def _take_lines(self, run: Run, lines: list[str]) -> None:
        # Called back on the loop from the job's thread: a failure here would only reach the
        # loop's exception handler, and the lines would vanish without a word.
        try:
            self._publish_lines(run, lines)
        except Exception:
            logger.exception(
                "jobcast could not publish %d log lines of job %s", len(lines), run.job.id
            )

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


def finish(job: Job, outcome: Outcome, *, at: float | None = None) -> None:
    """Set ``job``'s end from ``outcome``, ended now or ``at`` (publishing it is the caller's)."""
    job.state = outcome.state
    job.result = outcome.result
    job.error = outcome.error
    job.finished_at = now() if at is None else at
    job.cancelling = False


def requeue(job: Job, *, run_at: float | None = None) -> None:
    """Put a job that was running back to ``queued``, to run from the start (at ``run_at``)."""
    job.state, job.started_at, job.progress = JobState.QUEUED, None, None
    job.run_at, job.cancelling = run_at, False
