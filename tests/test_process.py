"""Process mode: real worker processes, their reports, cancel, timeouts and deaths."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from jobcast import JobState
from tests.conftest import log_lines, wait_job

pytestmark = [pytest.mark.anyio, pytest.mark.integration]  # child processes, servers

Start = Callable[..., Any]


async def test_a_process_task_reports_progress_logs_and_result_at_lower_priority(
    api: Start,
) -> None:
    jobs, client = await api()
    created = (await client.post("/api/tasks/crunch/jobs", json={"seconds": 0.3})).json()
    job = await wait_job(jobs, created["id"])
    assert job.state is JobState.SUCCEEDED, job.error
    assert isinstance(job.result, int) and job.result > 0
    assert job.progress is not None and job.progress.current == job.result
    assert job.progress.message == "crunching"
    [line] = log_lines(jobs, job.id)
    assert b'"line":"nice 10"' in line  # the worker runs at +10 niceness


async def test_a_process_task_exception_fails_the_job_with_its_own_type(api: Start) -> None:
    jobs, client = await api()
    body = {"seconds": 0.01, "fail": True}
    created = (await client.post("/api/tasks/crunch/jobs", json=body)).json()
    job = await wait_job(jobs, created["id"])
    assert job.state is JobState.FAILED
    assert job.error is not None
    assert (job.error.type, job.error.message) == ("KeyError", "'no such thing'")


async def test_cancel_stops_a_cooperative_process_task(api: Start) -> None:
    jobs, client = await api()
    created = (await client.post("/api/tasks/crunch/jobs", json={"seconds": 60})).json()
    await wait_job(jobs, created["id"], lambda job: job.progress is not None)
    await client.post(f"/api/jobs/{created['id']}/cancel")
    assert (await wait_job(jobs, created["id"])).state is JobState.CANCELLED


async def test_cancel_kills_a_process_that_ignores_sigterm(api: Start) -> None:
    jobs, client = await api()
    created = (await client.post("/api/tasks/deaf/jobs", json={})).json()
    await wait_job(jobs, created["id"], lambda job: bool(log_lines(jobs, job.id)))
    await client.post(f"/api/jobs/{created['id']}/cancel")
    job = await wait_job(jobs, created["id"], seconds=10)
    assert job.state is JobState.CANCELLED


async def test_a_worker_killed_by_sigkill_fails_the_job_clearly(api: Start) -> None:
    jobs, client = await api()
    created = (await client.post("/api/tasks/suicide/jobs", json={})).json()
    job = await wait_job(jobs, created["id"])
    assert job.state is JobState.FAILED
    assert job.error is not None and job.error.type == "ProcessDied"
    assert "signal SIGKILL" in job.error.message
    # The server is unharmed: the next job runs.
    again = (await client.post("/api/tasks/crunch/jobs", json={"seconds": 0.01})).json()
    assert (await wait_job(jobs, again["id"])).state is JobState.SUCCEEDED


def test_process_tasks_must_be_module_level() -> None:
    from jobcast import JobCast, JobContext

    jobs = JobCast()

    def local(ctx: JobContext) -> None:
        pass

    with pytest.raises(ValueError, match="module-level function"):
        jobs.task(mode="process")(local)
