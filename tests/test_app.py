"""JobCast's in-process API: ``jobs.start``, ``jobs.start_sync`` and ``jobs.wait``, from
routes of one's own on a real uvicorn, from task code, in process beside the API, and on
both backends (a SQLite file, and Redis with a worker)."""

from __future__ import annotations

import json
import math
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from jobcast import (
    DuplicateJob,
    InvalidParams,
    JobCast,
    JobContext,
    JobOut,
    JobState,
    NotAccepting,
    QueueFull,
    UnknownTask,
)
from tests.apps import gate, make_jobs
from tests.conftest import Server, wait_job
from tests.test_lifecycle import BACKENDS, Deploy, deploy, redis, until

__all__ = ["deploy", "redis"]  # the fixtures, shared with the lifecycle tests

Start = Callable[..., Any]
Serve = Callable[..., tuple[JobCast, Server]]


def with_routes_of_ones_own(jobs: JobCast) -> FastAPI:
    """The app of ``jobs``, with routes of the user's own that start jobs and wait for them."""
    app = jobs.create_app()

    @app.post("/mine/async")
    async def start_from_async(n: int) -> JobOut:
        return await jobs.start("count", n=n)

    @app.post("/mine/sync")
    def start_from_sync(n: int) -> JobOut:  # FastAPI runs it in a worker thread
        return jobs.start_sync("count", n=n)

    @app.get("/mine/wait/{job_id}")
    async def wait_for(job_id: str) -> JobOut:
        return await jobs.wait(job_id, timeout=10)

    return app


# -- from routes of one's own, on a real server ------------------------------------------------


@pytest.mark.parametrize("kind", ["async", "sync"])
def test_a_route_of_ones_own_starts_a_job_the_api_shows_and_waits_for_it(
    serve: Serve, kind: str
) -> None:
    jobs, server = serve(build=with_routes_of_ones_own)
    with httpx.Client(base_url=server.url, timeout=15) as client:
        started = client.post(f"/mine/{kind}", params={"n": 3})
        assert started.status_code == 200, started.text
        job = started.json()
        assert (job["task"], job["params"]) == ("count", {"n": 3})

        done = client.get(f"/mine/wait/{job['id']}")
        assert done.status_code == 200, done.text
        assert done.json()["state"] == "succeeded" and done.json()["result"] == 3
        # The same job, in the same shape, as the API shows it.
        assert client.get(f"/api/jobs/{job['id']}").json() == done.json()
        assert [listed["id"] for listed in client.get("/api/jobs").json()] == [job["id"]]


@pytest.mark.parametrize("kind", ["async", "sync"])
def test_invalid_params_from_a_route_of_ones_own_get_the_apis_own_422(
    serve: Serve, kind: str
) -> None:
    jobs, server = serve(build=with_routes_of_ones_own)
    with httpx.Client(base_url=server.url, timeout=15) as client:
        mine = client.post(f"/mine/{kind}", params={"n": -1})
        api = client.post("/api/tasks/count/jobs", json={"n": -1})
    assert mine.status_code == api.status_code == 422
    assert mine.json() == api.json()
    assert [error["loc"] for error in mine.json()["detail"]] == [["body", "n"]]
    assert jobs.runner.jobs == {}


# -- in process, beside the API ----------------------------------------------------------------


@pytest.mark.anyio
async def test_start_returns_the_job_as_the_api_answers_it(api: Start) -> None:
    jobs, client = await api()
    job = await jobs.start("count", n=3)
    assert isinstance(job, JobOut)
    assert (job.task, job.params, job.attempt) == ("count", {"n": 3}, 1)

    done = await jobs.wait(job.id)
    assert (done.id, done.state, done.result) == (job.id, JobState.SUCCEEDED, 3)
    assert (await client.get(f"/api/jobs/{job.id}")).json() == done.model_dump(mode="json")


@pytest.mark.anyio
async def test_wait_returns_a_failed_job_with_its_error(api: Start) -> None:
    jobs, _ = await api()
    job = await jobs.start("boom", message="no disk")
    done = await jobs.wait(job.id, timeout=10)
    assert done.state is JobState.FAILED
    assert done.error is not None
    assert (done.error.type, done.error.message) == ("ValueError", "no disk")


@pytest.mark.anyio
async def test_wait_times_out_saying_how_the_job_stands_and_the_job_runs_on(api: Start) -> None:
    jobs, _ = await api()
    job = await jobs.start("hold", name="wait-timeout")
    await wait_job(jobs, job.id, lambda job: job.state is JobState.RUNNING)

    with pytest.raises(TimeoutError, match=f"job {job.id} is still running after 0.05 s"):
        await jobs.wait(job.id, timeout=0.05)
    assert jobs.runner.get(job.id).state is JobState.RUNNING
    gate("wait-timeout").set()
    done = await jobs.wait(job.id, timeout=10)
    assert (done.state, done.result) == (JobState.SUCCEEDED, {"gate": "wait-timeout"})


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("task", "params", "field"),
    [
        ("count", {"n": -1}, "n"),
        ("count", {"n": "many"}, "n"),
        ("count", {"n": False}, "n"),
        ("count", {"m": 1}, "m"),
        ("hold", {}, "name"),
        ("hold", {"name": "x\ud800"}, "name"),
    ],
)
async def test_invalid_params_raise_invalid_params_with_the_apis_422_body(
    api: Start, task: str, params: dict[str, Any], field: str
) -> None:
    jobs, client = await api()
    before = jobs.runner.log.last_seq
    with pytest.raises(InvalidParams) as caught:
        await jobs.start(task, **params)
    refused = caught.value
    assert f"invalid params for task {task!r}: {field}: " in str(refused)
    assert refused.status_code == 422
    assert field in {error["loc"][-1] for error in refused.errors}

    # As JSON escapes it, so that a lone surrogate reaches the server too.
    body, headers = json.dumps(params), {"Content-Type": "application/json"}
    response = await client.post(f"/api/tasks/{task}/jobs", content=body, headers=headers)
    assert response.status_code == 422
    assert response.json() == refused.body()
    assert jobs.runner.jobs == {} and jobs.runner.log.last_seq == before


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("options", "query", "named"),
    [
        ({"_delay": -1}, {"delay": "-1"}, "_delay"),
        ({"_delay": math.nan}, {"delay": "nan"}, "_delay"),
        ({"_priority": 10**7}, {"priority": "10000000"}, "_priority"),
        ({"_run_at": datetime(2030, 1, 1)}, {"run_at": "2030-01-01T00:00:00"}, "_run_at"),
        (
            {"_delay": 5, "_run_at": datetime(2030, 1, 1, tzinfo=UTC)},
            {"delay": "5", "run_at": "2030-01-01T00:00:00Z"},
            "_run_at",
        ),
    ],
)
async def test_bad_options_raise_invalid_params_as_the_api_refuses_its_query(
    api: Start, options: dict[str, Any], query: dict[str, str], named: str
) -> None:
    jobs, client = await api()
    with pytest.raises(InvalidParams) as caught:
        await jobs.start("count", n=1, **options)
    assert f"{named}: " in str(caught.value)
    if "nan" in query.values():
        assert "finite number" in str(caught.value)  # not a bound NaN never meets

    response = await client.post("/api/tasks/count/jobs", params=query, json={"n": 1})
    assert response.status_code == 422

    def said(errors: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
        return [(error["type"], error["loc"], error["msg"]) for error in errors]

    assert said(caught.value.errors) == said(response.json()["detail"])
    assert jobs.runner.jobs == {}


@pytest.mark.anyio
async def test_options_place_the_job_as_the_query_string_does(api: Start) -> None:
    jobs, client = await api()
    later = await jobs.start("count", n=1, _delay=3600, _priority=7)
    assert (later.state, later.priority) == (JobState.QUEUED, 7)
    assert later.run_at is not None and later.run_at > later.created_at
    at = await jobs.start("count", n=2, _run_at=datetime(2099, 1, 1, tzinfo=UTC))
    assert at.run_at == "2099-01-01T00:00:00+00:00"
    shown = (await client.get(f"/api/jobs/{at.id}")).json()
    assert shown["state"] == "queued" and shown["run_at"] == at.run_at


@pytest.mark.anyio
async def test_an_unknown_task_raises_unknown_task(api: Start) -> None:
    jobs, _ = await api()
    with pytest.raises(UnknownTask, match="no task named 'nope'; choose one of: "):
        await jobs.start("nope", n=1)


@pytest.mark.anyio
async def test_start_sync_on_the_event_loops_thread_says_to_await_start(api: Start) -> None:
    jobs, _ = await api()
    with pytest.raises(RuntimeError, match=r"event loop's thread.*await jobs\.start"):
        jobs.start_sync("count", n=1)
    assert jobs.runner.jobs == {}


@pytest.mark.anyio
async def test_a_task_in_a_thread_starts_a_job_with_start_sync(api: Start) -> None:
    jobs: JobCast = (await api())[0]

    @jobs.task
    def fan_out(ctx: JobContext, n: int) -> str:
        assert threading.current_thread() is not threading.main_thread()
        return jobs.start_sync("count", n=n).id

    parent = await jobs.start("fan_out", n=4)
    child_id = (await jobs.wait(parent.id, timeout=10)).result
    assert isinstance(child_id, str)
    child = await jobs.wait(child_id, timeout=10)
    assert (child.task, child.state, child.result) == ("count", JobState.SUCCEEDED, 4)


@pytest.mark.anyio
async def test_outside_the_lifespan_start_says_the_service_is_not_running() -> None:
    jobs = make_jobs()
    with pytest.raises(NotAccepting, match=r"lifespan=jobs\.lifespan"):
        await jobs.start("count", n=1)
    with pytest.raises(NotAccepting, match=r"lifespan=jobs\.lifespan"):
        jobs.start_sync("count", n=1)
    with pytest.raises(NotAccepting, match=r"lifespan=jobs\.lifespan"):
        await jobs.wait("anything")


# -- on both backends --------------------------------------------------------------------------


@pytest.mark.anyio
@BACKENDS
async def test_start_and_wait_go_through_the_service_on_both_backends(
    kind: str, deploy: Deploy
) -> None:
    async with deploy(max_queue=1) as (jobs, service):
        done = await jobs.wait((await jobs.start("count", n=4)).id, timeout=10)
        assert (done.state, done.result) == (JobState.SUCCEEDED, 4)
        with pytest.raises(InvalidParams, match="n: Input should be greater than or equal to 0"):
            await jobs.start("count", n=-1)

        held = await jobs.start("unique", name=f"inproc-{kind}")
        await until(service, held.id, lambda job: job.state is JobState.RUNNING)  # the worker
        with pytest.raises(DuplicateJob, match=held.id):
            await jobs.start("unique", name=f"inproc-{kind}")
        await jobs.start("count", n=1)  # fills the queue
        with pytest.raises(QueueFull):
            await jobs.start("count", n=2)
        gate(f"inproc-{kind}").set()
        assert (await jobs.wait(held.id, timeout=10)).state is JobState.SUCCEEDED
