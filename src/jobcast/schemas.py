"""The JSON shapes that cross HTTP, as pydantic models (for validation of output and /docs)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from .jobs import JobState

__all__ = ["DuplicateOut", "ErrorOut", "JobErrorOut", "JobOut", "ProgressOut", "TaskOut"]


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


class TaskOut(BaseModel):
    name: str
    description: str
    params_schema: dict[str, Any]
    mode: str
    max_concurrency: int | None
    timeout: float | None
    duplicates: str


class ErrorOut(BaseModel):
    """What every 4xx and 5xx of jobcast's own says: what went wrong and what to do."""

    detail: str


class DuplicateOut(ErrorOut):
    """A refused duplicate: the message, and the job already queued or running."""

    job: JobOut
