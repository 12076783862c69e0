"""Jobs: their states, their snapshot, and progress math with tqdm's meaning."""

from __future__ import annotations

import math
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from ._wire import describe
from .exceptions import TaskError

__all__ = [
    "LATEST",
    "MAX_PRIORITY",
    "TERMINAL_STATES",
    "Job",
    "JobError",
    "JobState",
    "Progress",
    "ProgressMeter",
    "check_time",
    "now",
]


class JobState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    INTERRUPTED = "interrupted"  # the server stopped under it


TERMINAL_STATES = frozenset(
    {JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED, JobState.INTERRUPTED}
)


#: Characters kept of an error message: enough for any honest message and its context.
MAX_ERROR_MESSAGE = 10_000


@dataclass(slots=True, frozen=True)
class JobError:
    """Why a job did not succeed: an exception's type name and message."""

    type: str
    message: str

    @classmethod
    def from_exception(cls, exc: BaseException) -> JobError:
        """The error ``exc`` stands for, its text safe to send whatever ``exc`` holds."""
        if isinstance(exc, TaskError):  # raised in a worker: report the worker's exception
            return cls(describe(exc.type_name, 200), describe(exc.message, MAX_ERROR_MESSAGE))
        return cls(describe(type(exc).__name__, 200), describe(exc, MAX_ERROR_MESSAGE))

    @classmethod
    def interrupted(cls, reason: str) -> JobError:
        """Why a job ended ``interrupted``: what stopped under it (``reason``)."""
        return cls("Interrupted", reason)

    def to_dict(self) -> dict[str, str]:
        return {"type": self.type, "message": self.message}


@dataclass(slots=True, frozen=True)
class Progress:
    """One reading of a job's progress, as tqdm would show it."""

    current: float
    total: float | None = None
    message: str | None = None
    rate: float | None = None  # items per second, smoothed
    elapsed_s: float = 0.0

    @property
    def percent(self) -> float | None:
        if not self.total:
            return None
        return round(min(100.0, 100.0 * self.current / self.total), 2)

    @property
    def eta_s(self) -> float | None:
        if not self.total or not self.rate:
            return None
        return round(max(0.0, (self.total - self.current) / self.rate), 2)

    def to_dict(self) -> dict[str, Any]:
        return {
            "current": self.current,
            "total": self.total,
            "percent": self.percent,
            "message": self.message,
            "rate": None if self.rate is None else round(self.rate, 3),
            "elapsed_s": round(self.elapsed_s, 3),
            "eta_s": self.eta_s,
        }


class ProgressMeter:
    """Turns raw ``(current, total)`` readings into :class:`Progress` with a smoothed rate.

    The rate is tqdm's: an exponential moving average of the items and of the time between
    readings, bias-corrected, with ``smoothing`` in [0, 1] (0 gives the overall average).
    """

    __slots__ = (
        "_calls",
        "_dn",
        "_dt",
        "_last_n",
        "_last_t",
        "_origin_n",
        "_origin_t",
        "_smoothing",
        "_started",
    )

    def __init__(self, started: float, *, smoothing: float = 0.3) -> None:
        if not 0.0 <= smoothing <= 1.0:
            raise ValueError(f"smoothing must be between 0 and 1, got {smoothing!r}")
        self._smoothing = smoothing
        self._started = started
        self._last_n = 0.0
        self._last_t = started
        self._origin_n, self._origin_t = 0.0, started  # where the overall average counts from
        self._dn = 0.0
        self._dt = 0.0
        self._calls = 0

    def read(
        self, current: float, total: float | None, message: str | None, now: float
    ) -> Progress:
        elapsed = max(0.0, now - self._started)
        dn, dt = current - self._last_n, now - self._last_t
        if dn < 0:  # the task restarted its count: measure afresh, as tqdm's reset() does
            self._last_n, self._last_t = current, now
            self._origin_n, self._origin_t = current, now
            self._dn, self._dt, self._calls = 0.0, 0.0, 0
        elif dt > 0:
            self._last_n, self._last_t = current, now
            beta = 1.0 - self._smoothing
            self._dn = self._smoothing * dn + beta * self._dn
            self._dt = self._smoothing * dt + beta * self._dt
            self._calls += 1
        return Progress(current, total, message, self._rate(current, now), elapsed)

    def _rate(self, current: float, now: float) -> float | None:
        if self._smoothing == 0.0 or self._calls == 0:
            done, spent = current - self._origin_n, now - self._origin_t
            return done / spent if spent > 0 and done > 0 else None
        # The bias correction of both averages cancels out in the ratio.
        return self._dn / self._dt if self._dt > 0 else None


def now() -> float:
    """The time for a job's timestamps: the wall clock to the microsecond, which is what a
    snapshot writes, so that a job read back from its snapshot has the very same times."""
    return round(time.time(), 6)


def _iso(ts: float | None) -> str | None:
    return None if ts is None else datetime.fromtimestamp(ts, UTC).isoformat()


def _from_iso(text: str | None) -> float | None:
    return None if text is None else datetime.fromisoformat(text).timestamp()


def new_job_id() -> str:
    return uuid.uuid4().hex


#: The latest time a snapshot can write (9999-12-31T23:59:59Z), in Unix seconds.
LATEST = 253_402_300_799.0


def check_time(name: str, ts: float) -> float:
    """``ts`` when a snapshot can write it (finite, before the year 10000 in UTC); else a
    ``ValueError`` naming ``name``."""
    if not (math.isfinite(ts) and ts <= LATEST):
        raise ValueError(f"{name} must be a time before the year 10000 (UTC), got {ts!r}")
    return ts


#: Priorities run from ``-MAX_PRIORITY`` to ``MAX_PRIORITY``; higher runs first.
MAX_PRIORITY = 1_000_000

#: What a change to a job may change of it (the rest is fixed when it is made).
CHANGING = (
    "state",
    "progress",
    "started_at",
    "finished_at",
    "result",
    "error",
    "attempt",
    "run_at",
    "cancelling",
)


@dataclass(slots=True, eq=False)
class Job:
    """A single run of a task. Mutated only on the event loop, by the runner."""

    task: str
    params: dict[str, Any]
    id: str = field(default_factory=new_job_id)
    state: JobState = JobState.QUEUED
    progress: Progress | None = None
    created_at: float = 0.0
    started_at: float | None = None
    finished_at: float | None = None
    result: Any = None
    error: JobError | None = None
    #: The attempt that runs, or ran last (1-based), and how many its task allows.
    attempt: int = 1
    max_attempts: int = 1
    #: When the job became runnable, if not at once: a delay, a retry's wait, or the due
    #: time of the schedule's tick that started it. A queued job waits until then.
    run_at: float | None = None
    priority: int = 0  # higher runs first; first in, first out within a priority
    schedule: str | None = None  # the name of the schedule that started it
    cancelling: bool = False  # asked to stop, not ended yet
    tick: float | None = None  # the due time of the schedule's tick that started it
    first_seq: int = 0  # sequence number of the job's first event
    last_seq: int = 0  # sequence number of the job's newest state or progress event
    updated_at: float = 0.0  # when its newest state or progress event happened
    #: The job as clients may see it: its snapshot as of its newest stored event (None
    #: before that). A change shows once it is stored, so a restart never contradicts it.
    shown: dict[str, Any] | None = None

    @property
    def finished(self) -> bool:
        return self.state in TERMINAL_STATES

    @property
    def order(self) -> str:
        """Where the job stands in the queue, as text that sorts as the queue runs: higher
        priority first, then the older job (a job queued again keeps its place)."""
        created_us = round(self.created_at * 1_000_000)
        return f"{MAX_PRIORITY - self.priority:07d}:{created_us:017d}:{self.id}"

    def update(self, other: Job) -> None:
        """Take what may change of a job from ``other``, the same job as it is now."""
        for name in CHANGING:
            setattr(self, name, getattr(other, name))

    @classmethod
    def from_snapshot(cls, data: dict[str, Any]) -> Job:
        """The job a :meth:`snapshot` shows (sequence numbers are the reader's to set)."""
        progress, error = data["progress"], data["error"]
        return cls(
            task=data["task"],
            params=data["params"],
            id=data["id"],
            state=JobState(data["state"]),
            progress=None
            if progress is None
            else Progress(
                progress["current"],
                progress["total"],
                progress["message"],
                progress["rate"],
                progress["elapsed_s"],
            ),
            created_at=_from_iso(data["created_at"]) or 0.0,
            started_at=_from_iso(data["started_at"]),
            finished_at=_from_iso(data["finished_at"]),
            result=data["result"],
            error=None if error is None else JobError(error["type"], error["message"]),
            # Absent from the snapshots stored before jobs had them.
            attempt=data.get("attempt", 1),
            max_attempts=data.get("max_attempts", 1),
            run_at=_from_iso(data.get("run_at")),
            priority=data.get("priority", 0),
            schedule=data.get("schedule"),
            cancelling=data.get("cancelling", False),
        )

    def snapshot(self) -> dict[str, Any]:
        """The job as clients see it (the contract's job snapshot)."""
        return {
            "id": self.id,
            "task": self.task,
            "params": self.params,
            "state": self.state.value,
            "progress": None if self.progress is None else self.progress.to_dict(),
            "created_at": _iso(self.created_at),
            "started_at": _iso(self.started_at),
            "finished_at": _iso(self.finished_at),
            "result": self.result,
            "error": None if self.error is None else self.error.to_dict(),
            "attempt": self.attempt,
            "max_attempts": self.max_attempts,
            "run_at": _iso(self.run_at),
            "priority": self.priority,
            "schedule": self.schedule,
            "cancelling": self.cancelling,
        }
