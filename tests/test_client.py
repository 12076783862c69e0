"""``jobcast.client``: the API as typed calls, and streams that resume across cuts and
restarts, against real servers."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from fastapi.responses import HTMLResponse
from httpx_sse import ServerSentEvent

from jobcast import JobCast
from jobcast.client import (
    AsyncClient,
    Client,
    Conflict,
    Event,
    InvalidParams,
    Job,
    JobCancelled,
    JobEvent,
    JobFailed,
    LogEvent,
    NotFound,
    Reset,
    ServerUnreachable,
    Snapshot,
    Unauthorized,
    WaitTimeout,
)
from jobcast.client._protocol import Resume
from tests.apps import gate
from tests.conftest import Process, free_port, wait_until

Serve = Callable[..., Any]
TOKEN = "s3cret-token-for-the-tests"


def ids(events: list[Event]) -> list[int]:
    return [event.id for event in events if not isinstance(event, Reset)]


def names(events: list[Event]) -> list[str]:
    return [event.name for event in events]


# -- the resume rules, frame by frame ----------------------------------------------------------


def frame(
    event: str, data: dict[str, Any] | None = None, retry: int | None = None
) -> ServerSentEvent:
    return ServerSentEvent(event, None if data is None else json.dumps(data), retry=retry)


def job_data(seq: int, state: str, job_id: str = "j1") -> dict[str, Any]:
    return {"seq": seq, "ts": 1.0, "job": {"id": job_id, "task": "t", "state": state}}


def test_a_resumed_stream_drops_what_it_delivered_and_resumes_after_the_last_id() -> None:
    resume = Resume("http://x", "/api/jobs/j1/events", job_id="j1")
    first = [
        resume.receive(frame("queued", job_data(5, "queued"))),
        resume.receive(frame("running", job_data(6, "running"))),
    ]
    assert resume.request_headers() == {"Last-Event-ID": "6"}
    # The connection drops; the server replays from before what was delivered.
    replayed = [
        resume.receive(frame(name, job_data(seq, name)))
        for seq, name in ((5, "queued"), (6, "running"), (7, "succeeded"))
    ]
    assert ids([event for event in first if event is not None]) == [5, 6]
    assert [event for event in replayed if event is not None] == [
        JobEvent("succeeded", 7, 1.0, Job(id="j1", task="t", state="succeeded"))
    ]
    assert resume.done  # the job's terminal event ends its stream


def test_after_a_reset_the_fresh_snapshot_counts_even_with_a_lower_id() -> None:
    resume = Resume("http://x", "/api/events")
    resume.receive(frame("log", {"seq": 900, "ts": 1.0, "job_id": "j1", "line": "x"}))
    reset = resume.receive(
        frame(
            "reset",
            {
                "last_event_id": 900,
                "first_retained": 1,
                "reason": "your last id is newer than any event",
            },
        )
    )
    snapshot = resume.receive(frame("snapshot", {"seq": 3, "ts": 2.0, "jobs": []}))
    after = resume.receive(frame("log", {"seq": 4, "ts": 2.0, "job_id": "j2", "line": "y"}))
    assert isinstance(reset, Reset) and reset.last_event_id == 900
    assert snapshot == Snapshot(3, 2.0, [])
    assert after == LogEvent(4, 2.0, "j2", "y")
    assert resume.request_headers() == {"Last-Event-ID": "4"}


def test_retry_advice_sets_the_wait_before_reconnecting_and_giving_up_is_bounded() -> None:
    now = [0.0]
    resume = Resume("http://x", "/api/events", reconnect_timeout=5, clock=lambda: now[0])
    with pytest.raises(ServerUnreachable, match="refused"):
        resume.lost("refused")  # never connected: there is nothing to resume
    resume.opened(httpx.Response(200, headers={"Content-Type": "text/event-stream"}))
    assert resume.receive(frame("message", retry=250)) is None
    assert resume.lost("cut") == 0.25
    now[0] = 6.0
    with pytest.raises(ServerUnreachable, match="no connection for 6 s"):
        resume.lost("refused")


# -- requests ----------------------------------------------------------------------------------


def test_every_call_answers_typed_records(serve: Serve) -> None:
    _, server = serve()
    with Client(server.url) as client:
        tasks = {task.name: task for task in client.tasks()}
        assert tasks["hold"].params_schema["required"] == ["name"]
        assert tasks["unique"].duplicates == "reject"

        held = client.start("hold", {"name": "calls", "steps": 3}, priority=5)
        assert held.task == "hold" and held.params == {"name": "calls", "steps": 3}
        assert held.priority == 5 and held.state in ("queued", "running")
        later = client.start("shout", {"lines": 1}, delay=60)
        assert later.state == "queued" and later.run_at is not None

        assert {job.id for job in client.jobs()} == {held.id, later.id}
        assert [job.id for job in client.jobs(task="shout")] == [later.id]
        assert [job.id for job in client.jobs(limit=1)] == [later.id]  # newest first
        wait_until(lambda: client.get(held.id).state == "running")
        assert [job.id for job in client.jobs(state="running")] == [held.id]
        cancelled = client.cancel(held.id)
        assert cancelled.id == held.id and cancelled.cancelling
        ended = client.wait(held.id, timeout=10)
        assert ended.state == "cancelled" and ended.finished and ended.finished_at is not None
        assert [line.line for line in client.logs(held.id)] == ["holding on calls"]


def test_logs_come_whole_across_pages(serve: Serve) -> None:
    _, server = serve()
    with Client(server.url) as client:
        job = client.start("shout", {"lines": 2500})
        client.wait(job.id, timeout=20)
        lines = client.logs(job.id)
    assert [line.line for line in lines] == [f"line {i}" for i in range(2500)]
    assert [line.id for line in lines] == sorted({line.id for line in lines})


def test_server_errors_are_typed_and_carry_the_status_and_the_message(serve: Serve) -> None:
    _, server = serve()
    with Client(server.url) as client:
        with pytest.raises(NotFound) as unknown_job:
            client.get("no-such-job")
        assert unknown_job.value.status == 404
        assert "no job with id 'no-such-job'" in unknown_job.value.message

        with pytest.raises(NotFound, match="no task named 'nope'; choose one of"):
            client.start("nope")

        with pytest.raises(InvalidParams) as invalid:
            client.start("count", {"n": -1})
        assert invalid.value.status == 422
        assert invalid.value.message.startswith("n: Input should be greater than or equal")
        assert [error["loc"] for error in invalid.value.errors] == [["body", "n"]]

        job = client.start("unique", {"name": "dup"})
        with pytest.raises(Conflict) as duplicate:
            client.start("unique", {"name": "dup"})
        assert duplicate.value.status == 409 and duplicate.value.job is not None
        assert duplicate.value.job.id == job.id
        gate("dup").set()
        client.wait(job.id, timeout=10)
        with pytest.raises(Conflict, match="already finished as 'succeeded'"):
            client.cancel(job.id)
        assert client.get(job.id).state == "succeeded"  # the refused cancel changed nothing

        with pytest.raises(NotFound):
            list(client.follow("no-such-job"))


def test_an_id_or_a_task_made_of_dots_names_itself_not_the_path_above(serve: Serve) -> None:
    _, server = serve()
    with Client(server.url) as client:
        job = client.start("count", {"n": 1})
        client.wait(job.id, timeout=10)
        # /api/jobs/../events would be /api/events: every job's stream, which never ends.
        for dots in (".", ".."):
            with pytest.raises(NotFound, match=f"no job with id '{re.escape(dots)}'"):
                list(client.follow(dots))
            with pytest.raises(NotFound, match=f"no job with id '{re.escape(dots)}'"):
                client.get(dots)
            with pytest.raises(NotFound, match=f"no job with id '{re.escape(dots)}'"):
                client.cancel(dots)
            with pytest.raises(NotFound, match=f"no task named '{re.escape(dots)}'"):
                client.start(dots)
        with pytest.raises(ValueError, match="job_id must not be empty"):
            client.get("")
        with pytest.raises(ValueError, match="task must not be empty"):
            client.start("")
        assert [found.id for found in client.jobs()] == [job.id]


def test_a_server_with_a_token_refuses_a_client_without_it_or_with_a_wrong_one(
    serve: Serve,
) -> None:
    _, server = serve(token=TOKEN, protect_reads=True)
    for token in (None, "not-the-right-token-at-all"):
        with Client(server.url, token) as client:
            with pytest.raises(Unauthorized) as refused:
                client.start("count", {"n": 1})
            assert refused.value.status == 401 and "access token" in refused.value.message
            with pytest.raises(Unauthorized):
                list(client.follow("any"))
    with Client(server.url, TOKEN) as client:
        job = client.start("count", {"n": 3})
        events = list(client.follow(job.id))  # the stream takes the header too
        assert events[-1].name == "succeeded"
        assert client.result(job.id) == 3
    with Client(server.url, f"{TOKEN}\n") as client:  # as read from a file
        assert client.get(job.id).result == 3
    with Client(server.url, "") as client:  # as an unset variable gives it: no token
        with pytest.raises(Unauthorized):
            client.get(job.id)
    # Text that no token holds is refused as such, not sent to fail as "cannot reach".
    for wrong in ("two words", "caf\u00e9-token-of-sixteen", "line\r\nX-Injected: 1"):
        with pytest.raises(ValueError, match="the token is not one a jobcast server could"):
            Client(server.url, wrong)


def test_an_unreachable_server_says_where_and_what_to_do() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    with Client(url) as client:
        with pytest.raises(ServerUnreachable) as unreachable:
            client.tasks()
        with pytest.raises(ServerUnreachable):
            list(client.follow("any"))
    assert url in str(unreachable.value) and "jobcast serve" in str(unreachable.value)
    with pytest.raises(ValueError, match="base_url must be an http"):
        Client("localhost:8000")
    with pytest.raises(ValueError, match="timeout must be a positive number"):
        Client(url, timeout=0)
    with pytest.raises(ValueError, match="reconnect_timeout must be"):
        AsyncClient(url, reconnect_timeout=-1)
    with pytest.raises(ValueError, match="timeout must be a number of seconds, at least 0"):
        with Client(url) as client:
            client.wait("any", timeout=-1)


def another_app(jobs: JobCast) -> FastAPI:
    """A web app that is not jobcast: a page for every path, as a wrong port may hold."""
    app = FastAPI()

    @app.get("/{path:path}", response_class=HTMLResponse)
    def page(path: str) -> str:
        return "<!doctype html><title>Another app</title>"

    return app


def test_a_server_that_is_not_jobcast_is_said_to_be_so_not_read_or_streamed_forever(
    serve: Serve,
) -> None:
    _, server = serve(build=another_app)
    with Client(server.url) as client:
        with pytest.raises(ServerUnreachable, match="with text/html, not jobcast's JSON"):
            client.jobs()
        with pytest.raises(ServerUnreachable, match="with text/html, not an event stream"):
            client.wait("any", timeout=5)
        with pytest.raises(ServerUnreachable, match="is this the URL of a jobcast server"):
            list(client.follow("any"))


# -- results and waiting -----------------------------------------------------------------------


def test_result_gives_the_value_or_raises_how_the_job_ended(serve: Serve) -> None:
    _, server = serve()
    with Client(server.url) as client:
        assert client.result(client.start("count", {"n": 7}).id, timeout=10) == 7

        failed = client.start("boom", {"message": "no disk"})
        with pytest.raises(JobFailed) as failure:
            client.result(failed.id, timeout=10)
        assert failure.value.job.id == failed.id and failure.value.job.state == "failed"
        assert failure.value.job.error is not None
        assert (failure.value.job.error.type, failure.value.job.error.message) == (
            "ValueError",
            "no disk",
        )

        held = client.start("hold", {"name": "to-cancel"})
        client.cancel(held.id)
        with pytest.raises(JobCancelled) as cancelled:
            client.result(held.id, timeout=10)
        assert cancelled.value.job.state == "cancelled"


def test_wait_gives_up_at_its_timeout_and_leaves_the_job_running(serve: Serve) -> None:
    _, server = serve()
    with Client(server.url) as client:
        job = client.start("hold", {"name": "long", "steps": 2})
        with pytest.raises(WaitTimeout) as timed_out:
            client.wait(job.id, timeout=0.5)
        assert timed_out.value.job.id == job.id and timed_out.value.job.state == "running"
        assert isinstance(timed_out.value, TimeoutError)
        assert client.get(job.id).state == "running"
        gate("long").set()
        assert client.wait(job.id, timeout=10).state == "succeeded"
        # A finished job's wait answers at once, from its history.
        assert client.wait(job.id, timeout=0.01).state == "succeeded"


@pytest.mark.anyio
async def test_the_async_client_has_the_same_calls(serve: Serve) -> None:
    _, server = serve()
    async with AsyncClient(server.url) as client:
        assert "count" in {task.name for task in await client.tasks()}
        job = await client.start("count", {"n": 5}, priority=1)
        assert await client.result(job.id, timeout=10) == 5
        assert (await client.get(job.id)).state == "succeeded"
        assert [found.id for found in await client.jobs(state="succeeded")] == [job.id]
        events = [event async for event in client.follow(job.id)]
        with Client(server.url) as sync:
            assert events == list(sync.follow(job.id))  # one logic, two I/Os
        shouting = await client.start("shout", {"lines": 2})
        await client.wait(shouting.id, timeout=10)
        assert [line.line for line in await client.logs(shouting.id)] == ["line 0", "line 1"]

        held = await client.start("hold", {"name": "async"})
        with pytest.raises(WaitTimeout):
            await client.wait(held.id, timeout=0.3)
        assert (await client.cancel(held.id)).cancelling
        with pytest.raises(JobCancelled):
            await client.result(held.id, timeout=10)
        with pytest.raises(NotFound):
            await client.get("nope")
        with pytest.raises(InvalidParams, match="n: "):
            await client.start("count", {"n": "many"})


# -- streams -----------------------------------------------------------------------------------


def test_follow_gives_typed_events_and_ends_after_the_terminal_one(serve: Serve) -> None:
    _, server = serve()
    with Client(server.url) as client:
        job = client.start("shout", {"lines": 3})
        events = list(client.follow(job.id))
    assert names(events)[0] == "queued" and names(events)[-1] == "succeeded"
    assert [event.line for event in events if isinstance(event, LogEvent)] == [
        "line 0",
        "line 1",
        "line 2",
    ]
    assert ids(events) == sorted(set(ids(events)))
    last = events[-1]
    assert isinstance(last, JobEvent) and last.terminal and last.job.state == "succeeded"


def test_watch_starts_with_a_snapshot_and_follows_only_its_task(serve: Serve) -> None:
    _, server = serve()
    with Client(server.url) as client:
        before = client.start("count", {"n": 2})
        client.wait(before.id, timeout=10)
        events = client.watch(task="shout")
        snapshot = next(events)
        assert isinstance(snapshot, Snapshot) and snapshot.jobs == []  # count's jobs left out
        client.start("count", {"n": 2})
        shout = client.start("shout", {"lines": 1})
        seen: list[Event] = []
        for event in events:
            seen.append(event)
            if isinstance(event, JobEvent) and event.terminal:
                break
        events.close()
    assert {event.job.id for event in seen if isinstance(event, JobEvent)} == {shout.id}
    assert [event.name for event in seen if event.name != "progress"] == [
        "queued",
        "running",
        "log",
        "succeeded",
    ]


class CountingStreams(httpx.AsyncHTTPTransport):
    """An httpx transport that counts the streams it opens."""

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.streams = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/events"):
            self.streams += 1
        return await super().handle_async_request(request)


@pytest.mark.anyio
async def test_follow_resumes_after_the_server_cuts_the_connection(serve: Serve) -> None:
    jobs, server = serve(stream_send_timeout=0.5, retry_ms=100)
    # A small receive buffer: the server's writes back up as soon as this client stops
    # reading, and after 0.5 s it drops the connection.
    small = [(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)]
    transport = CountingStreams(socket_options=small)
    async with AsyncClient(server.url, transport=transport) as client:
        job = await client.start("flood", {"lines": 3000, "width": 2500})  # 7.5 MB of log
        events = client.follow(job.id)
        seen = [await anext(events)]
        wait_until(lambda: jobs.runner.log.subscribers == 0, seconds=10)  # it let go of us
        seen.extend([event async for event in events])
        assert transport.streams == 2  # the events after the cut came on a new connection
        replay = [event async for event in client.follow(job.id)]
    assert names(seen)[-1] == "succeeded"
    lines = [event.line[:6] for event in seen if isinstance(event, LogEvent)]
    assert lines == [f"{i:06d}" for i in range(3000)]  # nothing lost, nothing twice
    assert ids(seen) == ids(replay)  # exactly the job's history, as the server keeps it


def test_follow_resumes_across_a_server_restart_on_the_same_file_and_port(
    spawn: Callable[..., Process], tmp_path: Path
) -> None:
    marker = tmp_path / "go"
    env = {"JOBCAST_DB": str(tmp_path / "jobs.db"), "JOBCAST_RETRY_MS": "100"}
    server = spawn(**env)
    seen: list[Event] = []
    with Client(server.url) as client:
        job = client.start("await_file_again", {"path": str(marker)})
        restarted = False
        for event in client.follow(job.id):
            seen.append(event)
            if not (isinstance(event, LogEvent) and event.line.startswith("waiting for")):
                continue
            if restarted:
                marker.touch()  # it runs again from the start after the restart: let it end
                continue
            server.popen.kill()  # kill -9, while the client reads the stream
            server.popen.wait(10)
            server = spawn(port=server.port, **env)
            restarted = True
        history = list(client.follow(job.id))
    assert names(seen).count("running") == 2  # once before the kill, once after
    assert names(seen)[-1] == "succeeded"
    assert ids(seen) == sorted(set(ids(seen)))  # every id once, in order
    assert ids(seen) == ids(history)  # nothing lost across the kill


# -- importing ---------------------------------------------------------------------------------


@pytest.mark.integration  # a fresh interpreter
def test_importing_the_client_loads_none_of_the_server() -> None:
    code = "import sys, jobcast.client\nprint(' '.join(sorted(sys.modules)))\n"
    loaded = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.split()
    server = {"fastapi", "uvicorn", "starlette", "pydantic", "sse_starlette"}
    assert not [name for name in loaded if name.split(".")[0] in server]
    ours = [name for name in loaded if name.split(".")[0] == "jobcast"]
    assert ours and all(
        name in ("jobcast", "jobcast.client") or name.startswith("jobcast.client.") for name in ours
    ), ours
