"""The client's decisions, without I/O: what each request is, what each answer means, and
how a stream resumes. :class:`~jobcast.client.Client` and
:class:`~jobcast.client.AsyncClient` only carry the requests out.

A method is a *plan*: a generator that yields the :class:`Call` it needs answered and is
sent back what that answer means, so paging (``logs()``) is written once for both clients.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Generator, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar
from urllib.parse import quote, urlsplit

import httpx
from httpx_sse import ServerSentEvent

from ._errors import (
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
    Deleted,
    Event,
    Job,
    JobEvent,
    LogEvent,
    LogLine,
    Reset,
    Snapshot,
    Task,
)

__all__ = [
    "DEFAULT_TIMEOUT",
    "RECONNECT_TIMEOUT",
    "BaseClient",
    "Call",
    "Plan",
    "Resume",
    "Waiter",
    "cancel",
    "check_base_url",
    "get",
    "headers",
    "jobs",
    "logs",
    "not_jobcast",
    "outcome",
    "start",
    "tasks",
    "unreachable",
]

T = TypeVar("T")

#: Seconds a request may take to connect, or wait between two reads of its answer.
DEFAULT_TIMEOUT = 10.0
#: Seconds a stream keeps trying to reconnect before it gives up.
RECONNECT_TIMEOUT = 60.0
#: Seconds a stream may stay silent before it is taken for lost (the server sends a
#: keepalive every 15 s by default).
STREAM_READ_TIMEOUT = 60.0
#: Seconds between reconnections until the server advises otherwise (``retry:``).
DEFAULT_RETRY = 2.0
#: Log lines asked for per page.
LOG_PAGE = 1000


def check_base_url(base_url: str) -> str:
    """``base_url`` without a trailing slash; a ``ValueError`` naming it when it is no
    http(s) URL."""
    parts = urlsplit(base_url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(
            f"base_url must be an http:// or https:// URL such as http://127.0.0.1:8000, "
            f"got {base_url!r}"
        )
    return base_url.rstrip("/")


#: What a server's token may hold (RFC 6750's token68), as jobcast's settings require.
_TOKEN = re.compile(r"[A-Za-z0-9._~+/-]+=*")


def headers(token: str | None) -> dict[str, str]:
    """The headers of every request: the token as the API expects it (none for None or
    empty text); a ``ValueError`` for a token no server could have."""
    token = (token or "").strip()  # as read from a file, with its line break
    if not token:
        return {}
    if not _TOKEN.fullmatch(token):
        raise ValueError(
            "the token is not one a jobcast server could have: a token holds only letters, "
            "digits and - . _ ~ + / (then = padding)"
        )
    return {"Authorization": f"Bearer {token}"}


def unreachable(url: str, exc: httpx.TransportError) -> ServerUnreachable:
    """The error for a request that never got an answer."""
    return ServerUnreachable(url, str(exc) or type(exc).__name__)


def not_jobcast(response: httpx.Response, expected: str) -> ServerUnreachable:
    """The error for a success that is not what a jobcast server answers: the URL is that of
    another server (a web server, a proxy's page)."""
    kind = response.headers.get("content-type", "no content type").partition(";")[0]
    return ServerUnreachable(
        str(response.url),
        f"it answered {response.status_code} with {kind}, not {expected}: is this the URL "
        "of a jobcast server?",
    )


def _segment(value: str, what: str = "job_id") -> str:
    """``value`` as one path segment, whatever it holds; a ``ValueError`` naming ``what``
    when it is empty."""
    if not value:
        raise ValueError(f"{what} must not be empty")
    if value in (".", ".."):  # a dot segment, which the URL would drop with the one before
        return value.replace(".", "%2E")
    return quote(value, safe="")


# -- requests and answers ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Call(Generic[T]):
    """One request, and how to read its answer."""

    method: str
    path: str
    read: Callable[[Any], T]
    params: Mapping[str, str | int | float] = field(default_factory=dict)
    json: Any = None

    def answer(self, response: httpx.Response) -> T:
        """What ``response`` (its body read) means; the server's error, typed, otherwise."""
        if not response.is_success:
            raise error_from(response)
        try:
            return self.read(response.json())
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise not_jobcast(response, "jobcast's JSON") from exc


Plan = Generator[Call[Any], Any, T]


def _statuses() -> dict[int, type[ServerError]]:
    return {401: Unauthorized, 404: NotFound, 409: Conflict, 422: InvalidParams}


def error_from(response: httpx.Response) -> ServerError:
    """The typed error for an answer that is not a success (its body read)."""
    try:
        body: Any = response.json()
    except ValueError:
        body = None
    status = response.status_code
    message = _message(body) or response.text[:500].strip() or response.reason_phrase
    if status in (429, 503):
        return ServerBusy(status, message, body, retry_after=retry_after(response))
    return _statuses().get(status, ServerError)(status, message, body)


def retry_after(response: httpx.Response) -> float | None:
    """The seconds ``Retry-After`` asks to wait, if it says."""
    raw = response.headers.get("retry-after", "")
    return float(raw) if raw.isdigit() else None


def _message(body: Any) -> str | None:
    """The server's message: its ``detail``, or each invalid field and what is wrong."""
    detail = body.get("detail") if isinstance(body, dict) else None
    if isinstance(detail, str):
        return detail
    if not isinstance(detail, list):
        return None
    parts = []
    for error in detail:
        if not isinstance(error, dict):
            continue
        loc = [str(part) for part in error.get("loc", ())]
        if loc[:1] == ["body"]:
            loc = loc[1:] or ["params"]
        parts.append(f"{'.'.join(loc) or 'params'}: {error.get('msg', 'invalid')}")
    return "; ".join(parts) or None


def _jobs(data: list[dict[str, Any]]) -> list[Job]:
    return [Job.from_json(item) for item in data]


def tasks() -> Plan[list[Task]]:
    found: list[Task] = yield Call(
        "GET", "/api/tasks", lambda data: [Task.from_json(item) for item in data]
    )
    return found


def start(
    task: str,
    params: Mapping[str, Any] | None,
    *,
    delay: float | None,
    priority: int | None,
) -> Plan[Job]:
    query: dict[str, str | int | float] = {}
    if delay is not None:
        query["delay"] = delay
    if priority is not None:
        query["priority"] = priority
    path = f"/api/tasks/{_segment(task, 'task')}/jobs"
    job: Job = yield Call("POST", path, Job.from_json, query, dict(params or {}))
    return job


def get(job_id: str) -> Plan[Job]:
    job: Job = yield Call("GET", f"/api/jobs/{_segment(job_id)}", Job.from_json)
    return job


def jobs(state: str | None, task: str | None, limit: int | None) -> Plan[list[Job]]:
    query = {
        name: value
        for name, value in (("state", state), ("task", task), ("limit", limit))
        if value is not None
    }
    found: list[Job] = yield Call("GET", "/api/jobs", _jobs, query)
    return found


def cancel(job_id: str) -> Plan[Job]:
    job: Job = yield Call("POST", f"/api/jobs/{_segment(job_id)}/cancel", Job.from_json)
    return job


def logs(job_id: str) -> Plan[list[LogLine]]:
    """Every kept log line of the job, oldest first, a page at a time."""
    lines: list[LogLine] = []
    path = f"/api/jobs/{_segment(job_id)}/logs"
    after = 0
    while True:
        page: list[LogLine] = yield Call(
            "GET",
            path,
            lambda data: [LogLine(item["id"], item["ts"], item["line"]) for item in data],
            {"after": after, "limit": LOG_PAGE},
        )
        lines.extend(page)
        if len(page) < LOG_PAGE:
            return lines
        after = page[-1].id


# -- streams -----------------------------------------------------------------------------------


def _event(name: str, data: dict[str, Any]) -> Event | None:
    """The typed event a frame carries; None for a kind this client does not know."""
    seq, ts = data["seq"], data.get("ts", 0.0)
    if name == "snapshot":
        return Snapshot(seq, ts, _jobs(data["jobs"]))
    if name == "log":
        return LogEvent(seq, ts, data["job_id"], data["line"])
    if name == "deleted":
        return Deleted(seq, ts, data["job_id"])
    if isinstance(data.get("job"), dict):
        return JobEvent(name, seq, ts, Job.from_json(data["job"]))
    return None


class Resume:
    """Where one stream stands, and what to do next: the id to resume from, how long to
    wait before reconnecting, when to give up, and, for one job's stream, when it is over.

    Every event is delivered once, in order: an event whose id is not past the last one
    delivered is dropped (a replay after a reconnect), except the snapshot that follows a
    :class:`~jobcast.client.Reset`, which starts the count afresh.
    """

    def __init__(
        self,
        url: str,
        path: str,
        *,
        job_id: str | None = None,
        query: Mapping[str, str] | None = None,
        reconnect_timeout: float = RECONNECT_TIMEOUT,
        timeout: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.url = url
        self.path = path
        self.query = dict(query or {})
        self.job_id = job_id
        self.last_id: int | None = None
        self.retry = DEFAULT_RETRY
        self.done = False
        self._reconnect_timeout = reconnect_timeout
        self._clock = clock
        self._deadline = None if timeout is None else clock() + timeout
        self._opened = False
        self._lost_since: float | None = None
        self._reset = False

    def request_headers(self) -> dict[str, str]:
        """What the next connection sends: the id to resume after, if any."""
        if self.last_id is None:
            return {}
        return {"Last-Event-ID": str(self.last_id)}

    def read_timeout(self) -> float:
        """How long the next connection may stay silent before it is taken for lost."""
        remaining = self.remaining()
        return STREAM_READ_TIMEOUT if remaining is None else min(STREAM_READ_TIMEOUT, remaining)

    def remaining(self) -> float | None:
        """Seconds left before the stream's own deadline, if it has one (never below 0)."""
        return None if self._deadline is None else max(0.0, self._deadline - self._clock())

    @property
    def expired(self) -> bool:
        """Whether the deadline, if any, has passed."""
        return self.remaining() == 0.0

    def opened(self, response: httpx.Response) -> bool:
        """Whether to read events from ``response``; a 204 ends the stream (the job ended,
        and this client saw it); a refusal that may pass (429, 502-504) waits and tries
        again; any other error is raised (its body read)."""
        status = response.status_code
        if status == 200:
            # What httpx-sse would refuse, each time the stream is opened again, forever.
            if "text/event-stream" not in response.headers.get("content-type", ""):
                raise not_jobcast(response, "an event stream")
            self._opened = True
            self._lost_since = None
            return True
        if status == 204:
            self.done = True
            return False
        if status in (429, 502, 503, 504) and self._opened:
            advised = retry_after(response)
            if advised is not None:
                self.retry = max(self.retry, advised)
            return False
        raise error_from(response)

    def receive(self, sse: ServerSentEvent) -> Event | None:
        """The event ``sse`` delivers, or None (advice, a repeat, a kind not known here)."""
        if sse.retry is not None:
            self.retry = sse.retry / 1000
        if not sse.data:
            return None
        data = json.loads(sse.data)
        if sse.event == "reset":
            self._reset = True
            return Reset(data.get("last_event_id"), data.get("first_retained"), data["reason"])
        seq = data.get("seq")
        if not isinstance(seq, int):
            return None
        fresh = self._reset and sse.event == "snapshot"
        if self.last_id is not None and seq <= self.last_id and not fresh:
            return None
        self.last_id, self._reset = seq, False
        event = _event(sse.event, data)
        if self.job_id is not None and self._ends(event):
            self.done = True
        return event

    def _ends(self, event: Event | None) -> bool:
        if isinstance(event, JobEvent):
            return event.terminal and event.job.id == self.job_id
        if isinstance(event, Snapshot):
            return any(job.id == self.job_id and job.finished for job in event.jobs)
        return False

    def lost(self, problem: str) -> float:
        """The connection failed, or ended before the stream was over: the seconds to wait
        before the next attempt. Raises :class:`~jobcast.client.ServerUnreachable` when no
        connection was ever made, or none for ``reconnect_timeout`` seconds."""
        now = self._clock()
        if not self._opened:
            raise ServerUnreachable(self.url, problem)
        if self._lost_since is None:
            self._lost_since = now
        elif now - self._lost_since > self._reconnect_timeout:
            raise ServerUnreachable(
                self.url, f"{problem}; no connection for {now - self._lost_since:.0f} s"
            )
        remaining = self.remaining()
        return self.retry if remaining is None else min(self.retry, remaining)


class BaseClient:
    """What both clients share: their options, and the streams they make from them."""

    def __init__(self, base_url: str, *, timeout: float, reconnect_timeout: float) -> None:
        if not timeout > 0:
            raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}")
        if not reconnect_timeout >= 0:
            raise ValueError(
                f"reconnect_timeout must be a number of seconds, at least 0, got "
                f"{reconnect_timeout!r}"
            )
        self.base_url = check_base_url(base_url)
        self._timeout = timeout
        self._reconnect_timeout = reconnect_timeout

    def _follow(self, job_id: str, timeout: float | None = None) -> Resume:
        """The stream of one job, ending after its terminal event (or at ``timeout``)."""
        path = f"/api/jobs/{_segment(job_id)}/events"
        return Resume(
            self.base_url,
            path,
            job_id=job_id,
            reconnect_timeout=self._reconnect_timeout,
            timeout=timeout,
        )

    def _watch(self, task: str | None) -> Resume:
        """The stream of every job (of ``task``, if given), which never ends by itself."""
        query = {} if task is None else {"task": task}
        return Resume(
            self.base_url, "/api/events", query=query, reconnect_timeout=self._reconnect_timeout
        )

    def _stream_timeout(self, resume: Resume) -> httpx.Timeout:
        """The timeouts of the next connection of ``resume``."""
        return httpx.Timeout(self._timeout, read=resume.read_timeout())


# -- waiting for a job's end -------------------------------------------------------------------


class Waiter:
    """What ``wait()`` has learnt of a job from its stream."""

    def __init__(self, job_id: str, timeout: float | None) -> None:
        if timeout is not None and not timeout >= 0:
            raise ValueError(f"timeout must be a number of seconds, at least 0, got {timeout!r}")
        self.job_id = job_id
        self.timeout = timeout
        self.job: Job | None = None

    def see(self, event: Event) -> None:
        """Keep the newest state of the job that ``event`` shows."""
        if isinstance(event, JobEvent) and event.job.id == self.job_id:
            self.job = event.job
        elif isinstance(event, Snapshot):
            self.job = next((job for job in event.jobs if job.id == self.job_id), self.job)

    @property
    def finished(self) -> Job | None:
        """The job, once its stream has shown it finished."""
        return self.job if self.job is not None and self.job.finished else None

    def ended(self, current: Job) -> Job:
        """The job once its stream is over without showing its end (``current``, as the
        server shows it now); :class:`~jobcast.client.WaitTimeout` if it has not finished."""
        if current.finished or self.timeout is None:
            return current
        raise WaitTimeout(current, self.timeout)


def outcome(job: Job) -> Any:
    """The result of the finished ``job``; raises what its end was."""
    if job.state == "succeeded":
        return job.result
    if job.state == "failed":
        raise JobFailed(job)
    if job.state == "interrupted":
        raise JobInterrupted(job)
    raise JobCancelled(job)
