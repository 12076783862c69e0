"""No orphans: the processes of a server's jobs die with it, even when it is killed."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from tests.apps import alive
from tests.conftest import Process, wait_until
from tests.sse import open_stream

pytestmark = pytest.mark.anyio


async def logged_pids(
    client: httpx.AsyncClient, server: Process, task: str, **params: object
) -> list[int]:
    """Start a job of ``task`` and return the pids it logs (``pid N``, ``child N``, ...)."""
    response = await client.post(f"{server.url}/api/tasks/{task}/jobs", json=params)
    assert response.status_code == 202, response.text
    job_id = response.json()["id"]
    pids: list[int] = []
    async with open_stream(client, f"{server.url}/api/jobs/{job_id}/events") as stream:
        wanted = 2 if task == "family" else 1
        while len(pids) < wanted:
            frame = await stream.next(seconds=15)
            if frame.event == "log":
                pids.append(int(frame.data["line"].split()[-1]))
    return pids


async def test_kill_9_of_the_server_kills_its_worker_processes_and_commands(
    spawn: Callable[..., Process], client: httpx.AsyncClient
) -> None:
    server = spawn()
    pids = [
        *await logged_pids(client, server, "spin"),
        *await logged_pids(client, server, "family"),  # sh and the sleep it started
    ]
    assert len(pids) == 3 and all(alive(pid) for pid in pids)
    server.popen.send_signal(signal.SIGKILL)
    server.popen.wait(10)
    wait_until(lambda: not any(alive(pid) for pid in pids), seconds=5)


async def test_a_retried_job_never_runs_beside_its_run_from_before_a_kill_9(
    spawn: Callable[..., Process], client: httpx.AsyncClient, tmp_path: Path
) -> None:
    db, runs = tmp_path / "jobs.db", tmp_path / "runs"
    server = spawn(JOBCAST_DB=str(db))
    response = await client.post(f"{server.url}/api/tasks/exclusive/jobs", json={"path": str(runs)})
    job_id = response.json()["id"]
    wait_until(lambda: runs.exists() and runs.read_text().strip().isdigit(), seconds=15)
    first = int(runs.read_text())
    server.popen.send_signal(signal.SIGKILL)
    server.popen.wait(10)

    again = spawn(JOBCAST_DB=str(db))  # the job is queued again and runs from the start
    wait_until(lambda: len(runs.read_text().split()) >= 2, seconds=15)
    assert runs.read_text().split() == [str(first), runs.read_text().split()[-1]]  # no overlap
    assert not alive(first)
    job = (await client.get(f"{again.url}/api/jobs/{job_id}")).json()
    assert job["state"] == "running"
    os.kill(int(runs.read_text().split()[-1]), 0)  # the new run is the one at work
