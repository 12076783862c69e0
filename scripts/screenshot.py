"""Make docs/dashboard.png: the demo with jobs in several states, in a real headless Chromium.

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
OUT = Path(__file__).parents[1] / "docs" / "dashboard.png"


def main() -> None:
    jobs = JobCast(max_workers=3)
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
        page = browser.new_page(viewport={"width": 1400, "height": 860})
        page.goto(url)
        expect(page.locator("#connection")).to_have_attribute("data-status", "live")
        done = start("sleep", seconds=0.5, steps=5)
        start("fail", steps=2, message="input file is corrupt", step_seconds=0.1)
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
        time.sleep(2.5)  # let the bars move: the picture, not a test, waits here
        OUT.parent.mkdir(exist_ok=True)
        page.screenshot(path=str(OUT))
        browser.close()
    server.should_exit = True
    print(f"wrote {OUT}", file=sys.stderr)


if __name__ == "__main__":
    main()
