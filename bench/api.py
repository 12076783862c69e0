"""The request scenarios: API latency under CPU-bound jobs, and push against poll.

Both compare jobcast with the original recipe (``bench/apps/recipe.py``): its heavy task in
the server's thread pool, its state a flag read by a polled ``GET``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import math
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from .client import (
    Frame,
    HttpError,
    RecordingStream,
    StreamError,
    Tally,
    connect,
    request,
    request_json,
    stream_request,
)
from .servers import Server
from .stats import percentile

__all__ = [
    "CpuResult",
    "Latency",
    "PushResult",
    "jobcast_under_cpu",
    "jobcast_push",
    "probe",
    "recipe_poll",
    "recipe_under_cpu",
]

_TERMINAL = frozenset({"succeeded", "failed", "cancelled", "interrupted"})


@dataclass(slots=True)
class Latency:
    requests: int
    errors: int
    p50_ms: float
    p99_ms: float
    max_ms: float


async def probe(server: Server, path: str, *, seconds: float, rps: float) -> Latency:
    """``GET path`` at ``rps`` for ``seconds``, one fresh connection per request.

    A fresh connection is what a polling script or ``curl`` pays; it also makes the server
    take the GIL several times per request (accept, read, answer), which is where a CPU-bound
    thread in the same process hurts. Requests follow an absolute schedule, one at a time.
    """
    for _ in range(5):  # warm up: a first request pays for lazy imports and caches
        await request("GET", server.host, server.port, path, seconds=10)
    latencies: list[float] = []
    errors = 0
    start = time.monotonic()
    for k in range(max(1, round(seconds * rps))):
        delay = start + k / rps - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        sent = time.perf_counter()
        try:
            status, _ = await request("GET", server.host, server.port, path, seconds=10)
            errors += status != 200
        except (OSError, TimeoutError, HttpError):
            errors += 1
        latencies.append((time.perf_counter() - sent) * 1000)
    return Latency(
        requests=len(latencies),
        errors=errors,
        p50_ms=percentile(latencies, 50),
        p99_ms=percentile(latencies, 99),
        max_ms=max(latencies),
    )


@dataclass(slots=True)
class CpuResult:
    """GET latency of one server idle, then while two CPU-bound jobs run."""

    server: str
    mode: str
    idle: Latency
    load: Latency

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


async def _wait_for(
    predicate: Callable[[], Awaitable[bool]], *, seconds: float, what: str, every: float = 0.05
) -> None:
    """Poll an async ``predicate`` (the server offers nothing to wait on) until it holds."""
    deadline = time.monotonic() + seconds
    while not await predicate():
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not happen within {seconds:g} s")
        await asyncio.sleep(every)


async def recipe_under_cpu(
    server: Server, *, idle_s: float, load_s: float, rps: float
) -> CpuResult:
    """The recipe: its status GET idle, then with two CPU-bound heavy tasks in its threads."""
    path = "/api/background-task"
    idle = await probe(server, path, seconds=idle_s, rps=rps)
    for _ in range(2):
        await request_json("POST", server.host, server.port, path)

    async def running() -> bool:
        status = await request_json("GET", server.host, server.port, path)
        return bool(status["status"])

    await _wait_for(running, seconds=10, what="the recipe's heavy task starting")
    load = await probe(server, path, seconds=load_s, rps=rps)
    return CpuResult(server.name, "thread (BackgroundTasks)", idle, load)


async def _job(server: Server, job_id: str) -> dict[str, Any]:
    job: dict[str, Any] = await request_json("GET", server.host, server.port, f"/api/jobs/{job_id}")
    return job


async def _start(server: Server, task: str, params: dict[str, Any]) -> str:
    path = f"/api/tasks/{task}/jobs"
    job = await request_json("POST", server.host, server.port, path, params, expect=(202,))
    return str(job["id"])


async def _finished(server: Server, job_ids: list[str]) -> bool:
    for job_id in job_ids:
        if (await _job(server, job_id))["state"] not in _TERMINAL:
            return False
    return True


async def _under_crunch(server: Server, task: str, *, load_s: float, rps: float) -> Latency:
    job_ids = [await _start(server, task, {"seconds": load_s + 30}) for _ in range(2)]

    async def crunching() -> bool:
        # Running and past its first round: a worker process is up and burning CPU.
        for job_id in job_ids:
            job = await _job(server, job_id)
            progress = job["progress"]
            if job["state"] != "running" or not progress or not progress["current"]:
                return False
        return True

    try:
        await _wait_for(crunching, seconds=30, what=f"two {task} jobs crunching")
        return await probe(server, f"/api/jobs/{job_ids[0]}", seconds=load_s, rps=rps)
    finally:
        for job_id in job_ids:
            path = f"/api/jobs/{job_id}/cancel"
            await request_json("POST", server.host, server.port, path, expect=(202, 409))
        await _wait_for(
            lambda: _finished(server, job_ids), seconds=30, what=f"{task} jobs cancelled"
        )


async def jobcast_under_cpu(
    server: Server, *, idle_s: float, load_s: float, rps: float
) -> tuple[CpuResult, CpuResult]:
    """jobcast: a job's GET idle, then with two ``crunch`` jobs in processes, then in threads."""
    probe_id = await _start(server, "sleep", {"seconds": 0.01, "steps": 1})
    await _wait_for(
        lambda: _finished(server, [probe_id]), seconds=10, what="a 10 ms sleep job ending"
    )
    idle = await probe(server, f"/api/jobs/{probe_id}", seconds=idle_s, rps=rps)
    process = await _under_crunch(server, "crunch", load_s=load_s, rps=rps)
    thread = await _under_crunch(server, "crunch_thread", load_s=load_s, rps=rps)
    return (
        CpuResult(server.name, "process", idle, process),
        CpuResult(server.name, "thread", idle, thread),
    )


# -- push vs poll -----------------------------------------------------------------------------


@dataclass(slots=True)
class PushResult:
    """How long after a job's state changed the client knew."""

    server: str
    method: str
    changes: int
    missed: int  # changes a poller never saw (the state flipped twice between two polls)
    p50_ms: float
    p99_ms: float
    max_ms: float
    mean_ms: float

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _push_result(server: str, method: str, delays: list[float], missed: int) -> PushResult:
    return PushResult(
        server=server,
        method=method,
        changes=len(delays),
        missed=missed,
        p50_ms=percentile(delays, 50),
        p99_ms=percentile(delays, 99),
        max_ms=max(delays, default=math.nan),
        mean_ms=sum(delays) / len(delays) if delays else math.nan,
    )


class _Watch(RecordingStream):
    """Keeps state events; resolves ``ended`` when the awaited job's terminal event arrives."""

    def __init__(self, request: bytes, tally: Tally) -> None:
        super().__init__(request, tally, ready_on_frame=True)
        self.job_id = ""
        self.ended: asyncio.Future[None] | None = None
        self.arrived: list[float] = []  # the wall-clock time each kept frame was read

    def on_frame(self, frame: Frame) -> None:
        if frame.event in ("snapshot", "log", "progress"):
            return
        self.frames.append(frame)
        self.arrived.append(time.time())
        if frame.event in _TERMINAL and self.ended is not None and not self.ended.done():
            if json.loads(frame.data)["job"]["id"] == self.job_id:
                self.ended.set_result(None)


async def jobcast_push(server: Server, *, trials: int, job_s: float) -> PushResult:
    """SSE: each job's ``running`` and ``succeeded`` event, arrival minus the event's ``ts``.

    ``ts`` is the wall-clock time jobcast published the change; arrival is the wall-clock
    time of the read (a monotonic reading turned into wall-clock time with one offset would
    drift from it as the system clock is slewed, by milliseconds over a run).
    """
    tally = Tally(1)
    watch = _Watch(stream_request(server.host, server.port, "/api/events", None), tally)
    await connect(server.host, server.port, watch)
    delays: list[float] = []
    try:
        async with asyncio.timeout(10):
            await tally.all_ready
        loop = asyncio.get_running_loop()
        for _ in range(trials):
            watch.ended = loop.create_future()
            watch.job_id = await _start(server, "sleep", {"seconds": job_s, "steps": 1})
            async with asyncio.timeout(job_s + 10):
                await watch.ended
        for frame, arrived in zip(watch.frames, watch.arrived, strict=True):
            data = json.loads(frame.data)
            if frame.event in ("running", *_TERMINAL):
                delays.append((arrived - data["ts"]) * 1000)
    finally:
        watch.abort()
    return _push_result(server.name, "SSE push", delays, 0)


async def recipe_poll(
    server: Server, *, trials: int, interval: float, job_s: float, seed: int = 7
) -> PushResult:
    """The recipe polled every ``interval``: response time minus the flag's ``changed_at``.

    Each trial starts at a random phase of the polling cycle, as a user's click would.
    """
    path = "/api/background-task"
    delays: list[float] = []
    missed = 0
    last: tuple[bool, float] | None = None
    ended = asyncio.Event()
    stop = asyncio.Event()

    async def poll() -> None:
        nonlocal last, missed
        start = time.monotonic()
        k = 0
        while not stop.is_set():
            k += 1
            status = await request_json("GET", server.host, server.port, path)
            seen = time.time()
            now = (bool(status["status"]), float(status["changed_at"]))
            if last is not None and now[1] != last[1]:
                if now[0] == last[0]:
                    missed += 1  # it flipped and flipped back between two polls
                delays.append((seen - now[1]) * 1000)
                if not now[0]:
                    ended.set()
            last = now
            await asyncio.sleep(max(0.0, start + k * interval - time.monotonic()))

    rng = random.Random(seed)
    poller = asyncio.create_task(poll())
    try:
        for _ in range(trials):
            await asyncio.sleep(rng.uniform(0, interval))  # a random phase, not a wait
            ended.clear()
            await request_json("POST", server.host, server.port, path)
            async with asyncio.timeout(job_s + 3 * interval + 10):
                await ended.wait()
    finally:
        stop.set()
        poller.cancel()
        try:
            await poller
        except (asyncio.CancelledError, StreamError, HttpError, OSError):
            pass
    return _push_result(server.name, f"poll every {interval:g} s", delays, missed)
