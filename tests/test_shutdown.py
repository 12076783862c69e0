"""Shutdown: jobs are recorded, streams close, and nothing hangs."""

from __future__ import annotations

import signal
import time
from collections.abc import Callable

import httpx
import pytest

from jobcast import JobState
from tests.apps import make_jobs
from tests.conftest import Process, wait_job
from tests.sse import open_stream

pytestmark = [pytest.mark.anyio, pytest.mark.integration]  # child processes, servers


async def test_shutdown_records_running_and_queued_jobs_as_interrupted() -> None:
    jobs = make_jobs(max_workers=2, grace_period=0.5)
    async with jobs.lifespan():
        runner = jobs.runner
        polite = (await runner.submit("hold", {"name": "never-opened"})).job
        stubborn = (await runner.submit("stubborn", {"seconds": 30})).job
        queued = (await runner.submit("count", {"n": 1})).job
        await wait_job(jobs, polite.id, lambda job: job.state is JobState.RUNNING)
        started = time.monotonic()
    took = time.monotonic() - started
    assert took < 0.5 + 1.0, f"shutdown took {took:.2f} s"
    for job in (polite, stubborn, queued):
        assert job.state is JobState.INTERRUPTED
        assert job.error is not None and "server stopped" in job.error.message
        assert job.finished_at is not None
    assert queued.started_at is None
    events = [event.name for event in runner.log.iter_after(0)]
    assert events.count("interrupted") == 3


async def test_sigterm_with_a_running_job_and_open_streams_exits_within_the_grace_period(
    spawn: Callable[..., Process],
) -> None:
    server = spawn(JOBCAST_GRACE_PERIOD="1")
    async with httpx.AsyncClient(timeout=10) as client:
        stubborn = await client.post(f"{server.url}/api/tasks/stubborn/jobs", json={"seconds": 300})
        job_id = stubborn.json()["id"]
        async with (
            open_stream(client, f"{server.url}/api/events") as everything,
            open_stream(client, f"{server.url}/api/jobs/{job_id}/events") as one_job,
        ):
            await everything.next()
            await one_job.next()
            started = time.monotonic()
            server.popen.send_signal(signal.SIGTERM)
            # Both streams deliver the job's last event, then end cleanly.
            last_everything = (await everything.rest(seconds=10))[-1]
            last_one_job = (await one_job.rest(seconds=10))[-1]
    server.popen.wait(timeout=10)
    took = time.monotonic() - started
    # uvicorn re-raises the signal it handled, so a process manager sees why it stopped.
    assert server.popen.returncode in (0, -signal.SIGTERM), server.output()
    assert took < 1 + 3, f"exit took {took:.1f} s"
    for frame in (last_everything, last_one_job):
        assert frame.event == "interrupted"
        assert frame.data["job"]["id"] == job_id
