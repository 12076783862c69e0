"""A job's life, decided once for every backend: admission, start, end, cancel, and what
happens to a job whose worker is gone.

The decisions live here; a :class:`~jobcast.backends.base.Backend` makes each step they come
down to, atomically with its checks. A step a backend refuses means the job changed hands
meanwhile (cancelled before it started, taken back from a worker taken for dead): nothing
is published for it then.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
from collections.abc import Callable
from typing import Any, TypedDict, Unpack

from ._execution import Outcome, finish, requeue
from .backends.base import Backend, Refused
from .exceptions import DuplicateJob, JobActive, JobFinished, NotAccepting, QueueFull
from .jobs import Job, JobError, JobState, check_time, now
from .schedules import Schedule, Scheduler
from .settings import Settings
from .table import Submitted
from .tasks import Task, TaskRegistry

__all__ = ["Lifecycle", "Placement", "twin_key"]

logger = logging.getLogger("jobcast")


class Placement(TypedDict, total=False):
    """Where a new job stands in the queue, and where it comes from."""

    #: Not before this time (Unix seconds); a time past is at once.
    run_at: float | None
    #: Higher runs first (from ``-MAX_PRIORITY`` to ``MAX_PRIORITY``); 0 by default.
    priority: int
    #: The name of the schedule that starts it, and the due time of the tick it is: one job
    #: per tick (a tick that has its job already is refused: ``Refused("ticked")``).
    schedule: str | None
    tick: float


def twin_key(task: Task, params: dict[str, Any]) -> str:
    """What equal jobs of a task that refuses or joins duplicates share; ``""`` for one that
    allows them."""
    if task.duplicates == "allow":
        return ""
    digest = hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:32]
    return f"{task.name}:{digest}"


def _microseconds(ts: float | None) -> float | None:
    return None if ts is None else round(ts, 6)


def _retried(task: Task, job: Job, outcome: Outcome) -> bool:
    """Whether a failed attempt of ``job`` runs again: it has attempts left, and what it
    raised is one its task retries on (a cancel, or a failure of jobcast's own, never is)."""
    return (
        outcome.state is JobState.FAILED
        and outcome.cause is not None
        and not job.cancelling
        and job.attempt < job.max_attempts
        and task.retries_on(outcome.cause)
    )


class Lifecycle:
    """Every transition of a job, over one backend."""

    def __init__(self, registry: TaskRegistry, settings: Settings, backend: Backend) -> None:
        self.registry = registry
        self.settings = settings
        self.backend = backend
        self.accepting = True

    async def submit(
        self, task_name: str, params: object, **placement: Unpack[Placement]
    ) -> Submitted:
        """Validate ``params`` and queue a job of ``task_name``; answer once it is stored.

        It runs in its turn (``priority`` first, then age), not before ``run_at`` if given;
        ``schedule`` names the schedule that starts it.

        A task that joins duplicates hands back the equal job already queued or running.
        Raises :class:`~jobcast.UnknownTask`, :class:`~jobcast.InvalidParams`,
        :class:`~jobcast.DuplicateJob`, :class:`~jobcast.QueueFull`,
        :class:`~jobcast.NotAccepting`, or what the backend raises when it cannot take jobs
        (:class:`~jobcast.StoreUnavailable`, :class:`~jobcast.BackendUnavailable`).
        """
        if not self.accepting:
            raise NotAccepting("the server is shutting down")
        task = self.registry.get(task_name)
        values = task.validate(params)
        run_at, tick, created = placement.get("run_at"), placement.get("tick"), now()
        for name, value in (("run_at", run_at), ("tick", tick)):
            if value is not None:
                check_time(name, value)
        # Times to the microsecond, as a snapshot writes them (see jobs.now).
        run_at, tick = _microseconds(run_at), _microseconds(tick)
        if tick is not None:
            run_at = tick  # a schedule's job is runnable from its due time
        elif run_at is not None and run_at <= created:
            run_at = None  # a time past: at once
        job = Job(
            task=task.name,
            params=values,
            created_at=created,
            max_attempts=task.retries + 1,
            run_at=run_at,
            priority=placement.get("priority", 0),
            schedule=placement.get("schedule"),
            tick=tick,
        )
        try:
            await self.backend.admit(job, twin=twin_key(task, values))
        except Refused as refused:
            if refused.reason == "full":
                raise QueueFull(self.settings.max_queue, retry_after=5) from None
            other = refused.other
            if refused.reason != "twin" or other is None:
                raise
            if task.duplicates == "join":
                return Submitted(other, created=False)
            raise DuplicateJob(other.id, task.name, other.shown or other.snapshot()) from None
        return Submitted(job, created=True)

    async def start_tick(self, schedule: Schedule, tick: float) -> str | None:
        """Start the job of ``schedule``'s tick due at ``tick``; its id, or None when another
        process of the deployment started it first."""
        try:
            job, _ = await self.submit(
                schedule.task, dict(schedule.params), schedule=schedule.name, tick=tick
            )
        except Refused as refused:
            if refused.reason == "ticked":
                return None
            raise
        return job.id

    def scheduler(self) -> Scheduler:
        """What starts the jobs of the registered schedules (run it in a task group)."""
        return Scheduler(list(self.registry.schedules.values()), self.backend, self.start_tick)

    async def start(self, job: Job, worker: str) -> bool:
        """Mark ``job`` running on ``worker``; whether it is still queued and so its to run."""
        started = copy.copy(job)
        started.state, started.started_at = JobState.RUNNING, now()
        started.error = None  # the error of an attempt before
        try:
            await self.backend.change(
                started, JobState.RUNNING.value, expect_state=JobState.QUEUED, hand_to=worker
            )
        except Refused:
            return False  # cancelled meanwhile, or taken by another worker
        job.update(started)
        return True

    async def end(
        self, job: Job, outcome: Outcome, worker: str, *, stopping: bool, who: str
    ) -> None:
        """Record how ``job`` ended on ``worker`` (``who``, in words: "the server"). A job a
        stopping worker interrupted runs again from the start if its task says so and the
        backend keeps queued jobs."""
        task = self.registry.get(job.task) if job.task in self.registry else None
        durable = self.backend.durable
        try:
            if (
                stopping
                and durable
                and self._retries(job)
                and outcome.state is JobState.INTERRUPTED
            ):
                await self._requeue(job, worker, f"{who} is stopping")
            elif task is not None and (durable or not stopping) and _retried(task, job, outcome):
                await self._retry(task, job, outcome, worker)
            else:
                ended = copy.copy(job)
                finish(ended, outcome)
                await self.backend.change(ended, outcome.state.value, owner=worker)
        except Refused as refused:  # taken back from this worker meanwhile: no longer its
            logger.warning("the end of job %s was not recorded (%s)", job.id, refused.reason)
        await self.backend.release(job)

    async def gone(self, job: Job, worker: str, reason: str, *, at: float | None) -> None:
        """``job`` ran on ``worker``, which is gone (``reason``): run it again from the start
        if its task says so, else end it ``interrupted``, when it was last known running."""
        try:
            if self._retries(job):
                await self._requeue(job, worker, reason)
            else:
                ended = copy.copy(job)
                error = JobError.interrupted(reason)
                finish(ended, Outcome(JobState.INTERRUPTED, error=error), at=at)
                await self.backend.change(ended, JobState.INTERRUPTED.value, owner=worker)
        except Refused:
            return  # it changed hands meanwhile: nothing to take back
        logger.warning("job %s taken back: %s", job.id, reason)

    async def all_gone(self, jobs: list[Job], reason: str, holder: Callable[[Job], str]) -> None:
        """:meth:`gone` for each of ``jobs`` (oldest first), held by ``holder(job)``: those
        that end go first, then those queued again, so that the oldest of them runs first."""
        again = [job for job in jobs if self._retries(job)]
        for job in [job for job in jobs if job not in again] + again[::-1]:
            at = job.updated_at or job.started_at or job.created_at
            await self.gone(job, holder(job), reason, at=at)

    def _retries(self, job: Job) -> bool:
        task = self.registry.get(job.task) if job.task in self.registry else None
        return task is not None and task.retry_on_restart

    async def refuse(self, job: Job, why: str) -> None:
        """Fail a queued ``job`` that cannot run (``why``: its task is not registered)."""
        failed = copy.copy(job)
        finish(failed, Outcome(JobState.FAILED, error=JobError("UnknownTask", why)))
        try:
            await self.backend.change(failed, JobState.FAILED.value)
        except Refused:
            pass  # cancelled meanwhile
        await self.backend.release(job)

    async def cancel(self, job: Job) -> None:
        """Cancel a queued ``job`` at once, or ask the worker running it to stop.

        Raises :class:`~jobcast.JobFinished` once it has ended.
        """
        if job.finished:
            raise JobFinished(job.id, job.state.value)
        if job.state is JobState.QUEUED:
            cancelled = copy.copy(job)
            finish(cancelled, Outcome(JobState.CANCELLED))
            try:
                await self.backend.change(
                    cancelled, JobState.CANCELLED.value, expect_state=JobState.QUEUED
                )
                return
            except Refused as refused:
                if refused.reason in ("finished", "gone"):
                    raise JobFinished(job.id, "finished") from None
                # A worker started it meanwhile: ask that worker.
        await self.backend.ask_to_stop(job)

    async def delete(self, job: Job) -> None:
        """Remove a finished ``job`` and its events; streams tell of it with ``deleted``.

        Raises :class:`~jobcast.JobActive` while it is queued or running.
        """
        if not job.finished:
            raise JobActive(job.id, job.state.value)
        try:
            await self.backend.delete(job)
        except Refused as refused:
            if refused.reason != "gone":
                raise JobActive(job.id, refused.reason) from None

    async def _retry(self, task: Task, job: Job, outcome: Outcome, worker: str) -> None:
        """Queue ``job`` again for its next attempt, after its task's wait."""
        wait = task.retry_wait(job.attempt)
        error = outcome.error or JobError("Error", "the attempt failed")
        line = (
            f"attempt {job.attempt} of {job.max_attempts} failed ({error.type}: "
            f"{error.message[:200]}); attempt {job.attempt + 1} runs in {wait:g} s"
        )
        again = copy.copy(job)
        requeue(again, run_at=now() + wait)
        again.attempt, again.error = job.attempt + 1, error
        await self.backend.change(
            again, "retrying", owner=worker, hand_to="", enqueue=True, line=line
        )

    async def _requeue(self, job: Job, worker: str, reason: str) -> None:
        # The line first, in the same step (once queued, a worker may start the job at
        # once): only the process whose change is made says it.
        line = f"queued again, to run from the start: {reason}"
        queued = copy.copy(job)
        requeue(queued)
        await self.backend.change(
            queued, JobState.QUEUED.value, owner=worker, hand_to="", enqueue=True, line=line
        )
