"""Every error jobcast raises on purpose derives from :class:`JobcastError`."""

from __future__ import annotations

__all__ = [
    "DuplicateJob",
    "JobCancelled",
    "JobFinished",
    "JobcastError",
    "NotAccepting",
    "QueueFull",
    "StoreError",
    "TaskError",
    "UnknownJob",
    "UnknownTask",
]


class JobcastError(Exception):
    """Raised for every failure jobcast reports on purpose; the root of the hierarchy."""


class UnknownTask(JobcastError):
    """Raised when a task name is not registered."""

    def __init__(self, name: str, known: list[str]) -> None:
        self.name = name
        self.known = known
        choices = ", ".join(sorted(known)) or "none registered"
        super().__init__(
            f"no task named {name!r}; choose one of: {choices} (GET /api/tasks lists them)"
        )


class UnknownJob(JobcastError):
    """Raised when a job id is not known (never existed, or pruned)."""

    def __init__(self, job_id: str) -> None:
        self.job_id = job_id
        super().__init__(f"no job with id {job_id!r}; GET /api/jobs lists the known jobs")


class JobFinished(JobcastError):
    """Raised when cancelling a job that has already reached a terminal state."""

    def __init__(self, job_id: str, state: str) -> None:
        self.job_id = job_id
        self.state = state
        super().__init__(
            f"job {job_id!r} already finished as {state!r}; there is nothing to cancel"
        )


class DuplicateJob(JobcastError):
    """Raised when a task refuses a job whose params match one already queued or running."""

    def __init__(self, job_id: str, task: str, snapshot: dict[str, object]) -> None:
        self.job_id = job_id
        self.task = task
        self.snapshot = snapshot
        super().__init__(
            f"task {task!r} already has job {job_id!r} with the same params queued or running; "
            "watch that job, or wait for it to finish before starting another"
        )


class QueueFull(JobcastError):
    """Raised when the job queue is at its limit."""

    def __init__(self, limit: int, retry_after: int) -> None:
        self.limit = limit
        self.retry_after = retry_after
        super().__init__(
            f"the job queue is full ({limit} jobs waiting); retry in {retry_after} s "
            "or raise JOBCAST_MAX_QUEUE"
        )


class NotAccepting(JobcastError):
    """Raised when a job is submitted while the service is starting or shutting down."""

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
