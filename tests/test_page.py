"""The dashboard page, in a real headless Chromium against a real uvicorn."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from playwright.sync_api import Page, expect

from jobcast import Job, JobCast, JobContext
from jobcast.events import Event
from jobcast.store import MemoryStore, Recovered, Store
from tests.apps import gate, make_jobs
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


# -- reading the page, at desktop and phone sizes ------------------------------------------

SIZES = {"desktop": (1280, 800), "phone": (390, 844)}
TOKEN = "page-token-for-tests-0123456789"


@pytest.fixture(params=sorted(SIZES))
def sized_page(request: pytest.FixtureRequest, new_page: Callable[..., Page]) -> Page:
    """A fresh page at each size: a desktop window, then a phone."""
    width, height = SIZES[request.param]
    return new_page(width=width, height=height)


DESCRIPTION = """Resize **every** image in a folder, keeping `quality`; *quickly*.
Lines of one paragraph join.

- keeps the originals
- see [the guide](https://example.com/guide) or [this](javascript:window.pwned=1)

<img src=x onerror="window.pwned = 1"> stays text, as does snake_case_name."""


def described(ctx: JobContext) -> None:
    """Does nothing: its description is the point."""


def report(ctx: JobContext, items: int = 40) -> dict[str, Any]:
    """Return a result too long for one line."""
    return {"files": [f"img_{i:03d}.png" for i in range(items)], "total": items}


def explode(ctx: JobContext, words: int = 60) -> None:
    """Log a line, then fail with a long message."""
    ctx.log("about to fail")
    raise RuntimeError(" ".join(f"word{i}" for i in range(words)))


def crawl(ctx: JobContext, name: str) -> None:
    """Report big numbers with a rate and an ETA, then hold until gate `name` opens."""
    ctx.progress(0, 987_654_321, "counting")
    ctx.sleep(0.2)
    ctx.progress(1_234_567)
    released = gate(name)
    while not released.wait(0.01):
        ctx.raise_if_cancelled()


def readable_jobs(**options: Any) -> JobCast:
    jobs = make_jobs(**options)
    jobs.task(description=DESCRIPTION)(described)
    for task in (report, explode, crawl):
        jobs.task(task)
    return jobs


def fits(page: Page, selector: str) -> bool:
    """Whether the element shows all its text: nothing scrolled away, nothing past its cell."""
    result: bool = page.locator(selector).evaluate(
        """element => {
          const box = element.getBoundingClientRect();
          const cell = element.closest('td').getBoundingClientRect();
          return element.scrollWidth <= element.clientWidth + 1 && box.right <= cell.right + 1
            && box.left >= cell.left - 1;
        }"""
    )
    return result


def test_a_task_description_shows_its_markdown_as_text(serve: Serve, sized_page: Page) -> None:
    page = sized_page
    _, server = serve(readable_jobs())
    open_dashboard(page, server)
    description = page.locator('form[data-task="described"] .task-description')

    paragraphs = description.locator("p")
    expect(paragraphs).to_have_count(2)
    expect(paragraphs.first).to_contain_text("folder, keeping quality; quickly. Lines of one")
    expect(description.locator("strong")).to_have_text("every")
    expect(description.locator("code")).to_have_text("quality")
    expect(description.locator("em")).to_have_text("quickly")
    expect(description.locator("ul > li")).to_have_count(2)
    # Only the http(s) link is a link; the other keeps its words, not its address.
    links = description.locator("a")
    expect(links).to_have_count(1)
    expect(links).to_have_text("the guide")
    expect(links).to_have_attribute("href", "https://example.com/guide")
    expect(description.locator("ul > li").nth(1)).to_have_text("see the guide or this")
    # HTML in a description is text.
    expect(description.locator("img")).to_have_count(0)
    expect(paragraphs.nth(1)).to_have_text(
        '<img src=x onerror="window.pwned = 1"> stays text, as does snake_case_name.'
    )
    assert page.evaluate("window.pwned") is None


def test_a_long_list_item_of_a_description_is_made_once_not_at_each_of_its_lines(
    serve: Serve, page: Page
) -> None:
    _, server = serve()
    page.goto(f"{server.url}/static/index.html")
    made = page.evaluate(
        """async (lines) => {
          const { renderMarkdown } = await import('/static/markdown.js');
          const create = document.createElement.bind(document);
          let calls = 0;
          document.createElement = (tag) => { calls += 1; return create(tag); };
          const text = '- an item\\n' + 'that goes on, **bold**\\n'.repeat(lines);
          const items = renderMarkdown(text).querySelectorAll('ul > li');
          document.createElement = create;
          return [calls, items.length, items[0].querySelectorAll('strong').length];
        }""",
        2000,
    )
    calls, items, bold = made
    assert (items, bold) == (1, 2000)
    assert calls <= 2000 + 10  # each <strong> once, with the <ul> and its <li>


def test_a_result_wraps_between_tokens_and_a_long_one_opens_to_pretty_json(
    serve: Serve, sized_page: Page
) -> None:
    page = sized_page
    _, server = serve(readable_jobs())
    open_dashboard(page, server)
    short = post(server, "sleep", {"seconds": 0.01, "steps": 1})
    long = post(server, "report", {"items": 40})
    for job in (short, long):
        expect(page.locator(f'tr[data-job-id="{job}"]')).to_have_attribute(
            "data-state", "succeeded"
        )

    outcome = page.locator(f'tr[data-job-id="{short}"] [data-part="outcome"]')
    expect(outcome).to_have_text('{"slept_s": 0.01, "steps": 1}')
    expect(outcome.locator("details")).to_have_count(0)

    outcome = page.locator(f'tr[data-job-id="{long}"] [data-part="outcome"]')
    summary = outcome.locator("summary")
    expect(summary).to_contain_text('{"files": ["img_000.png", "img_001.png"')
    whole = outcome.locator(".outcome-whole")
    expect(whole).to_be_hidden()
    summary.click()
    expect(whole).to_be_visible()
    result = httpx.get(f"{server.url}/api/jobs/{long}").json()["result"]
    assert whole.text_content() == json.dumps(result, indent=2)
    assert fits(page, f'tr[data-job-id="{long}"] .outcome-whole')
    expect(page.locator("#log-panel")).to_be_hidden()  # opening the result opens nothing else
    summary.click()
    expect(whole).to_be_hidden()


def test_the_eta_and_a_long_error_are_never_cut(serve: Serve, sized_page: Page) -> None:
    page = sized_page
    _, server = serve(readable_jobs())
    open_dashboard(page, server)
    crawling = post(server, "crawl", {"name": "eta"})
    detail = f'tr[data-job-id="{crawling}"] [data-part="detail"]'
    expect(page.locator(detail)).to_contain_text(re.compile(r"ETA\s\d"))
    expect(page.locator(detail)).to_contain_text("1234567/987654321")
    assert fits(page, detail)

    failed = post(server, "explode", {"words": 60})
    row = page.locator(f'tr[data-job-id="{failed}"]')
    expect(row).to_have_attribute("data-state", "failed")
    message = "RuntimeError: " + " ".join(f"word{i}" for i in range(60))
    outcome = row.locator('[data-part="outcome"]')
    expect(outcome).to_have_attribute("title", message)
    outcome.locator("summary").click()
    expect(outcome.locator(".outcome-whole")).to_have_text(message)
    expect(outcome.locator(".outcome-whole")).to_be_in_viewport()
    assert fits(page, f'tr[data-job-id="{failed}"] .outcome-whole')


def test_a_refused_token_says_token_refused_until_the_right_one_is_given(
    serve: Serve, sized_page: Page
) -> None:
    page = sized_page
    _, server = serve(token=TOKEN, protect_reads=True)
    page.add_init_script("localStorage.setItem('jobcast.token', 'wrong-token-for-tests-0123456')")
    page.goto(server.url)
    expect(page.locator("#connection-text")).to_have_text("Token refused")
    expect(page.locator("#connection")).to_have_attribute("data-status", "refused")
    expect(page.locator("#token-form")).to_be_visible()
    expect(page.locator("#token-label")).to_contain_text("refused")
    expect(page.locator("#task-forms")).to_contain_text("refused")

    page.locator("#token-input").fill(TOKEN)
    page.get_by_role("button", name="Use token").click()
    expect(page.locator("#connection")).to_have_attribute("data-status", "live")
    expect(page.locator('form[data-task="sleep"]')).to_be_visible()
    expect(page.locator("#token-form")).to_be_hidden()


def test_a_missing_token_says_token_needed(serve: Serve, sized_page: Page) -> None:
    page = sized_page
    _, server = serve(token=TOKEN, protect_reads=True)
    page.goto(server.url)
    expect(page.locator("#connection-text")).to_have_text("Token needed")
    expect(page.locator("#token-label")).to_have_text("This server needs an access token.")


def test_a_token_refused_for_a_start_says_so_at_the_form(serve: Serve, sized_page: Page) -> None:
    page = sized_page
    _, server = serve(token=TOKEN)  # reads are open: only starting needs the token
    page.add_init_script("localStorage.setItem('jobcast.token', 'wrong-token-for-tests-0123456')")
    open_dashboard(page, server)
    start_sleep(page, seconds="0.1", steps="1")
    message = page.locator('form[data-task="sleep"] .form-message')
    expect(message).to_contain_text("Token refused")
    expect(page.locator("#token-label")).to_contain_text("refused")
    expect(page.locator("#connection-text")).to_have_text("Live")
    assert httpx.get(f"{server.url}/api/jobs").json() == []


def test_on_a_phone_the_jobs_come_before_the_forms(serve: Serve, sized_page: Page) -> None:
    page = sized_page
    _, server = serve()
    open_dashboard(page, server)
    jobs = page.locator("section.jobs").bounding_box()
    forms = page.locator("section.start").bounding_box()
    assert jobs and forms
    if page.viewport_size == {"width": 390, "height": 844}:
        assert jobs["y"] + jobs["height"] <= forms["y"]
        expect(page.get_by_role("heading", name="Jobs")).to_be_in_viewport()
    else:  # side by side: the forms on the left
        assert forms["x"] + forms["width"] <= jobs["x"]
        assert abs(forms["y"] - jobs["y"]) < 1


def test_a_failed_jobs_log_panel_ends_with_its_error(serve: Serve, sized_page: Page) -> None:
    page = sized_page
    _, server = serve(readable_jobs())
    open_dashboard(page, server)
    failed = post(server, "explode", {"words": 3})
    row = page.locator(f'tr[data-job-id="{failed}"]')
    expect(row).to_have_attribute("data-state", "failed")
    row.locator("button.logs").click()
    lines = page.locator("#log-panel .log-lines li")
    expect(lines).to_have_text(["about to fail", "RuntimeError: word0 word1 word2"])
    expect(lines.last).to_have_class("log-error")
    expect(lines.last).to_be_in_viewport()


def test_each_job_has_a_link_that_opens_it(serve: Serve, sized_page: Page) -> None:
    page = sized_page
    _, server = serve()
    open_dashboard(page, server)
    job = post(server, "shout", {"lines": 3})
    row = page.locator(f'tr[data-job-id="{job}"]')
    expect(row).to_have_attribute("data-state", "succeeded")
    link = row.locator("a.job-id")
    expect(link).to_have_attribute("href", f"#job={job}")

    panel = page.locator("#log-panel")
    link.click()
    expect(panel.locator(".log-lines li")).to_have_text(["line 0", "line 1", "line 2"])
    expect(row).to_have_class(re.compile(r"\bselected\b"))
    assert page.url == f"{server.url}/#job={job}"
    page.locator("#log-close").click()
    expect(panel).to_be_hidden()
    assert page.url == f"{server.url}/"

    # A page loaded with the link opens the job, with the lines it logged before.
    other = page.context.new_page()
    other.goto(f"{server.url}/#job={job}")
    expect(other.locator("#log-panel .log-lines li")).to_have_text(["line 0", "line 1", "line 2"])
    expect(other.locator("#log-panel .log-title")).to_have_text(f"shout · {job[:8]}")
    expect(other.locator(f'tr[data-job-id="{job}"]')).to_have_class(re.compile(r"\bselected\b"))


def test_a_link_to_a_job_the_server_does_not_know_says_so(serve: Serve, page: Page) -> None:
    _, server = serve()
    page.goto(f"{server.url}/#job=no-such-job")
    expect(page.locator("#log-panel .log-empty")).to_contain_text("Could not follow this job")
    expect(page.locator("#log-panel .log-empty")).to_contain_text("no-such-job")
