"""Nothing a task produces takes the service down: on a real server, each hostile value ends
its own job clearly, and every other job, stream and request goes on."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from jobcast import Job, JobCast, JobContext
from jobcast.events import Event
from jobcast.store import MemoryStore
from tests.apps import make_jobs
from tests.conftest import Server
from tests.sse import open_stream

pytestmark = pytest.mark.anyio

Serve = Callable[..., tuple[JobCast, Server]]

#: A file name that is not UTF-8, as ``os.listdir`` returns it.
NAME = b"caf\xe9.txt".decode("utf-8", "surrogateescape")


class Unprintable(Exception):
    def __str__(self) -> str:
        raise RuntimeError("no")


class Shy:
    def __str__(self) -> str:
        raise ValueError("no")


RESULTS: dict[str, Any] = {
    "nan": {"ratio": math.nan},
    "infinity": [1, math.inf],
    "huge int": 10**5000,
    "bytes": {"data": b"\x00\x01"},
    "set": {1, 2},
    "deep": None,  # built below
    "cycle": None,
    "large": "x" * 2_000_000,
}
deep: list[Any] = []
for _ in range(200):
    deep = [deep]
RESULTS["deep"] = deep
cycle: dict[str, Any] = {}
cycle["self"] = cycle
RESULTS["cycle"] = cycle


def hostile_jobs() -> JobCast:
    jobs = make_jobs()

    @jobs.task
    def file_names(ctx: JobContext) -> dict[str, Any]:
        """Everything text can be: a name that is not UTF-8, in every place."""
        ctx.progress(1, 2, NAME)
        ctx.log(f"found {NAME}")
        ctx.log(Shy())
        ctx.log("control \x00\x1b[31m\x07 characters")
        return {"files": [NAME], NAME: "key"}

    @jobs.task
    def bad_name(ctx: JobContext) -> None:
        raise FileNotFoundError(f"no such file: {NAME}")

    @jobs.task
    def unprintable(ctx: JobContext) -> None:
        raise Unprintable()

    @jobs.task
    def hostile_result(ctx: JobContext, kind: str) -> Any:
        return RESULTS[kind]

    @jobs.task
    def hostile_progress(ctx: JobContext) -> str:
        for current, total in ((math.nan, 10), ("three", math.inf), (10**5000, None), (None, 2)):
            ctx.progress(current, total, "m" * 1_000_000)  # type: ignore[arg-type]
            ctx.sleep(0.05)
        ctx.progress(2, 2, Shy())  # type: ignore[arg-type]
        ctx.sleep(0.05)
        return "done"

    jobs.task(name="file_names_in_process", mode="process")(names_in_process)
    return jobs


def names_in_process(ctx: JobContext) -> list[str]:
    """The same name from a worker process."""
    ctx.log(NAME)
    return [NAME]


async def finished(client: httpx.AsyncClient, server: Server, task: str, **params: Any) -> Any:
    """Start a job, follow its stream to the end, and return its last snapshot and frames."""
    response = await client.post(f"{server.url}/api/tasks/{task}/jobs", json=params)
    assert response.status_code == 202, response.text
    job_id = response.json()["id"]
    async with open_stream(client, f"{server.url}/api/jobs/{job_id}/events") as stream:
        frames = await stream.rest(seconds=15)
    job = (await client.get(f"{server.url}/api/jobs/{job_id}")).json()
    return job, frames


async def still_serving(client: httpx.AsyncClient, server: Server) -> None:
    """Health, the lists and the streams answer, and another job runs to its end."""
    assert (await client.get(f"{server.url}/healthz")).status_code == 200
    assert (await client.get(f"{server.url}/api/jobs")).status_code == 200
    async with open_stream(client, f"{server.url}/api/events") as stream:
        assert (await stream.next()).event == "snapshot"
    job, _ = await finished(client, server, "count", n=5)
    assert job["state"] == "succeeded" and job["result"] == 5


async def test_text_that_is_not_utf_8_reaches_every_client_as_replacement_characters(
    serve: Serve, client: httpx.AsyncClient
) -> None:
    _, server = serve(hostile_jobs())
    job, frames = await finished(client, server, "file_names")
    assert job["state"] == "succeeded", job
    assert job["result"] == {"files": ["caf\ufffd.txt"], "caf\ufffd.txt": "key"}
    assert job["progress"]["message"] == "caf\ufffd.txt"
    lines = [frame.data["line"] for frame in frames if frame.event == "log"]
    assert lines[0] == "found caf\ufffd.txt"
    assert lines[1] == "<Shy object: its str() raised ValueError>"
    assert lines[2] == "control \x00\x1b[31m\x07 characters"  # JSON escapes them: they travel
    failed, _ = await finished(client, server, "bad_name")
    assert failed["state"] == "failed"
    assert failed["error"] == {
        "type": "FileNotFoundError",
        "message": "no such file: caf\ufffd.txt",
    }
    from_process, _ = await finished(client, server, "file_names_in_process")
    assert from_process["result"] == ["caf\ufffd.txt"]
    await still_serving(client, server)


async def test_an_exception_that_cannot_be_printed_fails_its_job_and_says_so(
    serve: Serve, client: httpx.AsyncClient
) -> None:
    _, server = serve(hostile_jobs())
    job, _ = await finished(client, server, "unprintable")
    assert job["error"] == {
        "type": "Unprintable",
        "message": "<Unprintable object: its str() raised RuntimeError>",
    }
    await still_serving(client, server)


@pytest.mark.parametrize("kind", sorted(RESULTS))
async def test_a_result_json_cannot_carry_fails_its_job_naming_where(
    serve: Serve, client: httpx.AsyncClient, kind: str
) -> None:
    _, server = serve(hostile_jobs())
    job, frames = await finished(client, server, "hostile_result", kind=kind)
    assert job["state"] == "failed" and job["result"] is None
    expected = "ResultTooLarge" if kind == "large" else "ResultNotSerializable"
    assert job["error"]["type"] == expected, job["error"]
    assert "result" in job["error"]["message"]
    assert frames[-1].event == "failed"
    await still_serving(client, server)


async def test_progress_that_is_not_a_number_is_dropped_and_long_messages_cut(
    serve: Serve, client: httpx.AsyncClient
) -> None:
    _, server = serve(hostile_jobs(), progress_interval=0.01)
    job, frames = await finished(client, server, "hostile_progress")
    assert job["state"] == "succeeded", job
    for frame in frames:
        if frame.event in ("progress", "succeeded"):
            progress = frame.data["job"]["progress"]
            assert isinstance(progress["current"], int | float)
            assert progress["total"] is None or math.isfinite(progress["total"])
            assert len(progress["message"]) <= 1000
    assert job["progress"]["current"] == 2
    assert job["progress"]["message"] == "<Shy object: its str() raised ValueError>"
    json.dumps(job, allow_nan=False)  # every number in it is one JSON can carry
    await still_serving(client, server)


class FaultyStore(MemoryStore):
    """A store of one's own with a bug: it raises on every progress event."""

    def record(self, event: Event, job: Job) -> None:
        if event.name == "progress":
            raise RuntimeError("a bug in the store")


async def test_a_failure_while_publishing_a_job_fails_that_job_and_nothing_else(
    serve: Serve, client: httpx.AsyncClient
) -> None:
    _, server = serve(make_jobs(store=FaultyStore()))
    job, frames = await finished(client, server, "sleep", seconds=0.5, steps=5)
    assert job["state"] == "failed"
    assert job["error"]["type"] == "InternalError"
    assert "a bug in the store" in job["error"]["message"]
    assert "please report it" in job["error"]["message"]
    health = (await client.get(f"{server.url}/healthz")).json()
    assert health["status"] == "ok" and health["running"] == 0
    other, _ = await finished(client, server, "shout", lines=2)  # no progress: no fault
    assert other["state"] == "succeeded"


@pytest.mark.parametrize(
    ("task", "body", "field"),
    [
        ("sleep", b'{"seconds": NaN}', "seconds"),
        ("sleep", b'{"seconds": 1e999}', "seconds"),
        ("boom", b'{"message": "x\\ud800y"}', "message"),  # a plain str param
        ("count", b'{"n": ' + b"9" * 5000 + b"}", None),
    ],
)
async def test_params_json_cannot_carry_are_a_422_naming_the_field_and_make_no_job(
    serve: Serve, client: httpx.AsyncClient, task: str, body: bytes, field: str | None
) -> None:
    jobs, server = serve()
    response = await client.post(
        f"{server.url}/api/tasks/{task}/jobs",
        content=body,
        headers={"Content-Type": "application/json"},
    )
    assert response.status_code == 422, response.text
    (error,) = json.loads(response.content)["detail"]  # an answer any client can decode
    if field is not None:
        assert error["loc"] == ["body", field]
    assert jobs.runner.jobs == {}
    await still_serving(client, server)


async def test_an_unknown_task_filter_is_a_404_on_the_list_and_on_the_stream(
    serve: Serve, client: httpx.AsyncClient
) -> None:
    _, server = serve()
    listed = await client.get(f"{server.url}/api/jobs", params={"task": "nope"})
    async with client.stream("GET", f"{server.url}/api/events?task=nope") as streamed:
        await streamed.aread()
    assert listed.status_code == streamed.status_code == 404
    assert "no task named 'nope'" in listed.json()["detail"]
