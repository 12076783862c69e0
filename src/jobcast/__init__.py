"""jobcast: run heavy Python work in the background of a FastAPI app, stream it live over SSE."""

from __future__ import annotations

__version__ = "0.1.0"

from .app import JobCast
from .context import JobContext
from .exceptions import (
    BackendUnavailable,
    CrossOrigin,
    DuplicateJob,
    InvalidParams,
    JobActive,
    JobCancelled,
    JobcastError,
    JobFinished,
    LimitReached,
    NotAccepting,
    QueueFull,
    RateLimited,
    SettingsError,
    StoreError,
    StoreUnavailable,
    StreamsFull,
    TaskError,
    TooManyStreams,
    Unauthorized,
    UnknownJob,
    UnknownSchedule,
    UnknownTask,
)
from .jobs import TERMINAL_STATES, Job, JobState, Progress
from .schemas import JobOut
from .settings import Settings

__all__ = [
    "BackendUnavailable",
    "CrossOrigin",
    "DuplicateJob",
    "InvalidParams",
    "Job",
    "JobCancelled",
    "JobCast",
    "JobContext",
    "JobActive",
    "JobFinished",
    "JobOut",
    "JobState",
    "JobcastError",
    "LimitReached",
    "NotAccepting",
    "Progress",
    "QueueFull",
    "RateLimited",
    "Settings",
    "SettingsError",
    "StoreError",
    "StoreUnavailable",
    "StreamsFull",
    "TERMINAL_STATES",
    "TaskError",
    "TooManyStreams",
    "Unauthorized",
    "UnknownJob",
    "UnknownSchedule",
    "UnknownTask",
    "__version__",
]
