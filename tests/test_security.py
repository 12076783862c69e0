"""The token, the origin check, CORS, the Host check, the limits, dropping clients that
stopped reading.

Finite answers in process; streams against a real uvicorn; the page in a real Chromium.
Every rule of jobcast's own routes is tested twice (``BOTH``): on the app ``create_app``
makes, and with ``jobs.router`` mounted into an app of one's own.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import socket
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from asgi_lifespan import LifespanManager
from fastapi import FastAPI
from playwright.sync_api import Browser, Page, expect

from jobcast import JobCast, Settings
from tests.apps import make_jobs
from tests.conftest import Process, Server, wait_job, wait_until
from tests.sse import open_stream

pytestmark = pytest.mark.integration  # the whole service, in process and on real servers

TOKEN = "s3cret-token-for-tests-0123456789"
OTHER = "another-token-for-tests-987654321"
BEARER = {"Authorization": f"Bearer {TOKEN}"}
BASE = "http://jobcast.localhost"

Serve = Callable[..., tuple[JobCast, Server]]


# -- helpers -----------------------------------------------------------------------------------


@dataclasses.dataclass
class Service:
    """An in-process service, and clients calling it from any address."""

    jobs: JobCast
    app: Any
    client: httpx.AsyncClient  # from 127.0.0.1

    def client_from(self, address: str) -> httpx.AsyncClient:
        transport = httpx.ASGITransport(app=self.app, client=(address, 50000))
        return httpx.AsyncClient(transport=transport, base_url=BASE)


#: How the service is built for the test that runs now (set by the ``mode`` fixture).
MODE = "create_app"
BOTH = pytest.mark.parametrize("mode", ["create_app", "mounted"], indirect=True)


@pytest.fixture
def mode(request: pytest.FixtureRequest) -> Iterator[str]:
    global MODE
    MODE = request.param
    try:
        yield MODE
    finally:
        MODE = "create_app"


def build(jobs: JobCast) -> FastAPI:
    """The app of the current mode: ``create_app()``, or the router in an app of one's own."""
    if MODE == "mounted":
        app = FastAPI(lifespan=jobs.lifespan)
        app.include_router(jobs.router)
        return app
    return jobs.create_app()


@pytest.fixture
def serve(serve: Serve) -> Serve:
    """The real server of the current mode."""
    return lambda *args, **options: serve(*args, build=build, **options)


@asynccontextmanager
async def service(app: Any = None, **options: Any) -> AsyncIterator[Service]:
    jobs = make_jobs(**options)
    jobs.schedule("nightly", "count", cron="0 2 * * *", params={"n": 1})
    app = app or build(jobs)
    async with LifespanManager(app) as running:
        transport = httpx.ASGITransport(app=running.app, client=("127.0.0.1", 50000))
        async with httpx.AsyncClient(transport=transport, base_url=BASE) as client:
            yield Service(jobs, running.app, client)


def hold_job(name: str) -> dict[str, Any]:
    return {"name": name}


# -- the token ---------------------------------------------------------------------------------


@pytest.mark.anyio
@BOTH
async def test_without_a_token_starting_a_job_needs_nothing(
    mode: str,
) -> None:
    async with service() as svc:
        response = await svc.client.post("/api/tasks/count/jobs", json={"n": 1})
        assert response.status_code == 202


@pytest.mark.anyio
@BOTH
async def test_with_a_token_starting_and_cancelling_need_the_bearer_header(
    mode: str,
) -> None:
    async with service(token=TOKEN) as svc:
        refused = await svc.client.post("/api/tasks/hold/jobs", json=hold_job("t"))
        assert refused.status_code == 401
        assert refused.headers["www-authenticate"].startswith("Bearer")
        assert "Authorization: Bearer <token>" in refused.json()["detail"]
        wrong = await svc.client.post(
            "/api/tasks/hold/jobs", json=hold_job("t"), headers={"Authorization": "Bearer nope"}
        )
        assert wrong.status_code == 401
        basic = await svc.client.post(
            "/api/tasks/hold/jobs", json=hold_job("t"), headers={"Authorization": f"Basic {TOKEN}"}
        )
        assert basic.status_code == 401
        assert svc.jobs.runner.jobs == {}  # nothing was started

        started = await svc.client.post("/api/tasks/hold/jobs", json=hold_job("t"), headers=BEARER)
        assert started.status_code == 202
        job_id = started.json()["id"]

        not_cancelled = await svc.client.post(f"/api/jobs/{job_id}/cancel")
        assert not_cancelled.status_code == 401
        assert svc.jobs.runner.get(job_id).state.value in ("queued", "running")
        cancelled = await svc.client.post(f"/api/jobs/{job_id}/cancel", headers=BEARER)
        assert cancelled.status_code == 202
        assert (await wait_job(svc.jobs, job_id)).state.value == "cancelled"


@pytest.mark.anyio
@BOTH
async def test_with_a_token_rerun_delete_pause_and_resume_need_the_bearer_header(
    mode: str,
) -> None:
    async with service(token=TOKEN) as svc:
        started = await svc.client.post("/api/tasks/count/jobs", json={"n": 1}, headers=BEARER)
        job_id = started.json()["id"]
        await wait_job(svc.jobs, job_id)
        writes = [
            ("POST", f"/api/jobs/{job_id}/rerun", 202),
            ("POST", "/api/schedules/nightly/pause", 200),
            ("POST", "/api/schedules/nightly/resume", 200),
            ("DELETE", f"/api/jobs/{job_id}", 204),
        ]
        for method, path, _ in writes:
            refused = await svc.client.request(method, path)
            assert refused.status_code == 401, path
            assert refused.headers["www-authenticate"].startswith("Bearer")
        assert len(svc.jobs.runner.jobs) == 1  # no rerun, no delete
        assert (await svc.jobs.runner.schedules())[0]["paused"] is False
        for method, path, allowed in writes:
            response = await svc.client.request(method, path, headers=BEARER)
            assert response.status_code == allowed, (path, response.text)
        # The reads stay open, unless protected.
        assert (await svc.client.get("/api/schedules")).status_code == 200


@pytest.mark.anyio
async def test_protected_reads_cover_the_schedules_and_a_jobs_logs() -> None:
    async with service(token=TOKEN, protect_reads=True) as svc:
        started = await svc.client.post("/api/tasks/count/jobs", json={"n": 1}, headers=BEARER)
        job_id = started.json()["id"]
        paths = ("/api/schedules", f"/api/jobs/{job_id}/logs")
        async with svc.client_from("127.0.0.1") as fresh:  # without the cookie the POST set
            for path in paths:
                assert (await fresh.get(path)).status_code == 401, path
            for path in paths:
                assert (await fresh.get(path, headers=BEARER)).status_code == 200, path


@pytest.mark.anyio
@BOTH
async def test_the_new_routes_meet_the_host_check(mode: str) -> None:
    async with service() as svc:
        for method, path in (("GET", "/api/schedules"), ("POST", "/api/schedules/nightly/pause")):
            response = await svc.client.request(method, path, headers={"Host": "evil.example"})
            assert response.status_code == 400, path
        assert (await svc.jobs.runner.schedules())[0]["paused"] is False


@pytest.mark.anyio
@BOTH
async def test_any_of_several_tokens_is_accepted(
    mode: str,
) -> None:
    async with service(token=f"{TOKEN},{OTHER}") as svc:
        for token in (TOKEN, OTHER):
            response = await svc.client.post(
                "/api/tasks/count/jobs", json={"n": 1}, headers={"Authorization": f"bearer {token}"}
            )
            assert response.status_code == 202


@pytest.mark.anyio
async def test_reads_stay_open_unless_protected() -> None:
    async with service(token=TOKEN) as svc:
        assert (await svc.client.get("/api/tasks")).status_code == 200
        assert (await svc.client.get("/api/jobs")).status_code == 200
        assert (await svc.client.get("/openapi.json")).status_code == 200


@pytest.mark.anyio
@pytest.mark.parametrize("path", ["/api/tasks", "/api/jobs", "/openapi.json", "/api/jobs/nope"])
async def test_protected_reads_need_the_token_in_the_header_cookie_or_query(path: str) -> None:
    async with service(token=TOKEN, protect_reads=True) as svc:
        refused = await svc.client.get(path)
        assert refused.status_code == 401
        assert "jobcast_token cookie or ?token=" in refused.json()["detail"]
        assert refused.headers["www-authenticate"].startswith("Bearer")
        wrong = await svc.client.get(path, params={"token": OTHER})
        assert wrong.status_code == 401

        allowed = {200, 404}  # /api/jobs/nope: past the token, the job is unknown
        assert (await svc.client.get(path, headers=BEARER)).status_code in allowed
        assert (await svc.client.get(path, params={"token": TOKEN})).status_code in allowed
        svc.client.cookies.set("jobcast_token", TOKEN)
        assert (await svc.client.get(path)).status_code in allowed


@pytest.mark.anyio
@BOTH
async def test_a_wrong_header_is_refused_even_with_a_right_cookie(
    mode: str,
) -> None:
    async with service(token=TOKEN, protect_reads=True) as svc:
        svc.client.cookies.set("jobcast_token", TOKEN)
        response = await svc.client.get("/api/jobs", headers={"Authorization": "Bearer wrong"})
        assert response.status_code == 401


@pytest.mark.anyio
@pytest.mark.parametrize("path", ["/healthz", "/", "/static/app.js", "/docs"])
async def test_the_health_check_the_page_and_the_docs_page_stay_open(path: str) -> None:
    async with service(token=TOKEN, protect_reads=True) as svc:
        response = await svc.client.get(path)
        assert response.status_code == 200


@pytest.mark.anyio
@BOTH
async def test_a_cookie_or_query_token_never_authorizes_a_change(
    mode: str,
) -> None:
    async with service(token=TOKEN, protect_reads=True) as svc:
        by_query = await svc.client.post(
            "/api/tasks/count/jobs", json={"n": 1}, params={"token": TOKEN}
        )
        assert by_query.status_code == 401
        svc.client.cookies.set("jobcast_token", TOKEN)
        by_cookie = await svc.client.post("/api/tasks/count/jobs", json={"n": 1})
        assert by_cookie.status_code == 401
        assert svc.jobs.runner.jobs == {}


@pytest.mark.anyio
@BOTH
async def test_the_header_gets_the_stream_cookie_set_when_reads_are_protected(
    mode: str,
) -> None:
    async with service(token=TOKEN, protect_reads=True) as svc:
        response = await svc.client.get("/api/tasks", headers=BEARER)
        cookie = response.headers["set-cookie"]
        assert cookie.startswith(f"jobcast_token={TOKEN};")
        assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/" in cookie
        assert "Secure" not in cookie  # plain http here; https gets Secure
        # The client now holds the cookie: it is not set again.
        again = await svc.client.get("/api/tasks", headers=BEARER)
        assert "set-cookie" not in again.headers
        # The cookie alone now reads.
        assert (await svc.client.get("/api/jobs")).status_code == 200

    async with service(token=TOKEN) as svc:
        response = await svc.client.get("/api/tasks", headers=BEARER)
        assert "set-cookie" not in response.headers  # reads are open: no cookie needed


@pytest.mark.anyio
async def test_routes_added_to_the_app_are_protected_too() -> None:
    jobs = make_jobs(token=TOKEN)
    app = jobs.create_app()

    @app.post("/mine")
    async def mine() -> dict[str, str]:
        return {"changed": "something"}

    async with service(app) as svc:
        refused = await svc.client.post("/mine")
        assert refused.status_code == 401
        assert (await svc.client.post("/mine", headers=BEARER)).json() == {"changed": "something"}


@pytest.mark.anyio
async def test_the_router_mounted_into_another_app_keeps_the_token() -> None:
    jobs = make_jobs(token=TOKEN, protect_reads=True)
    app = FastAPI(lifespan=jobs.lifespan)
    app.include_router(jobs.router)
    async with LifespanManager(app) as running:
        transport = httpx.ASGITransport(app=running.app)
        async with httpx.AsyncClient(transport=transport, base_url=BASE) as client:
            assert (await client.get("/healthz")).status_code == 200
            assert (await client.get("/api/jobs")).status_code == 401
            refused = await client.post("/api/tasks/count/jobs", json={"n": 1})
            assert refused.status_code == 401
            assert refused.headers["www-authenticate"].startswith("Bearer")
            assert jobs.runner.jobs == {}
            started = await client.post("/api/tasks/count/jobs", json={"n": 1}, headers=BEARER)
            assert started.status_code == 202
            assert (await client.get("/api/jobs", params={"token": TOKEN})).status_code == 200


@pytest.mark.anyio
@BOTH
async def test_the_schema_declares_the_token_only_where_it_is_needed(
    mode: str,
) -> None:
    async with service(token=TOKEN) as svc:
        schema = (await svc.client.get("/openapi.json")).json()
        start = schema["paths"]["/api/tasks/count/jobs"]["post"]
        assert "401" in start["responses"] and start.get("security")
        listing = schema["paths"]["/api/jobs"]["get"]
        assert "401" not in listing["responses"] and not listing.get("security")
        assert "/healthz" in schema["paths"]
        assert not schema["paths"]["/healthz"]["get"].get("security")
    async with service() as svc:
        schema = (await svc.client.get("/openapi.json")).json()
        assert "securitySchemes" not in schema.get("components", {})


# -- browsers on other sites -------------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize("token", [None, TOKEN])
@BOTH
async def test_a_page_of_another_origin_cannot_start_a_job(mode: str, token: str | None) -> None:
    options = {"token": token} if token else {}
    headers = BEARER if token else {}
    async with service(**options) as svc:
        for origin in ("https://evil.example", "null", "http://jobcast.localhost.evil.example"):
            refused = await svc.client.post(
                "/api/tasks/count/jobs", json={"n": 1}, headers={**headers, "Origin": origin}
            )
            assert refused.status_code == 403
            assert "JOBCAST_CORS_ORIGINS" in refused.json()["detail"]
        assert svc.jobs.runner.jobs == {}
        same = await svc.client.post(
            "/api/tasks/count/jobs", json={"n": 1}, headers={**headers, "Origin": BASE}
        )
        assert same.status_code == 202


@pytest.mark.anyio
@BOTH
async def test_cors_is_off_until_origins_are_configured(
    mode: str,
) -> None:
    async with service() as svc:
        response = await svc.client.get("/api/jobs", headers={"Origin": "https://app.example"})
        assert response.status_code == 200
        assert "access-control-allow-origin" not in response.headers
        preflight = await svc.client.options(
            "/api/tasks/count/jobs",
            headers={"Origin": "https://app.example", "Access-Control-Request-Method": "POST"},
        )
        assert "access-control-allow-origin" not in preflight.headers


@pytest.mark.anyio
@BOTH
async def test_configured_origins_may_call_with_the_token(
    mode: str,
) -> None:
    origin = "https://app.example"
    async with service(token=TOKEN, cors_origins=origin) as svc:
        preflight = await svc.client.options(
            "/api/tasks/count/jobs",
            headers={
                "Origin": origin,
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "authorization, content-type",
            },
        )
        assert preflight.status_code == 200
        assert preflight.headers["access-control-allow-origin"] == origin
        assert preflight.headers["access-control-allow-credentials"] == "true"
        assert "authorization" in preflight.headers["access-control-allow-headers"].lower()

        headers = {"Origin": origin, **BEARER}
        started = await svc.client.post("/api/tasks/count/jobs", json={"n": 1}, headers=headers)
        assert started.status_code == 202
        assert started.headers["access-control-allow-origin"] == origin
        assert "location" in started.headers["access-control-expose-headers"].lower()
        # A refusal is readable by the page too, so it can ask for the token.
        refused = await svc.client.post(
            "/api/tasks/count/jobs", json={"n": 1}, headers={"Origin": origin}
        )
        assert refused.status_code == 401
        assert refused.headers["access-control-allow-origin"] == origin

        other = await svc.client.options(
            "/api/tasks/count/jobs",
            headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"},
        )
        assert other.status_code == 400
        assert "access-control-allow-origin" not in other.headers


@pytest.mark.anyio
@BOTH
async def test_a_wildcard_origin_never_comes_with_credentials(
    mode: str,
) -> None:
    async with service(cors_origins="*") as svc:
        response = await svc.client.get("/api/jobs", headers={"Origin": "https://any.example"})
        assert response.headers["access-control-allow-origin"] == "*"
        assert "access-control-allow-credentials" not in response.headers


# -- settings ----------------------------------------------------------------------------------


def test_security_settings_come_from_the_environment() -> None:
    settings = Settings.from_env(
        {
            "JOBCAST_TOKEN": f" {TOKEN} , {OTHER} ,",
            "JOBCAST_PROTECT_READS": "yes",
            "JOBCAST_CORS_ORIGINS": "https://a.example,http://localhost:3000",
            "JOBCAST_STREAM_SEND_TIMEOUT": "none",
            "JOBCAST_JOBS_PER_MINUTE": "10",
        }
    )
    assert settings.token == (TOKEN, OTHER)
    assert settings.protect_reads is True
    assert settings.cors_origins == ("https://a.example", "http://localhost:3000")
    assert settings.stream_send_timeout is None
    assert settings.jobs_per_minute == 10
    assert Settings.from_env({"JOBCAST_PROTECT_READS": "off"}).protect_reads is False
    assert Settings.from_env({}, token=TOKEN).token == (TOKEN,)  # one, as a string


def test_tokens_never_show_in_repr_or_errors() -> None:
    settings = Settings(token=(TOKEN, OTHER), protect_reads=True)
    assert TOKEN not in repr(settings) and OTHER not in repr(settings)
    assert "token=<2 hidden>" in repr(settings)
    with pytest.raises(ValueError) as raised:
        Settings(token=("short",))
    assert "short" not in str(raised.value)
    assert "secrets.token_urlsafe" in str(raised.value)
    with pytest.raises(ValueError) as raised:
        Settings(token=("with spaces inside of it ok",))
    assert "with spaces" not in str(raised.value)


@pytest.mark.parametrize(
    ("options", "says"),
    [
        ({"protect_reads": True}, "protect_reads needs a token"),
        ({"cors_origins": "*,https://a.example"}, "cannot be combined"),
        ({"cors_origins": "https://a.example/"}, "no path or trailing slash"),
        ({"cors_origins": "a.example"}, "scheme://host"),
        ({"stream_send_timeout": 0.0}, "stream_send_timeout must be positive"),
        ({"max_streams": 0}, "max_streams must be positive"),
        ({"protect_reads": "yes"}, "protect_reads must be True or False"),
    ],
)
def test_unsafe_or_mistaken_security_settings_are_refused(
    options: dict[str, Any], says: str
) -> None:
    with pytest.raises(ValueError, match=says):
        Settings(**options)


def test_an_invalid_boolean_in_the_environment_names_the_variable() -> None:
    with pytest.raises(ValueError, match="JOBCAST_PROTECT_READS='maybe' is not a valid bool"):
        Settings.from_env({"JOBCAST_PROTECT_READS": "maybe", "JOBCAST_TOKEN": TOKEN})


def test_the_access_log_never_shows_a_token(spawn: Callable[..., Process]) -> None:
    server = spawn(JOBCAST_TOKEN=TOKEN, JOBCAST_PROTECT_READS="1")
    response = httpx.get(f"{server.url}/api/jobs", params={"token": TOKEN, "limit": 5})
    assert response.status_code == 200
    refused = httpx.get(f"{server.url}/api/jobs", params={"token": "wrong-" + TOKEN})
    assert refused.status_code == 401
    output = server.output()
    assert "/api/jobs?token=<hidden>&limit=5" in output
    assert TOKEN not in output


# -- limits ------------------------------------------------------------------------------------


def nested(depth: int) -> Any:
    value: Any = "leaf"
    for _ in range(depth):
        value = [value]
    return value


@pytest.mark.anyio
@pytest.mark.parametrize("path", ["/api/tasks/boom/jobs", "/api/tasks/no-such-task/jobs"])
@BOTH
async def test_params_nested_too_deep_are_refused_before_validation(mode: str, path: str) -> None:
    async with service(max_param_depth=8) as svc:
        before = svc.jobs.runner.log.last_seq
        response = await svc.client.post(path, json={"message": nested(8)})
        assert response.status_code == 422
        [error] = response.json()["detail"]
        assert error["type"] == "too_deep"
        assert error["loc"][:2] == ["body", "message"]
        assert "JOBCAST_MAX_PARAM_DEPTH" in error["msg"]
        # Deeper than Python's JSON parser goes: still a clear 422, not a crash.
        body = b'{"message": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
        response = await svc.client.post(
            path, content=body, headers={"content-type": "application/json"}
        )
        assert response.status_code == 422
        assert response.json()["detail"][0]["type"] == "too_deep"
        assert svc.jobs.runner.jobs == {}
        assert svc.jobs.runner.log.last_seq == before
        # Just within the limit is accepted by this check (the task's own model decides).
        response = await svc.client.post("/api/tasks/boom/jobs", json={"message": "fine"})
        assert response.status_code == 202


@pytest.mark.anyio
@BOTH
async def test_a_params_string_or_key_too_long_is_refused(
    mode: str,
) -> None:
    async with service(max_param_string=100) as svc:
        response = await svc.client.post("/api/tasks/boom/jobs", json={"message": "x" * 101})
        assert response.status_code == 422
        [error] = response.json()["detail"]
        assert error["type"] == "string_too_long"
        assert error["loc"] == ["body", "message"]
        assert "JOBCAST_MAX_PARAM_STRING" in error["msg"]
        key = await svc.client.post("/api/tasks/boom/jobs", json={"k" * 101: 1})
        assert key.status_code == 422
        assert "key" in key.json()["detail"][0]["msg"]
        assert svc.jobs.runner.jobs == {}
        ok = await svc.client.post("/api/tasks/boom/jobs", json={"message": "x" * 100})
        assert ok.status_code == 202


@pytest.mark.anyio
@BOTH
async def test_jobs_per_minute_are_limited_per_client(
    mode: str,
) -> None:
    async with service(jobs_per_minute=3) as svc:
        for _ in range(2):
            response = await svc.client.post("/api/tasks/count/jobs", json={"n": 1})
            assert response.status_code == 202
        # Refused starts do not count against the client: the third start is still allowed.
        invalid = await svc.client.post("/api/tasks/count/jobs", json={"n": -1})
        assert invalid.status_code == 422
        third = await svc.client.post("/api/tasks/count/jobs", json={"n": 1})
        assert third.status_code == 202
        # Past the limit a start is refused before its body is looked at.
        refused = await svc.client.post("/api/tasks/count/jobs", json={"n": -1})
        assert refused.status_code == 429
        assert 1 <= int(refused.headers["retry-after"]) <= 20  # one start every 20 s
        assert "at most 3 per minute" in refused.json()["detail"]
        assert "JOBCAST_JOBS_PER_MINUTE" in refused.json()["detail"]
        assert len(svc.jobs.runner.jobs) == 3

        async with svc.client_from("10.0.0.2") as other:
            response = await other.post("/api/tasks/count/jobs", json={"n": 1})
            assert response.status_code == 202
        # One IPv6 client is its /64: another address in it is the same client.
        async with svc.client_from("2001:db8::1") as first:
            for _ in range(3):
                assert (await first.post("/api/tasks/count/jobs", json={})).status_code == 202
        async with svc.client_from("2001:db8::beef") as same:
            assert (await same.post("/api/tasks/count/jobs", json={})).status_code == 429
        assert len(svc.jobs.runner.jobs) == 7


@pytest.mark.anyio
@BOTH
async def test_log_lines_past_the_limit_are_dropped_and_counted(
    mode: str,
) -> None:
    async with service(max_log_lines=5) as svc:
        response = await svc.client.post("/api/tasks/shout/jobs", json={"lines": 20})
        job_id = response.json()["id"]
        job = await wait_job(svc.jobs, job_id)
        assert job.state.value == "succeeded"
        events = await svc.client.get(f"/api/jobs/{job_id}/events")
        lines = [
            json.loads(block.split("data: ", 1)[1])["line"]
            for block in events.text.split("\n\n")
            if block.startswith("id:") and "event: log" in block
        ]
        assert lines[:5] == [f"line {i}" for i in range(5)]
        assert lines[5].startswith("log lines truncated: this job logged more than 5 lines")
        assert lines[6].startswith("15 more log lines were dropped")
        assert len(lines) == 7


# -- streams, on a real server -----------------------------------------------------------------


def client_at(address: str, **options: Any) -> httpx.AsyncClient:
    """A client whose connections come from ``address`` (any of 127.0.0.0/8)."""
    transport = httpx.AsyncHTTPTransport(local_address=address, **options)
    return httpx.AsyncClient(transport=transport, timeout=10)


@pytest.mark.anyio
@BOTH
async def test_stream_limits_answer_429_per_client_and_503_in_total(
    mode: str, serve: Serve
) -> None:
    jobs, server = serve(max_streams_per_client=2, max_streams=3)
    events = f"{server.url}/api/events"
    async with client_at("127.0.0.1") as a, client_at("127.0.0.2") as b:
        async with open_stream(a, events) as first, open_stream(a, events) as second:
            await first.next()
            await second.next()
            async with a.stream("GET", events) as third:
                assert third.status_code == 429
                assert third.headers["retry-after"] == "5"
                body = json.loads(await third.aread())
                assert "already has 2 streams open" in body["detail"]
            async with open_stream(b, events) as fourth:
                await fourth.next()
                async with b.stream("GET", events) as fifth:
                    assert fifth.status_code == 503
                    assert int(fifth.headers["retry-after"]) > 0
                    assert "JOBCAST_MAX_STREAMS" in json.loads(await fifth.aread())["detail"]
        # Closing gives the slots back.
        wait_until(lambda: jobs.runner.log.subscribers == 0)
        async with open_stream(a, events) as again, open_stream(a, events) as twice:
            assert (await again.next()).event == "snapshot"
            assert (await twice.next()).event == "snapshot"


@pytest.mark.anyio
@BOTH
async def test_protected_streams_take_the_token_from_a_cookie_or_the_query(
    mode: str, serve: Serve
) -> None:
    _, server = serve(token=TOKEN, protect_reads=True)
    events = f"{server.url}/api/events"
    async with httpx.AsyncClient(timeout=10) as client:
        async with client.stream("GET", events) as refused:
            assert refused.status_code == 401
        async with client.stream("GET", events, params={"token": TOKEN}) as stream:
            assert stream.status_code == 200
        async with client.stream("GET", events, headers=BEARER) as stream:
            assert stream.status_code == 200
            assert "jobcast_token" in client.cookies
        # The cookie the header got set lets the stream in alone, like an EventSource.
        async with open_stream(client, events) as stream:
            assert (await stream.next()).event == "snapshot"
        head = await client.head(events)
        assert head.status_code == 200


@pytest.mark.anyio
@BOTH
async def test_a_client_that_stops_reading_is_dropped_and_resumes_from_its_last_id(
    mode: str,
    serve: Serve,
) -> None:
    jobs, server = serve(stream_send_timeout=0.5)
    tiny = [(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)]
    async with (
        client_at("127.0.0.1", socket_options=tiny) as stalled,
        client_at("127.0.0.1") as other,
    ):
        async with open_stream(stalled, f"{server.url}/api/events") as stream:
            network = stream.response.extensions["network_stream"]
            client_port = network.get_extra_info("client_addr")[1]
            snapshot = await stream.next()
            assert snapshot.event == "snapshot" and snapshot.id is not None
            # 7.5 MB of log: more than the socket buffers hold while this client reads nothing.
            response = await other.post(
                f"{server.url}/api/tasks/flood/jobs", json={"lines": 3000, "width": 2500}
            )
            job_id = response.json()["id"]
            wait_until(lambda: jobs.runner.log.subscribers == 0, seconds=10)
            # The server lets go of the connection (it aborts it just after the stream
            # ends): no socket of its own is left holding the unsent megabytes until this
            # client reads again.
            wait_until(lambda: connection_from(client_port, to=server.port) is None, seconds=5)
            # The connection was cut: reading on ends (a stream still open would time out).
            with contextlib.suppress(httpx.ReadError, httpx.RemoteProtocolError):
                await stream.rest(seconds=10)

        async with open_stream(
            other, f"{server.url}/api/events", last_event_id=snapshot.id
        ) as resumed:
            frames = await resumed.until(
                lambda f: f.event == "succeeded" and f.data["job"]["id"] == job_id, seconds=20
            )
    ids = [frame.id for frame in frames]
    assert ids == list(range(snapshot.id + 1, snapshot.id + 1 + len(frames)))
    lines = [f.data["line"][:6] for f in frames if f.event == "log"]
    assert lines == [f"{i:06d}" for i in range(3000)]


def connection_from(client_port: int, *, to: int) -> str | None:
    """The server side of a loopback TCP connection, as ``state:unsent bytes``, if any."""
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, remote, state, queues = fields[1], fields[2], fields[3], fields[4]
        if int(local.split(":")[1], 16) == to and int(remote.split(":")[1], 16) == client_port:
            return f"{state}:{int(queues.split(':')[0], 16)}"
    return None


# -- the page ----------------------------------------------------------------------------------


def test_the_page_asks_for_the_token_then_works_without_it_in_any_url(
    serve: Serve, browser: Browser
) -> None:
    _, server = serve(token=TOKEN, protect_reads=True)
    context = browser.new_context()
    page: Page = context.new_page()
    urls: list[str] = []
    page.on("request", lambda request: urls.append(request.url))
    try:
        page.goto(server.url)
        expect(page.locator("#token-form")).to_be_visible()
        expect(page.locator("#task-forms")).to_contain_text("Enter the access token")

        page.locator("#token-input").fill(TOKEN)
        page.get_by_role("button", name="Use token").click()
        expect(page.locator("#connection")).to_have_attribute("data-status", "live")
        form = page.locator('form[data-task="sleep"]')
        expect(form).to_be_visible()
        form.locator('[name="seconds"]').fill("0.2")
        form.locator('[name="steps"]').fill("2")
        form.get_by_role("button", name="Start").click()
        row = page.locator("tr[data-job-id]")
        expect(row).to_have_attribute("data-state", "succeeded", timeout=10_000)

        # A reload remembers the token: no prompt, live at once.
        page.reload()
        expect(page.locator("#connection")).to_have_attribute("data-status", "live")
        expect(page.locator("#token-form")).to_be_hidden()
    finally:
        context.close()
    assert not [url for url in urls if TOKEN in url]


# -- the Host check, the body limit and HEAD on real servers, in both modes --------------------


@BOTH
def test_a_page_that_rebinds_its_name_to_this_server_is_refused(mode: str, serve: Serve) -> None:
    jobs, server = serve()
    rebound = f"attacker.example:{server.port}"
    headers = {"Host": rebound, "Origin": f"http://{rebound}"}
    started = httpx.post(f"{server.url}/api/tasks/count/jobs", json={"n": 1}, headers=headers)
    assert started.status_code == 400
    assert "JOBCAST_ALLOWED_HOSTS" in started.json()["detail"]
    assert httpx.get(f"{server.url}/api/jobs", headers={"Host": rebound}).status_code == 400
    with httpx.stream("GET", f"{server.url}/api/events", headers={"Host": rebound}) as stream:
        assert stream.status_code == 400
    assert jobs.runner.jobs == {}
    # Names for this machine, and any IP address, are served.
    for host in ("localhost", "LOCALHOST.", "app.localhost", "127.0.0.1", "[::1]", "10.1.2.3"):
        answer = httpx.get(f"{server.url}/api/jobs", headers={"Host": f"{host}:{server.port}"})
        assert answer.status_code == 200, host


@BOTH
def test_allowed_hosts_are_served_and_patterns_cover_a_domain(mode: str, serve: Serve) -> None:
    _, server = serve(allowed_hosts="jobs.example.com,*.internal.example")
    for host, status in (
        ("jobs.example.com", 202),
        ("a.internal.example", 202),
        ("internal.example.evil", 400),
        ("example.com", 400),
    ):
        headers = {"Host": host, "Origin": f"http://{host}"}
        answer = httpx.post(f"{server.url}/api/tasks/count/jobs", json={"n": 1}, headers=headers)
        assert answer.status_code == status, host


@BOTH
def test_a_huge_body_is_refused_before_it_is_read(mode: str, serve: Serve) -> None:
    jobs, server = serve()
    url = f"{server.url}/api/tasks/shout/jobs"
    huge = b'{"lines": 1, "x": "' + b"x" * 45_000_000 + b'"}'
    declared = httpx.post(url, content=huge, headers={"Content-Type": "application/json"})
    assert declared.status_code == 413
    assert "JOBCAST_MAX_BODY_BYTES" in declared.json()["detail"]
    assert len(declared.content) < 1000  # nothing echoed

    def chunks() -> Iterator[bytes]:
        for _ in range(45):
            yield b"x" * 1_000_000

    chunked = httpx.post(url, content=chunks(), headers={"Content-Type": "application/json"})
    assert chunked.status_code == 413
    assert jobs.runner.jobs == {}


@BOTH
def test_every_get_route_answers_head(mode: str, serve: Serve) -> None:
    jobs, server = serve()
    job_id = httpx.post(f"{server.url}/api/tasks/count/jobs", json={"n": 1}).json()["id"]
    wait_until(lambda: jobs.runner.get(job_id).finished)
    paths = {"/healthz", "/api/tasks", "/api/jobs", f"/api/jobs/{job_id}", "/api/events"}
    paths |= {f"/api/jobs/{job_id}/events", "/openapi.json", "/docs"}
    paths |= {f"/api/jobs/{job_id}/logs", "/api/schedules"}
    if mode == "create_app":
        paths |= {"/", "/static/app.js"}
    for path in sorted(paths):
        head = httpx.head(f"{server.url}{path}", timeout=5)
        assert head.status_code == 200, path
        assert head.content == b"", path
