"""The built-in demo tasks and the recipe's own endpoints."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
from asgi_lifespan import LifespanManager

from jobcast import JobState
from jobcast.demo import app, jobs
from tests.conftest import wait_job

pytestmark = [pytest.mark.anyio, pytest.mark.integration]  # the demo service, in process


@pytest.fixture
async def demo() -> AsyncIterator[httpx.AsyncClient]:
    async with LifespanManager(app) as running:
        transport = httpx.ASGITransport(app=running.app)
        async with httpx.AsyncClient(
            transport=transport, base_url="http://demo.localhost"
        ) as client:
            yield client


async def test_the_recipe_endpoints_stay_true_while_any_overlapping_run_goes_on(
    demo: httpx.AsyncClient,
) -> None:
    assert (await demo.get("/api/background-task")).json() == {"status": False}
    assert (await demo.post("/api/background-task")).json() == {"message": "ok"}
    assert (await demo.post("/api/background-task")).json() == {"message": "ok"}
    newest = jobs.runner.newest(task="heavy")
    first, second = sorted(newest, key=lambda job: str(job["created_at"]))
    # The recipe's flag went false when the first run ended while the second still ran.
    await demo.post(f"/api/jobs/{first['id']}/cancel")
    await wait_job(jobs, first["id"])
    assert (await demo.get("/api/background-task")).json() == {"status": True}
    await demo.post(f"/api/jobs/{second['id']}/cancel")
    await wait_job(jobs, second["id"])
    assert (await demo.get("/api/background-task")).json() == {"status": False}


@pytest.mark.parametrize(
    ("task", "params"),
    [
        ("sleep", {"seconds": 600, "steps": 2}),
        ("heavy", {"seconds": 600}),
        ("fail", {"steps": 10, "step_seconds": 60}),
        ("ticker", {"count": 10, "rate": 0.01}),
        ("crunch", {"seconds": 600}),
    ],
)
async def test_every_demo_task_honours_cancel(
    demo: httpx.AsyncClient, task: str, params: dict[str, float]
) -> None:
    created = (await demo.post(f"/api/tasks/{task}/jobs", json=params)).json()
    await wait_job(jobs, created["id"], lambda job: job.state is JobState.RUNNING)
    assert (await demo.post(f"/api/jobs/{created['id']}/cancel")).status_code == 202
    assert (await wait_job(jobs, created["id"])).state is JobState.CANCELLED


async def test_sleep_reports_progress_and_succeeds(demo: httpx.AsyncClient) -> None:
    created = (await demo.post("/api/tasks/sleep/jobs", json={"seconds": 0.05, "steps": 5})).json()
    job = await wait_job(jobs, created["id"])
    assert job.state is JobState.SUCCEEDED
    assert job.result == {"slept_s": 0.05, "steps": 5}
    assert job.progress is not None and job.progress.percent == 100.0


async def test_fail_fails_after_its_steps(demo: httpx.AsyncClient) -> None:
    body = {"steps": 2, "message": "as planned", "step_seconds": 0}
    created = (await demo.post("/api/tasks/fail/jobs", json=body)).json()
    job = await wait_job(jobs, created["id"])
    assert job.state is JobState.FAILED
    assert job.error is not None and job.error.to_dict() == {
        "type": "RuntimeError",
        "message": "as planned",
    }
    assert job.progress is not None and job.progress.current == 2


async def test_ticker_emits_count_lines(demo: httpx.AsyncClient) -> None:
    created = (await demo.post("/api/tasks/ticker/jobs", json={"count": 5, "rate": 1000})).json()
    job = await wait_job(jobs, created["id"])
    lines = [
        event.frame
        for event in jobs.runner.log.iter_after(job.first_seq)
        if event.name == "log" and event.job_id == job.id
    ]
    assert len(lines) == 5 and b"tick 5/5" in lines[-1]


async def test_demo_params_are_bounded(demo: httpx.AsyncClient) -> None:
    for task, params in [
        ("sleep", {"seconds": 1e9}),
        ("heavy", {"seconds": 0}),
        ("ticker", {"count": 10**9}),
        ("fail", {"message": "x" * 10_000}),
    ]:
        response = await demo.post(f"/api/tasks/{task}/jobs", json=params)
        assert response.status_code == 422, (task, response.text)


@pytest.mark.integration  # a worker process
async def test_crunch_runs_in_a_worker_process(demo: httpx.AsyncClient) -> None:
    created = (await demo.post("/api/tasks/crunch/jobs", json={"seconds": 0.2})).json()
    job = await wait_job(jobs, created["id"], seconds=20)
    assert job.state is JobState.SUCCEEDED, job.error
    assert job.result["rounds"] > 0
    assert jobs.tasks.get("crunch").mode == "process"
