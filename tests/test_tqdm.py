"""tqdm in task code reports the job's progress with no edits, inside the job only."""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any

import pytest
from tqdm import tqdm

from jobcast import JobState
from tests.apps import gate
from tests.conftest import wait_job

pytestmark = [pytest.mark.anyio, pytest.mark.integration]  # child processes, servers

Start = Callable[..., Any]


@pytest.mark.parametrize("task", ["bars", "bars_in_process"])
async def test_a_tqdm_bar_in_a_task_is_the_jobs_progress(api: Start, task: str) -> None:
    jobs, client = await api()
    created = (await client.post(f"/api/tasks/{task}/jobs", json={"n": 40})).json()
    job = await wait_job(jobs, created["id"], seconds=20)
    assert job.state is JobState.SUCCEEDED, job.error
    assert job.progress is not None
    # The outer bar wins over the inner ones that come and go.
    assert (job.progress.current, job.progress.total) == (40, 40)
    assert job.progress.message == "outer"


async def test_a_bar_outside_any_job_reports_to_no_job(api: Start) -> None:
    jobs, client = await api()
    created = (await client.post("/api/tasks/bars/jobs", json={"n": 5, "hold": "b"})).json()
    await wait_job(jobs, created["id"], lambda job: job.progress is not None)
    for _ in tqdm(range(1000), desc="elsewhere", file=io.StringIO()):
        pass
    gate("b").set()
    job = await wait_job(jobs, created["id"])
    assert job.progress is not None
    assert (job.progress.current, job.progress.message) == (5, "outer")
