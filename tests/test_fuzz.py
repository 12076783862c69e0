"""Fuzzing, on real servers: the demo app against its own OpenAPI schema, and the streams'
inputs, with values chosen to break things.

Schemathesis generates requests from the schema and checks every answer against it (no 5xx,
declared status codes, headers and bodies), with its bodies widened to what JSON parsers
accept and the service must refuse: lone surrogates, NaN, infinities, ``1e999`` and integers
of thousands of digits. Its calls go to a real ``jobcast serve`` of the demo, and after them
the service must still answer. The endless SSE routes are left to hypothesis, which feeds
their inputs (``Last-Event-ID``, query strings, ids, tokens) to a real server, reading only
the first frame of each stream.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Any

import anyio
import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis.core.result import Ok
from schemathesis.specs.openapi.checks import positive_data_acceptance

from jobcast import JobCast
from jobcast.jobs import LATEST
from tests.conftest import Process, Server, free_port, wait_until
from tests.sse import Stream

Serve = Callable[..., tuple[JobCast, Server]]

TOKEN = "fuzz-token-0123456789abcdef"

#: Text no UTF-8 encoder takes (lone surrogates), as JSON writes it: ``"\ud800"``.
HOSTILE_TEXT = st.one_of(
    st.sampled_from(["x\ud800y", "caf\udce9.txt", "\udfff", "\ud83d"]),
    st.text(st.characters(categories=["Cs"]), min_size=1, max_size=3),
).map(json.dumps)
#: Numbers JSON parsers read that no JSON can carry back out.
HOSTILE_NUMBERS = st.sampled_from(
    ["NaN", "Infinity", "-Infinity", "1e999", "-1e400", "9" * 5000, "-" + "1" * 4400]
)


def widened(body: Any) -> st.SearchStrategy[Any]:
    """The body as generated, or as JSON text with one of its values made hostile."""
    if not isinstance(body, dict) or not body:
        return st.just(body)

    def encode(key: str, raw: str) -> bytes:
        marker = "\u0000marker\u0000"
        text = json.dumps({**body, key: marker}, allow_nan=True)
        return text.replace(json.dumps(marker), raw).encode()

    hostile = st.one_of(HOSTILE_TEXT, HOSTILE_NUMBERS)
    return st.one_of(st.just(body), st.builds(encode, st.sampled_from(sorted(body)), hostile))


@pytest.fixture(scope="module")
def demo_server() -> Iterator[Process]:
    """The demo, served by ``jobcast serve`` with no limit on starts (one job at a time)."""
    env = {"JOBCAST_JOBS_PER_MINUTE": "1000000", "JOBCAST_MAX_WORKERS": "1"}
    server = Process("jobcast.demo:app", free_port(), env)
    yield server
    server.stop()


def demo_operations(server: Process) -> list[Any]:
    """The operations of the demo's schema as its server publishes it, less the endless
    streams, with their bodies widened."""
    schema = schemathesis.openapi.from_url(f"{server.url}/openapi.json")

    @schema.hook
    def flatmap_body(context: Any, body: Any) -> st.SearchStrategy[Any]:
        return widened(body)

    operations = []
    for result in schema.exclude(tag="streams").get_all_operations():
        assert isinstance(result, Ok), result.err()
        operations.append(result.ok())
    return operations


FUZZ = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    derandomize=True,
)


def test_the_demo_api_answers_as_its_schema_says_even_to_hostile_values(
    demo_server: Process,
) -> None:
    operations = demo_operations(demo_server)
    assert any(op.method.upper() == "POST" for op in operations)
    for operation in operations:

        @FUZZ
        @given(case=operation.as_strategy())
        def check(case: Any) -> None:
            # A widened body (bytes) looks schema-valid to schemathesis, which checks the
            # body it generated before; and OpenAPI cannot say that `delay` and `run_at`
            # exclude each other: that those are a 422 is asserted below instead.
            query = case.query or {}
            hostile = (
                isinstance(case.body, bytes)
                or {"delay", "run_at"} <= set(query)
                or past_year_9999(query.get("run_at"))
            )
            response = case.call_and_validate(
                excluded_checks=[positive_data_acceptance] if hostile else None
            )
            if hostile:
                assert response.status_code == 422, response.text

        check()


def past_year_9999(run_at: object) -> bool:
    """Whether ``run_at`` names a time after 9999 in UTC, which no snapshot can write (and
    OpenAPI cannot say so)."""
    try:
        return isinstance(run_at, str) and datetime.fromisoformat(run_at).timestamp() > LATEST
    except (ValueError, OverflowError):
        return False


def test_the_service_still_answers_after_the_fuzzing(demo_server: Process) -> None:
    base = demo_server.url
    assert httpx.get(f"{base}/healthz").status_code == 200
    jobs = httpx.get(f"{base}/api/jobs", params={"limit": 1000})
    assert jobs.status_code == 200 and jobs.json()  # the fuzzing did start jobs
    with httpx.stream("GET", f"{base}/api/events", timeout=10) as response:
        assert response.status_code == 200
        first = next(response.iter_lines(), "")
        assert first.startswith("retry:")


# -- streams, on a real server -----------------------------------------------------------------


def header_safe(raw: bytes) -> bytes:
    """What a client can put in a header value: visible ASCII, tab, space and obs-text."""
    return bytes(b for b in raw if b == 9 or 32 <= b <= 126 or b >= 128).strip()


last_ids = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70).map(lambda n: str(n).encode()),
    st.sampled_from([b"", b"0", b"1", b"3 4", b"1e3", b"0x10", b"\xd9\xa3", b"99999999999999"]),
    st.sampled_from([b"9" * 5000, b"1" * 20, b"0" * 30 + b"1"]),
    st.binary(max_size=40).map(header_safe),
)
queries = st.dictionaries(
    st.sampled_from(["last_event_id", "task", "token", "limit", "x", "last_event_id[]"]),
    st.one_of(
        st.text(max_size=30),
        st.integers(-(2**70), 2**70).map(str),
        st.sampled_from(["9" * 5000, "x" * 20_000, "nan", "-inf"]),
    ),
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
    paths = st.sampled_from(
        [
            "/api/events",
            f"/api/jobs/{job_id}/events",
            "/api/jobs/nope/events",
            f"/api/jobs/{'9' * 5000}/events",
        ]
    )

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
