"""The one lifecycle, the same on both backends: each test runs on the local backend (a SQLite
file, the server's own worker) and on Redis (a real redis-server, an API process's service and
the one worker over it), and asserts the same."""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest

from jobcast import JobCast, JobState
from jobcast._execution import Outcome
from jobcast.backends.redis import RedisBackend
from jobcast.cluster import connect
from jobcast.jobs import Job, JobError
from jobcast.lifecycle import Lifecycle
from jobcast.schedules import Schedule
from jobcast.service import Service
from jobcast.worker import Worker
from tests.apps import gate, make_jobs
from tests.redis_server import RedisServer

pytestmark = [pytest.mark.anyio, pytest.mark.integration]

BACKENDS = pytest.mark.parametrize("kind", ["local", "redis"])


@asynccontextmanager
async def deployment(
    kind: str,
    tmp_path: Path,
    redis: RedisServer | None,
    *,
    schedules: Sequence[Schedule] = (),
    api_processes: int = 1,
    **options: Any,
) -> AsyncIterator[tuple[JobCast, Service]]:
    """A running service on ``kind``, and the jobs it runs: on Redis with one worker of the
    same registry (the one Worker, over the Redis backend, in this process), and as many
    API services as ``api_processes`` says (each with its own scheduler). ``schedules`` are
    registered on each."""
    options.setdefault("max_workers", 1)

    def made(**settings: Any) -> JobCast:
        jobs = make_jobs(**settings, **options)
        for schedule in schedules:
            jobs.tasks.add_schedule(schedule)
        return jobs

    if kind == "local":
        jobs = made(db=str(tmp_path / "jobs.db"))
        async with jobs.lifespan():
            yield jobs, jobs.runner
        return
    assert redis is not None
    jobs = made(redis_url=redis.url, heartbeat_timeout=1.0)
    others = [made(redis_url=redis.url, heartbeat_timeout=1.0) for _ in range(api_processes - 1)]
    client = connect(redis.url)
    try:
        async with AsyncExitStack() as stack:
            for other in others:
                await stack.enter_async_context(other.lifespan())
            await stack.enter_async_context(jobs.lifespan())
            group = await stack.enter_async_context(anyio.create_task_group())
            backend = RedisBackend(client, jobs.settings, group)
            await backend.join("w1")
            lifecycle = Lifecycle(jobs.tasks, jobs.settings, backend)
            worker = Worker(
                jobs.tasks, jobs.settings, backend, lifecycle, group, name="w1", who="the worker w1"
            )
            group.start_soon(worker.run)
            group.start_soon(lifecycle.scheduler().run)  # as `jobcast worker` runs one
            try:
                yield jobs, jobs.runner
            finally:
                await worker.stop(0.5)
                group.cancel_scope.cancel()
    finally:
        await client.aclose()


#: ``async with deploy(**options) as (jobs, service)``: :func:`deployment` on this test's
#: backend (``kind``).
Deploy = Callable[..., AbstractAsyncContextManager[tuple[JobCast, Service]]]


@pytest.fixture
def deploy(kind: str, tmp_path: Path, redis: RedisServer | None) -> Deploy:
    """:func:`deployment` on the backend this test runs on, in its own directory."""
    return functools.partial(deployment, kind, tmp_path, redis)


@pytest.fixture
def redis(request: pytest.FixtureRequest) -> RedisServer | None:
    """A redis-server for the Redis half of each test; none for the local half."""
    if request.node.callspec.params["kind"] != "redis":
        return None
    server: RedisServer = request.getfixturevalue("redis_server")
    return server


async def until(
    service: Service, job_id: str, done: Callable[[Job], bool], seconds: float = 10
) -> Job:
    """Wait on the service's event log until ``done(job)`` holds."""
    with anyio.fail_after(seconds):
        while True:
            job = service.jobs.get(job_id)
            if job is not None and done(job):
                return job
            await service.log.wait(service.log.last_seq)


async def running(service: Service, task: str, **params: Any) -> Job:
    """Start a job of ``task`` and return it once it runs."""
    job = (await service.submit(task, params)).job
    return await until(service, job.id, lambda job: job.state is JobState.RUNNING)


def states(service: Service, job_id: str) -> list[str]:
    """The names of the state events of ``job_id`` that the service's log still holds."""
    return [
        event.name
        for event in service.log.iter_after(0)
        if event.job_id == job_id and event.name not in ("log", "progress")
    ]


@BACKENDS
async def test_a_job_is_queued_runs_and_succeeds(kind: str, deploy: Deploy) -> None:
    async with deploy() as (_, service):
        job = (await service.submit("count", {"n": 3})).job
        ended = await until(service, job.id, lambda job: job.finished)
        assert ended.state is JobState.SUCCEEDED and ended.result == 3
        assert states(service, job.id) == ["queued", "running", "succeeded"]


@BACKENDS
async def test_a_queued_job_cancelled_never_runs_and_the_next_one_does(
    kind: str, deploy: Deploy
) -> None:
    async with deploy() as (_, service):
        await running(service, "hold", name=f"block-{kind}")
        waiting = (await service.submit("count", {"n": 1})).job
        after = (await service.submit("count", {"n": 2})).job
        await service.cancel(waiting.id)
        gate(f"block-{kind}").set()
        await until(service, after.id, lambda job: job.finished)
        assert states(service, waiting.id) == ["queued", "cancelled"]
        assert service.get(after.id).state is JobState.SUCCEEDED


@BACKENDS
async def test_a_start_that_comes_after_a_cancel_is_refused(kind: str, deploy: Deploy) -> None:
    async with deploy() as (_, service):
        await running(service, "hold", name=f"race-{kind}")
        job = (await service.submit("count", {"n": 1})).job
        await service.cancel(job.id)
        lifecycle = Lifecycle(service.registry, service.settings, service.backend)
        assert not await lifecycle.start(job, "another-worker")  # the cancel won
        await until(service, job.id, lambda job: job.finished)
        assert service.get(job.id).state is JobState.CANCELLED
        gate(f"race-{kind}").set()


@BACKENDS
async def test_duplicates_are_refused_or_joined_and_the_queue_has_a_limit(
    kind: str, deploy: Deploy
) -> None:
    async with deploy(max_queue=2) as (_, service):
        await running(service, "unique", name=f"dup-{kind}")
        with pytest.raises(Exception, match="already has job") as refused:
            await service.submit("unique", {"name": f"dup-{kind}"})
        assert type(refused.value).__name__ == "DuplicateJob"
        joined = await service.submit("shared", {"name": f"join-{kind}"})
        again = await service.submit("shared", {"name": f"join-{kind}"})
        assert joined.created and not again.created and again.job.id == joined.job.id
        await service.submit("count", {"n": 1})
        with pytest.raises(Exception, match="queue is full") as full:
            await service.submit("count", {"n": 2})
        assert type(full.value).__name__ == "QueueFull"
        gate(f"dup-{kind}").set()
        gate(f"join-{kind}").set()


@BACKENDS
async def test_a_job_whose_worker_is_gone_is_interrupted_or_queued_again_by_its_task(
    kind: str, deploy: Deploy
) -> None:
    async with deploy(max_workers=2) as (_, service):
        held = await running(service, "hold", name=f"gone-{kind}")
        retried = await running(service, "resumable", name=f"again-{kind}")
        lifecycle = service.lifecycle
        holder = "server" if kind == "local" else "w1"
        last_known = service.get(held.id).updated_at
        for job in (held, retried):  # as a reaper, or a restart, finds them
            await lifecycle.gone(
                Job.from_snapshot(job.snapshot()), holder, "the worker vanished", at=last_known
            )
        interrupted = await until(service, held.id, lambda job: job.finished)
        assert interrupted.state is JobState.INTERRUPTED
        assert interrupted.error == JobError.interrupted("the worker vanished")
        assert interrupted.finished_at == last_known
        # Queued again (its worker's slot is not free here: that worker only seemed gone).
        again = await until(service, retried.id, lambda job: job.state is JobState.QUEUED)
        assert states(service, again.id)[-1] == "queued" and again.started_at is None
        lines = [
            event.frame
            for event in service.log.iter_after(0)
            if event.job_id == retried.id and event.name == "log"
        ]
        assert any(b"queued again, to run from the start: the worker vanished" in f for f in lines)
        gate(f"gone-{kind}").set()
        gate(f"again-{kind}").set()


@BACKENDS
async def test_the_end_a_worker_sends_for_a_job_taken_from_it_is_not_recorded(
    kind: str, deploy: Deploy
) -> None:
    async with deploy() as (_, service):
        job = await running(service, "hold", name=f"taken-{kind}")
        await service.cancel(job.id)
        ended = await until(service, job.id, lambda job: job.finished)
        lifecycle = Lifecycle(service.registry, service.settings, service.backend)
        stale = Job.from_snapshot(job.snapshot())
        await lifecycle.end(
            stale,
            Outcome(JobState.SUCCEEDED, result="late"),
            "a-stale-worker",
            stopping=False,
            who="the worker a-stale-worker",
        )
        assert service.get(job.id).state is ended.state is JobState.CANCELLED
        assert states(service, job.id) == ["queued", "running", "cancelled"]
