"""Fuzzing: the demo app against its own OpenAPI schema, and the streams' inputs.

Schemathesis generates requests from the schema and checks every answer against it (no 5xx,
declared status codes, headers and bodies). It calls the app in process, so the endless SSE
routes are left out; hypothesis feeds their inputs (``Last-Event-ID``, query strings, tokens)
to a real server instead, reading only the first frame of each stream.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import anyio
import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis.python.asgi import shutdown_lifespans

from jobcast import JobCast
from tests.conftest import Server, wait_until
from tests.sse import Stream

Serve = Callable[..., tuple[JobCast, Server]]

TOKEN = "fuzz-token-0123456789abcdef"


def demo_schema() -> Any:
    """The demo app's schema, less the endless streams, calling the app in process."""
    import tests.apps  # noqa: F401  (first: it keeps the demo's database in memory)
    from jobcast.demo import app

    schema = schemathesis.openapi.from_dict(app.openapi())
    # Bound to the app as from_asgi binds it, which would start the service at collection.
    schema.app = app
    return schema.exclude(tag="streams")


@pytest.fixture(scope="module")
def demo_service() -> Iterator[None]:
    """Schemathesis starts the demo service at the first call; stop it, and its jobs, after."""
    yield
    shutdown_lifespans()


#: One test per operation of the demo's schema.
each_operation: Callable[[Callable[..., None]], Callable[..., None]] = demo_schema().parametrize()


@each_operation
@settings(
    max_examples=50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    derandomize=True,
)
def test_the_demo_api_answers_as_its_schema_says(case: Any, demo_service: None) -> None:
    case.call_and_validate()


# -- streams, on a real server -----------------------------------------------------------------


def header_safe(raw: bytes) -> bytes:
    """What a client can put in a header value: visible ASCII, tab, space and obs-text."""
    return bytes(b for b in raw if b == 9 or 32 <= b <= 126 or b >= 128).strip()


last_ids = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70).map(lambda n: str(n).encode()),
    st.sampled_from([b"", b"0", b"1", b"3 4", b"1e3", b"0x10", b"\xd9\xa3", b"99999999999999"]),
    st.binary(max_size=40).map(header_safe),
)
queries = st.dictionaries(
    st.sampled_from(["last_event_id", "task", "token", "limit", "x", "last_event_id[]"]),
    st.one_of(st.text(max_size=30), st.integers(-(2**70), 2**70).map(str)),
    max_size=3,
)
raw_queries = st.text(alphabet="%&=+;?#/0123456789abcdefABXZ_-.~ \u00e9", max_size=30)
FIRST_EVENTS = {"snapshot", "reset", "queued", "running", "log", "succeeded"}

#: One server serves every example of a test: examples run inside the test, not around it.
EXAMPLES = settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    derandomize=True,
)


async def first_frame(url: str, **options: Any) -> int:
    """Open a stream, read its first frame if it answers 200, and return the status."""
    async with httpx.AsyncClient(timeout=10) as client:
        async with client.stream("GET", url, **options) as response:
            assert response.status_code < 500, (response.status_code, await response.aread())
            if response.status_code == 200:
                assert response.headers["content-type"].startswith("text/event-stream")
                frame = await Stream(response).next(seconds=5)
                assert frame.event in FIRST_EVENTS
            else:
                await response.aread()
            return response.status_code


def finished_job(server: Server, **headers: str) -> str:
    response = httpx.post(f"{server.url}/api/tasks/shout/jobs", json={"lines": 3}, headers=headers)
    job_id: str = response.json()["id"]
    url = f"{server.url}/api/jobs/{job_id}"
    wait_until(lambda: httpx.get(url, headers=headers).json()["state"] == "succeeded")
    return job_id


def test_stream_inputs_never_make_a_server_error(serve: Serve) -> None:
    _, server = serve()
    job_id = finished_job(server)
    paths = st.sampled_from(["/api/events", f"/api/jobs/{job_id}/events", "/api/jobs/nope/events"])

    @EXAMPLES
    @given(last_id=last_ids, query=queries, raw=raw_queries, path=paths)
    def check(last_id: bytes, query: dict[str, str], raw: str, path: str) -> None:
        url = f"{server.url}{path}"
        headers = {b"Last-Event-ID": last_id}

        async def run() -> None:
            status = await first_frame(url, headers=headers, params=query)
            assert status in {200, 204, 404}
            status = await first_frame(f"{url}?{raw}", headers=headers)
            assert status in {200, 204, 404}

        anyio.run(run)

    check()


def test_stream_tokens_never_make_a_server_error_and_only_the_right_one_passes(
    serve: Serve,
) -> None:
    _, server = serve(token=TOKEN, protect_reads=True)
    url = f"{server.url}/api/events"
    tokens = st.one_of(st.just(TOKEN.encode()), st.binary(max_size=40).map(header_safe))

    @EXAMPLES
    @given(token=tokens, where=st.sampled_from(["query", "cookie", "header"]))
    def check(token: bytes, where: str) -> None:
        options: dict[str, Any] = {}
        if where == "query":
            options["params"] = {"token": token.decode("utf-8", "replace")}
        elif where == "cookie":
            options["headers"] = {b"Cookie": header_safe(b"jobcast_token=" + token)}
        else:
            options["headers"] = {b"Authorization": header_safe(b"Bearer " + token)}

        async def run() -> None:
            status = await first_frame(url, **options)
            assert status == (200 if token == TOKEN.encode() else 401)

        anyio.run(run)

    check()
