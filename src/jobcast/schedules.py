"""Schedules: tasks started on a cron expression or every so many seconds, one job per tick.

A tick is a due time. The job of a tick is made in one atomic step with the claim of the
tick (:class:`~jobcast.lifecycle.Placement` ``tick``): a tick already claimed is refused, so
however many processes of a deployment run a :class:`Scheduler`, each tick starts one job,
in order. After downtime (a scheduler's first look, or one a minute behind), the ticks missed
start one job, the newest's, not one each.
Cron expressions are read by croniter, in UTC, with an optional leading seconds field.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

import anyio
from croniter import CroniterBadDateError, croniter

from .exceptions import JobcastError

__all__ = ["Schedule", "ScheduleBook", "ScheduleState", "Scheduler"]

logger = logging.getLogger("jobcast")

#: Seconds at most between two looks at the schedules (a pause or resume made elsewhere).
LOOK_EVERY = 1.0
#: The shortest interval of an ``every`` schedule.
MIN_EVERY = 0.1
#: A scheduler this many seconds behind a due time (an outage of the backend, a pause of
#: the whole process) starts only the newest one, as after downtime.
CATCH_UP_AFTER = 60.0
#: The most due times one look starts for a schedule (the rest at the next look).
MAX_BEHIND = 100


@dataclass(frozen=True, slots=True)
class Schedule:
    """Start a job of ``task`` with ``params`` on a ``cron`` expression, or ``every`` seconds."""

    name: str
    task: str
    cron: str | None = None
    every: float | None = None
    params: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.name.replace("-", "_").isidentifier():
            raise ValueError(
                f"a schedule's name must be letters, digits, '_' or '-', not {self.name!r}"
            )
        if (self.cron is None) == (self.every is None):
            raise ValueError(f"schedule {self.name!r}: give either cron= or every=, not both")
        if self.cron is not None and not croniter.is_valid(
            self.cron, second_at_beginning=_has_seconds(self.cron)
        ):
            raise ValueError(
                f"schedule {self.name!r}: {self.cron!r} is not a cron expression; write five "
                "fields (minute hour day month weekday), or six with seconds first"
            )
        if self.cron is not None:
            try:
                self.after(time.time())
            except CroniterBadDateError:
                raise ValueError(
                    f"schedule {self.name!r}: {self.cron!r} names no date that comes (such "
                    "as February 30th); check its day and month fields"
                ) from None
        if self.every is not None and not (
            isinstance(self.every, int | float)
            and math.isfinite(self.every)
            and self.every >= MIN_EVERY
        ):
            raise ValueError(
                f"schedule {self.name!r}: every must be at least {MIN_EVERY} seconds, "
                f"got {self.every!r}"
            )

    @classmethod
    def of(
        cls,
        task: str,
        cron: str | None,
        every: float | None,
        params: Mapping[str, Any] | None,
    ) -> Schedule | None:
        """The schedule a task declares of its own (named after it), if it declares one."""
        if cron is None and every is None:
            if params:
                raise ValueError(f"task {task!r}: schedule_params needs schedule= or every=")
            return None
        return cls(task, task, cron=cron, every=every, params=dict(params or {}))

    @property
    def expression(self) -> str:
        """The schedule in words: its cron expression, or ``every 30 s``."""
        return self.cron if self.cron is not None else f"every {self.every:g} s"

    def after(self, tick: float) -> float:
        """The first due time after ``tick``."""
        if self.every is not None:
            return tick + self.every
        assert self.cron is not None
        due: float = croniter(
            self.cron, tick, second_at_beginning=_has_seconds(self.cron)
        ).get_next(float)
        return due

    def newest_due(self, tick: float, now: float) -> float:
        """The newest due time after ``tick`` and not after ``now`` (``after(tick)`` is)."""
        if self.every is not None:
            return tick + math.floor((now - tick) / self.every) * self.every
        assert self.cron is not None
        due: float = croniter(
            self.cron, now + 1e-6, second_at_beginning=_has_seconds(self.cron)
        ).get_prev(float)
        return max(due, self.after(tick))

    def info(self, state: ScheduleState, now: float) -> dict[str, Any]:
        """The schedule as ``GET /api/schedules`` shows it, in ``state`` at ``now``."""
        next_run = None
        if not state.paused:
            next_run = max(now, self.after(now if state.tick is None else state.tick))
        return {
            "name": self.name,
            "task": self.task,
            "expression": self.expression,
            "params": dict(self.params),
            "paused": state.paused,
            "next_run_at": None if next_run is None else _iso(next_run),
            "last_job_id": state.last_job_id,
        }


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat()


def _has_seconds(cron: str) -> bool:
    return len(cron.split()) == 6


@dataclass(slots=True)
class ScheduleState:
    """What a deployment knows of a schedule: the newest tick it claimed (or from when it
    counts, before its first), whether it is paused, and the job of its newest tick."""

    tick: float | None = None
    paused: bool = False
    last_job_id: str | None = None


class ScheduleBook(Protocol):
    """Where a backend keeps the schedules' states (ticks are claimed with the jobs)."""

    async def schedule_states(self, names: list[str]) -> dict[str, ScheduleState]:
        """The state of each schedule named (a fresh one for one never seen)."""
        ...

    async def start_counting(self, name: str, since: float) -> None:
        """Count ``name``'s ticks from ``since``, unless it has a tick already."""
        ...

    async def set_paused(self, name: str, paused: bool, tick: float) -> None:
        """Pause or resume ``name``; a resumed one counts its ticks from ``tick``."""
        ...


class Submit(Protocol):
    """Start the job of ``schedule``'s tick due at ``tick``: its id, or None if another
    process started it first."""

    async def __call__(self, schedule: Schedule, tick: float) -> str | None: ...


class Scheduler:
    """Starts the job of each due tick of ``schedules`` through ``submit``."""

    def __init__(self, schedules: list[Schedule], book: ScheduleBook, submit: Submit) -> None:
        self.schedules = schedules
        self._book = book
        self._submit = submit
        self._failing: dict[str, float] = {}  # schedule -> the tick whose start failed
        self._looked = False  # whether it has looked once: the first look catches up

    async def run(self) -> None:
        """Start what is due, then wait until the next due time (a second at most)."""
        while True:
            try:
                wait = await self.tick(time.time())
            except JobcastError as exc:  # the backend cannot be reached: it says so itself
                logger.debug("schedules wait: %s", exc)
                wait = LOOK_EVERY
            except Exception:  # a bug: said, and the schedules go on
                logger.exception("jobcast failed while looking at the schedules; please report it")
                wait = LOOK_EVERY
            await anyio.sleep(wait)

    async def tick(self, now: float) -> float:
        """Start the job of each schedule that is due at ``now``; return the seconds until
        the next due time (a second at most)."""
        if not self.schedules:
            return 3600.0
        states = await self._book.schedule_states([schedule.name for schedule in self.schedules])
        wait = LOOK_EVERY
        for schedule in self.schedules:
            state = states[schedule.name]
            if state.paused:
                continue
            if state.tick is None:
                await self._book.start_counting(schedule.name, now)
                state.tick = now
            due = schedule.after(state.tick)
            for _ in range(MAX_BEHIND):
                if due > now:
                    break
                if not self._looked or now - due > CATCH_UP_AFTER:
                    due = schedule.newest_due(state.tick, now)  # after downtime: once
                if not await self._start(schedule, due):
                    break  # tried again at the next look
                state.tick, due = due, schedule.after(due)
            wait = min(wait, max(0.0, due - now))
        self._looked = True
        return wait

    async def _start(self, schedule: Schedule, tick: float) -> bool:
        """Start the job of ``tick`` (or find another process did); whether that is done."""
        try:
            await self._submit(schedule, tick)
        except Exception as exc:
            if self._failing.get(schedule.name) != tick:  # said once per tick
                self._failing[schedule.name] = tick
                logger.error(
                    "schedule %r could not start its job of %s (%s); it is tried again each "
                    "second until it can",
                    schedule.name,
                    time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(tick)),
                    exc,
                )
            return False
        self._failing.pop(schedule.name, None)
        return True
