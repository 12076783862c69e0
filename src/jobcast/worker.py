"""The one worker: it takes queued jobs from a backend, within the limits, and runs them.

A worker claims jobs as it has room (``max_workers`` at once, and each task's
``max_concurrency``), starts each through the lifecycle (a job cancelled meanwhile is not
its to run), runs it under supervision (:class:`~jobcast._execution.Execution`: threads,
processes, commands), and records its end through the lifecycle. The server runs one in
process on the local backend.
"""

from __future__ import annotations

import logging
from collections import deque

import anyio
from anyio.abc import TaskGroup

from ._execution import Execution, Outcome, Run
from .backends.base import Backend
from .exceptions import BackendUnavailable
from .jobs import Job
from .lifecycle import Lifecycle
from .settings import Settings
from .tasks import TaskRegistry

__all__ = ["Worker"]

logger = logging.getLogger("jobcast")


class Worker:
    """Runs the jobs of ``backend`` that it claims, up to ``max_workers`` at once.

    ``name`` is how the backend knows it; ``who`` says it in words ("the server").
    """

    def __init__(
        self,
        registry: TaskRegistry,
        settings: Settings,
        backend: Backend,
        lifecycle: Lifecycle,
        task_group: TaskGroup,
        *,
        name: str,
        who: str,
    ) -> None:
        self.registry = registry
        self.settings = settings
        self.name = name
        self.who = who
        self._backend = backend
        self._lifecycle = lifecycle
        publisher, host = backend.publisher(name), who.removeprefix("the ")
        # A slot that frees up takes the next job at once.
        self._execution = Execution(
            settings, task_group, publisher, self._ended, host=host, on_freed=self.take
        )
        self._held: deque[Job] = deque()  # claimed, waiting for room for their task
        self._wake = anyio.Event()
        self._grace = anyio.CancelScope()
        self._taking = True
        # One take at a time: the loop in run() and a freed slot both take, and on Redis a
        # start awaits, so two at once would start the same held job twice. A take asked
        # for while one runs makes that one look again.
        self._taking_now = False
        self._take_again = False
        backend.listen(name, on_cancel=self.cancel, on_work=self.wake)

    @property
    def runs(self) -> dict[str, Run]:
        """The jobs running now, by id."""
        return self._execution.runs

    def cancel(self, job_id: str) -> None:
        """Ask the job ``job_id`` to stop, if it runs here."""
        self._execution.cancel(job_id)

    def wake(self) -> None:
        """Look for work now (jobs were queued, or a limit freed)."""
        self._wake.set()

    async def run(self) -> None:
        """Take and start jobs as there is room, until :meth:`stop` or :meth:`drain`."""
        while self._taking:
            await self.take()
            await self._wake.wait()
            self._wake = anyio.Event()

    async def take(self) -> None:
        """Start held jobs that now have room, then claim and start more while there is."""
        if self._taking_now:
            self._take_again = True
            return
        self._taking_now = True
        try:
            self._take_again = True
            while self._take_again:
                self._take_again = False
                await self._take_once()
        finally:
            self._taking_now = False

    async def _take_once(self) -> None:
        await self._start_held()
        while self._taking and (free := self._free()) > 0:
            jobs = await self._backend.claim(self.name, free, self._has_room)
            if not jobs:
                return
            self._held.extend(jobs)
            await self._start_held()

    async def stop(self, grace_period: float) -> None:
        """Take no more jobs; ask the running ones to stop, and abandon those still running
        after ``grace_period`` (recorded ``interrupted``, or queued again)."""
        self.stop_taking()
        await self._execution.stop(grace_period)
        await self._give_back_held()

    async def drain(self) -> None:
        """Take no more jobs, let the running ones finish within the grace period, then stop
        them within ``kill_grace``; give back what was claimed but never started.
        :meth:`hurry` skips the wait."""
        self.stop_taking()
        with self._grace:
            self._grace.deadline = anyio.current_time() + self.settings.grace_period
            await self._execution.idle()
        await self._execution.stop(self.settings.kill_grace)
        await self._give_back_held()

    def hurry(self) -> None:
        """Stop waiting for running jobs to finish (a second SIGTERM)."""
        self._grace.cancel()

    @property
    def taking(self) -> bool:
        """Whether it still takes jobs (it stops on :meth:`stop` or :meth:`drain`)."""
        return self._taking

    def stop_taking(self) -> None:
        """Take no more jobs (what the first SIGTERM does to a worker)."""
        self._taking = False
        self._wake.set()

    async def _give_back_held(self) -> None:
        while self._held:
            await self._backend.unclaim(self._held.popleft())

    def _free(self) -> int:
        return self.settings.max_workers - len(self.runs) - len(self._held)

    async def _start_held(self) -> None:
        if not self._taking:
            return  # stopping: what it holds goes back to the queue
        for job in list(self._held):
            if job.task in self.registry and not self._has_room(job.task, 0):
                continue
            self._held.remove(job)
            try:
                await self._start(job)
            except BackendUnavailable:
                self._held.appendleft(job)  # Redis is down: tried again on the next round
                await anyio.sleep(0.5)
                return

    async def _start(self, job: Job) -> None:
        if job.task not in self.registry:
            message = (
                f"task {job.task!r} is no longer registered in {self.who}, so the job cannot "
                "run: register it again (every process with the same module:attr), or start "
                "another job"
            )
            await self._lifecycle.refuse(job, message)
            return
        if await self._lifecycle.start(job, self.name):
            self._execution.start(job, self.registry.get(job.task))
        else:
            await self._backend.release(job)

    def _has_room(self, task_name: str, taking: int) -> bool:
        if task_name not in self.registry:
            return True  # to be refused, which needs no room
        limit = self.registry.get(task_name).max_concurrency
        return limit is None or self._execution.running(task_name) + taking < limit

    async def _ended(self, run: Run, outcome: Outcome) -> None:
        await self._lifecycle.end(run.job, outcome, self.name, stopping=run.stopping, who=self.who)
        self._wake.set()
