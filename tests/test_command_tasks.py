"""Command tasks and timeouts in every mode, through the API, on real child programs."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import pytest

from jobcast import JobState
from tests.conftest import Process, log_lines, wait_job, wait_until

pytestmark = [pytest.mark.anyio, pytest.mark.integration]  # child processes, servers

Start = Callable[..., Any]


async def test_a_command_logs_its_output_and_reads_its_progress(api: Start) -> None:
    jobs, client = await api()
    created = (await client.post("/api/tasks/batch/jobs", json={"items": 8})).json()
    job = await wait_job(jobs, created["id"], seconds=20)
    assert job.state is JobState.SUCCEEDED, job.error
    assert job.result == {"exit_code": 0}
    assert job.progress is not None and (job.progress.current, job.progress.total) == (8, 8)
    lines = log_lines(jobs, job.id)
    assert len(lines) == 9  # eight items, and one warning on stderr
    # stdout and stderr are two pipes: their lines interleave in any order.
    assert any(b"processed item 8 8/8" in line for line in lines)
    assert any(b"item 7: retried once" in line for line in lines)


async def test_a_failing_command_fails_with_its_exit_code_and_last_stderr_lines(
    api: Start,
) -> None:
    jobs, client = await api()
    body = {"items": 8, "fail_at": 3}
    created = (await client.post("/api/tasks/batch/jobs", json=body)).json()
    job = await wait_job(jobs, created["id"], seconds=20)
    assert job.state is JobState.FAILED
    assert job.error is not None and job.error.type == "CommandFailed"
    assert "code 2" in job.error.message
    assert "checksum mismatch" in job.error.message


async def test_command_params_are_validated_before_anything_runs(api: Start) -> None:
    jobs, client = await api()
    response = await client.post("/api/tasks/batch/jobs", json={"items": "1; rm -rf /"})
    assert response.status_code == 422
    assert jobs.runner.jobs == {}


async def test_cancel_stops_a_command(api: Start) -> None:
    jobs, client = await api()
    created = (await client.post("/api/tasks/wait/jobs", json={})).json()
    await wait_job(jobs, created["id"], lambda job: bool(log_lines(jobs, job.id)), seconds=20)
    await client.post(f"/api/jobs/{created['id']}/cancel")
    assert (await wait_job(jobs, created["id"], seconds=10)).state is JobState.CANCELLED


@pytest.mark.parametrize(
    ("task", "limit"), [("slow", "0.2 s"), ("hang", "0.3 s"), ("deaf_with_timeout", "0.5 s")]
)
async def test_a_timeout_fails_the_job_in_every_mode(api: Start, task: str, limit: str) -> None:
    jobs, client = await api()
    created = (await client.post(f"/api/tasks/{task}/jobs", json={})).json()
    job = await wait_job(jobs, created["id"], seconds=20)
    assert job.state is JobState.FAILED
    assert job.error is not None and job.error.type == "TimeoutError"
    assert limit in job.error.message


async def test_a_failed_command_and_a_timeout_log_one_line_each_not_a_traceback(
    spawn: Callable[..., Process], client: httpx.AsyncClient
) -> None:
    server = spawn()
    ids = []
    for task, body in (("batch", {"items": 4, "fail_at": 2}), ("hang", {})):
        response = await client.post(f"{server.url}/api/tasks/{task}/jobs", json=body)
        ids.append(response.json()["id"])

    def all_failed() -> bool:
        states = {httpx.get(f"{server.url}/api/jobs/{job_id}").json()["state"] for job_id in ids}
        return states == {"failed"}

    wait_until(all_failed, seconds=20)
    output = server.output()
    logged = [line for line in output.splitlines() if "uvicorn" not in line and ' - "' not in line]
    failed, timed_out = ([line for line in logged if job_id in line] for job_id in ids)
    assert len(failed) == 1 and "exited with code" in failed[0]
    assert f"GET /api/jobs/{ids[0]}/events" in failed[0]  # where its output is
    assert len(timed_out) == 1 and "ran past its timeout" in timed_out[0]
    assert "Traceback" not in output
