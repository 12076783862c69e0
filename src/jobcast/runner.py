"""The runner: the service of one process that runs its own jobs, on the local backend.

Jobs are admitted, started, ended and cancelled by the one :class:`~jobcast.lifecycle.Lifecycle`,
over a :class:`~jobcast.backends.local.LocalBackend` (the event log and the store), and run by
an in-process :class:`~jobcast.worker.Worker`. Data flows one way: a supervisor turns what its
task does into events, the event log numbers and encodes them, and the streams read the log.
"""

from __future__ import annotations

import copy
from typing import Any, Unpack

import anyio
from anyio.abc import TaskGroup

from ._execution import Outcome, finish
from ._limits import JobRate
from .backends.local import STORED_WITHIN, LocalBackend
from .eventlog import EventLog
from .jobs import Job, JobError, JobState
from .lifecycle import Placement
from .service import Service
from .settings import Settings
from .store import Store
from .table import Submitted
from .tasks import TaskRegistry
from .worker import Worker

__all__ = ["Runner"]

#: The name the in-process worker has in the backend, and in what it says.
WORKER, WHO = "server", "the server"


class Runner(Service):
    """Queues jobs, runs them within the limits in this process, and publishes everything
    they do."""

    def __init__(
        self,
        registry: TaskRegistry,
        log: EventLog,
        store: Store,
        settings: Settings,
        task_group: TaskGroup,
    ) -> None:
        backend = LocalBackend(log, store, settings)
        super().__init__(registry, settings, backend, rate=JobRate(settings.jobs_per_minute))
        self.backend: LocalBackend = backend
        self.worker = Worker(
            registry, settings, backend, self.lifecycle, task_group, name=WORKER, who=WHO
        )
        self._stopped = anyio.Event()
        self._task_group = task_group

    async def health(self) -> dict[str, Any]:
        """How many jobs run and wait; ``problem`` when the store cannot write."""
        return {"running": len(self.worker.runs), **await self.backend.health()}

    async def submit(
        self, task_name: str, params: object, **placement: Unpack[Placement]
    ) -> Submitted:
        """Queue a job and start it when there is room; answer once it is stored."""
        submitted = await super().submit(task_name, params, **placement)
        # The worker is in this process: it takes the job now if it has room, so the answer
        # already shows the job running.
        await self.worker.take()
        return submitted

    async def cancel(self, job_id: str) -> Job:
        """Cancel a queued job at once (answered once that is stored), or ask a running one
        to stop. Raises :class:`~jobcast.UnknownJob` or :class:`~jobcast.JobFinished`."""
        job = self.get(job_id)
        was_queued = job.state is JobState.QUEUED
        await super().cancel(job_id)
        if was_queued and job.finished:
            with anyio.move_on_after(STORED_WITHIN):
                await self.log.wait_stored(job.last_seq)
        return job

    async def start(self, jobs: list[Job], state: dict[str, dict[str, Any]]) -> None:
        """Take back the jobs a durable store kept, and go: queued ones run again.

        A job that was running when the process stopped cannot be resumed mid-way: its
        worker (this server, before) is gone, so it is queued again to run from the start
        when its task is declared ``retry_on_restart`` (ahead of the jobs still waiting),
        and ends ``interrupted`` otherwise, when it was last known running.
        """
        gone = self.backend.restore(jobs, state)
        await self.lifecycle.all_gone(
            gone,
            "the server stopped while the job was running",
            lambda job: self.backend.holder(job.id) or WORKER,
        )
        await self.worker.take()  # what waited starts now, as there is room
        self._task_group.start_soon(self.worker.run, name="jobcast worker")
        self._task_group.start_soon(self.lifecycle.scheduler().run, name="jobcast schedules")

    async def shutdown(self) -> None:
        """Stop accepting jobs, stop the running ones within the grace period, record them.

        Queued jobs stay queued in a durable store (they run at the next start) and end
        ``interrupted`` otherwise. Running jobs are asked to stop; those still running after
        the grace period are abandoned (their threads run on, unwatched) and end
        ``interrupted`` too, or, in a durable store and when their task is declared
        ``retry_on_restart``, are queued again for the next start. Calling it again waits
        for the same end.
        """
        if not self.lifecycle.accepting:
            await self._stopped.wait()
            return
        await super().shutdown()
        try:
            if not self.backend.durable:
                error = JobError.interrupted("the server stopped before the job started")
                for job in self.backend.waiting():
                    ended = copy.copy(job)
                    finish(ended, Outcome(JobState.INTERRUPTED, error=error))
                    self.backend.apply(ended, JobState.INTERRUPTED.value)
            await self.worker.stop(self.settings.grace_period)
        finally:
            self._stopped.set()
