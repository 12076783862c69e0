"""Restarts on real processes: ``kill -9`` mid-job, the same file again, and what clients see."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import httpx
import pytest

from tests.conftest import Process, free_port, wait_until
from tests.sse import Frame, open_stream

pytestmark = [pytest.mark.anyio, pytest.mark.integration]  # child processes, servers


def committed_seq(path: Path) -> int:
    """The newest event the server has committed to ``path``, read beside it."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        seq: int | None = conn.execute("SELECT max(seq) FROM events").fetchone()[0]
    finally:
        conn.close()
    return seq or 0


def kill_9(server: Process) -> None:
    server.popen.kill()
    server.popen.wait(10)


def serve_until_exit(db: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """Run ``jobcast serve`` on ``db`` and wait for it to exit by itself."""
    command = [sys.executable, "-m", "jobcast", "serve", "tests.apps:served"]
    return subprocess.run(
        [*command, "--port", str(free_port())],
        env={**os.environ, "JOBCAST_DB": str(db), **env},
        cwd=Path(__file__).parents[1],
        capture_output=True,
        text=True,
        timeout=30,
    )


def about(frame: Frame) -> str:
    """The job a frame is about."""
    if frame.event == "log":
        job_id: str = frame.data["job_id"]
    else:
        job_id = frame.data["job"]["id"]
    return job_id


async def test_kill_9_mid_job_then_restart_on_the_same_file_loses_and_repeats_nothing(
    spawn: Callable[..., Process], client: httpx.AsyncClient, tmp_path: Path
) -> None:
    db = tmp_path / "jobs.db"
    server = spawn(JOBCAST_DB=str(db), JOBCAST_MAX_WORKERS="2")
    url = server.url
    async with open_stream(client, f"{url}/api/events") as stream:
        assert (await stream.next()).event == "snapshot"
        held = (await client.post(f"{url}/api/tasks/hold/jobs", json={"name": "k"})).json()
        retried = (await client.post(f"{url}/api/tasks/resumable/jobs", json={"name": "k"})).json()
        waiting = (await client.post(f"{url}/api/tasks/shout/jobs", json={"lines": 2})).json()
        # Both running jobs publish a log line and their first progress reading, then are
        # quiet; the third waits for a worker. After that, nothing happens until the kill.
        expected = {
            (held["id"], "log"),
            (held["id"], "progress"),
            (retried["id"], "log"),
            (retried["id"], "progress"),
            (waiting["id"], "queued"),
        }
        seen: list[Frame] = []
        while not expected <= {(about(frame), frame.event) for frame in seen}:
            seen.append(await stream.next())
    last_id = seen[-1].id
    assert last_id is not None
    wait_until(lambda: committed_seq(db) == last_id)  # what the client saw is on disk
    last_seen_at = seen[-1].data["ts"]
    kill_9(server)
    restarted_at = time.time()

    server = spawn(JOBCAST_DB=str(db), JOBCAST_MAX_WORKERS="2")
    url = server.url
    async with open_stream(client, f"{url}/api/events", last_event_id=last_id) as resumed:
        after = await resumed.until(
            lambda frame: frame.event == "succeeded" and about(frame) == waiting["id"]
        )
    # Exactly the events after the client's id: no gap, nothing twice, no reset.
    assert [frame.id for frame in after] == list(range(last_id + 1, last_id + 1 + len(after)))
    assert after[0].event == "interrupted" and about(after[0]) == held["id"]
    assert "server stopped" in after[0].data["job"]["error"]["message"]
    # It ended when it was last known running (its last event), not at the restart.
    finished_at = datetime.fromisoformat(after[0].data["job"]["finished_at"]).timestamp()
    assert finished_at <= last_seen_at < restarted_at
    by_job = [(about(frame), frame.event) for frame in after]
    assert (retried["id"], "queued") in by_job and (retried["id"], "running") in by_job
    assert (waiting["id"], "running") in by_job

    states = {job["id"]: job["state"] for job in (await client.get(f"{url}/api/jobs")).json()}
    assert states == {
        held["id"]: "interrupted",
        retried["id"]: "running",
        waiting["id"]: "succeeded",
    }

    # A client that stopped earlier gets the events from before the kill as they were sent.
    first_id = seen[0].id
    assert first_id is not None
    async with open_stream(client, f"{url}/api/events", last_event_id=first_id) as replay:
        replayed = [await replay.next() for _ in range(len(seen) - 1 + len(after))]
    assert replayed == seen[1:] + after


async def test_a_client_resuming_from_an_id_no_longer_kept_gets_reset_and_a_snapshot(
    spawn: Callable[..., Process], client: httpx.AsyncClient, tmp_path: Path
) -> None:
    db = tmp_path / "jobs.db"
    server = spawn(JOBCAST_DB=str(db))
    async with open_stream(client, f"{server.url}/api/events") as stream:
        await stream.next()
        job = (await client.post(f"{server.url}/api/tasks/shout/jobs", json={"lines": 300})).json()
        frames = await stream.until(
            lambda frame: frame.event == "succeeded" and about(frame) == job["id"]
        )
    first_id, last_id = frames[0].id, frames[-1].id
    assert first_id is not None and last_id is not None
    wait_until(lambda: committed_seq(db) == last_id)
    kill_9(server)

    # Restarted keeping 100 events in the file and 10 in memory: the first id is gone.
    server = spawn(JOBCAST_DB=str(db), JOBCAST_RETAIN_EVENTS="100", JOBCAST_EVENT_BUFFER="10")
    conn = sqlite3.connect(db)
    try:
        assert conn.execute("SELECT count(*), max(seq) FROM events").fetchone() == (100, last_id)
    finally:
        conn.close()
    async with open_stream(client, f"{server.url}/api/events", last_event_id=first_id) as resumed:
        reset, snapshot = await resumed.next(), await resumed.next()
    assert reset.event == "reset" and reset.data["last_event_id"] == first_id
    assert snapshot.event == "snapshot"
    assert [job_["state"] for job_ in snapshot.data["jobs"]] == ["succeeded"]
    assert snapshot.id is not None and snapshot.id >= last_id


async def test_a_second_server_on_the_same_file_is_refused_and_the_first_goes_on(
    spawn: Callable[..., Process], client: httpx.AsyncClient, tmp_path: Path
) -> None:
    db = tmp_path / "jobs.db"
    first = spawn(JOBCAST_DB=str(db))

    second = serve_until_exit(db)

    assert second.returncode != 0
    assert f"jobcast database {db}: another jobcast server (pid {first.popen.pid})" in (
        second.stdout + second.stderr
    )
    assert "Traceback" not in second.stdout + second.stderr
    job = (await client.post(f"{first.url}/api/tasks/count/jobs", json={"n": 3})).json()
    assert (await client.get(f"{first.url}/api/jobs/{job['id']}")).status_code == 200


@pytest.mark.parametrize("case", ["corrupt", "missing directory"])
def test_a_file_that_cannot_be_used_stops_the_server_with_a_message_naming_it(
    tmp_path: Path, case: str
) -> None:
    if case == "corrupt":
        db = tmp_path / "jobs.db"
        db.write_bytes(b"not a database\n" * 500)
    else:
        db = tmp_path / "missing" / "jobs.db"

    exited = serve_until_exit(db)

    output = exited.stdout + exited.stderr
    assert exited.returncode != 0
    assert f"jobcast cannot start: jobcast database {db}" in output
    assert "JOBCAST_DB" in output and "Traceback" not in output


async def test_a_delayed_job_and_a_waiting_retry_outlive_kill_9_and_run_when_due(
    spawn: Callable[..., Process], client: httpx.AsyncClient, tmp_path: Path
) -> None:
    db = tmp_path / "jobs.db"
    server = spawn(JOBCAST_DB=str(db))
    url = server.url
    delayed = (await client.post(f"{url}/api/tasks/shout/jobs?delay=3", json={"lines": 1})).json()
    marker = str(tmp_path / "attempted")
    retried = (await client.post(f"{url}/api/tasks/fail_once/jobs", json={"path": marker})).json()
    async with open_stream(client, f"{url}/api/jobs/{retried['id']}/events") as stream:
        retrying = (await stream.until(lambda frame: frame.event == "retrying"))[-1]
    assert retrying.data["attempt"] == 2 and retrying.data["error"]["type"] == "ConnectionError"
    assert retrying.id is not None
    wait_until(lambda: committed_seq(db) >= (retrying.id or 0))
    kill_9(server)  # before either is due

    server = spawn(JOBCAST_DB=str(db))
    url = server.url
    kept = {job["id"]: job for job in (await client.get(f"{url}/api/jobs")).json()}
    assert kept[delayed["id"]]["run_at"] == delayed["run_at"]
    assert kept[retried["id"]]["run_at"] == retrying.data["run_at"]
    for job in (delayed, kept[retried["id"]]):
        async with open_stream(client, f"{url}/api/jobs/{job['id']}/events") as stream:
            frames = await stream.until(lambda f: f.event in ("succeeded", "failed"))
        done = frames[-1].data["job"]
        assert done["state"] == "succeeded", done
        started = datetime.fromisoformat(done["started_at"])
        assert started >= datetime.fromisoformat(job["run_at"])  # not before it was due
    assert done["attempt"] == 2 and done["result"] == marker
