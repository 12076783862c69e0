"""The app factory: :class:`JobCast` registers tasks and builds the FastAPI app around them."""

from __future__ import annotations

import functools
import gc
import logging
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar, Unpack, overload

import anyio
import anyio.from_thread
import anyio.lowlevel
from anyio.abc import TaskGroup
from fastapi import APIRouter, FastAPI

from . import factory
from ._exit import wait_for_exit_signal
from ._limits import StreamSlots
from .api import build_router
from .eventlog import EventLog
from .exceptions import NotAccepting
from .runner import Runner
from .schedules import Schedule
from .schemas import JobOut, StartOptions
from .service import STATE_KEY, Service
from .settings import Settings
from .store import MemoryStore, ReportsWrites, SqliteStore, Store
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
        # The running service's event loop, and its thread: where start_sync hands over.
        self._loop: tuple[anyio.lowlevel.EventLoopToken, int] | None = None
        self._router: APIRouter | None = None

    @functools.cached_property
    def settings(self) -> Settings:
        """The effective settings, read from the environment on first use."""
        return Settings.from_env(**self._options)

    @functools.cached_property
    def streams(self) -> StreamSlots:
        """The open streams of this JobCast's routes, counted against its stream limits."""
        return self._stream_slots()

    def _stream_slots(self) -> StreamSlots:
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

    def schedule(
        self,
        name: str,
        task: str,
        *,
        cron: str | None = None,
        every: float | None = None,
        params: Mapping[str, Any] | None = None,
    ) -> Schedule:
        """Start a job of ``task`` with ``params`` on a schedule: a ``cron`` expression (five
        fields, or six with seconds first; in UTC) or ``every`` so many seconds.

        One job starts per due time across every process of a deployment. After downtime,
        the due times missed start one job at start-up, not one each. ``@jobs.task(schedule=
        ..., every=..., schedule_params=...)`` declares a schedule named after the task.
        """
        return self.tasks.add_schedule(
            Schedule(name, task, cron=cron, every=every, params=dict(params or {}))
        )

    @property
    def runner(self) -> Service:
        """The running service, for code of this process (routes take it from the lifespan's
        state): a :class:`~jobcast.runner.Runner`, or with Redis a
        :class:`~jobcast.cluster.hub.Hub`; only there between startup and shutdown. To
        start a job and wait for it, use :meth:`start` and :meth:`wait`."""
        if self._runner is None:
            raise _not_running()
        return self._runner

    async def start(
        self,
        task: str,
        /,
        *,
        _delay: float | None = None,
        _run_at: datetime | None = None,
        _priority: int = 0,
        **params: Any,
    ) -> JobOut:
        """Start a job of ``task`` with ``params``, as ``POST /api/tasks/{task}/jobs`` does,
        and return it (as the API answers it) once it is stored.

        It goes through the same service as the API: the queue and its limit, the task's
        duplicates policy and the backend (SQLite, Redis) apply; a task that joins
        duplicates returns the equal job already queued or running. Code of the app is
        not counted against ``jobs_per_minute``, which limits each client of the API.

        The options of the API's query string are the keyword arguments starting with
        ``_``, which a task's params cannot: ``_delay`` (seconds) or ``_run_at`` (an aware
        ``datetime``), and ``_priority`` (higher runs first).

        Raises :class:`~jobcast.InvalidParams` (naming each field; its ``body()`` is the
        API's 422), :class:`~jobcast.UnknownTask`, :class:`~jobcast.DuplicateJob`,
        :class:`~jobcast.QueueFull`, and :class:`~jobcast.NotAccepting` while the service
        is not running (outside the lifespan) or cannot take jobs.
        """
        runner = self.runner
        options = StartOptions.checked(task, delay=_delay, run_at=_run_at, priority=_priority)
        job, _ = await runner.submit(task, params, **options.placement())
        return JobOut.model_validate(job.snapshot())

    def start_sync(self, task: str, /, **params: Any) -> JobOut:
        """:meth:`start` (with the same arguments, options included), for code that runs in
        a thread of the process that runs the service: a sync route (FastAPI runs it in a
        worker thread), a task in a thread, a thread of one's own. It blocks until the job
        is stored.

        Raises what :meth:`start` raises, and ``RuntimeError`` on the event loop's own
        thread (async code there awaits :meth:`start` instead: blocking would stall the
        loop that must store the job).
        """
        loop = self._loop
        if loop is None:
            raise _not_running()
        token, loop_thread = loop
        if threading.get_ident() == loop_thread:
            raise RuntimeError(
                "jobs.start_sync() was called on the event loop's thread, where it would "
                "block the loop; in async code use `await jobs.start(...)`"
            )
        return anyio.from_thread.run(functools.partial(self.start, task, **params), token=token)

    async def wait(self, job_id: str, timeout: float | None = None) -> JobOut:  # noqa: ASYNC109
        """The job ``job_id`` once it has ended (succeeded, failed, cancelled or
        interrupted), as the API shows it.

        Raises ``TimeoutError`` after ``timeout`` seconds, if given, saying how the job
        stands: it runs on, and can be waited for again. Raises
        :class:`~jobcast.UnknownJob`, and :class:`~jobcast.NotAccepting` when the service
        stops before the job ends.
        """
        # A timeout of its own (not only the caller's anyio.fail_after): its error names the
        # job and how it stands.
        if timeout is not None and not timeout >= 0:
            raise ValueError(f"timeout must be seconds from 0, or None, got {timeout!r}")
        runner = self.runner
        with anyio.move_on_after(timeout):
            return JobOut.model_validate(await runner.wait(job_id))
        job = runner.jobs.get(job_id)
        state = job.shown["state"] if job is not None and job.shown else "not ended"
        raise TimeoutError(
            f"job {job_id} is still {state} after {timeout:g} s; wait again, or cancel it "
            f"(POST /api/jobs/{job_id}/cancel)"
        )

    @property
    def router(self) -> APIRouter:
        """The API and stream routes, to mount into an existing app with :meth:`lifespan`.

        Built on first access from the tasks registered by then.
        """
        if self._router is None:
            self._router = build_router(
                list(self.tasks), settings=self.settings, streams=self.streams
            )
        return self._router

    @asynccontextmanager
    async def lifespan(self, app: object = None) -> AsyncIterator[dict[str, Any]]:
        """Run the service: a FastAPI ``lifespan``, or ``async with jobs.lifespan():``.

        It yields the lifespan's state, where jobcast's routes find the service
        (``request.state``, :func:`~jobcast.service.service_of`).
        """
        settings = self.settings
        # Opening (the store, Redis) happens before the task group, so that its errors
        # reach the server as themselves rather than inside an exception group.
        open_service = self._open_redis if settings.redis_url else self._open_here
        async with open_service() as start, anyio.create_task_group() as task_group:
            service = await start(task_group)
            _freeze_what_was_made()
            task_group.start_soon(service.broadcaster.run)
            task_group.start_soon(_keepalive, service.log, settings.keepalive_interval)
            task_group.start_soon(self.streams.watch)
            task_group.start_soon(_stop_on_exit_signal, service)
            self._runner = service
            self._loop = (anyio.lowlevel.current_token(), threading.get_ident())
            try:
                yield {STATE_KEY: service}
            finally:
                self._runner = self._loop = None
                gc.unfreeze()  # what it made may go now
                await service.shutdown()
                task_group.cancel_scope.cancel()

    @asynccontextmanager
    async def _open_here(self) -> AsyncIterator[Callable[[TaskGroup], Awaitable[Service]]]:
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

        async def start(task_group: TaskGroup) -> Service:
            runner = Runner(self.tasks, log, store, settings, task_group)
            await runner.start(recovered.jobs, recovered.state)
            return runner

        try:
            yield start
        finally:
            log.close()
            await store.aclose()

    @asynccontextmanager
    async def _open_redis(self) -> AsyncIterator[Callable[[TaskGroup], Awaitable[Service]]]:
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
        """Serve the dashboard page at ``/`` of ``app`` and its files under ``/static``, and
        the docs page at ``app.docs_url`` with every file it loads from this server (in
        place of FastAPI's, which loads Swagger UI from a CDN; ReDoc is not served).

        For an app of one's own with :attr:`router` included at its root, where the page
        finds the API.
        """
        factory.add_page(app)

    def create_app(self, **fastapi_options: Any) -> FastAPI:
        """A FastAPI app serving the API, the streams and the dashboard page (see
        :func:`jobcast.factory.create_app`)."""
        return factory.create_app(self, **fastapi_options)


def _not_running() -> NotAccepting:
    return NotAccepting(
        "the jobcast service is not running: run the app with its lifespan "
        "(FastAPI(lifespan=jobs.lifespan)), or `async with jobs.lifespan():`"
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


def _freeze_what_was_made() -> None:
    """Take what start-up made (the app, its routes and models, the jobs read back) out of
    the garbage collector's sight: it lives as long as the service, and a full collection
    that walks it all stops the event loop, and every stream with it, for tens of
    milliseconds."""
    gc.collect()
    gc.freeze()


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
