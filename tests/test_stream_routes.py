"""One stream path: the streams answer alike in every app they are served by.

``create_app()`` as it is, the same app with a middleware of the user's added, and
``jobs.router`` mounted into another FastAPI app must give the same answers, refusals
included: the stream routes carry the policy and the stream engine with them. Streams
against a real uvicorn, as everywhere.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import pytest
from asgi_lifespan import LifespanManager
from fastapi import FastAPI
from starlette.types import ASGIApp, Receive, Scope, Send

from jobcast import JobCast, stream
from tests.apps import make_jobs
from tests.conftest import Server, free_port, wait_until
from tests.sse import open_stream

pytestmark = pytest.mark.integration  # real programs and servers

TOKEN = "s3cret-token-for-tests-0123456789"
BEARER = {"Authorization": f"Bearer {TOKEN}"}
ORIGIN = "https://dashboard.example"

#: The headers a client acts on; the rest (date, server) differ between any two answers.
HEADERS = (
    "content-type",
    "cache-control",
    "x-accel-buffering",
    "retry-after",
    "www-authenticate",
    "access-control-allow-origin",
    "access-control-allow-credentials",
    "set-cookie",
)


class Seen:
    """A pure ASGI middleware a user adds to the app: it records the paths it saw."""

    def __init__(self, app: ASGIApp, paths: list[str]) -> None:
        self.app = app
        self.paths = paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            self.paths.append(scope["path"])
        await self.app(scope, receive, send)


def build(kind: str, jobs: JobCast) -> FastAPI:
    """The app of ``kind``: ``made`` (create_app as is), ``extended`` (with a middleware and an
    exception handler added) or ``mounted``."""
    if kind == "mounted":
        app = FastAPI(lifespan=jobs.lifespan)
        app.include_router(jobs.router)
        return app
    app = jobs.create_app()
    if kind == "extended":
        app.add_middleware(Seen, paths=[])
        app.add_exception_handler(ValueError, _not_called)
    return app


async def _not_called(request: Any, exc: Exception) -> Any:
    raise AssertionError(f"not called: {exc!r}")


@contextmanager
def served(kind: str, **options: Any) -> Iterator[tuple[JobCast, Server]]:
    jobs = make_jobs(**options)
    server = Server(build(kind, jobs), free_port())
    server.start()
    try:
        yield jobs, server
    finally:
        server.stop()


def client_at(address: str) -> httpx.AsyncClient:
    transport = httpx.AsyncHTTPTransport(local_address=address)
    return httpx.AsyncClient(transport=transport, timeout=10)


Answer = tuple[int, dict[str, str], Any]


def finished(jobs: JobCast, job_id: str) -> Callable[[], bool]:
    return lambda: jobs.runner.get(job_id).finished


async def answer(client: httpx.AsyncClient, url: str, **options: Any) -> Answer:
    """Status, the headers that matter, and the body (JSON, or the first bytes of a stream)."""
    async with client.stream("GET", url, **options) as response:
        headers = {name: response.headers[name] for name in HEADERS if name in response.headers}
        if response.headers.get("content-type", "").startswith("text/event-stream"):
            async for chunk in response.aiter_bytes():
                return response.status_code, headers, chunk.split(b"\n")[0]
        raw = await response.aread()
        body = json.loads(raw) if raw else None
        return response.status_code, headers, body


async def refusals(server: Server, jobs: JobCast) -> dict[str, Answer]:
    """What a service with a token, protected reads and tight stream limits answers."""
    base = server.url
    events, job_events = f"{base}/api/events", f"{base}/api/jobs/{{}}/events"
    found: dict[str, Answer] = {}
    async with client_at("127.0.0.1") as a, client_at("127.0.0.2") as b:
        found["no token"] = await answer(a, events)
        found["no token, job"] = await answer(a, job_events.format("nope"))
        found["wrong token"] = await answer(a, events, headers={"Authorization": "Bearer no"})
        found["unknown job"] = await answer(a, job_events.format("nope"), headers=BEARER)
        found["unknown task"] = await answer(a, events, params={"task": "nope", "token": TOKEN})
        started = await a.post(
            f"{base}/api/tasks/sleep/jobs", json={"seconds": 0.01}, headers=BEARER
        )
        job_id = started.json()["id"]
        wait_until(finished(jobs, job_id))
        last = str(jobs.runner.get(job_id).last_seq)
        found["finished"] = await answer(
            a, job_events.format(job_id), headers={**BEARER, "Last-Event-ID": last}
        )
        found["cross origin"] = await answer(  # b has no cookie yet: it gets one
            b, events, headers={**BEARER, "Origin": ORIGIN, "Last-Event-ID": "x"}
        )
        async with open_stream(a, f"{events}?token={TOKEN}") as held:
            assert (await held.next()).event == "snapshot"
            found["per client"] = await answer(a, events, params={"token": TOKEN})
            async with open_stream(b, f"{events}?token={TOKEN}") as other:
                assert (await other.next()).event == "snapshot"
                async with client_at("127.0.0.3") as c:
                    found["in total"] = await answer(c, events, params={"token": TOKEN})
    return found


OPTIONS: dict[str, Any] = {
    "token": TOKEN,
    "protect_reads": True,
    "max_streams_per_client": 1,
    "max_streams": 2,
    "cors_origins": [ORIGIN],
}


@pytest.mark.anyio
async def test_every_app_answers_stream_refusals_alike() -> None:
    answers: dict[str, dict[str, Answer]] = {}
    for kind in ("made", "extended", "mounted"):
        with served(kind, **OPTIONS) as (jobs, server):
            answers[kind] = await refusals(server, jobs)
    fast = answers["made"]
    assert {name: status for name, (status, _, _) in fast.items()} == {
        "no token": 401,
        "no token, job": 401,
        "wrong token": 401,
        "unknown job": 404,
        "unknown task": 404,
        "finished": 204,
        "cross origin": 200,
        "per client": 429,
        "in total": 503,
    }
    assert fast["no token"][1]["www-authenticate"].startswith("Bearer")
    assert fast["per client"][1]["retry-after"] == "5"
    assert "JOBCAST_MAX_STREAMS" in fast["in total"][2]["detail"]
    assert fast["cross origin"][1]["access-control-allow-origin"] == ORIGIN
    assert fast["cross origin"][2] == b"retry: 2000"
    assert "jobcast_token=" in fast["cross origin"][1]["set-cookie"]
    assert answers["extended"] == fast
    # The router mounted in an app of one's own carries the same policy: CORS and the
    # cookie included.
    for name, mounted in answers["mounted"].items():
        assert mounted == fast[name], name


@pytest.mark.anyio
async def test_streams_replay_and_end_alike_in_every_app() -> None:
    frames: dict[str, list[tuple[str, int | None]]] = {}
    for kind in ("made", "extended", "mounted"):
        with served(kind) as (jobs, server):
            async with httpx.AsyncClient(timeout=10) as client:
                started = await client.post(
                    f"{server.url}/api/tasks/ticker/jobs", json={"count": 3, "rate": 1000}
                )
                job_id = started.json()["id"]
                wait_until(finished(jobs, job_id))
                url = f"{server.url}/api/jobs/{job_id}/events"
                async with open_stream(client, url) as events:
                    frames[kind] = [(frame.event, frame.id) for frame in await events.rest()]
                    assert events.retry == jobs.settings.retry_ms
    names = [name for name, _ in frames["made"]]
    assert names[:2] == ["queued", "running"] and names[-1] == "succeeded"
    assert names.count("log") == 3
    ids = [seq or 0 for _, seq in frames["made"]]
    assert ids == sorted(set(ids)) and ids[0] > 0
    # Progress events are coalesced on a clock; everything else is the same, in order.
    for kind in ("extended", "mounted"):
        assert [name for name in names if name != "progress"] == [
            name for name, _ in frames[kind] if name != "progress"
        ]


@pytest.mark.anyio
async def test_a_middleware_added_to_the_app_sees_the_streams() -> None:
    jobs = make_jobs()
    seen: list[str] = []
    app = jobs.create_app()
    app.add_middleware(Seen, paths=seen)
    server = Server(app, free_port())
    server.start()
    try:
        async with httpx.AsyncClient(timeout=10) as client:
            async with open_stream(client, f"{server.url}/api/events") as events:
                assert (await events.next()).event == "snapshot"
    finally:
        server.stop()
    assert "/api/events" in seen


@pytest.mark.anyio
@pytest.mark.parametrize("kind", ["made", "extended", "mounted"])
async def test_an_unexpected_error_before_the_answer_is_a_500(
    kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args: Any) -> Any:
        raise RuntimeError("a bug")

    monkeypatch.setattr(stream, "all_jobs_stream", broken)
    jobs = make_jobs()
    app = build(kind, jobs)
    async with LifespanManager(app) as running:
        transport = httpx.ASGITransport(app=running.app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://t.localhost") as client:
            response = await client.get("/api/events")
            assert response.status_code == 500
            assert response.text == "Internal Server Error"
        # And the error still reaches the server, which logs it.
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=running.app), base_url="http://t.localhost"
        ) as client:
            with pytest.raises(RuntimeError, match="a bug"):
                await client.get("/api/events")
