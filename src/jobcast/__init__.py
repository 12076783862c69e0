"""jobcast: run heavy Python work in the background of a FastAPI app, stream it live over SSE.

The names below are imported when first used (PEP 562), so that ``jobcast.client`` and the
terminal commands start without loading the server.
"""

from __future__ import annotations

import importlib
import typing

__version__ = "0.1.0"

if typing.TYPE_CHECKING:
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

#: The module each public name comes from.
_SOURCES = {
    "JobCast": ".app",
    "JobContext": ".context",
    **{name: ".jobs" for name in ("TERMINAL_STATES", "Job", "JobState", "Progress")},
    "JobOut": ".schemas",
    "Settings": ".settings",
}


def __getattr__(name: str) -> object:
    if name not in __all__:
        raise AttributeError(f"module 'jobcast' has no attribute {name!r}")
    value = getattr(importlib.import_module(_SOURCES.get(name, ".exceptions"), __name__), name)
    globals()[name] = value  # once imported, found without this hook
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
