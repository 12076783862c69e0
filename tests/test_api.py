"""The REST contract, in process: finite answers only."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from asgi_lifespan import LifespanManager

from jobcast import JobCast, JobState
from tests.apps import gate
from tests.conftest import wait_job

pytestmark = pytest.mark.anyio

Start = Callable[..., Any]


async def start(client: httpx.AsyncClient, task: str, **params: Any) -> dict[str, Any]:
    response = await client.post(f"/api/tasks/{task}/jobs", json=params)
    assert response.status_code == 202, response.text
    body: dict[str, Any] = response.json()
    assert response.headers["location"] == f"/api/jobs/{body['id']}"
    return body


async def test_lists_tasks_with_their_params_schema(api: Start) -> None:
    jobs, client = await api()
    response = await client.get("/api/tasks")
    assert response.status_code == 200
    tasks = {task["name"]: task for task in response.json()}
    assert set(tasks) == {task.name for task in jobs.tasks}
    count = tasks["count"]
    assert count["mode"] == "thread"
    assert count["description"] == "Advance progress `n` times as fast as possible."
    assert count["params_schema"]["properties"]["n"]["maximum"] == 10_000_000
    assert tasks["single"]["max_concurrency"] == 1


async def test_a_job_runs_to_success_with_result_and_final_progress(api: Start) -> None:
    jobs, client = await api()
    created = await start(client, "count", n=500)
    assert created["task"] == "count" and created["params"] == {"n": 500}
    assert created["state"] in ("queued", "running")
    await wait_job(jobs, created["id"])
    job = (await client.get(f"/api/jobs/{created['id']}")).json()
    assert job["state"] == "succeeded"
    assert job["result"] == 500
    assert job["error"] is None
    assert job["progress"]["current"] == 500 and job["progress"]["percent"] == 100.0
    assert job["started_at"] and job["finished_at"] >= job["started_at"]


async def test_a_failing_task_fails_with_type_and_message_and_logs_the_traceback(
    api: Start, caplog: pytest.LogCaptureFixture
) -> None:
    jobs, client = await api()
    with caplog.at_level(logging.ERROR, logger="jobcast"):
        created = await start(client, "boom", message="disk on fire")
        await wait_job(jobs, created["id"])
    job = (await client.get(f"/api/jobs/{created['id']}")).json()
    assert job["state"] == "failed"
    assert job["error"] == {"type": "ValueError", "message": "disk on fire"}
    assert "Traceback" not in str(job)
    [record] = [r for r in caplog.records if r.exc_info]
    assert created["id"] in record.getMessage()
    assert record.exc_info is not None and record.exc_info[0] is ValueError


async def test_a_result_that_is_not_json_fails_the_job_clearly(api: Start) -> None:
    jobs, client = await api()
    created = await start(client, "unserialisable")
    job = await wait_job(jobs, created["id"])
    assert job.state is JobState.FAILED
    assert job.error is not None and job.error.type == "ResultNotSerializable"
    assert "not JSON-serialisable" in job.error.message
    assert (await client.get(f"/api/jobs/{job.id}")).status_code == 200


async def test_two_overlapping_runs_of_one_task_are_tracked_apart(api: Start) -> None:
    jobs, client = await api()
    first = await start(client, "hold", name="first")
    second = await start(client, "hold", name="second")
    assert first["id"] != second["id"]
    gate("first").set()
    await wait_job(jobs, first["id"])
    states = {job["id"]: job["state"] for job in (await client.get("/api/jobs?task=hold")).json()}
    assert states == {first["id"]: "succeeded", second["id"]: "running"}
    gate("second").set()
    assert (await wait_job(jobs, second["id"])).state is JobState.SUCCEEDED


async def test_global_worker_limit_queues_in_fifo_order(api: Start) -> None:
    jobs, client = await api(max_workers=2)
    ids = [(await start(client, "hold", name=f"g{i}"))["id"] for i in range(4)]
    states = [jobs.runner.get(i).state for i in ids]
    assert states == [JobState.RUNNING, JobState.RUNNING, JobState.QUEUED, JobState.QUEUED]
    gate("g1").set()
    await wait_job(jobs, ids[1])
    assert jobs.runner.get(ids[2]).state is JobState.RUNNING
    assert jobs.runner.get(ids[3]).state is JobState.QUEUED


async def test_per_task_concurrency_limit_lets_other_tasks_pass(api: Start) -> None:
    jobs, client = await api(max_workers=4)
    first = await start(client, "single", name="s1")
    second = await start(client, "single", name="s2")
    other = await start(client, "hold", name="h")
    assert jobs.runner.get(first["id"]).state is JobState.RUNNING
    assert jobs.runner.get(second["id"]).state is JobState.QUEUED
    assert jobs.runner.get(other["id"]).state is JobState.RUNNING
    gate("s1").set()
    await wait_job(jobs, second["id"], lambda job: job.state is JobState.RUNNING)


async def test_cancel_a_queued_job_it_never_starts(api: Start) -> None:
    jobs, client = await api(max_workers=1)
    await start(client, "hold", name="blocker")
    queued = await start(client, "hold", name="never", steps=5)
    response = await client.post(f"/api/jobs/{queued['id']}/cancel")
    assert response.status_code == 202
    assert response.json()["state"] == "cancelled"
    gate("blocker").set()
    gate("never").set()
    job = jobs.runner.get(queued["id"])
    assert job.started_at is None and job.progress is None


async def test_cancel_a_running_job_stops_it_cooperatively(api: Start) -> None:
    jobs, client = await api()
    created = await start(client, "hold", name="forever")
    response = await client.post(f"/api/jobs/{created['id']}/cancel")
    assert response.status_code == 202
    job = await wait_job(jobs, created["id"])
    assert job.state is JobState.CANCELLED
    assert job.result is None


async def test_a_task_past_its_timeout_fails_with_a_timeout_error(api: Start) -> None:
    jobs, client = await api()
    created = await start(client, "slow")
    job = await wait_job(jobs, created["id"])
    assert job.state is JobState.FAILED
    assert job.error is not None and job.error.type == "TimeoutError"
    assert "0.2 s" in job.error.message


async def test_list_jobs_newest_first_with_filters(api: Start) -> None:
    jobs, client = await api()
    a = await start(client, "count", n=1)
    b = await start(client, "boom")
    c = await start(client, "count", n=2)
    for created in (a, b, c):
        await wait_job(jobs, created["id"])
    listed = (await client.get("/api/jobs")).json()
    assert [job["id"] for job in listed] == [c["id"], b["id"], a["id"]]
    only_count = (await client.get("/api/jobs", params={"task": "count"})).json()
    assert [job["id"] for job in only_count] == [c["id"], a["id"]]
    failed = (await client.get("/api/jobs", params={"state": "failed"})).json()
    assert [job["id"] for job in failed] == [b["id"]]
    limited = (await client.get("/api/jobs", params={"limit": 1})).json()
    assert [job["id"] for job in limited] == [c["id"]]


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "says"),
    [
        ("POST", "/api/tasks/nope/jobs", {}, 404, "no task named 'nope'"),
        ("GET", "/api/jobs/nope", None, 404, "no job with id 'nope'"),
        ("POST", "/api/jobs/nope/cancel", None, 404, "no job with id 'nope'"),
        ("GET", "/api/jobs/nope/events", None, 404, "no job with id 'nope'"),
        ("GET", "/api/events?task=nope", None, 404, "no task named 'nope'"),
        ("GET", "/api/jobs?state=bogus", None, 422, "state"),
        ("GET", "/api/jobs?limit=0", None, 422, "limit"),
        ("POST", "/api/tasks/count/jobs", {"n": -1}, 422, "n"),
        ("POST", "/api/tasks/count/jobs", {"n": "many"}, 422, "n"),
        ("POST", "/api/tasks/count/jobs", {"n": False}, 422, "must be a number"),
        ("POST", "/api/tasks/count/jobs", {"n": "5"}, 422, "must be a number"),
        ("POST", "/api/tasks/count/jobs", {"m": 1}, 422, "m"),
        ("POST", "/api/tasks/hold/jobs", {}, 422, "name"),
        ("POST", "/api/tasks/hold/jobs", [1], 422, "body"),
    ],
)
async def test_bad_input_gets_a_clear_4xx_and_changes_nothing(
    api: Start,
    caplog: pytest.LogCaptureFixture,
    method: str,
    path: str,
    body: Any,
    status: int,
    says: str,
) -> None:
    jobs, client = await api()
    before = jobs.runner.log.last_seq
    response = await client.request(method, path, json=body)
    assert response.status_code == status, response.text
    assert says in response.text
    assert jobs.runner.jobs == {}
    assert jobs.runner.log.last_seq == before
    assert not [r for r in caplog.records if r.exc_info]


async def test_each_task_route_validates_its_own_params(api: Start) -> None:
    jobs, client = await api()
    # DESIGN.md's pitfall: generated routes must not share the last task's params model.
    for task in jobs.tasks:
        response = await client.post(f"/api/tasks/{task.name}/jobs", json={"no_such": 1})
        assert response.status_code == 422
        locations = [error["loc"] for error in response.json()["detail"]]
        assert ["body", "no_such"] in locations
    assert jobs.runner.jobs == {}


async def test_every_task_is_its_own_typed_operation_in_the_openapi_schema(api: Start) -> None:
    jobs, client = await api()
    schema = (await client.get("/openapi.json")).json()
    for task in jobs.tasks:
        operation = schema["paths"][f"/api/tasks/{task.name}/jobs"]["post"]
        body = operation["requestBody"]["content"]["application/json"]["schema"]
        ref = body.get("$ref") or body["anyOf"][0]["$ref"]
        name = ref.rsplit("/", 1)[1]
        assert set(schema["components"]["schemas"][name].get("properties", {})) == set(
            task.params_model.model_fields
        )


async def test_cancel_of_a_finished_job_is_409_and_changes_nothing(api: Start) -> None:
    jobs, client = await api()
    created = await start(client, "count", n=1)
    await wait_job(jobs, created["id"])
    seq = jobs.runner.log.last_seq
    response = await client.post(f"/api/jobs/{created['id']}/cancel")
    assert response.status_code == 409
    assert "already finished as 'succeeded'" in response.json()["detail"]
    assert jobs.runner.get(created["id"]).state is JobState.SUCCEEDED
    assert jobs.runner.log.last_seq == seq


async def test_body_over_the_limit_is_413(api: Start) -> None:
    jobs, client = await api(max_body_bytes=1024)
    response = await client.post("/api/tasks/boom/jobs", json={"message": "x" * 2000})
    assert response.status_code == 413
    assert "larger than 1024 bytes" in response.json()["detail"]

    async def chunks() -> Any:
        for _ in range(4):
            yield b" " * 400

    response = await client.post(
        "/api/tasks/boom/jobs", content=chunks(), headers={"content-type": "application/json"}
    )
    assert response.status_code == 413
    assert jobs.runner.jobs == {}


async def test_a_body_that_is_not_json_is_415_saying_what_to_send(api: Start) -> None:
    jobs, client = await api()
    response = await client.post("/api/tasks/count/jobs", content=b"n=3")
    assert response.status_code == 415
    assert "application/json" in response.json()["detail"]
    assert jobs.runner.jobs == {}


async def test_a_full_queue_is_429_with_retry_after(api: Start) -> None:
    jobs, client = await api(max_workers=1, max_queue=1)
    await start(client, "hold", name="a")
    await start(client, "hold", name="b")
    response = await client.post("/api/tasks/hold/jobs", json={"name": "c"})
    assert response.status_code == 429
    assert int(response.headers["retry-after"]) > 0
    assert "queue is full" in response.json()["detail"]
    assert len(jobs.runner.jobs) == 2


async def test_healthz(api: Start) -> None:
    _, client = await api()
    response = await client.get("/healthz")
    assert response.status_code == 200 and response.json()["status"] == "ok"
    assert response.json()["running"] == 0 and response.json()["queued"] == 0


async def test_the_page_is_served_at_root(api: Start) -> None:
    _, client = await api()
    response = await client.get("/")
    assert response.status_code == 200
    assert "text/html" in response.headers["content-type"]
    head = await client.head("/")
    assert head.status_code == 200 and head.content == b""
    assert head.headers["content-length"] == response.headers["content-length"]


async def test_routes_answer_503_when_the_service_is_not_running() -> None:
    jobs = JobCast()
    transport = httpx.ASGITransport(app=jobs.create_app())
    async with httpx.AsyncClient(
        transport=transport, base_url="http://jobcast.localhost"
    ) as client:
        response = await client.get("/api/jobs")
    assert response.status_code == 503
    assert "not running" in response.json()["detail"]


async def test_a_rejected_duplicate_is_409_naming_the_existing_job(api: Start) -> None:
    jobs, client = await api()
    first = await start(client, "unique", name="u")
    response = await client.post("/api/tasks/unique/jobs", json={"name": "u"})
    assert response.status_code == 409
    assert response.json()["job"]["id"] == first["id"]
    assert first["id"] in response.json()["detail"]
    other = await start(client, "unique", name="different params are no duplicate")
    assert len(jobs.runner.jobs) == 2
    gate("u").set()
    await wait_job(jobs, first["id"])
    again = await start(client, "unique", name="u")  # finished jobs are no duplicates
    assert again["id"] not in (first["id"], other["id"])


async def test_a_joined_duplicate_is_200_with_the_existing_job(api: Start) -> None:
    jobs, client = await api()
    first = await start(client, "shared", name="s")
    response = await client.post("/api/tasks/shared/jobs", json={"name": "s"})
    assert response.status_code == 200
    assert response.json()["id"] == first["id"]
    assert response.headers["location"] == f"/api/jobs/{first['id']}"
    assert len(jobs.runner.jobs) == 1


async def test_concurrent_duplicate_starts_create_exactly_one_job(api: Start) -> None:
    import anyio

    jobs, client = await api()
    statuses: list[int] = []

    async def post() -> None:
        response = await client.post("/api/tasks/unique/jobs", json={"name": "race"})
        statuses.append(response.status_code)

    async with anyio.create_task_group() as group:
        for _ in range(20):
            group.start_soon(post)
    assert sorted(statuses) == [202] + [409] * 19
    assert len(jobs.runner.jobs) == 1


async def test_the_router_mounts_into_an_existing_app_with_the_lifespan() -> None:
    from fastapi import FastAPI

    jobs = JobCast()

    @jobs.task
    def double(ctx: object, x: int) -> int:
        return 2 * x

    app = FastAPI(lifespan=jobs.lifespan)

    @app.get("/mine")
    async def mine() -> dict[str, bool]:
        return {"mine": True}

    app.include_router(jobs.router)
    async with LifespanManager(app) as running:
        transport = httpx.ASGITransport(app=running.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://x.localhost") as client:
            assert (await client.get("/mine")).json() == {"mine": True}
            created = (await client.post("/api/tasks/double/jobs", json={"x": 21})).json()
            job = await wait_job(jobs, created["id"])
            assert job.result == 42
            invalid = await client.post("/api/tasks/double/jobs", json={"x": "many"})
            assert invalid.status_code == 422


async def test_numbers_are_taken_as_json_numbers(api: Start) -> None:
    jobs, client = await api()
    # JSON Schema's integer includes 3.0; a boolean or a string is not a number.
    created = await start(client, "count", n=3.0)
    assert created["params"] == {"n": 3}
    for bad in (True, "3", None):
        response = await client.post("/api/tasks/count/jobs", json={"n": bad})
        assert response.status_code == 422, bad
    assert len(jobs.runner.jobs) == 1


def test_each_error_carries_its_own_answer() -> None:
    from jobcast import exceptions
    from jobcast.responses import error_response

    errors: list[tuple[exceptions.JobcastError, int]] = [
        (exceptions.UnknownTask("x", ["a"]), 404),
        (exceptions.UnknownJob("x"), 404),
        (exceptions.JobFinished("x", "failed"), 409),
        (exceptions.DuplicateJob("x", "t", {"id": "x"}), 409),
        (exceptions.QueueFull(3, retry_after=5), 429),
        (exceptions.RateLimited(3, retry_after=7), 429),
        (exceptions.TooManyStreams(3, retry_after=5), 429),
        (exceptions.StreamsFull(3, retry_after=5), 503),
        (exceptions.Unauthorized(reads=False), 401),
        (exceptions.CrossOrigin("https://evil.example"), 403),
        (exceptions.NotAccepting("stopping"), 503),
        (exceptions.BackendUnavailable("redis://x", "down"), 503),
    ]
    for error, status in errors:
        answer = error_response(error)
        assert answer.status_code == status, error
        assert json.loads(bytes(answer.body))["detail"] == str(error)
        if error.retry_after is not None:
            assert answer.headers["retry-after"] == str(error.retry_after)
    assert "job" in json.loads(bytes(error_response(errors[3][0]).body))
    assert error_response(errors[8][0]).headers["www-authenticate"].startswith("Bearer")


# -- queue placement, rerun, delete, logs --------------------------------------------------


async def test_delay_and_priority_are_taken_from_the_query_and_shown(api: Start) -> None:
    jobs, client = await api()
    response = await client.post("/api/tasks/count/jobs?delay=30&priority=7", json={"n": 1})
    assert response.status_code == 202, response.text
    job = response.json()
    assert job["state"] == "queued" and job["priority"] == 7
    assert (job["attempt"], job["max_attempts"], job["schedule"]) == (1, 1, None)
    assert job["run_at"] > job["created_at"]  # ISO 8601 in UTC sorts as time does
    later = await client.post("/api/tasks/count/jobs", params={"run_at": "2099-01-01T00:00:00Z"})
    assert later.json()["run_at"] == "2099-01-01T00:00:00+00:00"
    soon = (await client.post("/api/tasks/count/jobs", params={"delay": 3600})).json()
    shown = (await client.get(f"/api/jobs/{soon['id']}")).json()
    assert shown["state"] == "queued" and shown["run_at"] == soon["run_at"]
    assert jobs.runner.get(soon["id"]).state is JobState.QUEUED


@pytest.mark.parametrize(
    ("query", "names"),
    [
        ({"delay": "-1"}, "delay"),
        ({"delay": "nan"}, "delay"),
        ({"delay": "1e999"}, "delay"),
        ({"delay": "soon"}, "delay"),
        ({"run_at": "2030-01-01T00:00:00"}, "run_at"),  # no offset: ambiguous
        ({"run_at": "tomorrow"}, "run_at"),
        ({"run_at": "2030-01-01T00:00:00Z", "delay": "5"}, "run_at"),
        ({"priority": "1.5"}, "priority"),
        ({"priority": "10000000"}, "priority"),
    ],
)
async def test_bad_placement_is_a_422_naming_the_parameter_and_makes_no_job(
    api: Start, query: dict[str, str], names: str
) -> None:
    jobs, client = await api()
    response = await client.post("/api/tasks/count/jobs", params=query, json={"n": 1})
    assert response.status_code == 422, response.text
    assert names in json.dumps(response.json()["detail"])
    assert jobs.runner.jobs == {}


async def test_rerun_answers_202_with_the_new_job_and_404_for_an_unknown_one(api: Start) -> None:
    jobs, client = await api()
    first = await start(client, "count", n=3)
    await wait_job(jobs, first["id"])
    response = await client.post(f"/api/jobs/{first['id']}/rerun")
    assert response.status_code == 202, response.text
    again = response.json()
    assert response.headers["location"] == f"/api/jobs/{again['id']}"
    assert again["id"] != first["id"] and again["params"] == {"n": 3}
    assert (await wait_job(jobs, again["id"])).result == 3
    assert (await client.post("/api/jobs/nope/rerun")).status_code == 404


async def test_delete_answers_204_then_404_and_409_while_the_job_runs(api: Start) -> None:
    jobs, client = await api()
    done = await start(client, "count", n=1)
    await wait_job(jobs, done["id"])
    busy = await start(client, "hold", name="delete-me")

    refused = await client.delete(f"/api/jobs/{busy['id']}")
    assert refused.status_code == 409 and "cancel it first" in refused.json()["detail"]
    response = await client.delete(f"/api/jobs/{done['id']}")
    assert response.status_code == 204 and response.content == b""
    assert (await client.get(f"/api/jobs/{done['id']}")).status_code == 404
    assert (await client.delete(f"/api/jobs/{done['id']}")).status_code == 404
    listed = [job["id"] for job in (await client.get("/api/jobs")).json()]
    assert done["id"] not in listed and busy["id"] in listed
    gate("delete-me").set()


async def test_logs_page_through_a_jobs_lines_with_their_ids(api: Start) -> None:
    jobs, client = await api()
    job = await start(client, "shout", lines=25)
    await wait_job(jobs, job["id"])
    response = await client.get(f"/api/jobs/{job['id']}/logs")
    assert response.status_code == 200
    lines = response.json()
    assert [line["line"] for line in lines] == [f"line {i}" for i in range(25)]
    page = (
        await client.get(
            f"/api/jobs/{job['id']}/logs", params={"after": lines[9]["id"], "limit": 3}
        )
    ).json()
    assert [line["line"] for line in page] == ["line 10", "line 11", "line 12"]
    assert (await client.get("/api/jobs/nope/logs")).status_code == 404
    assert (await client.get(f"/api/jobs/{job['id']}/logs?limit=0")).status_code == 422


async def test_a_run_at_past_the_year_9999_is_a_422_and_makes_no_job(api: Start) -> None:
    jobs, client = await api()
    response = await client.post(
        "/api/tasks/count/jobs", params={"run_at": "9999-12-31T23:59:59-14:00"}, json={"n": 1}
    )
    assert response.status_code == 422 and "year 10000" in response.text
    assert jobs.runner.jobs == {}


@pytest.mark.parametrize(("how", "kind"), [("exit", "SystemExit"), ("stop", "StopIteration")])
async def test_a_task_that_raises_what_no_task_should_fails_and_the_service_goes_on(
    api: Start, how: str, kind: str
) -> None:
    jobs, client = await api()
    job = await start(client, "escape", how=how)
    done = await wait_job(jobs, job["id"])
    assert done.state is JobState.FAILED
    assert done.error is not None and done.error.type == kind
    after = await start(client, "count", n=2)
    assert (await wait_job(jobs, after["id"])).result == 2
