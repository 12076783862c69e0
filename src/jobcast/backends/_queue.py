"""The queue of the local backend: jobs that may run now, in the order they run, and jobs
that wait for their time (a delay, or a retry's wait)."""

from __future__ import annotations

import bisect
import heapq
from collections.abc import Iterator

from ..jobs import Job

__all__ = ["JobQueue"]


def _order(job: Job) -> str:
    return job.order


class JobQueue:
    """Queued jobs: those that may run, by :attr:`~jobcast.jobs.Job.order` (priority, then
    age), and those whose ``run_at`` is still to come, by that time."""

    def __init__(self) -> None:
        self._ready: list[Job] = []
        self._later: list[tuple[float, str, Job]] = []  # a heap by run_at

    def add(self, job: Job, now: float) -> None:
        """Queue ``job``: to run in its turn, or once its ``run_at`` has come."""
        if job.run_at is not None and job.run_at > now:
            heapq.heappush(self._later, (job.run_at, job.order, job))
        else:
            bisect.insort(self._ready, job, key=_order)

    def remove(self, job: Job) -> None:
        if job in self._ready:
            self._ready.remove(job)
            return
        self._later = [entry for entry in self._later if entry[2] is not job]
        heapq.heapify(self._later)

    def ready(self, now: float) -> list[Job]:
        """The jobs that may run at ``now``, in the order they run."""
        while self._later and self._later[0][0] <= now:
            bisect.insort(self._ready, heapq.heappop(self._later)[2], key=_order)
        return self._ready

    def next_due(self) -> float | None:
        """When the next waiting job becomes runnable, if one waits."""
        return self._later[0][0] if self._later else None

    def __contains__(self, job: object) -> bool:
        return job in self._ready or any(entry[2] is job for entry in self._later)

    def __len__(self) -> int:
        return len(self._ready) + len(self._later)

    def __iter__(self) -> Iterator[Job]:
        """Every queued job: those that may run, in order, then the waiting ones by time."""
        yield from self._ready
        yield from (entry[2] for entry in sorted(self._later, key=lambda e: e[:2]))
