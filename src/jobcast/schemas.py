"""The JSON shapes that cross HTTP, as pydantic models (for validation, and for /docs)."""

from __future__ import annotations

import time
from typing import Annotated, Any

from pydantic import (
    AwareDatetime,
    BaseModel,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
)
from pydantic_core import PydanticCustomError

from .exceptions import InvalidParams
from .jobs import MAX_PRIORITY, JobState, check_time
from .lifecycle import Placement

__all__ = [
    "DuplicateOut",
    "ErrorOut",
    "JobErrorOut",
    "JobOut",
    "LogLineOut",
    "ProgressOut",
    "ScheduleOut",
    "StartOptions",
    "TaskOut",
]

#: The longest a job may be put off: a year.
MAX_DELAY = 366 * 86_400.0


class ProgressOut(BaseModel):
    current: int | float
    total: int | float | None
    percent: float | None
    message: str | None
    rate: float | None
    elapsed_s: float
    eta_s: float | None


class JobErrorOut(BaseModel):
    type: str
    message: str


class JobOut(BaseModel):
    """A job snapshot, as every endpoint and every stream event shows it."""

    id: str
    task: str
    params: dict[str, Any]
    state: JobState
    progress: ProgressOut | None
    created_at: str
    started_at: str | None
    finished_at: str | None
    result: Any
    error: JobErrorOut | None
    attempt: int = Field(description="the attempt that runs, or ran last (1-based)")
    max_attempts: int = Field(description="1 plus the retries its task allows")
    run_at: str | None = Field(
        description="when the job became runnable, if not at once (a delay, a retry's wait, "
        "a schedule's due time): a queued job waits until then"
    )
    priority: int = Field(description="higher runs first; first in, first out within one")
    schedule: str | None = Field(description="the schedule that started it, if one did")
    cancelling: bool = Field(description="asked to stop, and not ended yet")


class LogLineOut(BaseModel):
    """One line of a job's log."""

    id: int = Field(description="its event id (page on with ?after=)")
    ts: float = Field(description="when it was logged, in Unix seconds")
    line: str


class ScheduleOut(BaseModel):
    """A schedule that starts jobs of a task."""

    name: str
    task: str
    expression: str = Field(description="a cron expression (UTC), or `every N s`")
    params: dict[str, Any]
    paused: bool
    next_run_at: str | None = Field(description="when its next job starts; null while paused")
    last_job_id: str | None = Field(description="the job it started last, if any")


class TaskOut(BaseModel):
    name: str
    description: str
    params_schema: dict[str, Any]
    mode: str
    max_concurrency: int | None
    timeout: float | None
    duplicates: str
    retries: int = Field(description="how many times a failed job runs again")


class ErrorOut(BaseModel):
    """What every 4xx and 5xx of jobcast's own says: what went wrong and what to do."""

    detail: str


class DuplicateOut(ErrorOut):
    """A refused duplicate: the message, and the job already queued or running."""

    job: JobOut


class StartOptions(BaseModel):
    """When a new job may run, and before which others: the query of a start
    (``?delay=``), and the ``_delay``, ``_run_at`` and ``_priority`` of ``JobCast.start``."""

    delay: Annotated[
        float | None,
        Field(
            ge=0,
            le=MAX_DELAY,
            allow_inf_nan=False,
            description="seconds the job waits before it may run",
        ),
    ] = None
    run_at: Annotated[
        AwareDatetime | None,
        Field(description="when the job may run: ISO 8601 with its offset (`Z`, `%2B02:00`)"),
    ] = None
    priority: Annotated[
        int,
        Field(
            ge=-MAX_PRIORITY,
            le=MAX_PRIORITY,
            description="higher runs first; first in, first out within a priority",
        ),
    ] = 0

    @field_validator("run_at")
    @classmethod
    def _one_time_a_snapshot_can_write(
        cls, run_at: AwareDatetime | None, info: ValidationInfo
    ) -> AwareDatetime | None:
        if run_at is None:
            return None
        if info.data.get("delay") is not None:
            raise PydanticCustomError("value_error", "give either delay or run_at, not both")
        try:
            check_time("run_at", run_at.timestamp())
        except ValueError as exc:
            raise PydanticCustomError("value_error", str(exc)) from None
        return run_at

    @classmethod
    def checked(cls, task: str, **options: Any) -> StartOptions:
        """The options of a start of ``task`` given in code; :class:`~jobcast.InvalidParams`
        (located in the query, as the API would) when they are not valid."""
        try:
            return cls.model_validate(options)
        except ValidationError as exc:
            raise InvalidParams.located(task, exc, "query") from exc

    def placement(self) -> Placement:
        """Where the job stands in the queue."""
        at = None if self.delay is None else time.time() + self.delay
        if self.run_at is not None:
            at = self.run_at.timestamp()
        return {"run_at": at, "priority": self.priority}
