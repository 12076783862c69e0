"""What job queues have, on the one lifecycle, the same on both backends: priorities, delays,
retries with backoff, cancelling, rerun, delete, and each job's log from where it is kept.

Each test runs on the local backend (a SQLite file, the server's own worker) and on Redis (a
real redis-server, an API process's service and the one worker over it). Spacing in time is
read from the jobs' own timestamps and events, never by sleeping.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import anyio
import pytest

from jobcast import JobActive, JobState
from jobcast.jobs import Job
from jobcast.service import Service
from tests.apps import gate
from tests.test_lifecycle import BACKENDS, Deploy, deploy, redis, running, until

pytestmark = [pytest.mark.anyio, pytest.mark.integration]

__all__ = ["deploy", "redis"]  # the fixtures, shared with the lifecycle tests


def events(service: Service, job_id: str, *names: str) -> list[dict[str, Any]]:
    """The payloads of the events of ``job_id`` in the service's log (only ``names``)."""
    return [
        event.data() | {"event": event.name}
        for event in service.log.iter_after(0)
        if event.job_id == job_id and (not names or event.name in names)
    ]


def ended(job: Job) -> bool:
    return job.finished


@BACKENDS
async def test_higher_priority_runs_first_and_equal_ones_in_order(
    kind: str, deploy: Deploy
) -> None:
    async with deploy() as (_, service):
        block = f"prio-{kind}"
        await running(service, "hold", name=block)
        low = (await service.submit("count", {"n": 1})).job
        high = (await service.submit("count", {"n": 2}, priority=5)).job
        low_too = (await service.submit("count", {"n": 3})).job
        urgent = (await service.submit("count", {"n": 4}, priority=1_000_000)).job
        below = (await service.submit("count", {"n": 5}, priority=-3)).job
        assert service.get(high.id).snapshot()["priority"] == 5
        gate(block).set()

        order = [urgent, high, low, low_too, below]
        finished = [await until(service, job.id, ended) for job in order]
        starts = [job.started_at or 0.0 for job in finished]
        assert all(starts)
        assert starts == sorted(starts), [job.result for job in finished]


@BACKENDS
async def test_a_delayed_job_stays_queued_until_its_time(kind: str, deploy: Deploy) -> None:
    async with deploy() as (_, service):
        at = time.time() + 0.6
        job = (await service.submit("count", {"n": 1}, run_at=at)).job
        now = (await service.submit("count", {"n": 2})).job

        shown = service.get(job.id).snapshot()
        assert shown["state"] == "queued" and shown["run_at"] is not None
        first = await until(service, now.id, ended)  # the job behind it does not wait
        assert service.get(job.id).state is JobState.QUEUED
        late = await until(service, job.id, ended)
        assert late.state is JobState.SUCCEEDED
        assert late.started_at is not None and late.started_at >= round(at, 6)
        assert first.started_at is not None and first.started_at < at
        assert late.run_at == pytest.approx(at, abs=1e-6)  # when it became runnable


@BACKENDS
async def test_a_run_at_in_the_past_runs_at_once(kind: str, deploy: Deploy) -> None:
    async with deploy() as (_, service):
        job = (await service.submit("count", {"n": 1}, run_at=time.time() - 60)).job
        assert job.run_at is None
        assert (await until(service, job.id, ended)).state is JobState.SUCCEEDED


@BACKENDS
async def test_a_failed_attempt_is_retried_with_backoff_until_it_succeeds(
    kind: str, deploy: Deploy
) -> None:
    async with deploy() as (_, service):
        job = (await service.submit("flaky", {"name": f"backoff-{kind}", "failures": 2})).job
        done = await until(service, job.id, ended)

        assert done.state is JobState.SUCCEEDED and done.result == 3
        assert (done.attempt, done.error) == (3, None)
        seen = events(service, job.id, "queued", "running", "retrying", "succeeded")
        assert [event["event"] for event in seen] == [
            "queued",
            "running",
            "retrying",
            "running",
            "retrying",
            "running",
            "succeeded",
        ]
        assert [(event["job"]["attempt"], event["job"]["max_attempts"]) for event in seen] == [
            (1, 4),
            (1, 4),
            (2, 4),
            (2, 4),
            (3, 4),
            (3, 4),
            (3, 4),
        ]
        retries = [event for event in seen if event["event"] == "retrying"]
        assert [event["attempt"] for event in retries] == [2, 3]
        assert [event["error"] for event in retries] == [
            {"type": "ValueError", "message": "failure 1"},
            {"type": "ValueError", "message": "failure 2"},
        ]
        for event in retries:  # the job waits, queued, for the attempt it names
            assert event["job"]["state"] == "queued"
            assert event["job"]["run_at"] == event["run_at"] is not None
        # Each wait is the delay times the backoff per retry before it: 0.2 s, then 0.4 s.
        runs = [event["ts"] for event in seen if event["event"] == "running"]
        failed_at = [event["ts"] for event in retries]
        assert runs[1] - failed_at[0] >= 0.2
        assert runs[2] - failed_at[1] >= 0.4
        lines = [entry["line"] for entry in await service.logs(job.id)]
        assert lines[:2] == [
            "attempt 1",
            "attempt 1 of 4 failed (ValueError: failure 1); attempt 2 runs in 0.2 s",
        ]


@BACKENDS
async def test_an_exception_the_task_does_not_retry_on_fails_at_once(
    kind: str, deploy: Deploy
) -> None:
    async with deploy() as (_, service):
        params = {"name": f"key-{kind}", "failures": 5, "error": "KeyError"}
        job = (await service.submit("flaky", params)).job
        done = await until(service, job.id, ended)

        assert done.state is JobState.FAILED and done.attempt == 1
        assert done.error is not None and done.error.type == "KeyError"
        assert events(service, job.id, "retrying") == []


@BACKENDS
async def test_a_timeout_is_retried_and_the_last_attempt_fails(kind: str, deploy: Deploy) -> None:
    async with deploy() as (_, service):
        job = (await service.submit("slow_twice", {})).job
        done = await until(service, job.id, ended)

        assert done.state is JobState.FAILED and (done.attempt, done.max_attempts) == (2, 2)
        assert done.error is not None and done.error.type == "TimeoutError"
        assert [event["attempt"] for event in events(service, job.id, "retrying")] == [2]


@BACKENDS
async def test_a_command_that_exits_non_zero_is_retried(kind: str, deploy: Deploy) -> None:
    async with deploy() as (_, service):
        job = (await service.submit("exit_3", {})).job
        done = await until(service, job.id, ended)

        assert done.state is JobState.FAILED and (done.attempt, done.max_attempts) == (2, 2)
        assert done.error is not None and "3" in done.error.message
        (retry,) = events(service, job.id, "retrying")
        assert retry["attempt"] == 2 and retry["error"] == done.error.to_dict()
        lines = [entry["line"] for entry in await service.logs(job.id)]
        assert lines.count("giving up") == 2  # each attempt ran the program


@BACKENDS
async def test_a_cancel_shows_cancelling_until_the_end_and_never_retries(
    kind: str, deploy: Deploy
) -> None:
    async with deploy() as (_, service):
        job = await running(service, "hold", name=f"cancelling-{kind}")
        await service.cancel(job.id)
        asked = await until(service, job.id, lambda job: job.cancelling or job.finished)
        done = await until(service, job.id, ended)

        assert asked.state in (JobState.RUNNING, JobState.CANCELLED)
        assert done.state is JobState.CANCELLED and done.cancelling is False
        flags = [event["job"]["cancelling"] for event in events(service, job.id, "progress")]
        assert True in flags
        assert events(service, job.id, "retrying") == []


@BACKENDS
async def test_a_job_cancelled_while_its_attempt_runs_is_not_retried(
    kind: str, deploy: Deploy
) -> None:
    async with deploy() as (_, service):
        name = f"deaf-{kind}"
        job = await running(service, "deaf_then_fail", name=name)
        await service.cancel(job.id)
        await until(service, job.id, lambda job: job.cancelling)
        gate(name).set()  # it raises after the cancel was asked
        done = await until(service, job.id, ended)

        assert done.state is JobState.FAILED and done.attempt == 1
        assert events(service, job.id, "retrying") == []


@BACKENDS
async def test_many_jobs_started_at_once_all_run_to_their_end(kind: str, deploy: Deploy) -> None:
    # Freed slots and the worker's own loop both take jobs: never the same one twice.
    async with deploy(max_workers=3) as (_, service):
        started: list[Job] = []

        async def start(n: int) -> None:
            started.append((await service.submit("count", {"n": n})).job)

        async with anyio.create_task_group() as group:
            for n in range(40):
                group.start_soon(start, n)
        finished = [await until(service, job.id, ended, seconds=30) for job in started]
        assert sorted(job.result for job in finished) == list(range(40))
        assert all(job.state is JobState.SUCCEEDED for job in finished)


@BACKENDS
async def test_rerun_starts_a_new_job_with_the_same_task_params_and_priority(
    kind: str, deploy: Deploy
) -> None:
    async with deploy() as (_, service):
        first = (await service.submit("count", {"n": 7}, priority=2)).job
        await until(service, first.id, ended)
        again, created = await service.rerun(first.id)

        assert created and again.id != first.id
        assert (again.task, again.params, again.priority) == ("count", {"n": 7}, 2)
        assert (await until(service, again.id, ended)).result == 7


@BACKENDS
async def test_delete_removes_a_finished_job_and_refuses_an_active_one(
    kind: str, deploy: Deploy
) -> None:
    async with deploy() as (_, service):
        done = (await service.submit("shout", {"lines": 2})).job
        await until(service, done.id, ended)
        active = await running(service, "hold", name=f"delete-{kind}")

        with pytest.raises(JobActive, match="cancel it first"):
            await service.delete(active.id)
        await service.delete(done.id)

        assert done.id not in service.jobs
        assert [event["job_id"] for event in events(service, done.id, "deleted")] == [done.id]
        assert active.id in service.jobs
        gate(f"delete-{kind}").set()


@BACKENDS
async def test_logs_come_from_where_they_are_kept_when_memory_holds_no_more(
    kind: str, deploy: Deploy
) -> None:
    # A buffer of 50 events in memory: a job of 120 lines outgrows it.
    async with deploy(event_buffer=50) as (_, service):
        job = (await service.submit("shout", {"lines": 120})).job
        await until(service, job.id, ended)
        assert service.log.first_seq > job.first_seq  # memory lost the start of it

        lines = await service.logs(job.id, limit=10_000)
        assert [entry["line"] for entry in lines] == [f"line {i}" for i in range(120)]
        ids = [entry["id"] for entry in lines]
        assert ids == sorted(ids)
        page = await service.logs(job.id, after=ids[99], limit=5)
        assert [entry["line"] for entry in page] == [f"line {i}" for i in range(100, 105)]


async def test_a_delayed_job_and_a_waiting_retry_outlive_a_restart(
    tmp_path: Path,
) -> None:
    from tests.apps import make_jobs

    db = str(tmp_path / "jobs.db")
    jobs = make_jobs(db=db)
    async with jobs.lifespan():
        service = jobs.runner
        at = time.time() + 1.0
        delayed = (await service.submit("count", {"n": 1}, run_at=at)).job
        flaky = (await service.submit("flaky", {"name": "durable", "failures": 1})).job
        waiting = await until(service, flaky.id, lambda job: job.attempt == 2)
        assert waiting.state is JobState.QUEUED and waiting.run_at is not None
        run_at = waiting.run_at

    again = make_jobs(db=db)
    async with again.lifespan():
        service = again.runner
        kept = service.get(delayed.id)
        assert kept.state in (JobState.QUEUED, JobState.RUNNING, JobState.SUCCEEDED)
        assert service.get(flaky.id).snapshot()["run_at"] in (None, _iso(run_at))
        late = await until(service, delayed.id, ended)
        retried = await until(service, flaky.id, ended)
        assert late.started_at is not None and late.started_at >= round(at, 6)
        assert retried.state is JobState.SUCCEEDED and retried.attempt == 2
        assert retried.started_at is not None and retried.started_at >= run_at


def _iso(ts: float) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(ts, UTC).isoformat()
