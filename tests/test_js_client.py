"""The JS client module (static/jobcast-client.js), in a real headless Chromium against a real
uvicorn, on a page of its own at the server's origin; and the README's JavaScript example."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from playwright.sync_api import Page, Route, expect

from jobcast.jobs import JobState
from tests.conftest import Server

Serve = Callable[..., tuple[Any, Server]]

ROOT = Path(__file__).parents[1]
MODULE = ROOT / "static" / "jobcast-client.js"
TYPES = ROOT / "static" / "jobcast-client.d.ts"
TOKEN = "client-token-for-tests-0123456789"

# A page with nothing on it but the module, as `jobcast` (and a record of what it is told).
CLIENT_PAGE = """<!doctype html>
<meta charset="utf-8">
<title>client</title>
<script type="module">
  import * as jobcast from '/static/jobcast-client.js';
  window.seen = { all: [], job: [], statuses: [], errors: [], ended: [] };
  window.jobcast = jobcast;
</script>
"""


def serve_page(page: Page, server: Server, path: str, html: str) -> None:
    """Open ``html`` as the page at ``path`` of the server's origin, where it would be served
    by an app of one's own: the module and the API it calls come from the real server."""

    def fulfil(route: Route) -> None:
        route.fulfill(status=200, content_type="text/html; charset=utf-8", body=html)

    page.route(f"{server.url}{path}", fulfil)
    page.goto(f"{server.url}{path}")


def open_client(page: Page, server: Server) -> None:
    serve_page(page, server, "/client-test", CLIENT_PAGE)
    page.wait_for_function("window.jobcast !== undefined")


def seen(page: Page) -> dict[str, Any]:
    record: dict[str, Any] = page.evaluate("window.seen")
    return record


# What a watch records: each event as [type, seq, the job it is about].
RECORD = """(list) => ({
  event: (type, data) =>
    window.seen[list].push([type, data.seq ?? null, data.job?.id ?? data.job_id ?? null]),
  status: (status) => window.seen.statuses.push(`${list}:${status}`),
  error: (error) => window.seen.errors.push(`${error.name} ${error.status}: ${error.message}`),
  end: (job) => window.seen.ended.push(job),
})"""


def watch(page: Page, list_name: str, call: str, arg: Any = None) -> None:
    """Start a watch in the page: ``call`` is ``(handlers, arg) => jobcast.watch...``."""
    page.evaluate(
        f"([list, arg]) => {{ window[list] = ({call})(({RECORD})(list), arg); }}",
        [list_name, arg],
    )


def start(page: Page, task: str, params: dict[str, Any], options: Any = None) -> Any:
    """``jobcast.startJob`` in the page: the job it resolves to."""
    return page.evaluate(
        "([task, params, options]) => jobcast.startJob(task, params, options)",
        [task, params, options or {}],
    )


def about(events: list[list[Any]], job_id: str) -> list[list[Any]]:
    return [event for event in events if event[2] == job_id]


def test_watches_go_on_across_a_server_restart_with_every_id_once(
    serve: Serve, page: Page, tmp_path: Path
) -> None:
    _, server = serve(db=str(tmp_path / "jobs.db"), max_workers=1, retry_ms=100)
    open_client(page, server)
    watch(page, "all", "(handlers) => jobcast.watchJobs(handlers)")
    page.wait_for_function("window.seen.all.some(([type]) => type === 'snapshot')")

    held = start(page, "hold", {"name": "restart"})  # takes the only worker
    waiting = start(page, "count", {"n": 3})  # queued behind it, kept in the file
    assert waiting["state"] == "queued"
    watch(page, "job", "(handlers, id) => jobcast.watchJob(id, handlers)", waiting["id"])
    page.wait_for_function("window.seen.job.some(([type]) => type === 'queued')")
    page.wait_for_function(
        "id => window.seen.all.some(([type, , job]) => type === 'running' && job === id)",
        arg=held["id"],
    )

    server.stop()
    page.wait_for_function("window.seen.statuses.includes('all:reconnecting')")
    server.start()  # the same file and port; the queued job runs now
    page.wait_for_function("window.seen.ended.length === 1", timeout=15_000)
    page.wait_for_function(
        "id => window.seen.all.some(([type, , job]) => type === 'succeeded' && job === id)",
        arg=waiting["id"],
    )

    record = seen(page)
    assert record["errors"] == []
    assert record["ended"][0]["state"] == "succeeded" and record["ended"][0]["result"] == 3
    # Every event of the service, each once, ids continuous across the restart.
    snapshot, *events = record["all"]
    ids = [seq for _, seq, _ in events]
    assert snapshot[0] == "snapshot"
    assert ids == list(range(snapshot[1] + 1, snapshot[1] + 1 + len(ids)))
    assert (held["id"] in {job for _, _, job in events}) and any(
        kind in ("cancelled", "interrupted") for kind, _, _ in about(events, held["id"])
    )
    # The job's own watch: its whole history, the same events, each once.
    assert record["job"] == about(events, waiting["id"])
    kinds = [kind for kind, _, _ in record["job"]]
    assert kinds[0] == "queued" and kinds[-1] == "succeeded" and "running" in kinds
    # Both lost the server and came back by themselves; the job's watch closed at its end.
    assert {"all:reconnecting", "job:reconnecting"} <= set(record["statuses"])
    assert page.evaluate("[window.all.status, window.job.status]") == ["live", "closed"]


def test_a_watch_the_server_turns_away_for_now_waits_as_told_and_gets_in(
    serve: Serve, page: Page
) -> None:
    _, server = serve(max_streams_per_client=1)
    open_client(page, server)
    watch(page, "all", "(handlers) => jobcast.watchJobs(handlers)")
    page.wait_for_function("window.seen.statuses.includes('all:live')")
    # The browser gives up on a 429; the module asks why, and tries again when told to.
    page.evaluate(
        """() => { window.second = jobcast.watchJobs({
          status: (status, error) =>
            window.seen.statuses.push(`second:${status}:${error?.status ?? ''}`),
          error: (error) => window.seen.errors.push(error.message),
        }); }"""
    )
    page.wait_for_function("window.seen.statuses.includes('second:reconnecting:429')")
    page.evaluate("window.all.close()")
    page.wait_for_function("window.second.status === 'live'", timeout=15_000)
    assert seen(page)["errors"] == []


def test_start_job_rejects_with_the_status_and_the_servers_message(
    serve: Serve, page: Page
) -> None:
    _, server = serve()
    open_client(page, server)
    refusals = page.evaluate(
        """async () => {
          const refusal = (promise) => promise.then(
            (job) => ({ started: job.id }),
            (error) => ({ error: error instanceof Error, name: error.name, status: error.status,
                          message: error.message, detail: error.detail }),
          );
          return {
            invalid: await refusal(jobcast.startJob('sleep', { seconds: -1 })),
            unknown: await refusal(jobcast.startJob('no-such-task', {})),
            placement: await refusal(
              jobcast.startJob('sleep', {}, { delay: 5, run_at: new Date() })),
          };
        }"""
    )
    invalid = refusals["invalid"]
    assert invalid["error"] and invalid["name"] == "JobcastError" and invalid["status"] == 422
    assert invalid["message"] == "seconds: Input should be greater than 0"
    assert invalid["detail"][0]["loc"] == ["body", "seconds"]
    assert refusals["unknown"]["status"] == 404
    assert "no-such-task" in refusals["unknown"]["message"]
    assert refusals["placement"]["status"] == 422
    assert "either delay or run_at" in refusals["placement"]["message"]
    assert httpx.get(f"{server.url}/api/jobs").json() == []

    server.stop()
    gone = page.evaluate(
        "() => jobcast.startJob('sleep', {}).catch((error) => [error.status, error.message])"
    )
    assert gone == [
        0,
        f"could not reach the jobcast server at {server.url}: check that it is running and "
        "that the URL is right",
    ]


def test_start_job_takes_delay_run_at_and_priority_as_the_api_does(
    serve: Serve, page: Page
) -> None:
    _, server = serve()
    open_client(page, server)
    delayed = start(page, "count", {"n": 1}, {"delay": 600, "priority": 7})
    assert delayed["state"] == "queued" and delayed["priority"] == 7
    assert delayed["run_at"] is not None
    when = "new Date(Date.UTC(2040, 0, 2, 3, 4, 5))"
    at = page.evaluate(
        f"() => jobcast.startJob('count', {{ n: 1 }}, {{ run_at: {when} }}).then(job => job.run_at)"
    )
    assert at.startswith("2040-01-02T03:04:05")
    assert httpx.get(f"{server.url}/api/jobs/{delayed['id']}").json()["priority"] == 7


def test_a_watch_of_a_job_resumed_past_its_end_ends_and_an_unknown_job_is_an_error(
    serve: Serve, page: Page
) -> None:
    _, server = serve()
    open_client(page, server)
    job = start(page, "shout", {"lines": 2})
    watch(page, "job", "(handlers, id) => jobcast.watchJob(id, handlers)", job["id"])
    page.wait_for_function("window.seen.ended.length === 1")
    kinds = [kind for kind, _, _ in seen(page)["job"]]
    assert kinds[0] == "queued" and kinds.count("log") == 2 and kinds[-1] == "succeeded"
    last = seen(page)["job"][-1][1]

    # Resumed after its last event, the server answers 204: the watch ends with the job.
    page.evaluate("window.seen.job = []")
    watch(
        page,
        "job",
        "(handlers, [id, last]) => jobcast.watchJob(id, handlers, { lastEventId: last })",
        [job["id"], last],
    )
    page.wait_for_function("window.seen.ended.length === 2")
    record = seen(page)
    assert record["job"] == [] and record["ended"][1]["state"] == "succeeded"
    assert record["errors"] == []

    watch(page, "unknown", "(handlers) => jobcast.watchJob('no-such-job', handlers)")
    page.wait_for_function("window.seen.errors.length === 1")
    assert re.fullmatch(r"JobcastError 404: .*no-such-job.*", seen(page)["errors"][0])
    assert page.evaluate("window.unknown.status") == "closed"


def test_an_id_or_a_task_made_of_dots_names_itself_not_the_path_above(
    serve: Serve, page: Page
) -> None:
    _, server = serve()
    open_client(page, server)
    job = start(page, "count", {"n": 1})
    watch(page, "job", "(handlers, id) => jobcast.watchJob(id, handlers)", job["id"])
    page.wait_for_function("window.seen.ended.length === 1")
    # /api/jobs/../events is /api/events to a URL, even as %2E%2E: every job's stream, whose
    # snapshot shows the finished job above, which the watch would take for its end.
    for dots in (".", "..", ""):
        watch(page, "all", "(handlers, id) => jobcast.watchJob(id, handlers)", dots)
    page.wait_for_function("window.seen.errors.length === 3")
    assert seen(page)["errors"] == [
        "JobcastError 404: no job with id '.'",
        "JobcastError 404: no job with id '..'",
        "JobcastError 404: no job with id ''",
    ]
    assert len(seen(page)["ended"]) == 1 and seen(page)["all"] == []
    refused = page.evaluate(
        "(task) => jobcast.startJob(task, {}).catch((e) => `${e.status}: ${e.message}`)", ".."
    )
    assert refused == "404: no task named '..'"


def test_params_json_cannot_carry_are_the_callers_error_not_an_unreachable_server(
    serve: Serve, page: Page
) -> None:
    _, server = serve()
    open_client(page, server)
    refused = page.evaluate(
        "() => jobcast.startJob('count', { n: 1n }).catch((e) => `${e.name}: ${e.status}`)"
    )
    assert refused == "TypeError: undefined"


def test_a_watch_with_the_token_gets_the_protected_stream_and_a_wrong_one_is_refused(
    serve: Serve, page: Page
) -> None:
    _, server = serve(token=TOKEN, protect_reads=True)
    open_client(page, server)
    watch(page, "all", "(handlers, token) => jobcast.watchJobs(handlers, { token })", TOKEN)
    page.wait_for_function("window.seen.all.some(([type]) => type === 'snapshot')")
    started = start(page, "shout", {"lines": 1}, {"token": TOKEN})
    page.wait_for_function(
        "id => window.seen.all.some(([type, , job]) => type === 'succeeded' && job === id)",
        arg=started["id"],
    )
    # The token never went into a URL: the stream took the cookie its first request earned.
    assert "token=" not in page.evaluate("performance.getEntries().map(e => e.name).join(' ')")

    wrong = "wrong-token-0123456789"
    watch(page, "wrong", "(handlers, token) => jobcast.watchJobs(handlers, { token })", wrong)
    page.wait_for_function("window.seen.errors.length === 1")
    assert seen(page)["errors"][0].startswith("JobcastError 401: this server needs an access token")
    assert page.evaluate("window.wrong.status") == "closed"
    refused = page.evaluate(
        "token => jobcast.startJob('shout', {}, { token }).catch(error => error.status)", wrong
    )
    assert refused == 401
    # Text no token holds (a header cannot even carry some of it) is refused the same way,
    # not taken for a server that cannot be reached.
    for text in ("café-token-0123456789", "two words", "line\nbreak"):
        refused = page.evaluate(
            "token => jobcast.startJob('shout', {}, { token }).catch(error => error.status)", text
        )
        assert refused == 401
        watch(page, "all", "(handlers, token) => jobcast.watchJobs(handlers, { token })", text)
    page.wait_for_function("window.seen.errors.length === 4")
    assert all("the token is not one" in error for error in seen(page)["errors"][1:])


def test_the_declarations_name_every_export_and_every_event() -> None:
    module = MODULE.read_text()
    types = TYPES.read_text()
    exports = set(re.findall(r"^export (?:async )?(?:function|class|const) (\w+)", module, re.M))
    declared = set(re.findall(r"^export (?:function|class|const) (\w+)", types, re.M))
    surface = {"EVENT_TYPES", "JobcastError", "TERMINAL_STATES", "request", "startJob"}
    assert exports == declared == surface | {"watchJob", "watchJobs"}
    events_block = re.search(r"EVENT_TYPES = Object\.freeze\(\[(.*?)\]\)", module, re.S)
    assert events_block
    events = set(re.findall(r"'(\w+)'", events_block.group(1)))
    event_map = re.search(r"interface EventMap \{(.*?)\}", types, re.S)
    assert event_map
    assert set(re.findall(r"(\w+):", event_map.group(1))) == events
    # Every state a job reaches is an event of its own name.
    assert {state.value for state in JobState} <= events


def test_the_module_and_its_declarations_are_served(serve: Serve) -> None:
    _, server = serve()
    module = httpx.get(f"{server.url}/static/jobcast-client.js")
    assert module.status_code == 200
    assert module.headers["content-type"].startswith("text/javascript")
    assert module.text == MODULE.read_text()
    types = httpx.get(f"{server.url}/static/jobcast-client.d.ts")
    assert types.status_code == 200 and types.text == TYPES.read_text()
    assert types.headers["content-type"].startswith("application/typescript")


def readme_html_example() -> str:
    """The README's JavaScript example: the html block marked to be run."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("\n### JavaScript\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"<!-- readme-test -->\n```html\n(.*?)\n```", section, re.S)
    assert len(blocks) == 1, "the JavaScript section has one html example marked readme-test"
    example: str = blocks[0]
    return example


def test_the_readmes_javascript_example_starts_a_job_and_follows_it(
    serve: Serve, page: Page
) -> None:
    _, server = serve()
    serve_page(page, server, "/pages/sleep.html", readme_html_example())
    page.get_by_role("button").click()
    expect(page.locator("output")).to_have_text(
        'succeeded: {"slept_s":1,"steps":4}', timeout=10_000
    )
    expect(page.locator("li")).to_have_text([f"step {n}/4 done" for n in range(1, 5)])
    expect(page.locator("progress")).to_have_js_property("value", 100)
