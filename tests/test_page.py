"""The dashboard page, in a real headless Chromium against a real uvicorn."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from playwright.sync_api import Page, expect

from jobcast import Job, JobCast
from jobcast.events import Event
from jobcast.store import MemoryStore, Recovered, Store
from tests.conftest import Server

Serve = Callable[..., tuple[Any, Server]]


class KeepingStore:
    """A durable store in memory: jobs and events survive a restart of the same server.

    It lets a test restart the server and see the page resume from its Last-Event-ID rather
    than start over from a reset.
    """

    durable = True

    def __init__(self) -> None:
        self.jobs: dict[str, Job] = {}
        self.events: list[Event] = []

    async def open(self) -> Recovered:
        next_seq = self.events[0].seq if self.events else 1
        return Recovered(next_seq=next_seq, jobs=list(self.jobs.values()), events=self.events[:])

    def record(self, event: Event, job: Job) -> None:
        self.events.append(event)
        self.jobs[job.id] = job

    def forget(self, job_ids: list[str]) -> None:
        for job_id in job_ids:
            self.jobs.pop(job_id, None)

    def delete(self, job_id: str) -> None:
        self.jobs.pop(job_id, None)
        self.events = [e for e in self.events if e.job_id != job_id or e.name == "deleted"]

    def set_state(self, key: str, value: dict[str, Any]) -> None:
        pass

    async def history(
        self, job_id: str, *, after: int = 0, limit: int = 1000, names: tuple[str, ...] = ()
    ) -> list[Event]:
        kept = [e for e in self.events if e.job_id == job_id and e.seq > after]
        return [e for e in kept if not names or e.name in names][:limit]

    async def aclose(self) -> None:
        pass


def open_dashboard(page: Page, server: Server) -> None:
    page.goto(server.url)
    expect(page.locator("#connection")).to_have_attribute("data-status", "live")
    expect(page.locator('form[data-task="sleep"]')).to_be_visible()


def start_sleep(page: Page, seconds: str, steps: str) -> None:
    form = page.locator('form[data-task="sleep"]')
    form.locator('[name="seconds"]').fill(seconds)
    form.locator('[name="steps"]').fill(steps)
    form.get_by_role("button", name="Start").click()


def row_ids(page: Page) -> list[str]:
    ids: list[str] = page.locator("tr[data-job-id]").evaluate_all(
        "rows => rows.map(row => row.dataset.jobId)"
    )
    return ids


def test_a_started_job_fills_its_bar_and_succeeds(serve: Serve, page: Page) -> None:
    _, server = serve()
    open_dashboard(page, server)
    start_sleep(page, seconds="1", steps="10")

    row = page.locator("tr[data-job-id]")
    expect(row).to_have_count(1)
    expect(row).to_have_attribute("data-state", "succeeded", timeout=10_000)
    expect(row.locator(".progress")).to_have_attribute("data-percent", "100")
    expect(row).to_contain_text("100%")
    expect(row).to_contain_text("10/10")
    expect(page.locator("#announcer")).to_contain_text("succeeded")

    row.locator("button.logs").click()
    expect(page.locator("#log-panel")).to_contain_text("step 10/10 done")


def in_an_app_of_ones_own(jobs: JobCast) -> FastAPI:
    """The README's way to put jobcast into one's own app: the router, then the page."""
    app = FastAPI(lifespan=jobs.lifespan)
    app.include_router(jobs.router)
    jobs.add_page(app)
    return app


def test_the_page_works_in_an_app_of_ones_own(serve: Serve, page: Page) -> None:
    _, server = serve(build=in_an_app_of_ones_own)
    open_dashboard(page, server)
    start_sleep(page, seconds="0.2", steps="2")
    expect(page.locator("tr[data-job-id]")).to_have_attribute("data-state", "succeeded")


def test_a_running_job_can_be_cancelled(serve: Serve, page: Page) -> None:
    _, server = serve()
    open_dashboard(page, server)
    start_sleep(page, seconds="60", steps="60")

    row = page.locator("tr[data-job-id]")
    expect(row).to_have_attribute("data-state", "running")
    row.locator("button.cancel").click()
    expect(row).to_have_attribute("data-state", "cancelled")
    expect(row.locator("button.cancel")).to_be_hidden()


def test_an_invalid_param_is_shown_at_its_field_and_starts_nothing(
    serve: Serve, page: Page
) -> None:
    _, server = serve()
    open_dashboard(page, server)
    sent: list[str] = []
    page.on("request", lambda request: sent.append(request.method))
    start_sleep(page, seconds="-1", steps="10")

    seconds = page.locator('form[data-task="sleep"] [name="seconds"]')
    error = page.locator('form[data-task="sleep"] .field-error').first
    expect(error).to_be_visible()
    expect(error).not_to_be_empty()
    expect(seconds).to_have_attribute("aria-invalid", "true")
    expect(page.locator('form[data-task="sleep"] .form-message')).not_to_be_empty()
    assert "POST" not in sent
    assert row_ids(page) == []


def test_the_servers_422_is_shown_at_its_field(serve: Serve, page: Page) -> None:
    _, server = serve()
    open_dashboard(page, server)
    seconds = page.locator('form[data-task="sleep"] [name="seconds"]')
    # Drop the bound the page took from the schema, so the server is the one that refuses.
    seconds.evaluate("input => input.removeAttribute('min')")
    seconds.evaluate("input => delete input.dataset.exclusiveMin")

    with page.expect_response("**/api/tasks/sleep/jobs") as answer:
        start_sleep(page, seconds="-1", steps="10")
    assert answer.value.status == 422

    error = page.locator('form[data-task="sleep"] .field-error').first
    expect(error).to_contain_text("greater than 0")
    expect(seconds).to_have_attribute("aria-invalid", "true")
    error_id = error.get_attribute("id")
    assert error_id and error_id in (seconds.get_attribute("aria-describedby") or "").split()


@pytest.mark.parametrize(
    "make_store",
    [KeepingStore, MemoryStore],
    ids=["resume", "reset"],
)
def test_after_a_restart_the_page_reconnects_and_shows_each_job_once(
    serve: Serve, page: Page, make_store: Callable[[], Store]
) -> None:
    _, server = serve(store=make_store())
    open_dashboard(page, server)
    start_sleep(page, seconds="0.2", steps="2")
    rows = page.locator("tr[data-job-id]")
    expect(rows).to_have_attribute("data-state", "succeeded")

    connection = page.locator("#connection")
    server.stop()
    expect(connection).to_have_attribute("data-status", "reconnecting")
    server.start()
    # Started while the page is away: it must arrive through the resumed stream.
    response = httpx.post(f"{server.url}/api/tasks/sleep/jobs", json={"seconds": 0.1, "steps": 1})
    assert response.status_code == 202
    missed = response.json()["id"]
    expect(connection).to_have_attribute("data-status", "live", timeout=15_000)

    expect(page.locator(f'tr[data-job-id="{missed}"]')).to_have_attribute("data-state", "succeeded")
    ids = row_ids(page)
    on_server = {job["id"] for job in httpx.get(f"{server.url}/api/jobs").json()}
    assert len(ids) == len(set(ids)) and set(ids) == on_server


def test_the_page_keeps_a_bounded_number_of_finished_jobs(serve: Serve, page: Page) -> None:
    _, server = serve()
    page.add_init_script("globalThis.jobcastKeepFinished = 2")
    open_dashboard(page, server)
    started = []
    for _ in range(4):
        response = httpx.post(
            f"{server.url}/api/tasks/sleep/jobs", json={"seconds": 0.01, "steps": 1}
        )
        started.append(response.json()["id"])
        expect(page.locator(f'tr[data-job-id="{started[-1]}"]')).to_have_attribute(
            "data-state", "succeeded"
        )
    # The two newest finished jobs stay; the older ones went.
    expect(page.locator("tr[data-job-id]")).to_have_count(2)
    assert sorted(row_ids(page)) == sorted(started[2:])


# -- queue features -------------------------------------------------------------------------


def post(server: Server, task: str, params: dict[str, Any], **query: Any) -> str:
    response = httpx.post(f"{server.url}/api/tasks/{task}/jobs", json=params, params=query)
    assert response.status_code == 202, response.text
    job_id: str = response.json()["id"]
    return job_id


def test_a_retried_job_shows_its_attempts_and_a_delayed_one_its_countdown(
    serve: Serve, page: Page
) -> None:
    _, server = serve()
    open_dashboard(page, server)
    delayed = post(server, "count", {"n": 1}, delay=120, priority=3)
    row = page.locator(f'tr[data-job-id="{delayed}"]')
    expect(row).to_have_attribute("data-state", "queued")
    note = row.locator('[data-part="note"]')
    expect(note).to_contain_text("starts in 1m 5")  # 1m 59s or so, counting down
    expect(note).to_contain_text("priority 3")

    flaky = post(server, "flaky", {"name": "page", "failures": 1})
    row = page.locator(f'tr[data-job-id="{flaky}"]')
    expect(row.locator('[data-part="note"]')).to_contain_text("attempt 2 of 4")
    expect(row).to_have_attribute("data-state", "succeeded")
    expect(row.locator('[data-part="note"]')).to_have_text("attempt 2 of 4")


def test_a_finished_job_can_be_run_again_and_deleted(serve: Serve, page: Page) -> None:
    _, server = serve()
    open_dashboard(page, server)
    done = post(server, "count", {"n": 4})
    row = page.locator(f'tr[data-job-id="{done}"]')
    expect(row).to_have_attribute("data-state", "succeeded")
    expect(row.locator("button.cancel")).to_be_hidden()

    row.locator("button.rerun").click()
    expect(page.locator("tr[data-job-id]")).to_have_count(2)
    again = next(job for job in row_ids(page) if job != done)
    expect(page.locator(f'tr[data-job-id="{again}"]')).to_have_attribute("data-state", "succeeded")
    assert httpx.get(f"{server.url}/api/jobs/{again}").json()["params"] == {"n": 4}

    other = page.context.new_page()  # a second page learns of the delete from its stream
    open_dashboard(other, server)
    expect(other.locator(f'tr[data-job-id="{done}"]')).to_have_count(1)
    row.locator("button.delete").click()
    expect(page.locator(f'tr[data-job-id="{done}"]')).to_have_count(0)
    expect(other.locator(f'tr[data-job-id="{done}"]')).to_have_count(0)
    assert httpx.get(f"{server.url}/api/jobs/{done}").status_code == 404


def test_a_cancel_shows_cancelling_until_the_job_stops(serve: Serve, page: Page) -> None:
    _, server = serve()
    open_dashboard(page, server)
    job = post(server, "stubborn", {"seconds": 2})  # ignores the cancel until it is done
    row = page.locator(f'tr[data-job-id="{job}"]')
    expect(row).to_have_attribute("data-state", "running")
    row.locator("button.cancel").click()
    expect(row.locator('[data-part="note"]')).to_have_text("cancelling…")
    expect(row.locator("button.cancel")).to_have_text("Cancelling…")
    expect(row.locator("button.cancel")).to_be_disabled()
    expect(row).to_have_attribute("data-state", "cancelled", timeout=10_000)
    expect(row.locator('[data-part="note"]')).to_have_text("")


def test_the_schedules_show_their_next_run_and_pause_and_resume(serve: Serve, page: Page) -> None:
    from tests.apps import make_jobs

    jobs = make_jobs()
    jobs.schedule("nightly", "count", cron="0 2 * * *", params={"n": 1})
    _, server = serve(jobs)
    open_dashboard(page, server)
    item = page.locator('#schedule-list li[data-name="nightly"]')
    expect(item).to_contain_text("0 2 * * *")
    expect(item.locator('[data-part="next"]')).to_contain_text("next in")

    item.get_by_role("button", name="Pause schedule nightly").click()
    expect(item.locator('[data-part="next"]')).to_have_text("paused")
    assert httpx.get(f"{server.url}/api/schedules").json()[0]["paused"] is True
    item.get_by_role("button", name="Resume schedule nightly").click()
    expect(item.locator('[data-part="next"]')).to_contain_text("next in")
    assert httpx.get(f"{server.url}/api/schedules").json()[0]["paused"] is False
