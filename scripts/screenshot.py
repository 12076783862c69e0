"""Make docs/dashboard.png and docs/dashboard-phone.png: the demo with jobs in several states,
in a real headless Chromium, at a desktop and a phone size.

Run with `make screenshot`.
"""

from __future__ import annotations

import socket
import sys
import threading
import time
from pathlib import Path

import httpx
import uvicorn
from playwright.sync_api import expect, sync_playwright

from jobcast import JobCast
from jobcast.demo import fail, heavy, sleep, ticker

CHROMIUM = "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
DOCS = Path(__file__).parents[1] / "docs"
DESKTOP = DOCS / "dashboard.png"
PHONE = DOCS / "dashboard-phone.png"


def main() -> None:
    jobs = JobCast(max_workers=3, db=":memory:")  # the picture keeps nothing
    for task in (sleep, heavy, fail, ticker):
        jobs.task(task)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(jobs.create_app(), port=port, log_level="warning"))
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.05)
    url = f"http://127.0.0.1:{port}"

    def start(task: str, **params: object) -> str:
        response = httpx.post(f"{url}/api/tasks/{task}/jobs", json=params)
        response.raise_for_status()
        job_id: str = response.json()["id"]
        return job_id

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(url)
        expect(page.locator("#connection")).to_have_attribute("data-status", "live")
        done = start("sleep", seconds=0.5, steps=5)
        failed = start("fail", steps=2, message="input file is corrupt", step_seconds=0.1)
        cancelled = start("sleep", seconds=60, steps=60)
        expect(page.locator(f'tr[data-job-id="{done}"]')).to_have_attribute(
            "data-state", "succeeded"
        )
        httpx.post(f"{url}/api/jobs/{cancelled}/cancel").raise_for_status()
        running = start("heavy", seconds=20)
        start("ticker", count=400, rate=20)
        start("sleep", seconds=30, steps=30)
        start("sleep", seconds=5, steps=5)  # queued: three workers are busy
        expect(page.locator(f'tr[data-job-id="{running}"] .progress')).not_to_have_attribute(
            "data-percent", ""
        )
        page.locator(f'tr[data-job-id="{running}"]').wait_for()
        # The failed job's panel: its log, ending with its error.
        page.locator(f'tr[data-job-id="{failed}"] button.logs').click()
        expect(page.locator("#log-panel .log-error")).to_be_visible()
        time.sleep(2.5)  # let the bars move: the picture, not a test, waits here
        DOCS.mkdir(exist_ok=True)
        page.screenshot(path=str(DESKTOP))

        phone = browser.new_page(viewport={"width": 390, "height": 844}, device_scale_factor=2)
        phone.goto(url)
        expect(phone.locator("#connection")).to_have_attribute("data-status", "live")
        expect(phone.locator(f'tr[data-job-id="{running}"]')).to_be_visible()
        phone.screenshot(path=str(PHONE))
        browser.close()
    server.should_exit = True
    print(f"wrote {DESKTOP} and {PHONE}", file=sys.stderr)


if __name__ == "__main__":
    main()
