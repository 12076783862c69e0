"""Scale-out on Redis, on real processes: a ``redis-server``, ``jobcast serve`` API processes
and ``jobcast worker`` processes, killed, stopped and restarted under running jobs."""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from tests.conftest import free_port, wait_until
from tests.redis_server import RedisServer
from tests.sse import Frame, Stream, open_stream

pytestmark = [pytest.mark.anyio, pytest.mark.integration]  # child processes, servers

ROOT = Path(__file__).parents[1]
TARGET = "tests.apps:served"
TERMINAL = frozenset({"succeeded", "failed", "cancelled", "interrupted"})
#: Seconds a worker may stay silent before it counts as dead: short, so that tests see it.
HEARTBEAT = 1.0


class Node:
    """A ``jobcast`` child process. Its output goes to a file: a pipe nobody reads while
    the test runs would fill up and stall the process."""

    def __init__(self, argv: list[str], env: dict[str, str], log: Path) -> None:
        self.argv = argv
        self.env = env
        self.log = log
        self.popen = self._spawn()

    def _spawn(self) -> subprocess.Popen[bytes]:
        with self.log.open("ab") as out:
            return subprocess.Popen(
                [sys.executable, "-m", "jobcast", *self.argv],
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=ROOT,
            )

    @property
    def alive(self) -> bool:
        return self.popen.poll() is None

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def ready(self) -> bool:
        raise NotImplementedError

    def wait_ready(self) -> None:
        def ready() -> bool:
            if not self.alive:
                raise RuntimeError(f"jobcast {self.argv[0]} exited early:\n{self.output()}")
            return self.ready()

        wait_until(ready, seconds=30)

    def kill_9(self) -> None:
        self.popen.kill()
        self.popen.wait(10)

    def close(self) -> None:
        if self.alive:
            self.kill_9()


class Api(Node):
    """``jobcast serve`` on a loopback port."""

    def __init__(self, env: dict[str, str], log: Path, target: str = TARGET) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        super().__init__(["serve", target, "--port", str(self.port)], env, log)

    def ready(self) -> bool:
        try:
            return httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200
        except httpx.TransportError:
            return False

    def restart(self) -> None:
        """Start again on the same port (after :meth:`kill_9`)."""
        assert not self.alive
        self.popen = self._spawn()
        self.wait_ready()


class Worker(Node):
    """``jobcast worker``."""

    def __init__(self, env: dict[str, str], log: Path, target: str = TARGET) -> None:
        super().__init__(["worker", target], env, log)

    def ready(self) -> bool:
        return "takes jobs" in self.output()


class Cluster:
    """API processes and workers on one Redis; every process is killed at teardown."""

    def __init__(self, redis: RedisServer, directory: Path) -> None:
        self.redis = redis
        self.directory = directory
        self.nodes: list[Node] = []
        # Nothing from the environment the tests run in: only what is set here.
        base = {key: value for key, value in os.environ.items() if not key.startswith("JOBCAST_")}
        self.env = {
            **base,
            "PYTHONUNBUFFERED": "1",
            "JOBCAST_REDIS_URL": redis.url,
            "JOBCAST_REDIS_PREFIX": "cluster-test",
            "JOBCAST_HEARTBEAT_TIMEOUT": f"{HEARTBEAT:g}",
            "JOBCAST_GRACE_PERIOD": "1",
            "JOBCAST_KILL_GRACE": "1",
        }

    def start(
        self,
        apis: int = 0,
        workers: int = 0,
        env: dict[str, str] | None = None,
        target: str = TARGET,
    ) -> tuple[list[Api], list[Worker]]:
        """Start processes side by side, and return once every one of them is ready."""
        full = {**self.env, **(env or {})}
        started_apis = [Api(full, self._log("api"), target) for _ in range(apis)]
        started_workers = [Worker(full, self._log("worker"), target) for _ in range(workers)]
        for node in [*started_apis, *started_workers]:
            self.nodes.append(node)
        for node in [*started_apis, *started_workers]:
            node.wait_ready()
        return started_apis, started_workers

    def worker(self, **env: str) -> Worker:
        return self.start(workers=1, env=env)[1][0]

    def close(self) -> None:
        for node in self.nodes:
            node.close()

    def _log(self, kind: str) -> Path:
        return self.directory / f"{kind}-{len(self.nodes)}-{time.monotonic_ns()}.log"


@pytest.fixture
def cluster(redis_server: RedisServer, tmp_path: Path) -> Iterator[Cluster]:
    cluster = Cluster(redis_server, tmp_path)
    try:
        yield cluster
    finally:
        cluster.close()


# -- helpers ---------------------------------------------------------------------------------


def about(frame: Frame) -> str:
    """The job a frame is about."""
    if frame.event == "log":
        job_id: str = frame.data["job_id"]
    else:
        job_id = frame.data["job"]["id"]
    return job_id


def ids(frames: list[Frame]) -> list[int]:
    found = [frame.id for frame in frames]
    assert all(isinstance(seq, int) for seq in found), found
    return [seq for seq in found if seq is not None]


def about_job(frame: Frame, job_id: str) -> bool:
    return frame.event != "snapshot" and about(frame) == job_id


def is_(job_id: str, *events: str) -> Callable[[Frame], bool]:
    """A frame predicate: an event of ``job_id`` among ``events``."""
    return lambda frame: frame.event in events and about(frame) == job_id


async def start_job(
    client: httpx.AsyncClient, api: Api, task: str, **params: Any
) -> dict[str, Any]:
    response = await client.post(f"{api.url}/api/tasks/{task}/jobs", json=params)
    assert response.status_code == 202, response.text
    job: dict[str, Any] = response.json()
    return job


async def job(client: httpx.AsyncClient, api: Api, job_id: str) -> dict[str, Any]:
    response = await client.get(f"{api.url}/api/jobs/{job_id}")
    assert response.status_code == 200, response.text
    found: dict[str, Any] = response.json()
    return found


async def job_frames(
    client: httpx.AsyncClient, api: Api, job_id: str, seconds: float = 10
) -> list[Frame]:
    """The frames of the job's stream, up to its terminal event."""
    async with open_stream(client, f"{api.url}/api/jobs/{job_id}/events") as stream:
        return await stream.until(lambda frame: frame.event in TERMINAL, seconds)


async def until(check: Callable[[], Awaitable[bool]], seconds: float = 5) -> None:
    """Ask ``check`` until it holds; fail after ``seconds``."""
    with anyio.fail_after(seconds):
        while not await check():  # noqa: ASYNC110 - another process's answer: nothing to await
            await anyio.sleep(0.02)


async def lasting(seconds: float) -> None:
    """Let a fault the test made (an outage, a stall) last ``seconds``."""
    await anyio.sleep(seconds)


async def absence_window(seconds: float) -> None:
    """A bounded window over which the test then asserts that something did not happen."""
    await anyio.sleep(seconds)


async def snapshot(stream: Stream) -> Frame:
    frame = await stream.next(10)
    assert frame.event == "snapshot", frame
    return frame


class Feed:
    """``/api/events`` read in order, remembering every frame: waiting for one event does not
    lose those that came before it."""

    def __init__(self, stream: Stream) -> None:
        self.stream = stream
        self.frames: list[Frame] = []

    async def wait(
        self, predicate: Callable[[Frame], bool], seconds: float = 10, *, since: int = 0
    ) -> Frame:
        """The first frame from index ``since`` on that ``predicate`` accepts."""
        with anyio.fail_after(seconds):
            index = since
            while True:
                while index < len(self.frames):
                    if predicate(self.frames[index]):
                        return self.frames[index]
                    index += 1
                self.frames.append(await self.stream.next(seconds))


@asynccontextmanager
async def feed(
    client: httpx.AsyncClient, api: Api, *, last_event_id: int | None = None
) -> AsyncIterator[Feed]:
    """All events of ``api``: from its snapshot on (which is ``frames[0]``), or resumed after
    ``last_event_id``."""
    url = f"{api.url}/api/events"
    async with open_stream(client, url, last_event_id=last_event_id) as stream:
        watched = Feed(stream)
        if last_event_id is None:
            watched.frames.append(await snapshot(stream))
        yield watched


# -- the tests -------------------------------------------------------------------------------


async def test_a_job_started_on_one_api_process_is_watched_to_its_end_on_another(
    cluster: Cluster, client: httpx.AsyncClient
) -> None:
    (a, b), _ = cluster.start(apis=2, workers=2)
    async with open_stream(client, f"{b.url}/api/events") as feed:
        await snapshot(feed)
        started = await start_job(client, a, "sleep", seconds=0.3, steps=3)
        await feed.until(is_(started["id"], "queued"))

    on_b = await job_frames(client, b, started["id"])

    assert [frame.event for frame in on_b][:2] == ["queued", "running"]
    assert on_b[-1].event == "succeeded"
    assert on_b[-1].data["job"]["result"] == {"slept_s": 0.3, "steps": 3}
    assert [frame.data["line"] for frame in on_b if frame.event == "log"] == [
        "step 1/3 done",
        "step 2/3 done",
        "step 3/3 done",
    ]
    seqs = ids(on_b)
    assert seqs == sorted(set(seqs))  # increasing integers
    assert [frame.data["seq"] for frame in on_b] == seqs
    # Both processes tell the same story, byte for byte, and agree on the end.
    assert await job_frames(client, a, started["id"]) == on_b
    for api in (a, b):
        assert (await job(client, api, started["id"]))["state"] == "succeeded"
        health = (await client.get(f"{api.url}/healthz")).json()
        assert health["redis"] == "ok" and health["workers"] == 2, health


async def test_a_stream_read_on_one_process_resumes_on_another_with_no_gap_and_no_duplicate(
    cluster: Cluster, client: httpx.AsyncClient
) -> None:
    (a, b), _ = cluster.start(apis=2, workers=1)
    async with open_stream(client, f"{b.url}/api/events") as steady:
        at = await snapshot(steady)
        async with open_stream(client, f"{a.url}/api/events") as first:
            assert (await snapshot(first)).id == at.id  # the same event log on both
            started = await start_job(client, a, "ticker", count=20, rate=100)
            before = [await first.next() for _ in range(6)]
        last_id = before[-1].id
        assert last_id is not None
        async with open_stream(client, f"{b.url}/api/events", last_event_id=last_id) as resumed:
            after = await resumed.until(is_(started["id"], *TERMINAL))
        everything = await steady.until(is_(started["id"], *TERMINAL))

    assert after[0].id == last_id + 1, after[0]
    assert before + after == everything
    assert ids(everything) == list(range(everything[0].id or 0, last_id + 1 + len(after)))
    assert everything[-1].event == "succeeded"
    assert sum(frame.event == "log" for frame in everything) == 20


async def test_a_job_stream_opened_while_the_job_is_active_ends_after_its_terminal_event(
    cluster: Cluster, client: httpx.AsyncClient
) -> None:
    (api,), _ = cluster.start(apis=1, workers=1)
    started = await start_job(client, api, "sleep", seconds=0.3, steps=3)

    async with open_stream(client, f"{api.url}/api/jobs/{started['id']}/events") as stream:
        frames = await stream.rest(5)

    assert frames[-1].event == "succeeded"


async def test_a_worker_killed_mid_job_is_noticed_and_its_jobs_are_interrupted_or_run_again(
    cluster: Cluster, client: httpx.AsyncClient, tmp_path: Path
) -> None:
    (api,), (doomed,) = cluster.start(apis=1, workers=1)
    gate = tmp_path / "gate"
    async with feed(client, api) as events:
        held = await start_job(client, api, "hold", name="forever")
        retried = await start_job(client, api, "await_file_again", path=str(gate))
        # Both run on the only worker, and have said what they wait for.
        await events.wait(is_(held["id"], "log"))
        await events.wait(is_(retried["id"], "log"))
        cluster.worker()  # a second worker, with nothing to do yet

        killed_wall = time.time()
        doomed.kill_9()
        killed_at, mark = time.monotonic(), len(events.frames)
        interrupted = await events.wait(is_(held["id"], *TERMINAL), since=mark)
        noticed_after = time.monotonic() - killed_at
        await events.wait(is_(retried["id"], "running"), since=mark)
        gate.touch()
        await events.wait(is_(retried["id"], *TERMINAL), since=mark)

    assert interrupted.event == "interrupted"
    error = interrupted.data["job"]["error"]
    assert error["type"] == "Interrupted"
    assert "stopped answering" in error["message"], error
    assert noticed_after < 4 * HEARTBEAT, noticed_after
    # It ended when it was last known running, not when the loss was noticed.
    finished_at = datetime.fromisoformat(interrupted.data["job"]["finished_at"]).timestamp()
    assert finished_at <= killed_wall
    # The other job went back on the queue, said so, and the other worker ran it anew.
    story = [
        frame.data["line"] if frame.event == "log" else frame.event
        for frame in events.frames[mark:]
        if about(frame) == retried["id"] and frame.event != "progress"
    ]
    # The line comes first: once queued, the other worker may start the job at once.
    assert story[0].startswith("queued again") and "stopped answering" in story[0], story
    assert story[1:3] == ["queued", "running"], story
    assert story[-2:] == [f"waiting for {gate}", "succeeded"], story
    assert (await job(client, api, held["id"]))["state"] == "interrupted"
    assert (await job(client, api, retried["id"]))["state"] == "succeeded"
    assert (await client.get(f"{api.url}/healthz")).json()["workers"] == 1


async def test_a_dead_workers_job_is_taken_back_behind_a_hundred_long_jobs_of_live_ones(
    cluster: Cluster, client: httpx.AsyncClient
) -> None:
    busy = {"JOBCAST_MAX_WORKERS": "101", "JOBCAST_JOBS_PER_MINUTE": "1000"}
    (api,), _ = cluster.start(apis=1, workers=1, env=busy)
    long_jobs = 101
    async with feed(client, api) as events:
        for i in range(long_jobs):
            await start_job(client, api, "hold", name=f"long-{i}")

        async def all_running() -> bool:
            params: dict[str, str | int] = {"state": "running", "limit": 1000}
            return len((await client.get(f"{api.url}/api/jobs", params=params)).json()) == 101

        await until(all_running, 20)
        doomed = cluster.worker()  # the first worker has no room left: this one takes it
        victim = await start_job(client, api, "hold", name="victim")
        await events.wait(is_(victim["id"], "log"))

        doomed.kill_9()
        ended = await events.wait(is_(victim["id"], *TERMINAL), 4 * HEARTBEAT + 2)

    assert ended.event == "interrupted"


async def test_sigterm_drains_a_worker_its_short_job_finishes_and_it_exits(
    cluster: Cluster, client: httpx.AsyncClient
) -> None:
    (api,), (draining,) = cluster.start(apis=1, workers=1)
    async with feed(client, api) as events:
        short = await start_job(client, api, "sleep", seconds=0.6, steps=6)
        held = await start_job(client, api, "hold", name="forever")
        await events.wait(is_(short["id"], "log"))
        await events.wait(is_(held["id"], "log"))

        draining.popen.send_signal(signal.SIGTERM)
        later = await start_job(client, api, "count", n=3)  # comes while it drains
        ended = await events.wait(is_(short["id"], *TERMINAL))
        stopped = await events.wait(is_(held["id"], *TERMINAL))
        with anyio.fail_after(10):
            while draining.alive:  # noqa: ASYNC110 - a process's exit: nothing to await here
                await anyio.sleep(0.05)

    assert ended.event == "succeeded"
    assert draining.popen.returncode == 0, draining.output()
    # Past the grace period, the job that would not end was stopped.
    assert stopped.event == "interrupted"
    message = stopped.data["job"]["error"]["message"]
    assert message.startswith("the worker ") and "stopped while the job was running" in message
    # The job started meanwhile was left to the others, still queued: not lost.
    assert (await job(client, api, later["id"]))["state"] == "queued"
    cluster.worker()
    assert (await job_frames(client, api, later["id"]))[-1].event == "succeeded"


async def test_a_cancel_on_another_api_process_reaches_the_job_queued_or_running(
    cluster: Cluster, client: httpx.AsyncClient
) -> None:
    (a, b), _ = cluster.start(apis=2)
    async with feed(client, a) as events:
        # No worker yet: the job waits in the queue, and a cancel ends it at once.
        waiting = await start_job(client, a, "count", n=3)
        answer = await client.post(f"{b.url}/api/jobs/{waiting['id']}/cancel")
        assert answer.status_code == 202, answer.text
        assert answer.json()["state"] == "cancelled"
        await events.wait(is_(waiting["id"], "cancelled"))
        again = await client.post(f"{a.url}/api/jobs/{waiting['id']}/cancel")
        assert again.status_code == 409, again.text

        # A worker comes: it skips the cancelled job, and runs the next one.
        cluster.worker()
        held = await start_job(client, a, "hold", name="forever")
        await events.wait(is_(held["id"], "log"))
        answer = await client.post(f"{b.url}/api/jobs/{held['id']}/cancel")
        assert answer.status_code == 202, answer.text
        stopped = await events.wait(is_(held["id"], *TERMINAL), 2)

    assert stopped.event == "cancelled"
    assert not any(is_(waiting["id"], "running")(frame) for frame in events.frames)
    for api in (a, b):
        assert (await job(client, api, waiting["id"]))["state"] == "cancelled"
        assert (await job(client, api, held["id"]))["state"] == "cancelled"


async def test_an_api_process_killed_and_started_again_knows_the_jobs_and_resumes_streams(
    cluster: Cluster, client: httpx.AsyncClient, tmp_path: Path
) -> None:
    (a, b), _ = cluster.start(apis=2, workers=1)
    gate = tmp_path / "gate"
    done = await start_job(client, a, "count", n=3)
    assert (await job_frames(client, a, done["id"]))[-1].event == "succeeded"
    async with feed(client, b) as steady:
        async with feed(client, a) as first:
            gated = await start_job(client, a, "await_file", path=str(gate))
            ticking = await start_job(client, a, "ticker", count=20, rate=20)
            await first.wait(is_(gated["id"], "log"))
            await first.wait(is_(ticking["id"], "log"))
        before = first.frames[1:]
        last_id = before[-1].id
        assert last_id is not None

        a.kill_9()  # the ticker goes on meanwhile
        a.restart()
        listed = (await client.get(f"{a.url}/api/jobs")).json()
        gate.touch()
        async with feed(client, a, last_event_id=last_id) as resumed:
            for watched in (resumed, steady):
                await watched.wait(is_(gated["id"], *TERMINAL))
                await watched.wait(is_(ticking["id"], *TERMINAL))

    assert {(item["id"], item["state"]) for item in listed} >= {
        (done["id"], "succeeded"),
        (gated["id"], "running"),
    }
    after = resumed.frames
    assert after[0].id == last_id + 1, after[0]
    assert before + after == steady.frames[1:]
    assert sum(is_(ticking["id"], "log")(frame) for frame in before + after) == 20
    for job_id in (gated["id"], ticking["id"]):
        assert (await job(client, a, job_id))["state"] == "succeeded"


async def test_concurrent_starts_of_a_job_that_refuses_duplicates_make_one_job_across_processes(
    cluster: Cluster, client: httpx.AsyncClient
) -> None:
    (a, b), _ = cluster.start(apis=2)
    names = [f"twin-{i}" for i in range(5)]
    answers: dict[str, list[httpx.Response]] = {name: [] for name in names}

    async def post(api: Api, name: str) -> None:
        response = await client.post(f"{api.url}/api/tasks/unique/jobs", json={"name": name})
        answers[name].append(response)

    async with anyio.create_task_group() as group:
        for name in names:
            for api in (a, b, a, b):
                group.start_soon(post, api, name)

    created = []
    for responses in answers.values():
        assert sorted(response.status_code for response in responses) == [202, 409, 409, 409]
        new = next(response.json() for response in responses if response.status_code == 202)
        for response in responses:
            if response.status_code == 409:
                assert response.json()["job"]["id"] == new["id"], response.text
        created.append(new["id"])

    async def both_list_them() -> bool:
        for api in (a, b):
            listed = (await client.get(f"{api.url}/api/jobs", params={"task": "unique"})).json()
            if sorted(item["id"] for item in listed) != sorted(created):
                return False
        return True

    await until(both_list_them)


async def burst(*apis: Api, n: int) -> Counter[int]:
    """Start ``n`` jobs at once on each of ``apis``, from one client; how many answers of
    each status."""
    limits = httpx.Limits(max_connections=n * len(apis), max_keepalive_connections=n)
    codes: Counter[int] = Counter()
    async with httpx.AsyncClient(timeout=30, limits=limits) as client:

        async def start(api: Api) -> None:
            response = await client.post(f"{api.url}/api/tasks/count/jobs", json={"n": 1})
            codes[response.status_code] += 1

        async with anyio.create_task_group() as group:
            for _ in range(n):
                for api in apis:
                    group.start_soon(start, api)
    return codes


async def test_the_rate_limit_holds_for_a_burst_of_concurrent_starts(cluster: Cluster) -> None:
    (api,), _ = cluster.start(apis=1, env={"JOBCAST_JOBS_PER_MINUTE": "10"})

    codes = await burst(api, n=30)

    assert codes == {202: 10, 429: 20}


async def test_the_rate_limit_is_one_for_every_api_process(cluster: Cluster) -> None:
    (a, b), _ = cluster.start(apis=2, env={"JOBCAST_JOBS_PER_MINUTE": "10"})

    codes = await burst(a, b, n=8)

    assert codes == {202: 10, 429: 6}


async def test_a_burst_of_starts_larger_than_the_redis_pool_is_accepted(cluster: Cluster) -> None:
    (api,), _ = cluster.start(apis=1, env={"JOBCAST_JOBS_PER_MINUTE": "1000"})

    codes = await burst(api, n=200)

    assert codes == {202: 200}


async def test_the_queue_limit_holds_across_api_processes(
    cluster: Cluster, client: httpx.AsyncClient
) -> None:
    (a, b), _ = cluster.start(apis=2, env={"JOBCAST_MAX_QUEUE": "3"})
    first = await start_job(client, a, "count", n=1)
    await start_job(client, b, "count", n=1)
    await start_job(client, a, "count", n=1)

    full = await client.post(f"{b.url}/api/tasks/count/jobs", json={"n": 1})
    assert full.status_code == 429, full.text
    assert "queue is full" in full.json()["detail"]
    assert (await client.post(f"{b.url}/api/jobs/{first['id']}/cancel")).status_code == 202
    await start_job(client, b, "count", n=1)  # room again


@pytest.mark.parametrize("how", ["stop", "kill"])
async def test_redis_restarting_under_running_jobs_loses_nothing(
    cluster: Cluster, client: httpx.AsyncClient, tmp_path: Path, how: str
) -> None:
    # A heartbeat timeout well above the outage: the worker is alive all along.
    (a, b), _ = cluster.start(apis=2, workers=1, env={"JOBCAST_HEARTBEAT_TIMEOUT": "5"})
    gate = tmp_path / "gate"
    async with feed(client, a) as on_a, feed(client, b) as on_b:
        running = await start_job(client, a, "await_file", path=str(gate))
        held = await start_job(client, a, "hold", name="forever")
        for events in (on_a, on_b):
            await events.wait(is_(running["id"], "log"))
            await events.wait(is_(held["id"], "log"))

        if how == "stop":
            cluster.redis.stop()
        else:
            cluster.redis.kill()  # nothing lost all the same: every write is fsynced
        refused = await client.post(f"{b.url}/api/tasks/count/jobs", json={"n": 3})
        not_cancelled = await client.post(f"{a.url}/api/jobs/{held['id']}/cancel")
        health = await client.get(f"{a.url}/healthz")
        cluster.redis.start()

        gate.touch()
        cancelled = await client.post(f"{b.url}/api/jobs/{held['id']}/cancel")
        for events in (on_a, on_b):
            await events.wait(is_(running["id"], *TERMINAL))
            await events.wait(is_(held["id"], *TERMINAL))

    for answer in (refused, not_cancelled):
        assert answer.status_code == 503, answer.text
        assert set(answer.json()) == {"detail"}
        assert "retry" in answer.json()["detail"], answer.json()
        assert int(answer.headers["retry-after"]) > 0
    assert cancelled.status_code == 202, cancelled.text
    # While Redis is down the service cannot take jobs: its health check says so, and why.
    assert health.status_code == 503 and health.json()["redis"].startswith("unreachable")
    assert health.json()["status"] == "failing" and "JOBCAST_REDIS_URL" in health.json()["problem"]
    # Both processes saw the same events, the same ids, in the same order, each once.
    assert on_a.frames[1:] == on_b.frames[1:]
    assert ids(on_a.frames) == sorted(set(ids(on_a.frames)))
    assert [frame.event for frame in on_a.frames if about_job(frame, running["id"])][-1:] == [
        "succeeded"
    ]
    assert [frame.event for frame in on_a.frames if about_job(frame, held["id"])][-1:] == [
        "cancelled"
    ]
    for api in (a, b):
        assert (await job(client, api, running["id"]))["state"] == "succeeded"
        assert (await job(client, api, held["id"]))["state"] == "cancelled"


async def test_a_redis_outage_longer_than_the_heartbeat_timeout_leaves_running_jobs_alone(
    cluster: Cluster, client: httpx.AsyncClient, tmp_path: Path
) -> None:
    (api,), _ = cluster.start(apis=1, workers=1)
    gate = tmp_path / "gate"
    async with feed(client, api) as events:
        running = await start_job(client, api, "await_file", path=str(gate))
        await events.wait(is_(running["id"], "log"))

        cluster.redis.stop()
        await lasting(2 * HEARTBEAT)  # the outage, longer than the heartbeat timeout
        cluster.redis.start()
        await absence_window(2 * HEARTBEAT)  # a reaper that would take the job acts in it
        gate.touch()
        ended = await events.wait(is_(running["id"], *TERMINAL))

    # Nothing took the job back in the window: it ran to its end on its worker.
    assert ended.event == "succeeded", ended.data["job"]["error"]


async def test_a_worker_goes_on_after_redis_comes_back_without_its_data(
    cluster: Cluster, client: httpx.AsyncClient
) -> None:
    (api,), (worker,) = cluster.start(apis=1, workers=1)
    before = await start_job(client, api, "count", n=1)
    assert (await job_frames(client, api, before["id"]))[-1].event == "succeeded"

    cluster.redis.kill()
    cluster.redis.wipe()
    cluster.redis.start()

    created: list[dict[str, Any]] = []

    async def started() -> bool:
        answer = await client.post(f"{api.url}/api/tasks/count/jobs", json={"n": 1})
        if answer.status_code == 202:
            created.append(answer.json())
        return bool(created)

    await until(started)  # once the API process has its connection back
    (later,) = created
    frames = await job_frames(client, api, later["id"], seconds=3 * HEARTBEAT)

    assert frames[-1].event == "succeeded"
    assert worker.alive, worker.output()


async def test_an_api_process_starts_over_when_redis_comes_back_without_its_data(
    cluster: Cluster, client: httpx.AsyncClient, tmp_path: Path
) -> None:
    (api,), _ = cluster.start(apis=1, workers=1)
    async with feed(client, api) as events:
        lost = await start_job(client, api, "await_file", path=str(tmp_path / "never"))
        await events.wait(is_(lost["id"], "running"))
        mark = len(events.frames)
        cluster.redis.kill()
        cluster.redis.wipe()
        cluster.redis.start()
        # The open stream starts over: a reset, then a snapshot of what Redis holds now.
        await events.wait(lambda frame: frame.event == "reset", since=mark)
        snapshot = await events.wait(lambda frame: frame.event == "snapshot", since=mark)

    assert snapshot.data["jobs"] == []
    listed = (await client.get(f"{api.url}/api/jobs")).json()
    assert lost["id"] not in [job["id"] for job in listed]
    assert "came back without its data" in api.output()


async def test_an_api_process_that_fell_behind_the_trimmed_stream_starts_over(
    cluster: Cluster, client: httpx.AsyncClient
) -> None:
    env = {"JOBCAST_RETAIN_EVENTS": "100"}  # Redis keeps whole nodes of 100 entries
    (a, b), _ = cluster.start(apis=2, workers=1, env=env)
    b.popen.send_signal(signal.SIGSTOP)
    try:
        early = await start_job(client, a, "count", n=1)
        await until(lambda: job_state(client, a, early["id"], "succeeded"))
        flood = await start_job(client, a, "flood", lines=1000, width=10)
        await until(lambda: job_state(client, a, flood["id"], "succeeded"))
    finally:
        b.popen.send_signal(signal.SIGCONT)

    # B never read the early job's events, which are gone from Redis: it loads it instead.
    await until(lambda: job_state(client, b, early["id"], "succeeded"))
    assert "were trimmed from Redis before this process read them" in b.output()


async def job_state(client: httpx.AsyncClient, api: Api, job_id: str, state: str) -> bool:
    answer = await client.get(f"{api.url}/api/jobs/{job_id}")
    return answer.status_code == 200 and answer.json()["state"] == state


async def start_jobs(client: httpx.AsyncClient, api: Api, n: int) -> list[int]:
    """Start ``n`` jobs at once; the status of each answer."""
    codes: list[int] = []

    async def start() -> None:
        response = await client.post(f"{api.url}/api/tasks/count/jobs", json={"n": 1})
        codes.append(response.status_code)

    async with anyio.create_task_group() as group:
        for _ in range(n):
            group.start_soon(start)
    return codes


async def test_once_redis_is_back_starting_jobs_works_at_once(
    cluster: Cluster, client: httpx.AsyncClient
) -> None:
    (api,), _ = cluster.start(apis=1)
    assert await start_jobs(client, api, 8) == [202] * 8  # several connections in the pool

    cluster.redis.stop()
    cluster.redis.start()

    assert await start_jobs(client, api, 8) + await start_jobs(client, api, 8) == [202] * 16


def run_jobcast(command: str, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """Run ``jobcast command TARGET args`` to its exit, with only ``env`` of JOBCAST_*."""
    base = {key: value for key, value in os.environ.items() if not key.startswith("JOBCAST_")}
    if command == "serve":
        args = (*args, "--port", str(free_port()))
    return subprocess.run(
        [sys.executable, "-m", "jobcast", command, TARGET, *args],
        env={**base, **env},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )


@pytest.mark.parametrize("command", [["serve", "--workers", "2"], ["worker"]])
def test_a_command_that_needs_redis_refuses_to_run_without_jobcast_redis_url(
    command: list[str],
) -> None:
    exited = run_jobcast(*command)

    assert exited.returncode != 0
    assert "JOBCAST_REDIS_URL" in exited.stderr, exited.stderr
    assert "Traceback" not in exited.stderr


@pytest.mark.parametrize("command", ["serve", "worker"])
def test_a_process_that_cannot_reach_redis_at_start_exits_saying_so(command: str) -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there

    exited = run_jobcast(command, JOBCAST_REDIS_URL=url)

    output = exited.stdout + exited.stderr
    assert exited.returncode != 0
    assert f"Redis at {url} is unreachable" in output, output
    assert "Traceback" not in output


async def first_frame_head(receive: Callable[[], Awaitable[bytes]]) -> tuple[str, int | None]:
    """The ``event:`` and ``id:`` of the first SSE frame in a raw HTTP answer."""
    data = b""
    with anyio.fail_after(10):
        while b"event: " not in data or b"\n\n" not in data[data.index(b"event: ") :]:
            data += await receive()
    head = data[: data.index(b"\n\n", data.index(b"event: "))].decode()
    fields = dict(line.split(": ", 1) for line in head.splitlines() if ": " in line)
    raw_id = fields.get("id")
    return fields["event"], None if raw_id is None else int(raw_id)


async def test_resuming_on_a_process_that_lags_behind_continues_instead_of_resetting(
    cluster: Cluster, client: httpx.AsyncClient
) -> None:
    (a, b), _ = cluster.start(apis=2)
    async with feed(client, a) as events:
        b.popen.send_signal(signal.SIGSTOP)
        try:
            # B stalls for longer than its reads of the event stream wait (1 s): it is behind
            # once it goes on.
            await lasting(1.5)
            seen = await start_job(client, a, "count", n=1)
            last_id = (await events.wait(is_(seen["id"], "queued"))).id
            async with await anyio.connect_tcp("127.0.0.1", b.port) as sock:
                request = (
                    f"GET /api/events HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                    f"Last-Event-ID: {last_id}\r\n\r\n"
                )
                await sock.send(request.encode())  # waits in B's socket while it is stopped
                b.popen.send_signal(signal.SIGCONT)
                new = await start_job(client, a, "count", n=1)
                head = await first_frame_head(sock.receive)
        finally:
            b.popen.send_signal(signal.SIGCONT)
        continuation = await events.wait(is_(new["id"], "queued"))

    assert head == ("queued", continuation.id)


async def test_a_job_just_started_elsewhere_is_found_on_a_process_that_lags_behind(
    cluster: Cluster, client: httpx.AsyncClient
) -> None:
    (a, b), _ = cluster.start(apis=2)
    b.popen.send_signal(signal.SIGSTOP)
    try:
        # B stalls for longer than its reads of the event stream wait (1 s): it is behind
        # once it goes on, and is asked about a job it has not read yet.
        await lasting(1.5)
        started = await start_job(client, a, "count", n=1)
        async with await anyio.connect_tcp("127.0.0.1", b.port) as sock:
            request = f"GET /api/jobs/{started['id']} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
            await sock.send(request.encode())  # waits in B's socket while it is stopped
            b.popen.send_signal(signal.SIGCONT)
            answer = b""
            with anyio.fail_after(10):
                while b"\r\n\r\n" not in answer or not answer.rstrip().endswith(b"}"):
                    answer += await sock.receive()
    finally:
        b.popen.send_signal(signal.SIGCONT)

    status = answer.split(b"\r\n", 1)[0]
    assert status == b"HTTP/1.1 200 OK", answer
    assert json.loads(answer.split(b"\r\n\r\n", 1)[1])["id"] == started["id"]


async def test_two_api_processes_and_two_workers_start_one_job_per_tick_and_retry_across(
    cluster: Cluster, client: httpx.AsyncClient, tmp_path: Path
) -> None:
    # Four schedulers race for each due time of "pulse" (every 0.5 s).
    (a, b), _ = cluster.start(apis=2, workers=2, target="tests.apps:scheduled")
    marker = str(tmp_path / "attempted")
    retried = (await client.post(f"{a.url}/api/tasks/fail_once/jobs", json={"path": marker})).json()
    async with open_stream(client, f"{b.url}/api/jobs/{retried['id']}/events") as stream:
        frames = await stream.until(lambda frame: frame.event in ("succeeded", "failed"))
    assert [frame.event for frame in frames if frame.event != "log"] == [
        "queued",
        "running",
        "retrying",
        "running",
        "succeeded",
    ]
    assert frames[-1].data["job"]["attempt"] == 2

    pulses: list[dict[str, Any]] = []

    def sixth_pulse(frame: Frame) -> bool:
        if frame.event == "queued" and frame.data["job"]["schedule"] == "pulse":
            pulses.append(frame.data["job"])
        return len(pulses) >= 6

    async with open_stream(client, f"{b.url}/api/events") as stream:
        await stream.until(sixth_pulse)
    due = sorted(datetime.fromisoformat(job["run_at"]).timestamp() for job in pulses)
    assert len(due) == len(set(due))  # never two jobs for one due time
    gaps = [later - earlier for earlier, later in itertools.pairwise(due)]
    assert all(abs(gap - 0.5) < 1e-5 for gap in gaps), gaps  # and none skipped
    (schedule,) = (await client.get(f"{a.url}/api/schedules")).json()
    assert schedule["name"] == "pulse" and schedule["last_job_id"] is not None
