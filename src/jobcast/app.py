"""The app factory: :class:`JobCast` registers tasks and builds the FastAPI app around them."""

from __future__ import annotations

import functools
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar, Unpack, overload

import anyio
from anyio.abc import TaskGroup
from fastapi import APIRouter, FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Match
from starlette.types import ASGIApp

from . import __version__
from ._asgi import StreamFastPath
from ._limits import StreamSlots
from .api import build_router
from .eventlog import EventLog
from .exceptions import JobcastError, NotAccepting
from .policy import Policy
from .responses import error_response
from .runner import Runner
from .security import RedactTokens
from .service import Service
from .settings import Settings
from .store import MemoryStore, ReportsWrites, SqliteStore, Store
from .stream import wait_for_exit_signal
from .tasks import CommandOptions, FunctionOptions, TaskRegistry

__all__ = ["JobCast"]

logger = logging.getLogger("jobcast")

F = TypeVar("F", bound=Callable[..., Any])


def _static_dir() -> Path:
    # Inside a wheel the page ships as jobcast/static; in a source checkout it is top-level.
    packaged = Path(__file__).with_name("static")
    return packaged if packaged.is_dir() else Path(__file__).parents[2] / "static"


class JobCast:
    """A set of tasks, and the service that runs them and streams what they do.

    Options are the fields of :class:`~jobcast.settings.Settings`, given as keyword
    arguments; those not given are read from ``JOBCAST_*`` environment variables when the
    app starts, and default otherwise. Jobs and events are kept in the SQLite file named by
    the ``db`` option (``jobcast.db``; ``":memory:"`` keeps nothing across restarts), unless
    a ``store`` is given.
    """

    def __init__(self, *, store: Store | None = None, **options: Any) -> None:
        Settings.from_env({}, **options)  # refuse unknown or invalid options now
        self._options = options
        self._store = store
        self.tasks = TaskRegistry()
        self._runner: Service | None = None
        self._router: APIRouter | None = None

    @functools.cached_property
    def settings(self) -> Settings:
        """The effective settings, read from the environment on first use."""
        return Settings.from_env(**self._options)

    @functools.cached_property
    def _streams(self) -> StreamSlots:
        # Open streams are counted across restarts of the lifespan: each gives its slot
        # back when its response ends, whenever that is.
        settings = self.settings
        return StreamSlots(
            per_client=settings.max_streams_per_client,
            total=settings.max_streams,
            send_timeout=settings.stream_send_timeout,
        )

    @overload
    def task(self, func: F) -> F: ...

    @overload
    def task(self, **options: Unpack[FunctionOptions]) -> Callable[[F], F]: ...

    def task(
        self, func: Callable[..., Any] | None = None, **options: Unpack[FunctionOptions]
    ) -> Any:
        """Register a function as a task; use as ``@jobs.task`` or ``@jobs.task(...)``.

        The function takes a :class:`~jobcast.JobContext` first; its other parameters are the
        job's params, validated by pydantic from their annotations. The options are those of
        :class:`~jobcast.tasks.FunctionOptions`: ``mode="process"`` runs the task in a worker
        process at ``nice`` lower CPU priority (for CPU-bound work, which would otherwise hold
        the GIL and slow the API); ``duplicates`` says what starting a job does while one with
        equal params is queued or running: ``"allow"`` another, ``"reject"`` it (409 naming
        the existing job) or ``"join"`` the existing one. A job the server stops under (a
        restart, a crash) ends ``interrupted``, or with ``retry_on_restart=True`` is queued
        again to run from the start at the next start.
        """

        def register(func: Callable[..., Any]) -> Callable[..., Any]:
            self.tasks.register(func, **options)
            return func

        return register if func is None else register(func)

    def command(self, name: str, argv: Sequence[str], **options: Unpack[CommandOptions]) -> None:
        """Register an existing program as a task.

        ``argv`` is a list, never a shell string; ``{param}`` placeholders in its items are
        filled with the validated params, each value inside its own item. ``params`` maps each
        param to a type, or to a ``(type, default)`` pair (``Annotated`` types may carry
        pydantic ``Field`` bounds and patterns). The program's output lines become ``log``
        events, and ``NN%``, ``n/total`` or a tqdm bar in them its progress; the exit code
        decides success, and a failure carries the last lines of stderr.
        """
        self.tasks.register_command(name, argv, **options)

    @property
    def runner(self) -> Service:
        """The running service: a :class:`~jobcast.runner.Runner`, or with Redis a
        :class:`~jobcast.cluster.hub.Hub`; only there between startup and shutdown."""
        if self._runner is None:
            raise NotAccepting("the jobcast service is not running (lifespan not started)")
        return self._runner

    @property
    def router(self) -> APIRouter:
        """The API and stream routes, to mount into an existing app with :meth:`lifespan`.

        Built on first access from the tasks registered by then.
        """
        if self._router is None:
            self._router = build_router(
                list(self.tasks), lambda: self.runner, settings=self.settings, streams=self._streams
            )
        return self._router

    @asynccontextmanager
    async def lifespan(self, app: object = None) -> AsyncIterator[None]:
        """Run the service: a FastAPI ``lifespan``, or ``async with jobs.lifespan():``."""
        settings = self.settings
        # Opening (the store, Redis) happens before the task group, so that its errors
        # reach the server as themselves rather than inside an exception group.
        open_service = self._open_redis if settings.redis_url else self._open_here
        async with open_service() as start, anyio.create_task_group() as task_group:
            service = start(task_group)
            task_group.start_soon(_keepalive, service.log, settings.keepalive_interval)
            task_group.start_soon(self._streams.watch)
            task_group.start_soon(_stop_on_exit_signal, service)
            self._runner = service
            try:
                yield
            finally:
                self._runner = None
                await service.shutdown()
                task_group.cancel_scope.cancel()

    @asynccontextmanager
    async def _open_here(self) -> AsyncIterator[Callable[[TaskGroup], Service]]:
        """This process runs the jobs, kept in the store (SQLite unless told otherwise)."""
        settings = self.settings
        store = self._store or _default_store(settings)
        recovered = await store.open()
        events = recovered.events
        reports = isinstance(store, ReportsWrites)
        log = EventLog(
            maxlen=settings.event_buffer,
            next_seq=events[0].seq if events else recovered.next_seq,
            hold_until_stored=reports,
        )
        log.extend(events)

        def start(task_group: TaskGroup) -> Service:
            runner = Runner(self.tasks, log, store, settings, task_group)
            runner.restore(recovered.jobs)
            return runner

        try:
            yield start
        finally:
            log.close()
            await store.aclose()

    @asynccontextmanager
    async def _open_redis(self) -> AsyncIterator[Callable[[TaskGroup], Service]]:
        """Workers run the jobs; this process starts them and streams them, through Redis."""
        from .cluster import connect
        from .cluster.hub import Hub

        settings = self.settings
        assert settings.redis_url is not None
        redis = connect(settings.redis_url)
        try:
            hub = await Hub.load(self.tasks, settings, redis)
            try:
                yield hub.start
            finally:
                hub.log.close()
        finally:
            await redis.aclose()

    def add_page(self, app: FastAPI) -> None:
        """Serve the dashboard page at ``/`` of ``app`` and its files under ``/static``.

        For an app of one's own with :attr:`router` included at its root, where the page
        finds the API.
        """
        static = _static_dir()
        app.mount("/static", StaticFiles(directory=static, check_dir=False), name="static")

        @app.api_route("/", methods=["GET", "HEAD"], include_in_schema=False)
        async def index() -> FileResponse:
            return FileResponse(static / "index.html")

    def create_app(self, **fastapi_options: Any) -> FastAPI:
        """A FastAPI app serving the API, the streams and the dashboard page.

        With a token set, every route of the app follows the access policy (see
        :mod:`jobcast.security`), routes added to it later included; the health check, the
        page, its static files and the docs page stay open (the page asks for the token).
        """
        settings = self.settings
        fastapi_options.setdefault("title", "jobcast")
        fastapi_options.setdefault("version", __version__)
        app = _App(lifespan=self.lifespan, **fastapi_options)
        open_paths = {
            "/",
            "/healthz",
            app.docs_url,
            app.redoc_url,
            app.swagger_ui_oauth2_redirect_url,
        }
        # The same policy as on jobcast's routes, here for every route of the app (the
        # page, the docs, routes the user adds); it runs once per request.
        policy = [
            Middleware(
                Policy,
                settings=settings,
                open_paths={path for path in open_paths if path},
                open_prefixes=("/static/",),
            )
        ]
        app.user_middleware[:0] = policy
        app.add_exception_handler(JobcastError, _jobcast_error)
        app.add_exception_handler(405, _method_not_allowed)
        if settings.token:
            RedactTokens.install()
        app.include_router(self.router)
        self.add_page(app)

        app.stream_fast_path = _FastPathSpec(
            runner=lambda: self.runner,
            streams=self._streams,
            policy=policy,
            exception_handlers=dict(app.exception_handlers),
        )
        return app


@dataclass(slots=True, frozen=True)
class _FastPathSpec:
    """What :class:`StreamFastPath` needs, and the app's policy as ``create_app`` left it."""

    runner: Callable[[], Service]
    streams: StreamSlots
    policy: list[Middleware]
    exception_handlers: dict[Any, Any]


class _App(FastAPI):
    """FastAPI, with jobcast's two SSE GETs served by :class:`~jobcast._asgi.StreamFastPath`.

    The fast path sits outside the whole middleware stack that FastAPI builds, and applies the
    app's own policy middleware itself. Only as long as the app is as ``create_app`` made it:
    middleware or exception handlers added afterwards must see the streams too, so with those
    the streams go through the framework like every other route.
    """

    stream_fast_path: _FastPathSpec | None = None

    def build_middleware_stack(self) -> ASGIApp:
        stack = super().build_middleware_stack()
        spec = self.stream_fast_path
        if (
            spec is None
            or self.user_middleware != spec.policy
            or self.exception_handlers != spec.exception_handlers
            or getattr(self, "max_body_size", None) is not None  # newer FastAPI: its own limit
        ):
            return stack
        error_handler = None
        for key, value in self.exception_handlers.items():  # as FastAPI picks it
            if key in (500, Exception):
                error_handler = value
        return StreamFastPath(
            stack,
            runner=spec.runner,
            streams=spec.streams,
            policy=spec.policy,
            error_handler=error_handler,
            debug=self.debug,
        )


async def _jobcast_error(request: Request, exc: Exception) -> Response:
    # jobcast's own routes answer their errors themselves (JobcastRoute); this covers the
    # routes a user adds to the app, such as the demo's recipe endpoints calling the runner.
    assert isinstance(exc, JobcastError)
    return error_response(exc)


_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


async def _method_not_allowed(request: Request, exc: Exception) -> Response:
    # Starlette's Allow names the methods of the first route whose path matches; a path
    # served by several routes (GET and POST /api/background-task in the demo) must list
    # them all (RFC 9110), or a client cannot tell what it may do there.
    scope, routes = request.scope, request.app.router.routes

    def serves(method: str) -> bool:
        probe = {**scope, "method": method}
        return any(route.matches(probe)[0] is Match.FULL for route in routes)

    if serves(scope["method"]):
        # A mounted app (the static files) took the request and refused it: it knows best.
        allow = (getattr(exc, "headers", None) or {}).get("Allow", "")
    else:
        allow = ", ".join(method for method in _METHODS if serves(method))
    detail = getattr(exc, "detail", None) or "Method Not Allowed"
    return JSONResponse(
        {"detail": detail}, status_code=405, headers={"Allow": allow} if allow else {}
    )


def _default_store(settings: Settings) -> Store:
    # ":memory:" keeps nothing, so the memory store does: its ids still grow across restarts.
    if settings.db == ":memory:":
        return MemoryStore()
    return SqliteStore(
        settings.db,
        tail=settings.event_buffer,
        retain_events=settings.retain_events,
        retain_days=settings.retain_days,
    )


async def _stop_on_exit_signal(service: Service) -> None:
    # The server waits for open streams to end before it runs the lifespan's shutdown, so
    # on a signal the jobs are stopped and recorded first, then the log is closed: streams
    # deliver the jobs' last events and end cleanly.
    await wait_for_exit_signal()
    await service.shutdown()
    service.log.close()


async def _keepalive(log: EventLog, interval: float) -> None:
    # One timer for every stream: each idle stream writes a comment when poked.
    while True:
        await anyio.sleep(interval)
        log.poke()
