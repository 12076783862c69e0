"""Faults of the machine, on a real server: a disk that fills up, then frees again, or a
server killed while it could not write. Nothing a client saw is contradicted afterwards."""

from __future__ import annotations

import resource
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import anyio
import httpx
import pytest

from tests.conftest import Process, wait_until
from tests.sse import Frame, Stream, open_stream

pytestmark = pytest.mark.anyio


@contextmanager
def full_disk(server: Process) -> Iterator[None]:
    """The server's files cannot grow while inside: every write past their first byte
    fails, as on a full disk (``RLIMIT_FSIZE``; Python ignores the SIGXFSZ it brings)."""
    pid = server.popen.pid
    limits = resource.prlimit(pid, resource.RLIMIT_FSIZE)
    resource.prlimit(pid, resource.RLIMIT_FSIZE, (1, limits[1]))
    try:
        yield
    finally:
        if server.popen.poll() is None:
            resource.prlimit(pid, resource.RLIMIT_FSIZE, limits)


def health(server: Process) -> httpx.Response:
    return httpx.get(f"{server.url}/healthz", timeout=5)


async def running_job(client: httpx.AsyncClient, server: Process, gate: Path) -> str:
    """Start an ``await_file`` job on ``gate`` and return its id once it is running."""
    response = await client.post(
        f"{server.url}/api/tasks/await_file/jobs", json={"path": str(gate)}
    )
    assert response.status_code == 202, response.text
    job_id: str = response.json()["id"]
    url = f"{server.url}/api/jobs/{job_id}"
    wait_until(lambda: httpx.get(url).json()["state"] == "running", seconds=10)
    return job_id


async def frames_within(stream: Stream, seconds: float) -> list[Frame]:
    """The frames a stream sends within ``seconds`` (a bounded window, for an absence);
    the stream cannot be read on afterwards."""
    frames: list[Frame] = []
    with anyio.move_on_after(seconds):
        while True:
            frames.append(await stream.next(seconds=seconds + 1))
    return frames


async def test_a_full_disk_refuses_new_jobs_shows_nothing_unstored_and_recovers_by_itself(
    spawn: Callable[..., Process], client: httpx.AsyncClient, tmp_path: Path
) -> None:
    server = spawn(JOBCAST_DB=str(tmp_path / "jobs.db"))
    gate = tmp_path / "gate"
    job_id = await running_job(client, server, gate)
    events = f"{server.url}/api/events"
    async with open_stream(client, events) as stream:
        snapshot = await stream.next()
        assert snapshot.event == "snapshot" and snapshot.id is not None
        with full_disk(server):
            gate.touch()  # the job succeeds, but its end cannot be written
            wait_until(lambda: health(server).status_code == 503, seconds=10)
            body = health(server).json()
            assert body["status"] == "failing" and "cannot be written" in body["problem"]
            refused = await client.post(f"{server.url}/api/tasks/sleep/jobs", json={})
            assert refused.status_code == 503, refused.text
            assert refused.headers["retry-after"] == "5"
            assert "database cannot be written" in refused.json()["detail"]
            # What is not stored is not shown: the job still runs, as far as anyone sees.
            job = (await client.get(f"{server.url}/api/jobs/{job_id}")).json()
            assert job["state"] == "running"
            assert [f.event for f in await frames_within(stream, 0.5)] == []
    # Space again: what waited is written and shown, and the service takes jobs again.
    async with open_stream(client, events, last_event_id=snapshot.id) as stream:
        ended = await stream.until(lambda frame: frame.event == "succeeded", seconds=10)
    assert ended[-1].data["job"]["id"] == job_id
    wait_until(lambda: health(server).status_code == 200, seconds=10)
    assert (await client.post(f"{server.url}/api/tasks/sleep/jobs", json={})).status_code == 202


async def test_kill_9_while_the_disk_is_full_contradicts_nothing_a_client_saw(
    spawn: Callable[..., Process], client: httpx.AsyncClient, tmp_path: Path
) -> None:
    db, gate = tmp_path / "jobs.db", tmp_path / "gate"
    server = spawn(JOBCAST_DB=str(db))
    job_id = await running_job(client, server, gate)
    seen: list[Frame] = []
    async with open_stream(client, f"{server.url}/api/jobs/{job_id}/events") as stream:
        seen += await stream.until(lambda frame: frame.event == "log")
        with full_disk(server):
            gate.touch()
            wait_until(lambda: health(server).status_code == 503, seconds=10)
            seen += await frames_within(stream, 0.5)
            server.popen.kill()
            server.popen.wait(10)
    assert {frame.event for frame in seen} <= {"queued", "running", "progress", "log"}
    last_seen = max(frame.id for frame in seen if frame.id is not None)

    again = spawn(JOBCAST_DB=str(db))
    job = (await client.get(f"{again.url}/api/jobs/{job_id}")).json()
    assert job["state"] == "interrupted"  # it was running when last seen: it ended so
    async with open_stream(
        client, f"{again.url}/api/jobs/{job_id}/events", last_event_id=last_seen
    ) as stream:
        rest = await stream.rest()
    assert [frame.event for frame in rest] == ["interrupted"]  # no reset, nothing twice
    assert rest[0].id is not None and rest[0].id > last_seen
