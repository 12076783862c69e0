"""The SSE contract, against a real uvicorn on a loopback port."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import anyio.lowlevel
import httpx
import pytest

from jobcast import Job, JobState
from jobcast._limits import JobRate
from jobcast.eventlog import EventLog
from jobcast.events import Event
from jobcast.service import Service
from jobcast.settings import Settings
from jobcast.table import JobTable
from jobcast.tasks import TaskRegistry
from tests.apps import gate
from tests.conftest import Server
from tests.sse import Frame, open_stream

pytestmark = pytest.mark.anyio

Serve = Callable[..., Any]
TERMINAL = {state.value for state in JobState if state is not JobState.QUEUED} - {"running"}


async def start(client: httpx.AsyncClient, server: Server, task: str, **params: Any) -> str:
    response = await client.post(f"{server.url}/api/tasks/{task}/jobs", json=params)
    assert response.status_code == 202, response.text
    job_id: str = response.json()["id"]
    return job_id


def ends(job_id: str) -> Callable[[Frame], bool]:
    return lambda frame: frame.event in TERMINAL and frame.data["job"]["id"] == job_id


async def test_all_events_starts_with_a_snapshot_then_goes_live(
    serve: Serve, client: httpx.AsyncClient
) -> None:
    jobs, server = serve()
    earlier = await start(client, server, "count", n=10)
    async with open_stream(client, f"{server.url}/api/events") as stream:
        assert stream.response.status_code == 200
        headers = stream.response.headers
        assert headers["content-type"].startswith("text/event-stream")
        assert headers["cache-control"] == "no-store"
        assert headers["x-accel-buffering"] == "no"
        assert "content-encoding" not in headers
        snapshot = await stream.next()
        assert stream.retry == 2000
        assert snapshot.event == "snapshot"
        assert snapshot.id == snapshot.data["seq"]
        assert [job["id"] for job in snapshot.data["jobs"]] == [earlier]
        job_id = await start(client, server, "hold", name="live", steps=3)
        gate("live").set()
        frames = await stream.until(ends(job_id))
    ids = [frame.id or 0 for frame in frames]
    assert all(i > 0 for i in ids)
    assert ids == sorted(set(ids)) and ids[0] > (snapshot.id or 0)
    mine = [f for f in frames if f.data.get("job", {}).get("id", f.data.get("job_id")) == job_id]
    names = [frame.event for frame in mine]
    assert names[0] == "queued" and names[1] == "running" and names[-1] == "succeeded"
    assert "log" in names
    log = next(frame for frame in mine if frame.event == "log")
    assert set(log.data) == {"seq", "ts", "job_id", "line"}
    assert log.data["line"] == "holding on live"
    for frame in mine:
        assert frame.data["seq"] == frame.id
        assert isinstance(frame.data["ts"], float)
    final = mine[-1].data["job"]
    assert final["progress"]["current"] == 3 and final["progress"]["total"] == 3


async def test_progress_is_coalesced_and_the_final_value_published(
    serve: Serve, client: httpx.AsyncClient
) -> None:
    jobs, server = serve(progress_interval=0.05)
    async with open_stream(client, f"{server.url}/api/events") as stream:
        await stream.next()
        job_id = await start(client, server, "count", n=3_000_000)
        frames = await stream.until(ends(job_id), seconds=30)
    progress = [frame for frame in frames if frame.event == "progress"]
    job = jobs.runner.get(job_id)
    assert job.started_at is not None and job.finished_at is not None
    # At most one progress event per interval (plus one for a partial interval).
    assert len(progress) <= (job.finished_at - job.started_at) / 0.05 + 2
    final = frames[-1].data["job"]["progress"]
    assert final["current"] == 3_000_000 and final["percent"] == 100.0
    readings = [frame.data["job"]["progress"]["current"] for frame in progress]
    assert readings == sorted(readings)


async def test_job_stream_replays_history_then_ends_and_reopening_is_204(
    serve: Serve, client: httpx.AsyncClient
) -> None:
    jobs, server = serve()
    job_id = await start(client, server, "hold", name="h", steps=2)
    other = await start(client, server, "hold", name="other")
    url = f"{server.url}/api/jobs/{job_id}/events"
    async with open_stream(client, url) as stream:
        first = await stream.next()
        assert first.event == "queued"  # the whole history, from the start
        gate("h").set()
        frames = [first, *await stream.rest()]
    assert frames[-1].event == "succeeded"
    assert {frame.data.get("job", {}).get("id", job_id) for frame in frames} == {job_id}
    assert all(frame.data.get("job_id", job_id) == job_id for frame in frames)
    assert other  # its events were in the log too, and filtered out
    response = await client.get(url, headers={"Last-Event-ID": str(frames[-1].id)})
    assert response.status_code == 204
    # Without an id, a finished job's stream is its history, ending at once.
    async with open_stream(client, url) as stream:
        replay = await stream.rest()
    assert [frame.id for frame in replay] == [frame.id for frame in frames]


async def test_resume_after_a_forced_disconnect_loses_and_repeats_nothing(
    serve: Serve, client: httpx.AsyncClient
) -> None:
    jobs, server = serve()
    url = f"{server.url}/api/events"
    seen: list[Frame] = []
    async with open_stream(client, url, last_event_id=1) as stream:
        # An id older than anything retained: reset, then a fresh snapshot.
        reset = await stream.next()
        assert reset.event == "reset" and reset.id is None
        snapshot = await stream.next()
        assert snapshot.event == "snapshot"
        job_id = await start(client, server, "ticker", count=60, rate=200)
        seen.extend(await stream.until(lambda frame: frame.event == "log"))
    # The connection is gone mid-job; resume from the last id received.
    last = seen[-1].id
    assert last is not None
    async with open_stream(client, url, last_event_id=last) as stream:
        rest = await stream.until(ends(job_id), seconds=10)
    frames = seen + rest
    ids = [frame.id for frame in frames]
    assert len(ids) == len(set(ids))
    ticks = [frame.data["line"] for frame in frames if frame.event == "log"]
    assert ticks == [f"tick {k}/60" for k in range(1, 61)]


async def test_resume_by_query_parameter_and_malformed_ids_are_ignored(
    serve: Serve, client: httpx.AsyncClient
) -> None:
    jobs, server = serve()
    async with open_stream(client, f"{server.url}/api/events") as stream:
        snapshot = await stream.next()
        job_id = await start(client, server, "count", n=5)
        frames = await stream.until(ends(job_id))
    middle = frames[0].id
    async with client.stream(
        "GET", f"{server.url}/api/events", params={"last_event_id": str(middle)}
    ) as response:
        from tests.sse import Stream

        replay = await Stream(response).until(ends(job_id))
    assert [frame.id for frame in replay] == [frame.id for frame in frames[1:]]
    bad_ids: list[bytes] = [b"abc", b"-5", b"1e9", b"", b"9" * 40, "\u0661\u0662".encode()]
    for bad in bad_ids:
        async with client.stream(
            "GET", f"{server.url}/api/events", headers=[(b"Last-Event-ID", bad)]
        ) as response:
            assert response.status_code == 200
            first = await Stream(response).next()
            assert first.event == "snapshot"
    assert snapshot.event == "snapshot"


async def test_a_client_behind_the_retained_window_gets_reset_and_snapshot(
    serve: Serve, client: httpx.AsyncClient
) -> None:
    jobs, server = serve(event_buffer=10)
    async with open_stream(client, f"{server.url}/api/events") as stream:
        snapshot = await stream.next()
    job_id = await start(client, server, "shout", lines=500)
    async with open_stream(client, f"{server.url}/api/jobs/{job_id}/events") as stream:
        await stream.rest()
    async with open_stream(client, f"{server.url}/api/events", last_event_id=snapshot.id) as stream:
        reset = await stream.next()
        fresh = await stream.next()
    assert reset.event == "reset"
    assert reset.data["last_event_id"] == snapshot.id
    assert fresh.event == "snapshot"
    assert [job["state"] for job in fresh.data["jobs"]] == ["succeeded"]


async def test_task_filter_passes_only_that_task(serve: Serve, client: httpx.AsyncClient) -> None:
    jobs, server = serve()
    async with open_stream(client, f"{server.url}/api/events?task=count") as stream:
        snapshot = await stream.next()
        assert snapshot.data["jobs"] == []
        await start(client, server, "shout", lines=2)
        job_id = await start(client, server, "count", n=2)
        frames = await stream.until(ends(job_id))
    assert {frame.data["job"]["task"] for frame in frames} == {"count"}


async def test_keepalive_comments_on_idle_streams(serve: Serve, client: httpx.AsyncClient) -> None:
    jobs, server = serve(keepalive_interval=0.05)
    async with open_stream(client, f"{server.url}/api/events") as stream:
        await stream.next()
        job_id = await start(client, server, "hold", name="k")
        assert await stream.comment() == "keepalive"
        gate("k").set()
        await stream.until(ends(job_id))


async def test_head_answers_headers_without_streaming(
    serve: Serve, client: httpx.AsyncClient
) -> None:
    jobs, server = serve()
    response = await client.head(f"{server.url}/api/events")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    assert response.content == b""
    assert jobs.runner.log.subscribers == 0


async def test_a_job_stream_replays_from_the_store_what_memory_no_longer_holds(
    serve: Serve, client: httpx.AsyncClient, tmp_path: Any
) -> None:
    # Memory holds 1,000 events; a job of 10,000 lines runs after the first job ended.
    jobs, server = serve(db=str(tmp_path / "jobs.db"), event_buffer=1000, max_log_lines=20_000)
    early = await start(client, server, "shout", lines=50)
    async with open_stream(client, f"{server.url}/api/jobs/{early}/events") as stream:
        live = await stream.rest()
    flood = await start(client, server, "flood", lines=10_000, width=10)
    async with open_stream(client, f"{server.url}/api/jobs/{flood}/events") as stream:
        await stream.until(ends(flood))
    assert jobs.runner.log.first_seq > live[-1].id  # memory lost all of the first job

    url = f"{server.url}/api/jobs/{early}/events"
    async with open_stream(client, url) as stream:
        replay = await stream.rest()
    assert [(frame.id, frame.event) for frame in replay] == [
        (frame.id, frame.event) for frame in live
    ]
    assert [frame.data["line"] for frame in replay if frame.event == "log"] == [
        f"line {i}" for i in range(50)
    ]
    # Resumed in the middle: the rest of it, from the store, nothing twice.
    middle = live[20].id
    async with open_stream(client, url, last_event_id=middle) as stream:
        rest = await stream.rest()
    assert [frame.id for frame in rest] == [frame.id for frame in live[21:]]
    # The long job itself, from the start, across the store and memory.
    async with open_stream(client, f"{server.url}/api/jobs/{flood}/events") as stream:
        whole = await stream.rest()
    lines = [frame.data["line"] for frame in whole if frame.event == "log"]
    assert (
        len(lines) == 10_000 and lines[0].startswith("000000 ") and lines[-1].startswith("009999 ")
    )
    ids = [frame.id or 0 for frame in whole]
    assert ids == sorted(set(ids)) and whole[-1].event == "succeeded"


@pytest.mark.unit
async def test_a_job_s_history_read_while_memory_moves_on_misses_nothing() -> None:
    log = EventLog(maxlen=10)  # memory drops its oldest events 64 at a time
    job = Job("t", {}, first_seq=1)
    store: list[Event] = []

    def publish() -> None:
        store.append(log.append("log", job_id=job.id, task="t", payload={"line": "x"}))

    for _ in range(100):
        publish()

    class Backend:
        """Keeps every event; answers from another thread while the job goes on."""

        table = JobTable()

        def __init__(self) -> None:
            self.log = log
            self.asked = 0

        async def history(
            self, job: Job, *, after: int, before: int, limit: int, names: tuple[str, ...]
        ) -> list[Event]:
            self.asked += 1
            await anyio.lowlevel.checkpoint()
            if self.asked == 1:
                for _ in range(100):
                    publish()
            return [event for event in store if after < event.seq < before][:limit]

    service = Service(TaskRegistry(), Settings(), Backend(), rate=JobRate(60))  # type: ignore[arg-type]
    found = await service.history(job, limit=1000, names=("log",))
    assert [event.seq for event in found] == [event.seq for event in store]
