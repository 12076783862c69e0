"""Schedules: a task started on a cron expression or every so many seconds, one job per due
time however many processes look, the missed ones started once after downtime, paused and
resumed, and shown on ``GET /api/schedules``. The timing is read from the jobs' ticks and
timestamps, never by sleeping."""

from __future__ import annotations

import math
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from asgi_lifespan import LifespanManager

from jobcast import JobCast, UnknownSchedule
from jobcast.cluster import connect
from jobcast.jobs import Job
from jobcast.schedules import Schedule
from jobcast.service import Service
from jobcast.store import SqliteStore
from tests.apps import make_jobs
from tests.redis_server import RedisServer
from tests.test_lifecycle import BACKENDS, Deploy, deploy, deployment, redis, until

pytestmark = pytest.mark.anyio

__all__ = ["deploy", "redis"]  # the fixtures, shared with the lifecycle tests


def at(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


# -- the schedule itself (unit) ---------------------------------------------------------------


@pytest.mark.unit
def test_a_cron_schedule_is_due_on_its_minutes_and_seconds_in_utc() -> None:
    five = Schedule("s", "t", cron="*/5 * * * *")
    assert five.after(at("2026-01-01T10:03:20")) == at("2026-01-01T10:05:00")
    assert five.after(at("2026-01-01T10:05:00")) == at("2026-01-01T10:10:00")
    seconds = Schedule("s", "t", cron="*/15 * * * * *")  # seconds first
    assert seconds.after(at("2026-01-01T10:00:07")) == at("2026-01-01T10:00:15")
    assert seconds.expression == "*/15 * * * * *"


@pytest.mark.unit
def test_after_downtime_the_newest_missed_due_time_is_the_one_started() -> None:
    hourly = Schedule("s", "t", cron="0 * * * *")
    last = at("2026-01-01T10:00:00")
    assert hourly.newest_due(last, at("2026-01-01T15:30:00")) == at("2026-01-01T15:00:00")
    every = Schedule("s", "t", every=30)
    assert every.newest_due(100.0, 100.0 + 95) == 100.0 + 90
    assert every.after(100.0 + 90) == 100.0 + 120
    assert every.expression == "every 30 s"


@pytest.mark.unit
@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"cron": "*/5 * * *"}, "not a cron expression"),
        ({"cron": "every monday"}, "not a cron expression"),
        ({"cron": "* * * * *", "every": 5}, "either cron= or every="),
        ({}, "either cron= or every="),
        ({"every": 0}, "at least 0.1 seconds"),
        ({"every": math.nan}, "at least 0.1 seconds"),
        ({"every": math.inf}, "at least 0.1 seconds"),
    ],
)
def test_a_schedule_that_cannot_run_is_refused_when_declared(
    options: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        Schedule("s", "t", **options)


@pytest.mark.unit
def test_a_schedule_is_checked_against_its_task_when_registered() -> None:
    jobs = JobCast(db=":memory:")

    @jobs.task(every=60, schedule_params={"n": 2})
    def count(ctx: Any, n: int = 1) -> int:
        return n

    assert jobs.tasks.schedule("count").params == {"n": 2}
    with pytest.raises(ValueError, match="not valid for task 'count'"):
        jobs.schedule("bad", "count", every=5, params={"n": "many"})
    with pytest.raises(ValueError, match="already registered"):
        jobs.schedule("count", "count", every=5)
    with pytest.raises(ValueError, match="no task named 'nope'"):
        jobs.schedule("other", "nope", every=5)
    with pytest.raises(ValueError, match="needs schedule= or every="):
        jobs.task(name="loose", schedule_params={"n": 1})(count)
    assert "loose" not in jobs.tasks
    with pytest.raises(UnknownSchedule, match="choose one of: count"):
        jobs.tasks.schedule("bad")


# -- on both backends --------------------------------------------------------------------------


def scheduled(service: Service, name: str) -> list[Job]:
    return sorted(
        (job for job in service.jobs.values() if job.schedule == name),
        key=lambda job: job.created_at,
    )


async def jobs_of(service: Service, name: str, n: int, seconds: float = 15) -> list[Job]:
    """Wait until schedule ``name`` has started ``n`` jobs (seen by ``service``)."""
    with anyio.fail_after(seconds):
        while len(scheduled(service, name)) < n:
            await service.log.wait(service.log.last_seq)
    return scheduled(service, name)


EVERY = Schedule("beat", "count", every=0.3, params={"n": 5})


@pytest.mark.integration
@BACKENDS
async def test_every_tick_starts_one_job_even_with_several_processes_looking(
    kind: str, deploy: Deploy
) -> None:
    # On Redis: two API services and the worker each run a scheduler, racing for each tick.
    async with deploy(schedules=[EVERY], api_processes=2) as (
        _,
        service,
    ):
        started = await jobs_of(service, "beat", 4)
        ticks = [job.run_at for job in started]  # a schedule's job runs from its due time
        assert all(tick is not None for tick in ticks)
        assert len(set(ticks)) == len(ticks)  # never two jobs for one due time
        gaps = [b - a for a, b in zip(ticks, ticks[1:], strict=False)]  # type: ignore[operator]
        # Due times a microsecond apart at most from every 0.3 s (as snapshots write them).
        assert all(gap == pytest.approx(0.3, abs=2e-6) for gap in gaps), gaps
        for job in started:
            assert job.params == {"n": 5} and job.snapshot()["schedule"] == "beat"
            assert job.created_at >= job.run_at  # type: ignore[operator]
        finished = await until(service, started[0].id, lambda job: job.finished)
        assert finished.result == 5


@pytest.mark.integration
@BACKENDS
async def test_a_paused_schedule_starts_nothing_over_a_window_until_resumed(
    kind: str, deploy: Deploy
) -> None:
    async with deploy(schedules=[EVERY]) as (_, service):
        await jobs_of(service, "beat", 1)
        paused = await service.pause("beat")
        assert paused["paused"] is True and paused["next_run_at"] is None
        count = len(scheduled(service, "beat"))
        # None starts over a window of five of its intervals.
        since = time.time()
        await anyio.sleep(1.5)
        late = [job for job in scheduled(service, "beat") if job.created_at > since + 0.05]
        assert late == [] and len(scheduled(service, "beat")) in (count, count + 1)

        resumed = await service.resume("beat")
        assert resumed["paused"] is False and resumed["next_run_at"] is not None
        after = await jobs_of(service, "beat", len(scheduled(service, "beat")) + 1)
        assert after[-1].run_at is not None and after[-1].run_at > since + 1.5


@pytest.mark.integration
async def test_after_downtime_a_missed_tick_starts_once_at_start_up(tmp_path: Path) -> None:
    db = str(tmp_path / "jobs.db")
    # The deployment last started a job of "hourly" twenty hours ago (and was down since).
    store = SqliteStore(db)
    await store.open()
    last = time.time() - 20 * 3600
    store.set_state("schedule:hourly", {"tick": last, "paused": False, "last_job_id": None})
    await store.aclose()

    jobs = make_jobs(db=db)
    jobs.schedule("hourly", "count", cron="0 * * * *", params={"n": 1})
    async with jobs.lifespan():
        service = jobs.runner
        (job,) = await jobs_of(service, "hourly", 1)
        newest = Schedule("h", "t", cron="0 * * * *").newest_due(last, time.time())
        assert job.tick == newest  # the newest of the twenty due times, not each of them
        (shown,) = await service.schedules()
        assert shown["last_job_id"] == job.id
        assert at(shown["next_run_at"][:19]) == newest + 3600

    # A restart does not start that tick again.
    again = make_jobs(db=db)
    again.schedule("hourly", "count", cron="0 * * * *", params={"n": 1})
    async with again.lifespan():
        (shown,) = await again.runner.schedules()
        assert shown["last_job_id"] == job.id
        assert [j.id for j in scheduled(again.runner, "hourly")] == [job.id]


async def test_on_redis_a_missed_tick_starts_once_whoever_looks_first(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    client = connect(redis_server.url)
    last = time.time() - 5 * 60
    await client.hset("jobcast:schedule:minutely", mapping={"tick": repr(last)})
    await client.aclose()
    minutely = Schedule("minutely", "count", cron="* * * * *", params={"n": 1})
    async with deployment(
        "redis", tmp_path, redis_server, schedules=[minutely], api_processes=2
    ) as (
        _,
        service,
    ):
        (job,) = await jobs_of(service, "minutely", 1)
        assert job.run_at == minutely.newest_due(last, time.time())


@pytest.mark.integration
async def test_the_schedules_are_listed_paused_and_resumed_over_http() -> None:
    jobs = make_jobs()
    jobs.schedule("nightly", "count", cron="0 2 * * *", params={"n": 3})
    app = jobs.create_app()
    async with LifespanManager(app) as manager:
        transport = httpx.ASGITransport(manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t.localhost") as client:
            (listed,) = (await client.get("/api/schedules")).json()
            assert listed["name"] == "nightly" and listed["task"] == "count"
            assert listed["expression"] == "0 2 * * *" and listed["params"] == {"n": 3}
            assert listed["paused"] is False and listed["last_job_id"] is None
            assert listed["next_run_at"].endswith("T02:00:00+00:00")

            paused = await client.post("/api/schedules/nightly/pause")
            assert paused.status_code == 200 and paused.json()["next_run_at"] is None
            assert (await client.get("/api/schedules")).json()[0]["paused"] is True
            resumed = (await client.post("/api/schedules/nightly/resume")).json()
            assert resumed["paused"] is False and resumed["next_run_at"] == listed["next_run_at"]
            missing = await client.post("/api/schedules/weekly/pause")
            assert missing.status_code == 404 and "nightly" in missing.json()["detail"]


@pytest.mark.unit
def test_a_cron_expression_that_names_no_coming_date_is_refused() -> None:
    with pytest.raises(ValueError, match="names no date that comes"):
        Schedule("s", "t", cron="0 0 30 2 *")
