"""The REST routes, and the one place where domain errors become HTTP answers."""

from __future__ import annotations

import functools
import inspect
import json
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import Annotated, Any, ClassVar, TypeVar

from fastapi import APIRouter, Body, Query, Request
from fastapi.datastructures import Default, DefaultPlaceholder
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from pydantic import PlainValidator
from starlette.responses import Response
from starlette.routing import Match
from starlette.types import Message, Receive, Scope, Send

from . import stream
from ._limits import ParamsProblem, StreamSlots, check_params, client_key, too_deep
from .exceptions import JobcastError
from .jobs import JobState
from .policy import Policy
from .responses import SafeJSONResponse, error_response, validation_response
from .schemas import (
    DuplicateOut,
    ErrorOut,
    JobOut,
    LogLineOut,
    ScheduleOut,
    StartOptions,
    TaskOut,
)
from .security import Guard
from .service import Service, service_of
from .settings import Settings
from .table import Submitted
from .tasks import Task

__all__ = ["build_router"]


class JobcastRoute(APIRoute):
    """The route class of every jobcast route: it carries jobcast's rules with it.

    The rules live on the route rather than the app, so they hold when ``JobCast.router``
    is mounted into someone else's app: the :class:`~jobcast.policy.Policy` (Host, CORS,
    token, body size; applied once, wherever a request meets it first), answers for
    :class:`JobcastError` and for invalid params that are always encodable, HEAD on every
    GET, and a POST body that is not JSON, nests too deep, holds too long a string or what
    JSON cannot carry is refused before FastAPI and pydantic spend any work on it.
    """

    settings: ClassVar[Settings]
    guarded: ClassVar[bool] = True

    @classmethod
    def for_settings(cls, settings: Settings, *, guarded: bool = True) -> type[JobcastRoute]:
        """This route class with the rules of ``settings``; ``guarded=False`` for a route
        that never needs the token (the health check)."""
        return type(cls.__name__, (cls,), {"settings": settings, "guarded": guarded})

    def __init__(self, path: str, endpoint: Callable[..., Any], **options: Any) -> None:
        if isinstance(options.get("response_class", Default(None)), DefaultPlaceholder):
            options["response_class"] = SafeJSONResponse
        super().__init__(path, endpoint, **options)
        self._policy = Policy(self._handle_in_policy, settings=self.settings, guard=self.guarded)

    def _serves_head(self, scope: Scope) -> bool:
        methods = self.methods or set()
        return scope["type"] == "http" and scope["method"] == "HEAD" and "GET" in methods

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        if self._serves_head(scope) and "HEAD" not in (self.methods or set()):
            return super().matches({**scope, "method": "GET"})
        return super().matches(scope)

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self._policy(scope, receive, send)

    async def _handle_in_policy(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self._serves_head(scope) and "HEAD" not in (self.methods or set()):
            scope, send = {**scope, "method": "GET"}, _without_body(send)
        await super().handle(scope, receive, send)

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()
        settings = self.settings
        max_depth, max_string = settings.max_param_depth, settings.max_param_string

        async def handle(request: Request) -> Response:
            try:
                if request.method == "POST":
                    if not _json_or_empty(request):
                        detail = "send the body as JSON, with Content-Type: application/json"
                        return SafeJSONResponse({"detail": detail}, status_code=415)
                    problem = await _params_problem(request, max_depth, max_string)
                    if problem is not None:
                        error = {"type": problem.kind, "loc": ("body", *problem.loc), "input": None}
                        return validation_response([{**error, "msg": problem.message}])
                return await handler(request)
            except JobcastError as exc:
                return error_response(exc)
            except RequestValidationError as exc:
                return validation_response(exc.errors())

        return handle


class StreamRoute(JobcastRoute):
    """The route of a stream: after the policy, its endpoint is called with the request and
    its path and query values (all text) and answers straight to the client.

    A stream is open for hours and written to thousands of times: FastAPI's handler around
    it (dependency resolution, a ``send`` wrapper and its frames) would be paid on every
    write and kept alive all along, for nothing a stream uses. The route's signature still
    documents it in OpenAPI, and the policy applies as on every route. With
    ``create_app()`` or mounted in one's own app, every stream takes this one path.
    """

    def __init__(self, path: str, endpoint: Callable[..., Any], **options: Any) -> None:
        super().__init__(path, endpoint, **options)
        names = list(inspect.signature(endpoint).parameters)[1:]  # after the request
        self._path_names = [name for name in names if "{" + name + "}" in path]
        self._query_names = [name for name in names if name not in self._path_names]

    async def _handle_in_policy(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope, receive)
        values = {name: request.path_params[name] for name in self._path_names}
        values.update((name, request.query_params.get(name)) for name in self._query_names)
        try:
            response = await self.endpoint(request, **values)
        except JobcastError as exc:
            response = error_response(exc)
        await response(scope, receive, _without_body(send) if scope["method"] == "HEAD" else send)


class _Group:
    """Routes added to one router with the dependencies, responses and route class of a part
    of the API, as an included router would add them."""

    def __init__(
        self,
        router: APIRouter,
        *,
        route_class: type[APIRoute],
        dependencies: Sequence[Any],
        responses: dict[int | str, dict[str, Any]],
    ) -> None:
        self.router = router
        self.route_class = route_class
        self.dependencies = list(dependencies)
        self.responses = responses

    def add_api_route(
        self,
        path: str,
        endpoint: Callable[..., Any],
        *,
        responses: dict[int | str, dict[str, Any]] | None = None,
        route_class_override: type[APIRoute] | None = None,
        **options: Any,
    ) -> None:
        self.router.add_api_route(
            path,
            endpoint,
            responses={**self.responses, **(responses or {})},
            dependencies=self.dependencies,
            route_class_override=route_class_override or self.route_class,
            **options,
        )

    def get(self, path: str, **options: Any) -> Callable[[_Endpoint], _Endpoint]:
        return self._method("GET", path, options)

    def post(self, path: str, **options: Any) -> Callable[[_Endpoint], _Endpoint]:
        return self._method("POST", path, options)

    def delete(self, path: str, **options: Any) -> Callable[[_Endpoint], _Endpoint]:
        return self._method("DELETE", path, options)

    def _method(
        self, method: str, path: str, options: dict[str, Any]
    ) -> Callable[[_Endpoint], _Endpoint]:
        def add(endpoint: _Endpoint) -> _Endpoint:
            self.add_api_route(path, endpoint, methods=[method], **options)
            return endpoint

        return add


_Endpoint = TypeVar("_Endpoint", bound=Callable[..., Any])


def _without_body(send: Send) -> Send:
    """``send`` for a HEAD answered as its GET: the headers, and an empty body."""

    async def send_headers(message: Message) -> None:
        if message["type"] == "http.response.body":
            if message.get("more_body", False):
                return
            message = {"type": "http.response.body", "body": b""}
        await send(message)

    return send_headers


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
    except json.JSONDecodeError:
        return None  # not JSON: FastAPI answers that with its own 422, saying where
    except ValueError:  # JSON, but with an integer of more digits than Python will read
        return ParamsProblem(
            (), "int_too_long", "the body holds an integer too long to read; send a smaller one"
        )
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


async def _submit(
    runner: Service, request: Request, start: Callable[[], Awaitable[Submitted]]
) -> SafeJSONResponse:
    """Start a job, counted against the client's rate: 202 and the new job; 200 and the
    existing one when the task joins duplicates."""
    client = client_key(request.scope)
    # Taken before the submit awaits, so concurrent requests cannot all pass the check;
    # given back when no job was made.
    await runner.rate.take(client)
    created = False
    try:
        job, created = await start()
    finally:
        if not created:
            await runner.rate.give_back(client)
    return SafeJSONResponse(
        job.snapshot(),
        status_code=202 if created else 200,
        headers={"Location": f"/api/jobs/{job.id}"},
    )


async def _start(
    request: Request, task: str, params: object, options: StartOptions
) -> SafeJSONResponse:
    runner = service_of(request.scope)
    placement = options.placement()
    params = {} if params is None else params
    return await _submit(runner, request, lambda: runner.submit(task, params, **placement))


def _as_sent(params: Any) -> Any:
    return params


def _params_body(documented_as: Any) -> Any:
    """The annotation of a start's body: documented as ``documented_as`` (a task's params
    model), and left as sent by FastAPI, so that params have one check, their task's own
    (:meth:`~jobcast.tasks.Task.validate`), whoever starts the job."""
    return Annotated[Any, PlainValidator(_as_sent, json_schema_input_type=documented_as), Body()]


def _typed_endpoint(task: Task) -> Callable[..., Coroutine[Any, Any, Response]]:
    """An endpoint whose body is documented as ``task``'s params model, so /docs shows its
    form.

    The signature is built from real objects rather than annotation strings: FastAPI would
    resolve strings against this module's globals, where no such model exists.
    """

    async def start_job(request: Request, options: Any, params: Any = None) -> Response:
        return await _start(request, task.name, params, options)

    parameter = functools.partial(inspect.Parameter, kind=inspect.Parameter.POSITIONAL_OR_KEYWORD)
    start_job.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
        [
            parameter("request", annotation=Request),
            parameter("options", annotation=Annotated[StartOptions, Query()]),
            parameter("params", annotation=_params_body(task.params_model), default=None),
        ]
    )
    return start_job


def build_router(tasks: list[Task], *, settings: Settings, streams: StreamSlots) -> APIRouter:
    """The HTTP API of one JobCast; its routes find the running service in the lifespan's
    state (:func:`~jobcast.service.service_of`).

    ``streams`` counts the open streams; the caller runs its watchdog.
    """
    guard = Guard(settings)
    route_class = JobcastRoute.for_settings(settings)
    stream_route = StreamRoute.for_settings(settings)
    auth = _AUTH_ERRORS if guard.enabled else {}
    router = APIRouter(route_class=JobcastRoute.for_settings(settings, guarded=False))
    # Reads and writes each declare in OpenAPI what their part of the policy asks for (the
    # policy itself is on every route). Groups of routes on the one router rather than
    # routers of their own: FastAPI walks one more level per included router on every
    # request, and a stream keeps that level's frames alive for as long as it is open.
    reads = _Group(
        router,
        route_class=route_class,
        dependencies=guard.dependencies(write=False),
        responses=auth if guard.protect_reads else {},
    )
    writes = _Group(
        router,
        route_class=route_class,
        dependencies=guard.dependencies(write=True),
        responses={**auth, **_WRITE_ERRORS},
    )

    @router.get(
        "/healthz",
        tags=["service"],
        responses={503: {"description": "the store cannot write: `problem` says why"}},
    )
    async def healthz(request: Request) -> Response:
        """Health: 200 while the service can take jobs, 503 naming the problem when it
        cannot (the database cannot be written, Redis is unreachable); never needs the
        token. Also says how many jobs run and wait, and with Redis how many workers live."""
        current = service_of(request.scope)
        readings = await current.health()
        failing = "problem" in readings
        body = {
            "status": "failing" if failing else "ok",
            "last_event_id": current.log.visible_seq,
            **readings,
        }
        return SafeJSONResponse(body, status_code=503 if failing else 200)

    @reads.get("/api/tasks", response_model=list[TaskOut], tags=["tasks"])
    async def list_tasks(request: Request) -> list[dict[str, Any]]:
        """The registered tasks, with the JSON Schema of their params."""
        return [task.info() for task in service_of(request.scope).registry]

    for task in tasks:
        required = any(field.is_required() for field in task.params_model.model_fields.values())
        writes.add_api_route(
            f"/api/tasks/{task.name}/jobs",
            _typed_endpoint(task),
            methods=["POST"],
            status_code=202,
            response_model=JobOut,
            responses=_START_ERRORS,
            summary=f"Start a {task.name} job",
            description=task.description or None,
            tags=["tasks"],
            operation_id=f"start_{task.name.replace('-', '_')}",
            openapi_extra={"requestBody": {"required": True}} if required else None,
        )

    @writes.post(
        "/api/tasks/{task}/jobs",
        status_code=202,
        response_model=JobOut,
        responses={**_ERRORS, **_START_ERRORS},
        tags=["jobs"],
    )
    async def start_job(
        request: Request,
        task: str,
        options: Annotated[StartOptions, Query()],
        params: Annotated[
            Any, PlainValidator(_as_sent, json_schema_input_type=dict[str, Any] | None), Body()
        ] = None,
    ) -> Response:
        """Start a job of any task; the body is the task's params object.

        Answers 202 with the job and its `Location`. `delay` or `run_at` keep it queued
        until then; `priority` puts it ahead of lower ones.
        """
        return await _start(request, task, params, options)

    @reads.get("/api/jobs", response_model=list[JobOut], responses=_ERRORS, tags=["jobs"])
    async def list_jobs(
        request: Request,
        state: JobState | None = None,
        task: str | None = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    ) -> Response:
        """Jobs, newest first. A `task` that is not registered is a 404, as on the streams."""
        current = service_of(request.scope)
        if task is not None:
            current.registry.get(task)  # 404 for a task that does not exist, as the streams do
        # Answered as they are: snapshots are JSON already, checked where their values came
        # in; response_model documents them (re-serialising would refuse what the encoder
        # makes safe, such as text that is not UTF-8).
        return SafeJSONResponse(current.newest(state=state, task=task, limit=limit))

    @reads.get("/api/jobs/{job_id}", response_model=JobOut, responses=_ERRORS, tags=["jobs"])
    async def get_job(request: Request, job_id: str) -> Response:
        """One job's snapshot."""
        current = service_of(request.scope)
        job = await current.find(job_id)
        return SafeJSONResponse(current.shown(job.id))

    @writes.post(
        "/api/jobs/{job_id}/cancel",
        status_code=202,
        response_model=JobOut,
        responses={**_ERRORS, 409: {"model": ErrorOut}},
        tags=["jobs"],
    )
    async def cancel_job(request: Request, job_id: str) -> Response:
        """Cancel a queued job, or ask a running one to stop. 409 once it has finished."""
        job = await service_of(request.scope).cancel(job_id)
        return SafeJSONResponse(job.snapshot(), status_code=202)

    @writes.post(
        "/api/jobs/{job_id}/rerun",
        status_code=202,
        response_model=JobOut,
        responses={**_ERRORS, **_START_ERRORS},
        tags=["jobs"],
    )
    async def rerun_job(request: Request, job_id: str) -> Response:
        """Start a new job of the same task with the same params (and priority) as this one.

        Answers 202 with the new job and its `Location`.
        """
        runner = service_of(request.scope)
        return await _submit(runner, request, lambda: runner.rerun(job_id))

    @writes.delete(
        "/api/jobs/{job_id}",
        status_code=204,
        response_class=Response,
        responses={**_ERRORS, 409: {"model": ErrorOut}},
        tags=["jobs"],
    )
    async def delete_job(request: Request, job_id: str) -> Response:
        """Remove a finished job and its events; 409 while it is queued or running. Streams
        tell of it with a `deleted` event."""
        await service_of(request.scope).delete(job_id)
        return Response(status_code=204)

    @reads.get(
        "/api/jobs/{job_id}/logs",
        response_model=list[LogLineOut],
        responses=_ERRORS,
        tags=["jobs"],
    )
    async def job_logs(
        request: Request,
        job_id: str,
        after: Annotated[int, Query(ge=0, description="the id of the last line you have")] = 0,
        limit: Annotated[int, Query(ge=1, le=10_000)] = 1000,
    ) -> Response:
        """The job's log lines as kept (its whole retained history), oldest first, each with
        its event id; page on with `after` set to the last id."""
        current = service_of(request.scope)
        lines = await current.logs(job_id, after=after, limit=limit)
        return SafeJSONResponse(lines)

    @reads.get("/api/schedules", response_model=list[ScheduleOut], tags=["schedules"])
    async def list_schedules(request: Request) -> Response:
        """The schedules that start jobs, with when each runs next (null while paused)."""
        return SafeJSONResponse(await service_of(request.scope).schedules())

    @writes.post(
        "/api/schedules/{name}/pause",
        response_model=ScheduleOut,
        responses=_ERRORS,
        tags=["schedules"],
    )
    async def pause_schedule(request: Request, name: str) -> Response:
        """Start no more jobs on this schedule until it is resumed."""
        return SafeJSONResponse(await service_of(request.scope).pause(name))

    @writes.post(
        "/api/schedules/{name}/resume",
        response_model=ScheduleOut,
        responses=_ERRORS,
        tags=["schedules"],
    )
    async def resume_schedule(request: Request, name: str) -> Response:
        """Start jobs on this schedule again, from its next due time (what it missed while
        paused is not made up for)."""
        return SafeJSONResponse(await service_of(request.scope).resume(name))

    job_stream_responses: dict[int | str, dict[str, Any]] = {
        **_ERRORS,
        **_STREAM_ERRORS,
        204: {"description": "you have already seen the job's terminal event: stop"},
    }

    async def job_events(request: Request, job_id: str) -> Response:
        """SSE: the job's whole retained history, then live; ends after its terminal event."""
        return await stream.job_stream(service_of(request.scope), request, job_id, streams)

    async def all_events(request: Request, task: str | None = None) -> Response:
        """SSE for every job: a `snapshot` first (or a replay after `Last-Event-ID`), then live."""
        return stream.all_jobs_stream(service_of(request.scope), request, task, streams)

    for path, endpoint, responses in (
        ("/api/jobs/{job_id}/events", job_events, job_stream_responses),
        ("/api/events", all_events, {**_ERRORS, **_STREAM_ERRORS}),
    ):
        for method, documented in (("GET", True), ("HEAD", False)):  # HEAD: the head only
            reads.add_api_route(
                path,
                endpoint,
                methods=[method],
                responses=responses,
                tags=["streams"],
                include_in_schema=documented,
                route_class_override=stream_route,
            )

    return router
