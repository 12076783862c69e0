"""Every error :mod:`jobcast.client` raises derives from :class:`ClientError`."""

from __future__ import annotations

from typing import Any

from ._models import Job

__all__ = [
    "ClientError",
    "Conflict",
    "InvalidParams",
    "JobCancelled",
    "JobFailed",
    "JobInterrupted",
    "NotFound",
    "ServerBusy",
    "ServerError",
    "ServerUnreachable",
    "Unauthorized",
    "WaitTimeout",
]


class ClientError(Exception):
    """Raised for every failure the client reports; the root of its hierarchy."""


class ServerUnreachable(ClientError):
    """Raised when the server cannot be reached, or a stream to it stays lost."""

    def __init__(self, url: str, problem: str) -> None:
        self.url = url
        self.problem = problem
        super().__init__(
            f"cannot reach the jobcast server at {url} ({problem}); start it (jobcast serve) "
            "or point the client at it (JOBCAST_URL, --url)"
        )


class ServerError(ClientError):
    """Raised when the server answers with an error: ``status`` is the HTTP status,
    ``message`` what the server said, ``body`` its JSON answer (None if it sent none)."""

    def __init__(self, status: int, message: str, body: Any = None) -> None:
        self.status = status
        self.message = message
        self.body = body
        super().__init__(f"{status}: {message}")


class Unauthorized(ServerError):
    """Raised on a 401: the server needs a token, and none or a wrong one was sent."""


class NotFound(ServerError):
    """Raised on a 404: no such task, job or schedule."""


class Conflict(ServerError):
    """Raised on a 409: the job has already finished, or an equal job is queued or running
    (``job``, when the server named it)."""

    @property
    def job(self) -> Job | None:
        """The job the server named, if any (the one a refused duplicate would repeat)."""
        if isinstance(self.body, dict) and isinstance(self.body.get("job"), dict):
            return Job.from_json(self.body["job"])
        return None


class InvalidParams(ServerError):
    """Raised on a 422: the params (or the query) are invalid; ``errors`` are the server's
    details, each naming its field in ``loc``."""

    @property
    def errors(self) -> list[dict[str, Any]]:
        detail = self.body.get("detail") if isinstance(self.body, dict) else None
        return [error for error in detail if isinstance(error, dict)] if detail else []


class ServerBusy(ServerError):
    """Raised on a 429 or 503: a limit is reached or the server cannot take jobs now;
    ``retry_after`` is the seconds it asked to wait, if it said."""

    def __init__(
        self, status: int, message: str, body: Any = None, *, retry_after: float | None = None
    ) -> None:
        self.retry_after = retry_after
        super().__init__(status, message, body)


class JobFailed(ClientError):
    """Raised by ``result()`` when the job failed; ``job`` carries its error."""

    def __init__(self, job: Job) -> None:
        self.job = job
        super().__init__(f"job {job.id} ({job.task}) failed: {job.error}")


class JobCancelled(ClientError):
    """Raised by ``result()`` when the job was cancelled before it ended."""

    def __init__(self, job: Job) -> None:
        self.job = job
        super().__init__(f"job {job.id} ({job.task}) was {job.state}")


class JobInterrupted(JobCancelled):
    """Raised by ``result()`` when the server stopped under the job (``job.error`` says how)."""


class WaitTimeout(ClientError, TimeoutError):
    """Raised by ``wait()`` and ``result()`` when the job has not ended within the timeout;
    ``job`` is the job as last seen."""

    def __init__(self, job: Job, timeout: float) -> None:
        self.job = job
        self.timeout = timeout
        super().__init__(
            f"job {job.id} ({job.task}) is still {job.state} after {timeout:g} s; wait longer, "
            "or cancel it"
        )
