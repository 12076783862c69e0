"""The REST routes, and the one place where domain errors become HTTP answers."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Coroutine
from typing import Annotated, Any, ClassVar

from fastapi import APIRouter, Body, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from pydantic import ValidationError
from starlette.responses import Response

from . import stream
from ._limits import ParamsProblem, StreamSlots, check_params, client_key, too_deep
from .exceptions import (
    BackendUnavailable,
    CrossOrigin,
    DuplicateJob,
    JobcastError,
    JobFinished,
    NotAccepting,
    QueueFull,
    RateLimited,
    StreamsFull,
    TooManyStreams,
    Unauthorized,
    UnknownJob,
    UnknownTask,
)
from .jobs import JobState
from .schemas import DuplicateOut, ErrorOut, JobOut, TaskOut
from .security import Guard
from .service import Service
from .settings import Settings
from .tasks import Task

__all__ = ["build_router"]

_STATUS: dict[type[JobcastError], int] = {
    Unauthorized: 401,
    CrossOrigin: 403,
    UnknownTask: 404,
    UnknownJob: 404,
    JobFinished: 409,
    DuplicateJob: 409,
    QueueFull: 429,
    RateLimited: 429,
    TooManyStreams: 429,
    NotAccepting: 503,
    BackendUnavailable: 503,
    StreamsFull: 503,
}


def error_response(exc: JobcastError) -> JSONResponse:
    """The HTTP answer for a domain error: its status, and a message that says what to do."""
    status = next((code for cls, code in _STATUS.items() if isinstance(exc, cls)), 500)
    headers: dict[str, str] = {}
    if exc.retry_after is not None:
        headers["Retry-After"] = str(exc.retry_after)
    if isinstance(exc, Unauthorized):
        headers["WWW-Authenticate"] = 'Bearer realm="jobcast"'
    body: dict[str, Any] = {"detail": str(exc)}
    if isinstance(exc, DuplicateJob):
        body["job"] = exc.snapshot
    return JSONResponse(body, status_code=status, headers=headers)


class JobcastRoute(APIRoute):
    """An APIRoute that answers :class:`JobcastError` with its HTTP status.

    It lives on the route rather than the app so the routes behave the same when
    ``JobCast.router`` is mounted into someone else's app. It also refuses a POST body that
    is not JSON, or whose JSON nests too deep or holds too long a string, before FastAPI and
    pydantic spend any work on it.
    """

    max_param_depth: ClassVar[int] = 32
    max_param_string: ClassVar[int] = 10_000

    @classmethod
    def limited(cls, settings: Settings) -> type[JobcastRoute]:
        """This route class with the params limits of ``settings``."""
        return type(
            cls.__name__,
            (cls,),
            {
                "max_param_depth": settings.max_param_depth,
                "max_param_string": settings.max_param_string,
            },
        )

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()
        max_depth, max_string = self.max_param_depth, self.max_param_string

        async def handle(request: Request) -> Response:
            if request.method == "POST":
                if not _json_or_empty(request):
                    return JSONResponse(
                        {"detail": "send the body as JSON, with Content-Type: application/json"},
                        status_code=415,
                    )
                problem = await _params_problem(request, max_depth, max_string)
                if problem is not None:
                    error = {"type": problem.kind, "loc": ("body", *problem.loc)}
                    raise RequestValidationError([{**error, "msg": problem.message}])
            try:
                return await handler(request)
            except JobcastError as exc:
                return error_response(exc)

        return handle


async def _params_problem(
    request: Request, max_depth: int, max_string: int
) -> ParamsProblem | None:
    if not await request.body():
        return None
    try:
        # Parsed once: Starlette keeps the result, and FastAPI's handler reuses it.
        value = await request.json()
    except RecursionError:
        return too_deep(max_depth)
    except UnicodeDecodeError:
        # FastAPI would answer a bare 400; this is a params problem like any other.
        return ParamsProblem((), "json_invalid", "the body is not UTF-8; send JSON text in UTF-8")
    except ValueError:
        return None  # not JSON: FastAPI answers that with its own 422, saying where
    return check_params(value, max_depth=max_depth, max_string=max_string)


def _json_or_empty(request: Request) -> bool:
    content_type = request.headers.get("content-type", "")
    if not content_type:
        return request.headers.get("content-length", "0") == "0"
    media = content_type.partition(";")[0].strip().lower()
    return media == "application/json" or media.endswith("+json")


_ERRORS: dict[int | str, dict[str, Any]] = {404: {"model": ErrorOut}}
_START_ERRORS: dict[int | str, dict[str, Any]] = {
    200: {"model": JobOut, "description": "joined the equal job already queued or running"},
    409: {"model": DuplicateOut},
    429: {"model": ErrorOut, "description": "the queue is full, or too many jobs from you"},
}
_WRITE_ERRORS: dict[int | str, dict[str, Any]] = {
    403: {"model": ErrorOut, "description": "a browser page of another origin sent it"},
    413: {"model": ErrorOut, "description": "the body is larger than JOBCAST_MAX_BODY_BYTES"},
    415: {"model": ErrorOut, "description": "the body is not JSON"},
}
_AUTH_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorOut, "description": "the access token is missing or wrong"},
}
_STREAM_ERRORS: dict[int | str, dict[str, Any]] = {
    200: {"content": {"text/event-stream": {}}, "description": "the event stream"},
    429: {"model": ErrorOut, "description": "you hold too many streams open"},
    503: {"model": ErrorOut, "description": "the server holds too many streams open"},
}


async def _submit(runner: Service, request: Request, task: str, params: object) -> JSONResponse:
    """202 and the new job; 200 and the existing one when the task joins duplicates."""
    client = client_key(request.scope)
    # Taken before the submit awaits, so concurrent requests cannot all pass the check;
    # given back when no job was made.
    await runner.rate.take(client)
    created = False
    try:
        job, created = await runner.submit(task, params)
    except ValidationError as exc:
        errors = [{**error, "loc": ("body", *error["loc"])} for error in exc.errors()]
        raise RequestValidationError(errors) from exc
    finally:
        if not created:
            await runner.rate.give_back(client)
    return JSONResponse(
        job.snapshot(),
        status_code=202 if created else 200,
        headers={"Location": f"/api/jobs/{job.id}"},
    )


def _typed_endpoint(
    task: Task, runner: Callable[[], Service]
) -> Callable[..., Coroutine[Any, Any, Response]]:
    """An endpoint whose body is ``task``'s params model, so /docs shows its form.

    The signature is built from real objects rather than annotation strings: FastAPI would
    resolve strings against this module's globals, where no such model exists.
    """
    required = any(field.is_required() for field in task.params_model.model_fields.values())

    async def start_job(request: Request, params: Any = None) -> Response:
        values = params.model_dump() if params is not None else {}
        return await _submit(runner(), request, task.name, values)

    default = Body(...) if required else Body(None)
    start_job.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
        [
            inspect.Parameter(
                "request", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=Request
            ),
            inspect.Parameter(
                "params",
                inspect.Parameter.POSITIONAL_OR_KEYWORD,
                annotation=task.params_model,
                default=default,
            ),
        ]
    )
    return start_job


def build_router(
    tasks: list[Task], runner: Callable[[], Service], *, settings: Settings, streams: StreamSlots
) -> APIRouter:
    """The HTTP API of one JobCast. ``runner()`` gives the running service's runner.

    ``streams`` counts the open streams; the caller runs its watchdog.
    """
    guard = Guard(settings)
    route_class = JobcastRoute.limited(settings)
    auth = _AUTH_ERRORS if guard.enabled else {}
    router = APIRouter(route_class=route_class)
    # Reads and writes live on routers of their own, each carrying its part of the policy:
    # that way it holds wherever this router is mounted.
    reads = APIRouter(
        route_class=route_class,
        dependencies=guard.dependencies(write=False),
        responses=auth if guard.protect_reads else {},
    )
    writes = APIRouter(
        route_class=route_class,
        dependencies=guard.dependencies(write=True),
        responses={**auth, **_WRITE_ERRORS},
    )

    @router.get("/healthz", tags=["service"])
    async def healthz() -> dict[str, Any]:
        """Liveness: answers as long as the service is up; never needs the token. Also says
        how many jobs run and wait, and with Redis how many workers are alive."""
        current = runner()
        return {"status": "ok", "last_event_id": current.log.visible_seq, **await current.health()}

    @reads.get("/api/tasks", response_model=list[TaskOut], tags=["tasks"])
    async def list_tasks() -> list[dict[str, Any]]:
        """The registered tasks, with the JSON Schema of their params."""
        return [task.info() for task in runner().registry]

    for task in tasks:
        writes.add_api_route(
            f"/api/tasks/{task.name}/jobs",
            _typed_endpoint(task, runner),
            methods=["POST"],
            status_code=202,
            response_model=JobOut,
            responses=_START_ERRORS,
            summary=f"Start a {task.name} job",
            description=task.description or None,
            tags=["tasks"],
            operation_id=f"start_{task.name.replace('-', '_')}",
        )

    @writes.post(
        "/api/tasks/{task}/jobs",
        status_code=202,
        response_model=JobOut,
        responses={**_ERRORS, **_START_ERRORS},
        tags=["jobs"],
    )
    async def start_job(
        request: Request, task: str, params: Annotated[dict[str, Any] | None, Body()] = None
    ) -> Response:
        """Start a job of any task; the body is the task's params object.

        Answers 202 with the job and its `Location`.
        """
        return await _submit(runner(), request, task, params or {})

    @reads.get("/api/jobs", response_model=list[JobOut], tags=["jobs"])
    async def list_jobs(
        state: JobState | None = None,
        task: str | None = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    ) -> list[dict[str, Any]]:
        """Jobs, newest first."""
        return [job.snapshot() for job in runner().newest(state=state, task=task, limit=limit)]

    @reads.get("/api/jobs/{job_id}", response_model=JobOut, responses=_ERRORS, tags=["jobs"])
    async def get_job(job_id: str) -> dict[str, Any]:
        """One job's snapshot."""
        return (await runner().find(job_id)).snapshot()

    @writes.post(
        "/api/jobs/{job_id}/cancel",
        status_code=202,
        response_model=JobOut,
        responses={**_ERRORS, 409: {"model": ErrorOut}},
        tags=["jobs"],
    )
    async def cancel_job(job_id: str) -> dict[str, Any]:
        """Cancel a queued job, or ask a running one to stop. 409 once it has finished."""
        return (await runner().cancel(job_id)).snapshot()

    job_stream_responses: dict[int | str, dict[str, Any]] = {
        **_ERRORS,
        **_STREAM_ERRORS,
        204: {"description": "you have already seen the job's terminal event: stop"},
    }

    # The app create_app makes serves the GETs of these two routes on a fast path instead
    # (jobcast._asgi.StreamFastPath), calling the same stream functions: here they serve HEAD,
    # /docs, and every app this router is mounted into.
    @reads.head("/api/jobs/{job_id}/events", include_in_schema=False)
    @reads.get("/api/jobs/{job_id}/events", responses=job_stream_responses, tags=["streams"])
    async def job_events(request: Request, job_id: str) -> Response:
        """SSE: the job's whole retained history, then live; ends after its terminal event."""
        return await stream.job_stream(runner(), request, job_id, streams)

    @reads.head("/api/events", include_in_schema=False)
    @reads.get("/api/events", responses={**_ERRORS, **_STREAM_ERRORS}, tags=["streams"])
    async def all_events(request: Request, task: str | None = None) -> Response:
        """SSE for every job: a `snapshot` first (or a replay after `Last-Event-ID`), then live."""
        return stream.all_jobs_stream(runner(), request, task, streams)

    router.include_router(reads)
    router.include_router(writes)
    return router
