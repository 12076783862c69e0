"""The JSON shapes that cross HTTP, as pydantic models (for validation of output and /docs)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from .jobs import JobState

__all__ = [
    "DuplicateOut",
    "ErrorOut",
    "JobErrorOut",
    "JobOut",
    "LogLineOut",
    "ProgressOut",
    "ScheduleOut",
    "TaskOut",
]


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
