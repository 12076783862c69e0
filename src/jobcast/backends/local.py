"""The local backend: a service's jobs in this process, its queue, and its event log, kept
in the store (SQLite by default).

Every step runs on the event loop without awaiting before its change is made, so steps never
interleave: a check and its change are one atomic step, as the change script makes them in
Redis. The store writes later, in batches; a job is shown to clients as of its newest stored
event, and a new job is answered once stored.
"""

from __future__ import annotations

import asyncio
import copy
import time
from collections import Counter, deque
from collections.abc import Callable
from typing import Any, Unpack

import anyio

from .._execution import Outcome, Publisher, finish
from ..eventlog import EventLog
from ..events import Event, job_payload
from ..exceptions import StoreError, StoreUnavailable
from ..jobs import Job, JobState
from ..schedules import ScheduleState
from ..settings import Settings
from ..store import ReportsWrites, Store
from ..table import JobTable
from ._queue import JobQueue
from .base import Checks, Refused, Room

__all__ = ["LocalBackend", "LocalPublisher"]

#: Seconds a new job waits for its first event to be stored before it is refused.
STORED_WITHIN = 10.0


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
        payload = job_payload(name, snapshot)
        event = self.log.append(name, job_id=job.id, task=job.task, payload=payload)
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

    def deleted(self, job: Job) -> None:
        """Publish that ``job`` is deleted, and drop it and its events from the store."""
        payload = {"job_id": job.id}
        event = self.log.append("deleted", job_id=job.id, task=job.task, payload=payload)
        self._store.record(event, job)
        self._store.delete(job.id)

    def stored(self, seq: int) -> None:
        """The store has written every event up to ``seq``: show what they say."""
        self.log.stored(seq)
        unstored = self._unstored
        while unstored and unstored[0][0] <= seq:
            _, job, snapshot = unstored.popleft()
            job.shown = snapshot


class LocalBackend:
    """Jobs in this process: the table, the queue and the event log, kept in ``store``."""

    def __init__(self, log: EventLog, store: Store, settings: Settings) -> None:
        self.log = log
        self.settings = settings
        self.table = JobTable()
        self.table.settings = settings
        self.durable = store.durable
        self._store = store
        self._publisher = LocalPublisher(log, store)
        self._queue = JobQueue()
        self._timer: asyncio.TimerHandle | None = None  # wakes the workers when one is due
        self._holders: dict[str, str] = {}  # job id -> the worker that runs it
        self._twins: dict[str, str] = {}  # the duplicate key of an active job -> its id
        self._twin_of: dict[str, str] = {}  # and back
        self._on_cancel: dict[str, Callable[[str], None]] = {}
        self._on_work: list[Callable[[], None]] = []
        self._schedules: dict[str, ScheduleState] = {}
        #: Why the store cannot write now, if it cannot: new jobs are refused meanwhile.
        self.store_problem: StoreError | None = None
        if isinstance(store, ReportsWrites):
            store.on_stored(self._publisher.stored)
            store.on_health(self._store_health)

    # -- the Backend Protocol --------------------------------------------------------------------

    async def admit(self, job: Job, *, twin: str) -> None:
        if self.store_problem is not None:
            raise StoreUnavailable(self.store_problem)
        if twin and twin in self._twins:
            raise Refused("twin", self.table.jobs[self._twins[twin]])
        if len(self._queue) >= self.settings.max_queue:
            raise Refused("full")
        schedule = self._ticked(job)
        self.table.jobs[job.id] = job
        if twin:
            self._twins[twin], self._twin_of[job.id] = job.id, twin
        self._publisher.state(job, JobState.QUEUED.value)  # kept with its tick, if one
        if schedule is not None:
            schedule.tick, schedule.last_job_id = job.tick, job.id
            self._keep_schedule(job.schedule or "")
        self._enqueue(job)
        self._evict()
        await self._until_stored(job)

    async def change(self, update: Job, name: str, **checks: Unpack[Checks]) -> None:
        self.apply(update, name, **checks)

    def apply(self, update: Job, name: str, **checks: Unpack[Checks]) -> None:
        """:meth:`change`, at once: for code on the loop that cannot await."""
        expect_state, owner = checks.get("expect_state"), checks.get("owner")
        hand_to, enqueue = checks.get("hand_to"), checks.get("enqueue", False)
        job = self.table.jobs.get(update.id)
        if job is None:
            raise Refused("gone")
        if job.finished:
            raise Refused("finished")
        if expect_state is not None and job.state is not expect_state:
            raise Refused(job.state.value)
        if owner is not None and self._holders.get(job.id) != owner:
            raise Refused("owner")
        line = checks.get("line")
        if line is not None:
            self._publisher.lines(job, [line])
        if update is not job:
            job.update(update)
        if hand_to is not None:
            if hand_to:
                self._holders[job.id] = hand_to
            else:
                self._holders.pop(job.id, None)
        if job.state is not JobState.QUEUED and job in self._queue:
            self._queue.remove(job)
        if job.finished:
            self._holders.pop(job.id, None)
            twin = self._twin_of.pop(job.id, None)
            if twin is not None:
                del self._twins[twin]
        self._publisher.state(job, name)
        if enqueue:
            self._enqueue(job)

    async def delete(self, job: Job) -> None:
        known = self.table.jobs.get(job.id)
        if known is None:
            raise Refused("gone")
        if not known.finished:
            raise Refused(known.state.value)
        del self.table.jobs[job.id]
        self._publisher.deleted(known)

    async def lines(self, job: Job, lines: list[str], *, owner: str | None = None) -> None:
        self._publisher.lines(job, lines)

    async def history(
        self, job: Job, *, after: int, before: int, limit: int, names: tuple[str, ...]
    ) -> list[Event]:
        # What memory no longer holds may still be on its way to the disk.
        with anyio.move_on_after(STORED_WITHIN):
            await self.log.wait_stored(before - 1)
        kept = await self._store.history(job.id, after=after, limit=limit, names=names)
        return [event for event in kept if event.seq < before]

    def publisher(self, worker: str) -> Publisher:
        return self._publisher

    async def claim(self, worker: str, n: int, room: Room) -> list[Job]:
        taken: list[Job] = []
        counts: Counter[str] = Counter()
        for job in self._queue.ready(time.time()):
            if len(taken) >= n:
                break
            if room(job.task, counts[job.task]):
                taken.append(job)
                counts[job.task] += 1
        for job in taken:
            self._queue.remove(job)
        return taken

    async def release(self, job: Job) -> None:
        """Nothing to acknowledge here: the queue is this process's."""

    async def unclaim(self, job: Job) -> None:
        if job.state is JobState.QUEUED and job not in self._queue:
            self._queue.add(job, time.time())

    async def ask_to_stop(self, job: Job) -> None:
        worker = self._holders.get(job.id)
        callback = self._on_cancel.get(worker) if worker is not None else None
        if callback is not None:
            callback(job.id)

    def listen(
        self, worker: str, *, on_cancel: Callable[[str], None], on_work: Callable[[], None]
    ) -> None:
        self._on_cancel[worker] = on_cancel
        self._on_work.append(on_work)

    async def find(self, job_id: str) -> Job:
        return self.table.get(job_id)  # every job of this service is in its table

    async def catch_up(self, seq: int) -> None:
        """Nothing to wait for: every event of this service is published here."""

    async def health(self) -> dict[str, Any]:
        readings: dict[str, Any] = {"queued": len(self._queue)}
        if self.store_problem is not None:
            readings["problem"] = str(self.store_problem)
        return readings

    # -- the schedules (ScheduleBook) ------------------------------------------------------------

    async def schedule_states(self, names: list[str]) -> dict[str, ScheduleState]:
        return {name: copy.copy(self._schedules.get(name, ScheduleState())) for name in names}

    async def start_counting(self, name: str, since: float) -> None:
        state = self._schedules.setdefault(name, ScheduleState())
        if state.tick is None:
            state.tick = since
            self._keep_schedule(name)

    async def set_paused(self, name: str, paused: bool, tick: float) -> None:
        state = self._schedules.setdefault(name, ScheduleState())
        state.paused = paused
        if not paused:
            state.tick = max(state.tick or tick, tick)
        self._keep_schedule(name)

    def _ticked(self, job: Job) -> ScheduleState | None:
        """The state of the schedule whose tick ``job`` is; :class:`Refused` (``ticked``)
        when that tick has started its job already."""
        if job.tick is None or job.schedule is None:
            return None
        state = self._schedules.setdefault(job.schedule, ScheduleState())
        if state.tick is not None and state.tick >= job.tick:
            raise Refused("ticked")
        return state

    def _keep_schedule(self, name: str) -> None:
        state = self._schedules[name]
        value = {"tick": state.tick, "paused": state.paused, "last_job_id": state.last_job_id}
        self._store.set_state(f"schedule:{name}", value)

    # -- this process's own ---------------------------------------------------------------------

    def restore(self, jobs: list[Job], state: dict[str, dict[str, Any]]) -> list[Job]:
        """Take back the jobs the store kept, oldest first, and the schedules' states; queue
        the jobs that were queued.

        Returns the jobs that were running when the process stopped: their worker is gone.
        """
        for key, value in state.items():
            if key.startswith("schedule:"):
                self._schedules[key.removeprefix("schedule:")] = ScheduleState(**value)
        running: list[Job] = []
        for job in jobs:
            if job.schedule is not None and job.tick is not None:  # its tick was claimed
                schedule = self._schedules.setdefault(job.schedule, ScheduleState())
                if schedule.tick is None or schedule.tick < job.tick:
                    schedule.tick, schedule.last_job_id = job.tick, job.id
            self.table.jobs[job.id] = job
            job.shown = job.snapshot()  # it is what the store holds
            if job.state is JobState.QUEUED:
                self._queue.add(job, time.time())
            elif job.state is JobState.RUNNING:
                self._holders[job.id] = "the server before its restart"
                running.append(job)
        self._evict()
        self._tell_of_work()  # and again when the first waiting job is due
        return running

    def holder(self, job_id: str) -> str | None:
        """The worker that runs ``job_id``, if one does."""
        return self._holders.get(job_id)

    def waiting(self) -> list[Job]:
        """The queued jobs: those that may run, in the order they run, then those waiting."""
        return list(self._queue)

    def _enqueue(self, job: Job) -> None:
        self._queue.add(job, time.time())
        self._tell_of_work()

    def _tell_of_work(self) -> None:
        """Wake the workers, and again when the next waiting job is due."""
        for callback in self._on_work:
            callback()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        now = time.time()
        self._queue.ready(now)  # what is due now waits no more, whether or not it is taken
        due = self._queue.next_due()
        if due is not None:
            loop = asyncio.get_running_loop()
            self._timer = loop.call_later(due - now, self._tell_of_work)

    def _store_health(self, problem: StoreError | None) -> None:
        self.store_problem = problem
        self.log.poke()  # submissions waiting on a write learn of it

    async def _until_stored(self, job: Job) -> None:
        """Wait until the first event of ``job`` is stored; if the store fails first, take
        the job back and raise :class:`~jobcast.StoreUnavailable`."""
        log, seq = self.log, job.last_seq
        with anyio.move_on_after(STORED_WITHIN):
            while log.visible_seq < seq and not log.closed and self.store_problem is None:
                await log.wait(log.visible_seq)
        if log.visible_seq >= seq or log.closed:
            return
        if job.state is JobState.QUEUED and job in self._queue:
            withdrawn = copy.copy(job)
            finish(withdrawn, Outcome(JobState.CANCELLED))
            self.apply(withdrawn, JobState.CANCELLED.value)
        else:
            await self.ask_to_stop(job)
        problem = self.store_problem or StoreError(
            str(self._store), f"did not write within {STORED_WITHIN:g} s", "check the disk"
        )
        raise StoreUnavailable(problem)

    def _evict(self) -> None:
        gone = self.table.evict()
        if gone:
            self._store.forget(gone)
