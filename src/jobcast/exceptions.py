"""Every error jobcast raises on purpose derives from :class:`JobcastError`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ._wire import describe, shown_errors

if TYPE_CHECKING:
    from pydantic import ValidationError

__all__ = [
    "BackendUnavailable",
    "CrossOrigin",
    "DuplicateJob",
    "InvalidParams",
    "JobActive",
    "JobCancelled",
    "JobFinished",
    "JobcastError",
    "LimitReached",
    "NotAccepting",
    "QueueFull",
    "RateLimited",
    "SettingsError",
    "StoreError",
    "StoreUnavailable",
    "StreamsFull",
    "TaskError",
    "TooManyStreams",
    "Unauthorized",
    "UnknownJob",
    "UnknownSchedule",
    "UnknownTask",
]


def _shown(value: str, limit: int = 80) -> str:
    """A client's value quoted in a message, cut: an id of a megabyte is not echoed whole."""
    return repr(value) if len(value) <= limit else f"{value[:limit]!r}… ({len(value):,} characters)"


class JobcastError(Exception):
    """Raised for every failure jobcast reports on purpose; the root of the hierarchy.

    Each carries its answer over HTTP, as Starlette's ``HTTPException`` does: the status
    (500 for errors that are not a client's to fix), and headers and a body made from it.
    """

    #: The HTTP status of the answer to a request that met this error.
    status_code: int = 500
    #: Seconds after which the same request may succeed (sent as ``Retry-After``), if known.
    retry_after: int | None = None

    @property
    def headers(self) -> dict[str, str]:
        """The headers of the answer."""
        if self.retry_after is None:
            return {}
        return {"Retry-After": str(self.retry_after)}

    def body(self) -> dict[str, object]:
        """The JSON body of the answer: what went wrong and what to do."""
        return {"detail": str(self)}


class LimitReached(JobcastError):
    """Raised when a request would pass one of the service's limits; it may be retried."""

    status_code = 429

    def __init__(self, limit: int, retry_after: int, message: str) -> None:
        self.limit = limit
        self.retry_after = retry_after
        super().__init__(message)


class SettingsError(JobcastError, ValueError):
    """Raised when a setting (a keyword of ``JobCast`` or a ``JOBCAST_*`` variable) is invalid."""


class UnknownTask(JobcastError):
    """Raised when a task name is not registered."""

    status_code = 404

    def __init__(self, name: str, known: list[str]) -> None:
        self.name = name
        self.known = known
        choices = ", ".join(sorted(known)) or "none registered"
        super().__init__(
            f"no task named {_shown(name)}; choose one of: {choices} (GET /api/tasks lists them)"
        )


class InvalidParams(JobcastError):
    """Raised when the params of a new job, or the options of its start, are not valid.

    ``errors`` are pydantic's, each located as FastAPI locates them: ``("body", field)``
    for a param, ``("query", option)`` for a start option. The answer is the 422 that
    FastAPI gives for a request it refuses, with the same body.
    """

    status_code = 422

    def __init__(self, task: str, errors: Sequence[dict[str, Any]]) -> None:
        self.task = task
        self.errors = shown_errors(errors)
        #: What is wrong, field by field, in words.
        self.problems = "; ".join(_problem(error) for error in self.errors[:10])
        if len(self.errors) > 10:
            self.problems += f"; and {len(self.errors) - 10} more"
        super().__init__(
            f"invalid params for task {_shown(task)}: {self.problems}; fix them (GET "
            "/api/tasks shows the schema of each task's params)"
        )

    @classmethod
    def located(cls, task: str, error: ValidationError, where: str) -> InvalidParams:
        """The error for pydantic's ``error``, its locations under ``where`` (``"body"``
        or ``"query"``)."""
        errors = error.errors(include_url=False)
        return cls(task, [{**detail, "loc": [where, *detail["loc"]]} for detail in errors])

    def body(self) -> dict[str, object]:
        return {"detail": self.errors}


def _problem(error: dict[str, Any]) -> str:
    """One error of :class:`InvalidParams` in words: where, and what is wrong there."""
    where, *path = error.get("loc") or ["body"]
    field = ".".join(describe(part, 80) for part in path)
    if where == "query":  # the options of JobCast.start, named as it takes them
        field = f"_{field}"
    return f"{field or 'the params'}: {error.get('msg', 'invalid')}"


class UnknownJob(JobcastError):
    """Raised when a job id is not known (never existed, or pruned)."""

    status_code = 404

    def __init__(self, job_id: str) -> None:
        self.job_id = job_id
        super().__init__(f"no job with id {_shown(job_id)}; GET /api/jobs lists the known jobs")


class JobFinished(JobcastError):
    """Raised when cancelling a job that has already reached a terminal state."""

    status_code = 409

    def __init__(self, job_id: str, state: str) -> None:
        self.job_id = job_id
        self.state = state
        super().__init__(
            f"job {job_id!r} already finished as {state!r}; there is nothing to cancel"
        )


class UnknownSchedule(JobcastError):
    """Raised for a schedule name that is not registered."""

    status_code = 404

    def __init__(self, name: str, known: list[str]) -> None:
        self.name = name
        choices = ", ".join(sorted(known)) or "none are registered"
        super().__init__(
            f"no schedule named {_shown(name)}; choose one of: {choices} "
            "(GET /api/schedules lists them)"
        )


class JobActive(JobcastError):
    """Raised when deleting a job that is still queued or running."""

    status_code = 409

    def __init__(self, job_id: str, state: str) -> None:
        self.job_id = job_id
        self.state = state
        super().__init__(
            f"job {_shown(job_id)} is {state}; cancel it first (POST /api/jobs/{job_id}/cancel), "
            "then delete it once it has ended"
        )


class DuplicateJob(JobcastError):
    """Raised when a task refuses a job whose params match one already queued or running."""

    status_code = 409

    def __init__(self, job_id: str, task: str, snapshot: dict[str, object]) -> None:
        self.job_id = job_id
        self.task = task
        self.snapshot = snapshot
        super().__init__(
            f"task {task!r} already has job {job_id!r} with the same params queued or running; "
            "watch that job, or wait for it to finish before starting another"
        )

    def body(self) -> dict[str, object]:
        return {**super().body(), "job": self.snapshot}


class QueueFull(LimitReached):
    """Raised when the job queue is at its limit."""

    def __init__(self, limit: int, retry_after: int) -> None:
        super().__init__(
            limit,
            retry_after,
            f"the job queue is full ({limit} jobs waiting); retry in {retry_after} s "
            "or raise JOBCAST_MAX_QUEUE",
        )


class RateLimited(LimitReached):
    """Raised when a client starts jobs faster than ``jobs_per_minute`` allows."""

    def __init__(self, limit: int, retry_after: int) -> None:
        super().__init__(
            limit,
            retry_after,
            f"too many jobs started from your address: at most {limit} per minute; retry in "
            f"{retry_after} s (the server's limit is JOBCAST_JOBS_PER_MINUTE)",
        )


class TooManyStreams(LimitReached):
    """Raised when a client already holds ``max_streams_per_client`` streams open."""

    def __init__(self, limit: int, retry_after: int) -> None:
        super().__init__(
            limit,
            retry_after,
            f"your address already has {limit} streams open; close one first (GET /api/events "
            "carries every job, so one stream is usually enough), or raise "
            "JOBCAST_MAX_STREAMS_PER_CLIENT",
        )


class StreamsFull(LimitReached):
    """Raised when the server already holds ``max_streams`` streams open in total."""

    status_code = 503

    def __init__(self, limit: int, retry_after: int) -> None:
        super().__init__(
            limit,
            retry_after,
            f"the server has {limit} streams open, its limit; retry in {retry_after} s "
            "(the limit is JOBCAST_MAX_STREAMS)",
        )


class Unauthorized(JobcastError):
    """Raised when a request that needs the access token came without a valid one."""

    status_code = 401

    def __init__(self, *, reads: bool) -> None:
        self.reads = reads
        where = (
            "send it as the header 'Authorization: Bearer <token>' (a stream also takes it as "
            "the jobcast_token cookie or ?token=)"
            if reads
            else "send it as the header 'Authorization: Bearer <token>'"
        )
        super().__init__(f"this server needs an access token: {where}")

    @property
    def headers(self) -> dict[str, str]:
        return {"WWW-Authenticate": 'Bearer realm="jobcast"'}


class CrossOrigin(JobcastError):
    """Raised when a browser on another site sends a request that would change something."""

    status_code = 403

    def __init__(self, origin: str) -> None:
        self.origin = origin
        super().__init__(
            f"requests that change something are refused from origin {origin!r}; if that "
            "page should use this API, add its origin to JOBCAST_CORS_ORIGINS"
        )


class NotAccepting(JobcastError):
    """Raised when a job is submitted while the service is starting or shutting down."""

    status_code = 503

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(f"not accepting jobs: {reason}; retry shortly")


class JobCancelled(JobcastError):
    """Raised inside task code by ``ctx.raise_if_cancelled()`` once the job is cancelled.

    Task code may let it propagate (the job ends ``cancelled``) or catch it to clean up and
    re-raise.
    """

    def __init__(self, job_id: str) -> None:
        self.job_id = job_id
        super().__init__(f"job {job_id!r} was cancelled")


class TaskError(JobcastError):
    """Raised when task code running outside the server (a worker process) failed.

    ``type_name`` names the original exception, ``message`` is its message, and ``trace``
    its traceback as the worker printed it (for the server log, never for clients).
    """

    def __init__(self, type_name: str, message: str, *, trace: str | None = None) -> None:
        self.type_name = type_name
        self.message = message
        self.trace = trace
        super().__init__(f"{type_name}: {message}")
        if trace:
            self.add_note(trace.rstrip())


class StoreError(JobcastError):
    """Raised when the store cannot lock, open, read or write its database file."""

    def __init__(self, path: str, problem: str, remedy: str) -> None:
        self.path = path
        self.problem = problem
        self.remedy = remedy
        super().__init__(f"jobcast database {path}: {problem}; {remedy}")


class StoreUnavailable(JobcastError):
    """Raised when a job is started while the store cannot write (a full disk, say)."""

    status_code = 503
    retry_after = 5

    def __init__(self, problem: StoreError) -> None:
        self.problem = problem
        super().__init__(
            f"not accepting jobs: the database cannot be written ({problem}); jobs start "
            "again by themselves once it can: retry later"
        )


class BackendUnavailable(JobcastError):
    """Raised when Redis, which a scaled-out deployment keeps its jobs in, cannot be reached."""

    status_code = 503
    retry_after = 2

    def __init__(self, url: str, problem: str) -> None:
        url = without_password(url)
        self.url = url
        self.problem = problem
        super().__init__(
            f"Redis at {url} is unreachable ({problem}); check that redis-server runs there "
            "(JOBCAST_REDIS_URL), then retry"
        )


def without_password(url: str) -> str:
    """``url`` with the password of its user part, if any, shown as ``***``: fit for logs."""
    scheme, sep, rest = url.partition("://")
    user, at, host = rest.rpartition("@")
    if not sep or not at or ":" not in user:
        return url
    return f"{scheme}://{user.split(':', 1)[0]}:***@{host}"
