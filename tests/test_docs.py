"""The docs page, in a real headless Chromium against a real uvicorn: every task's operation
is there, and every request the page makes goes to the server itself (as offline)."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from fastapi import FastAPI
from playwright.sync_api import Browser, Route, expect

from jobcast import JobCast
from jobcast.docs import ASSETS
from tests.conftest import Server

Serve = Callable[..., tuple[JobCast, Server]]


def in_an_app_of_ones_own(jobs: JobCast) -> FastAPI:
    """The README's way to put jobcast into one's own app: the router, then the page."""
    app = FastAPI(lifespan=jobs.lifespan)
    app.include_router(jobs.router)
    jobs.add_page(app)
    return app


BUILDS = pytest.mark.parametrize(
    "build", [JobCast.create_app, in_an_app_of_ones_own], ids=["create_app", "add_page"]
)


@BUILDS
def test_the_docs_page_shows_every_task_and_asks_nothing_of_elsewhere(
    serve: Serve, browser: Browser, build: Callable[[JobCast], Any]
) -> None:
    jobs, server = serve(build=build)
    here = urlsplit(server.url).netloc
    asked: list[str] = []
    elsewhere: list[str] = []

    def only_here(route: Route) -> None:
        url = route.request.url
        asked.append(url)
        if urlsplit(url).netloc == here:
            route.continue_()
        else:  # what a machine without a network could not load
            elsewhere.append(url)
            route.abort()

    context = browser.new_context()
    try:
        context.route("**/*", only_here)
        page = context.new_page()
        errors: list[Exception] = []
        page.on("pageerror", lambda error: errors.append(error))
        page.goto(f"{server.url}/docs")
        for task in jobs.tasks:
            operation = page.locator(
                f'.opblock-summary-path[data-path="/api/tasks/{task.name}/jobs"]'
            )
            expect(operation).to_be_visible()
        # Each task's form, with its params' defaults, starts a job from the page.
        page.locator('.opblock-summary-path[data-path="/api/tasks/count/jobs"]').click()
        count = page.locator("#operations-tasks-start_count")
        expect(count).to_contain_text(re.compile(r'"n":\s*1000'))
        count.get_by_role("button", name="Try it out").click()
        count.get_by_role("button", name="Execute").click()
        status = count.locator(".live-responses-table .response .response-col_status")
        expect(status).to_have_text("202")
    finally:
        context.close()
    assert not errors, f"the page threw: {errors}"
    assert elsewhere == []
    assert [(job.task, job.params) for job in jobs.runner.jobs.values()] == [("count", {"n": 1000})]
    paths = {urlsplit(url).path for url in asked}
    assert {"/docs", "/openapi.json", f"{ASSETS}/swagger-ui-bundle.js"} <= paths


@BUILDS
def test_redoc_which_would_load_from_a_cdn_is_not_served(
    serve: Serve, build: Callable[[JobCast], Any]
) -> None:
    _, server = serve(build=build)
    assert httpx.get(f"{server.url}/redoc").status_code == 404
    page = httpx.get(f"{server.url}/docs").text
    assert "cdn" not in page and "https://" not in page
