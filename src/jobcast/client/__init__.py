"""A client for a jobcast server, over HTTP: start jobs, follow them live, wait for results.

It needs only httpx and httpx-sse: importing it loads none of the server.

    from jobcast.client import Client

    with Client("http://127.0.0.1:8000") as jobs:
        job = jobs.start("sleep", {"seconds": 1})
        for event in jobs.follow(job.id):
            print(event)
        print(jobs.result(job.id))
"""

from __future__ import annotations

from ._async import AsyncClient
from ._errors import (
    ClientError,
    Conflict,
    InvalidParams,
    JobCancelled,
    JobFailed,
    JobInterrupted,
    NotFound,
    ServerBusy,
    ServerError,
    ServerUnreachable,
    Unauthorized,
    WaitTimeout,
)
from ._models import (
    TERMINAL_STATES,
    Deleted,
    Event,
    Job,
    JobError,
    JobEvent,
    JobState,
    LogEvent,
    LogLine,
    Progress,
    Reset,
    Snapshot,
    Task,
)
from ._sync import Client

__all__ = [
    "TERMINAL_STATES",
    "AsyncClient",
    "Client",
    "ClientError",
    "Conflict",
    "Deleted",
    "Event",
    "InvalidParams",
    "Job",
    "JobCancelled",
    "JobError",
    "JobEvent",
    "JobFailed",
    "JobInterrupted",
    "JobState",
    "LogEvent",
    "LogLine",
    "NotFound",
    "Progress",
    "Reset",
    "ServerBusy",
    "ServerError",
    "ServerUnreachable",
    "Snapshot",
    "Task",
    "Unauthorized",
    "WaitTimeout",
]
