"""The jobs a service knows, as the API reads them: one table, whichever backend runs them."""

from __future__ import annotations

import itertools
from typing import Any, NamedTuple

from .exceptions import UnknownJob
from .jobs import TERMINAL_STATES, Job, JobState
from .settings import Settings

__all__ = ["JobTable", "Submitted"]

_TERMINAL_NAMES = frozenset(state.value for state in TERMINAL_STATES)


class Submitted(NamedTuple):
    """What submitting did: the job, and whether it is a new one."""

    job: Job
    created: bool


class JobTable:
    """The jobs a service knows, in creation order, and the reads the API makes of them.

    Reads show each job as :attr:`~jobcast.jobs.Job.shown`: as of its newest stored event.
    """

    settings: Settings

    def __init__(self) -> None:
        self.jobs: dict[str, Job] = {}

    def get(self, job_id: str) -> Job:
        try:
            return self.jobs[job_id]
        except KeyError:
            raise UnknownJob(job_id) from None

    def shown(self, job_id: str) -> dict[str, Any]:
        """The snapshot clients may see of ``job_id``; :class:`~jobcast.UnknownJob` if none."""
        shown = self.get(job_id).shown
        if shown is None:
            raise UnknownJob(job_id)
        return shown

    def newest(
        self, *, state: JobState | None = None, task: str | None = None, limit: int = 100
    ) -> list[dict[str, Any]]:
        """Snapshots of jobs, newest first, optionally of one state and one task."""
        found: list[dict[str, Any]] = []
        for job in reversed(self.jobs.values()):
            shown = job.shown
            if shown is None or (task is not None and job.task != task):
                continue
            if state is None or shown["state"] == state.value:
                found.append(shown)
                if len(found) >= limit:
                    break
        return found

    def snapshot(self, task: str | None = None) -> list[dict[str, Any]]:
        """Every active job and the newest finished ones, newest first, as clients see them."""
        finished_left = self.settings.snapshot_jobs
        found: list[dict[str, Any]] = []
        for job in reversed(self.jobs.values()):
            shown = job.shown
            if shown is None or (task is not None and job.task != task):
                continue
            if shown["state"] in _TERMINAL_NAMES:
                if finished_left == 0:
                    continue
                finished_left -= 1
            found.append(shown)
        return found

    def evict(self) -> list[str]:
        """Drop the oldest finished jobs past ``max_jobs``; return their ids."""
        excess = len(self.jobs) - self.settings.max_jobs
        if excess <= 0:
            return []
        finished = (job.id for job in self.jobs.values() if job.finished)
        gone = list(itertools.islice(finished, excess))
        for job_id in gone:
            del self.jobs[job_id]
        return gone
