"""What the API answers and streams, as light typed records read from its JSON."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, ClassVar, Literal

__all__ = [
    "TERMINAL_STATES",
    "Deleted",
    "Event",
    "Job",
    "JobError",
    "JobEvent",
    "JobState",
    "LogEvent",
    "LogLine",
    "Progress",
    "Reset",
    "Snapshot",
    "Task",
]

JobState = Literal["queued", "running", "succeeded", "failed", "cancelled", "interrupted"]

#: The states a job ends in; its stream ends after the event that brings it there.
TERMINAL_STATES: frozenset[str] = frozenset({"succeeded", "failed", "cancelled", "interrupted"})


def _time(text: str | None) -> datetime | None:
    return None if text is None else datetime.fromisoformat(text)


@dataclass(frozen=True, slots=True)
class Progress:
    """A job's progress, with tqdm's meaning: ``rate`` is items per second, smoothed;
    ``percent`` and ``eta_s`` are None while the total is unknown."""

    current: float
    total: float | None = None
    percent: float | None = None
    message: str | None = None
    rate: float | None = None
    elapsed_s: float = 0.0
    eta_s: float | None = None

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Progress:
        return cls(
            current=data["current"],
            total=data.get("total"),
            percent=data.get("percent"),
            message=data.get("message"),
            rate=data.get("rate"),
            elapsed_s=data.get("elapsed_s", 0.0),
            eta_s=data.get("eta_s"),
        )


@dataclass(frozen=True, slots=True)
class JobError:
    """Why a job did not succeed: the exception's type name and its message."""

    type: str
    message: str

    def __str__(self) -> str:
        return f"{self.type}: {self.message}"


@dataclass(frozen=True, slots=True)
class Job:
    """A job as the server shows it (its snapshot)."""

    id: str
    task: str
    state: JobState
    params: dict[str, Any] = field(default_factory=dict)
    progress: Progress | None = None
    created_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    result: Any = None
    error: JobError | None = None
    attempt: int = 1
    max_attempts: int = 1
    run_at: datetime | None = None
    priority: int = 0
    schedule: str | None = None
    cancelling: bool = False

    @property
    def finished(self) -> bool:
        """Whether the job has reached one of the :data:`TERMINAL_STATES`."""
        return self.state in TERMINAL_STATES

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Job:
        progress, error = data.get("progress"), data.get("error")
        return cls(
            id=data["id"],
            task=data["task"],
            state=data["state"],
            params=data.get("params") or {},
            progress=None if progress is None else Progress.from_json(progress),
            created_at=_time(data.get("created_at")),
            started_at=_time(data.get("started_at")),
            finished_at=_time(data.get("finished_at")),
            result=data.get("result"),
            error=None if error is None else JobError(error["type"], error["message"]),
            attempt=data.get("attempt", 1),
            max_attempts=data.get("max_attempts", 1),
            run_at=_time(data.get("run_at")),
            priority=data.get("priority", 0),
            schedule=data.get("schedule"),
            cancelling=data.get("cancelling", False),
        )


@dataclass(frozen=True, slots=True)
class Task:
    """A task the server runs, as ``GET /api/tasks`` lists it."""

    name: str
    description: str = ""
    params_schema: dict[str, Any] = field(default_factory=dict)
    mode: str = "thread"
    max_concurrency: int | None = None
    timeout: float | None = None
    duplicates: str = "allow"
    retries: int = 0

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Task:
        known = {name: data[name] for name in cls.__dataclass_fields__ if name in data}
        return cls(**known)


@dataclass(frozen=True, slots=True)
class LogLine:
    """One line of a job's log, with the id of the event that carried it."""

    id: int
    ts: float
    line: str


# -- the events of the streams -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class JobEvent:
    """A change of one job: ``name`` is ``queued``, ``running``, ``progress``, ``retrying``,
    ``succeeded``, ``failed``, ``cancelled`` or ``interrupted``; ``job`` is the job after it."""

    name: str
    id: int
    ts: float
    job: Job

    @property
    def terminal(self) -> bool:
        """Whether the job ended with this event."""
        return self.name in TERMINAL_STATES


@dataclass(frozen=True, slots=True)
class LogEvent:
    """A line a job logged."""

    name: ClassVar[str] = "log"
    id: int
    ts: float
    job_id: str
    line: str


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Every job a stream covers, as they are at event ``id``: the first event of
    ``watch()``, and what follows a :class:`Reset`."""

    name: ClassVar[str] = "snapshot"
    id: int
    ts: float
    jobs: list[Job]


@dataclass(frozen=True, slots=True)
class Reset:
    """The events after ``last_event_id`` are no longer kept by the server (or it never had
    them): a fresh :class:`Snapshot` follows in their place."""

    name: ClassVar[str] = "reset"
    last_event_id: int | None
    first_retained: int | None
    reason: str


@dataclass(frozen=True, slots=True)
class Deleted:
    """A finished job and its events were removed."""

    name: ClassVar[str] = "deleted"
    id: int
    ts: float
    job_id: str


Event = JobEvent | LogEvent | Snapshot | Reset | Deleted
