from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AsyncExitStack
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import httpx
import pytest
import uvicorn
from asgi_lifespan import LifespanManager
from playwright.sync_api import Browser, BrowserContext, Page, sync_playwright

from jobcast import Job, JobCast
from tests.apps import GATES, make_jobs

if TYPE_CHECKING:
    from tests.redis_server import RedisServer


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


# -- tiers -------------------------------------------------------------------------------------

#: Fixtures that make a test of a tier: what it starts (a server, a process, a browser, Redis).
TIER_FIXTURES = {
    "api": "integration",  # the whole service, in process
    "serve": "integration",
    "spawn": "integration",
    "demo_server": "integration",
    "browser": "browser",
    "page": "browser",
    "redis_server": "redis",
    "cluster": "redis",
}
TIERS = ("integration", "redis", "browser")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark each test with its tier: by the fixtures it uses, or its module's own marker;
    a test of no other tier is a unit test. Browser and Redis tests are integration tests."""
    for item in items:
        fixtures = getattr(item, "fixturenames", ())
        tiers = {TIER_FIXTURES[name] for name in fixtures if name in TIER_FIXTURES}
        tiers |= {tier for tier in TIERS if item.get_closest_marker(tier) is not None}
        if tiers & {"redis", "browser"}:
            tiers.add("integration")
        for tier in sorted(tiers) or ["unit"]:
            item.add_marker(tier)


# -- a real redis-server -----------------------------------------------------------------------


@pytest.fixture
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A ``redis-server`` of the test's own, running; killed at teardown."""
    from tests.redis_server import REDIS_SERVER, RedisServer

    if not Path(REDIS_SERVER).is_file():
        pytest.fail(f"{REDIS_SERVER} is missing; install it: scripts/system-deps redis-server")
    server = RedisServer(tmp_path_factory.mktemp("redis"), free_port())
    server.start()
    try:
        yield server
    finally:
        server.close()


# -- a real browser ----------------------------------------------------------------------------

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
]


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """Debian's headless Chromium, driven by Playwright; missing, the test fails saying so."""
    if not CHROMIUM.exists():
        pytest.fail(
            f"the browser tests need Debian's chromium at {CHROMIUM}; `make test` installs it"
        )
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_FLAGS)
        yield browser
        browser.close()


@pytest.fixture
def new_page(browser: Browser) -> Iterator[Callable[..., Page]]:
    """Open fresh pages, ``new_page(width=1280, height=720)``, each in a context of its own;
    the test fails if one of them throws an uncaught error."""
    contexts: list[BrowserContext] = []
    errors: list[Exception] = []

    def open_page(*, width: int = 1280, height: int = 720) -> Page:
        context = browser.new_context(viewport={"width": width, "height": height})
        contexts.append(context)
        page = context.new_page()
        page.on("pageerror", lambda error: errors.append(error))
        return page

    yield open_page
    for context in contexts:
        context.close()
    assert not errors, f"the page threw: {errors}"


@pytest.fixture
def page(new_page: Callable[..., Page]) -> Page:
    """A fresh page; the test fails if it throws an uncaught error."""
    return new_page()


@pytest.fixture(autouse=True)
def _open_gates() -> Iterator[None]:
    """Open every gate after a test, so no ``hold`` job thread outlives it."""
    yield
    for event in GATES.values():
        event.set()
    GATES.clear()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class Server:
    """A real uvicorn serving ``app`` on a loopback port, in a thread; restartable."""

    def __init__(self, app: Any, port: int) -> None:
        self.app = app
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        config = uvicorn.Config(
            self.app,
            host="127.0.0.1",
            port=self.port,
            log_level="warning",
            timeout_graceful_shutdown=2,
        )
        server = uvicorn.Server(config)
        thread = threading.Thread(target=server.run, name="uvicorn", daemon=True)
        thread.start()
        deadline = time.monotonic() + 10
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.01)
        self._server, self._thread = server, thread

    def stop(self) -> None:
        assert self._server is not None and self._thread is not None
        self._server.should_exit = True
        self._thread.join(timeout=15)
        assert not self._thread.is_alive(), "uvicorn did not stop"
        self._server = self._thread = None


@pytest.fixture
def serve() -> Iterator[Callable[..., tuple[JobCast, Server]]]:
    """Start a real server for a fresh JobCast: ``jobs, server = serve(**options)``;
    ``build`` makes its app (``JobCast.create_app`` unless given)."""
    servers: list[Server] = []

    def start(
        jobs: JobCast | None = None,
        *,
        build: Callable[[JobCast], Any] | None = None,
        **options: Any,
    ) -> tuple[JobCast, Server]:
        jobs = jobs or make_jobs(**options)
        server = Server((build or JobCast.create_app)(jobs), free_port())
        server.start()
        servers.append(server)
        return jobs, server

    yield start
    for server in servers:
        if server._server is not None:
            server.stop()


@pytest.fixture
async def api() -> AsyncIterator[Callable[..., Any]]:
    """In-process service: ``jobs, client = await api(**options)``, for finite answers."""
    async with AsyncExitStack() as stack:

        async def start(**options: Any) -> tuple[JobCast, httpx.AsyncClient]:
            jobs = make_jobs(**options)
            running = await stack.enter_async_context(LifespanManager(jobs.create_app()))
            transport = httpx.ASGITransport(app=running.app)
            client = httpx.AsyncClient(transport=transport, base_url="http://jobcast.localhost")
            await stack.enter_async_context(client)
            return jobs, client

        yield start


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=10) as client:
        yield client


async def wait_job(
    jobs: JobCast,
    job_id: str,
    done: Callable[[Job], bool] = lambda job: job.finished,
    *,
    seconds: float = 5,
) -> Job:
    """Wait, on the event log rather than a clock, until ``done(job)`` holds."""
    runner = jobs.runner
    with anyio.fail_after(seconds):
        while not done(job := runner.get(job_id)):
            await runner.log.wait(runner.log.last_seq)
    return job


def log_lines(jobs: JobCast, job_id: str) -> list[bytes]:
    """The SSE frames of a job's log lines still in the event log, oldest first."""
    return [
        event.frame
        for event in jobs.runner.log.iter_after(0)
        if event.name == "log" and event.job_id == job_id
    ]


def wait_until(predicate: Callable[[], bool], seconds: float = 5.0) -> None:
    """Poll ``predicate`` until it holds; fail after ``seconds``.

    For conditions in another process or thread that offer nothing to wait on.
    """
    deadline = time.monotonic() + seconds
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {seconds} s")
        time.sleep(0.01)


class Process:
    """``jobcast serve`` in a real child process on a loopback port."""

    def __init__(self, target: str, port: int, env: dict[str, str]) -> None:
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        command = [sys.executable, "-m", "jobcast", "serve", target, "--port", str(port)]
        # Into a file, not a pipe: a pipe nobody reads fills up, and the server then blocks
        # on its next log line.
        self._log = tempfile.TemporaryFile("w+")
        self.popen = subprocess.Popen(
            command,
            env={**os.environ, **env},
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=Path(__file__).parents[1],
            text=True,
        )
        wait_until(self._ready, seconds=20)

    def _ready(self) -> bool:
        if self.popen.poll() is not None:
            raise RuntimeError(f"server exited early:\n{self.output()}")
        try:
            return httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200
        except httpx.TransportError:
            return False

    def output(self) -> str:
        """Everything it wrote, once it has been stopped (killed, if it still runs)."""
        if self.popen.poll() is None:
            self.popen.kill()
        self.popen.wait(10)
        self._log.seek(0)
        return self._log.read()

    def stop(self) -> None:
        """Kill it, if it still runs, and let go of its output."""
        if self.popen.poll() is None:
            self.popen.kill()
        self.popen.wait(10)
        self._log.close()

    @property
    def rss_kib(self) -> int:
        with open(f"/proc/{self.popen.pid}/status") as status:
            line = next(line for line in status if line.startswith("VmRSS:"))
        return int(line.split()[1])


@pytest.fixture
def spawn() -> Iterator[Callable[..., Process]]:
    """Start ``jobcast serve`` processes that are killed after the test; ``port`` to
    start one again where one was."""
    processes: list[Process] = []

    def start(target: str = "tests.apps:served", *, port: int | None = None, **env: str) -> Process:
        process = Process(target, port or free_port(), env)
        processes.append(process)
        return process

    yield start
    for process in processes:
        process.stop()
