"""The runner: the queue and the limits of one process that runs its own jobs.

Data flows one way: a supervisor turns what its task does into events, the event log numbers
and encodes them, and the streams read the log. Every state change goes through
:meth:`LocalPublisher.state`, so the log, the store and the in-memory jobs never disagree.
"""

from __future__ import annotations

import itertools
from collections import deque
from typing import Any

import anyio
from anyio.abc import TaskGroup

from ._execution import Execution, Outcome, Run, finish, requeue
from ._limits import JobRate
from .eventlog import EventLog
from .exceptions import (
    DuplicateJob,
    JobFinished,
    NotAccepting,
    QueueFull,
    StoreError,
    StoreUnavailable,
)
from .jobs import Job, JobError, JobState, now
from .settings import Settings
from .store import ReportsWrites, Store
from .table import JobTable, Submitted
from .tasks import TaskRegistry

__all__ = ["LocalPublisher", "Runner"]

#: Seconds a new job waits for its first event to be stored before it is refused.
_STORED_WITHIN = 10.0


class LocalPublisher:
    """Publishes into this process's event log, and keeps every event in the store.

    A job is shown to clients as of its newest stored event (:attr:`Job.shown`): with a
    store that writes later, a change shows once the store reports it written.
    """

    def __init__(self, log: EventLog, store: Store) -> None:
        self.log = log
        self._store = store
        self._unstored: deque[tuple[int, Job, dict[str, Any]]] = deque()

    def state(self, job: Job, name: str) -> None:
        """Publish ``job``'s snapshot as event ``name``."""
        snapshot = job.snapshot()
        event = self.log.append(name, job_id=job.id, task=job.task, payload={"job": snapshot})
        if not job.first_seq:
            job.first_seq = event.seq
        job.last_seq, job.updated_at = event.seq, event.ts
        self._store.record(event, job)
        if self.log.holds:
            self._unstored.append((event.seq, job, snapshot))
        else:
            job.shown = snapshot

    def lines(self, job: Job, lines: list[str]) -> None:
        """Publish log lines of ``job``, each as one ``log`` event."""
        for line in lines:
            payload = {"job_id": job.id, "line": line}
            event = self.log.append("log", job_id=job.id, task=job.task, payload=payload)
            self._store.record(event, job)

    def stored(self, seq: int) -> None:
        """The store has written every event up to ``seq``: show what they say."""
        self.log.stored(seq)
        unstored = self._unstored
        while unstored and unstored[0][0] <= seq:
            _, job, snapshot = unstored.popleft()
            job.shown = snapshot


class Runner(JobTable):
    """Queues jobs, runs them within the limits, and publishes everything they do."""

    def __init__(
        self,
        registry: TaskRegistry,
        log: EventLog,
        store: Store,
        settings: Settings,
        task_group: TaskGroup,
    ) -> None:
        super().__init__()
        self.registry = registry
        self.log = log
        self.settings = settings
        self._store = store
        self._publisher = LocalPublisher(log, store)
        self._execution = Execution(settings, task_group, self._publisher, self._ended)
        self.rate = JobRate(settings.jobs_per_minute)
        self._queue: deque[Job] = deque()
        self._accepting = True
        self._stopped = anyio.Event()
        #: Why the store cannot write now, if it cannot: new jobs are refused meanwhile.
        self.store_problem: StoreError | None = None
        if isinstance(store, ReportsWrites):
            store.on_stored(self._publisher.stored)
            store.on_health(self.store_health)

    # -- the public operations -----------------------------------------------------------------

    async def submit(self, task_name: str, params: object) -> Submitted:
        """Validate ``params``, queue a job of ``task_name`` and start it when there is room.

        It returns once the job is stored, so a job it returned survives a crash. A task that
        joins duplicates hands back the equal job already queued or running. Raises
        :class:`~jobcast.UnknownTask`, pydantic's ``ValidationError``,
        :class:`~jobcast.DuplicateJob`, :class:`~jobcast.QueueFull`,
        :class:`~jobcast.NotAccepting` or :class:`~jobcast.StoreUnavailable`; none leaves a
        job behind. Nothing awaits before the job is queued, so two submissions never
        interleave: that is what makes the duplicate check exact.
        """
        if not self._accepting:
            raise NotAccepting("the server is shutting down")
        if self.store_problem is not None:
            raise StoreUnavailable(self.store_problem)
        task = self.registry.get(task_name)
        values = task.validate(params)
        if task.duplicates != "allow":
            twin = self._active_twin(task.name, values)
            if twin is not None and task.duplicates == "join":
                return Submitted(twin, created=False)
            if twin is not None:
                raise DuplicateJob(twin.id, task.name, twin.shown or twin.snapshot())
        if len(self._queue) >= self.settings.max_queue:
            raise QueueFull(self.settings.max_queue, retry_after=5)
        job = Job(task=task.name, params=values, created_at=now())
        self.jobs[job.id] = job
        self._publisher.state(job, JobState.QUEUED.value)
        seq = job.last_seq
        self._queue.append(job)
        self._dispatch()
        self._evict()
        await self._until_stored(seq, job)
        return Submitted(job, created=True)

    async def _until_stored(self, seq: int, job: Job) -> None:
        """Wait until event ``seq`` about a job just made is stored; if the store fails
        first, take the job back and raise :class:`~jobcast.StoreUnavailable`."""
        log = self.log
        with anyio.move_on_after(_STORED_WITHIN):
            while log.visible_seq < seq and not log.closed and self.store_problem is None:
                await log.wait(log.visible_seq)
        if log.visible_seq >= seq or log.closed:
            return
        if job in self._queue:
            self._queue.remove(job)
            self._finish(job, Outcome(JobState.CANCELLED))
        else:
            self._execution.cancel(job.id)
        problem = self.store_problem or StoreError(
            str(self._store), f"did not write within {_STORED_WITHIN:g} s", "check the disk"
        )
        raise StoreUnavailable(problem)

    def store_health(self, problem: StoreError | None) -> None:
        """The store says it cannot write (``problem``), or that it can again (None)."""
        self.store_problem = problem
        self.log.poke()  # submissions waiting on a write learn of it

    def _active_twin(self, task: str, params: dict[str, Any]) -> Job | None:
        # Params are validated to JSON data, so equal params compare equal as dicts.
        running = (run.job for run in self._execution.runs.values())
        for job in itertools.chain(self._queue, running):
            if job.task == task and job.params == params:
                return job
        return None

    async def cancel(self, job_id: str) -> Job:
        """Cancel a queued job at once, or ask a running one to stop.

        Raises :class:`~jobcast.UnknownJob` or :class:`~jobcast.JobFinished`.
        """
        job = self.get(job_id)
        if job.finished:
            raise JobFinished(job.id, job.state.value)
        if job.state is JobState.QUEUED:
            self._queue.remove(job)
            self._finish(job, Outcome(JobState.CANCELLED))
            with anyio.move_on_after(_STORED_WITHIN):  # answered once it will hold
                await self.log.wait_stored(job.last_seq)
        else:
            self._execution.cancel(job.id)
        return job

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
            job.shown = job.snapshot()  # it is what the store holds
            if job.finished:
                continue
            if job.task not in self.registry:
                message = (
                    f"task {job.task!r} is no longer registered, so the job cannot run after "
                    "the restart; register the task again, or start another job"
                )
                self._finish(job, Outcome(JobState.FAILED, error=JobError("UnknownTask", message)))
            elif job.state is JobState.QUEUED:
                waiting.append(job)
            elif self.registry.get(job.task).retry_on_restart:
                self._requeue(job, "the server stopped while the job was running")
                requeued.append(job)
            else:
                error = JobError("Interrupted", "the server stopped while the job was running")
                # It ended when it was last known running, not now.
                at = job.updated_at or job.started_at or job.created_at
                self._finish(job, Outcome(JobState.INTERRUPTED, error=error), at=at)
        self._queue.extend(requeued + waiting)
        self._evict()
        self._dispatch()

    async def find(self, job_id: str) -> Job:
        """The job ``job_id`` (every job of this service is in its table)."""
        return self.get(job_id)

    async def health(self) -> dict[str, Any]:
        """How many jobs run and wait; ``problem`` when the store cannot write."""
        readings: dict[str, Any] = {
            "running": len(self._execution.runs),
            "queued": len(self._queue),
        }
        if self.store_problem is not None:
            readings["problem"] = str(self.store_problem)
        return readings

    async def catch_up(self, seq: int) -> None:
        """Nothing to wait for: every event of this service is published here."""

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
            await self._stopped.wait()
            return
        self._accepting = False
        if not self._store.durable:
            error = JobError("Interrupted", "the server stopped before the job started")
            for job in self._queue:
                self._finish(job, Outcome(JobState.INTERRUPTED, error=error))
        self._queue.clear()
        try:
            await self._execution.stop(self.settings.grace_period)
        finally:
            self._stopped.set()

    # -- running jobs --------------------------------------------------------------------------

    def _dispatch(self) -> None:
        runs = self._execution.runs
        while self._accepting and self._queue and len(runs) < self.settings.max_workers:
            job = next((job for job in self._queue if self._has_room(job.task)), None)
            if job is None:
                return
            self._queue.remove(job)
            job.state, job.started_at = JobState.RUNNING, now()
            self._publisher.state(job, JobState.RUNNING.value)
            self._execution.start(job, self.registry.get(job.task))

    def _has_room(self, task_name: str) -> bool:
        limit = self.registry.get(task_name).max_concurrency
        return limit is None or self._execution.running(task_name) < limit

    def _ended(self, run: Run, outcome: Outcome) -> None:
        retry = run.task.retry_on_restart and self._store.durable
        if retry and run.stopping and outcome.state is JobState.INTERRUPTED:
            self._requeue(run.job, "the server is stopping")
        else:
            self._finish(run.job, outcome)
        self._dispatch()

    def _finish(self, job: Job, outcome: Outcome, *, at: float | None = None) -> None:
        finish(job, outcome, at=at)
        self._publisher.state(job, outcome.state.value)

    def _requeue(self, job: Job, reason: str) -> None:
        requeue(job)
        self._publisher.state(job, JobState.QUEUED.value)
        self._publisher.lines(job, [f"queued again, to run from the start: {reason}"])

    def _evict(self) -> None:
        gone = self.evict()
        if gone:
            self._store.forget(gone)
