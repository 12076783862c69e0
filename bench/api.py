"""The request scenarios: API latency under CPU-bound jobs, and push against poll.

Both compare jobcast with the original recipe (``bench/apps/recipe.py``): its heavy task in
the server's thread pool, its state a flag read by a polled ``GET``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import random
import time
from dataclasses import dataclass
from typing import Any

from .client import (
    Countdown,
    HttpError,
    RecordingStream,
    StreamError,
    connect,
    request,
    stream_request,
)
from .config import Sizes
from .servers import Server, until
from .stats import percentile

_TERMINAL = frozenset({"succeeded", "failed", "cancelled", "interrupted"})
_RECIPE = "/api/background-task"


@dataclass(slots=True)
class Latency:
    requests: int
    errors: int
    p50_ms: float
    p99_ms: float
    max_ms: float


async def probe(server: Server, path: str, *, seconds: float, rps: float) -> Latency:
    """``GET path`` at ``rps`` for ``seconds``, one at a time on an absolute schedule, each on
    a fresh connection: what a polling script pays, and it makes the server take the GIL
    several times per request, where a CPU-bound thread in the same process hurts."""
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
    p50, p99 = percentile(latencies, 50), percentile(latencies, 99)
    return Latency(len(latencies), errors, p50, p99, max(latencies))


@dataclass(slots=True)
class CpuResult:
    """GET latency of one server idle, then while two CPU-bound jobs run."""

    server: str
    mode: str
    idle: Latency
    load: Latency


async def recipe_under_cpu(server: Server, sizes: Sizes) -> CpuResult:
    """The recipe: its status GET idle, then with two CPU-bound heavy tasks in its threads."""
    rps = sizes.cpu_rps
    idle = await probe(server, _RECIPE, seconds=sizes.cpu_idle_seconds, rps=rps)
    for _ in range(2):
        await server.json("POST", _RECIPE)

    async def running() -> bool:
        return bool((await server.json("GET", _RECIPE))["status"])

    await until(running, seconds=10, what="the heavy task starting", program=server)
    load = await probe(server, _RECIPE, seconds=sizes.cpu_load_seconds, rps=rps)
    return CpuResult(server.name, "thread (BackgroundTasks)", idle, load)


async def _start(server: Server, task: str, params: dict[str, Any]) -> str:
    job = await server.json("POST", f"/api/tasks/{task}/jobs", params, expect=(202,))
    return str(job["id"])


async def _jobs(server: Server, job_ids: list[str]) -> list[dict[str, Any]]:
    return [await server.json("GET", f"/api/jobs/{job_id}") for job_id in job_ids]


async def _finished(server: Server, job_ids: list[str], what: str) -> None:
    async def done() -> bool:
        return all(job["state"] in _TERMINAL for job in await _jobs(server, job_ids))

    await until(done, seconds=30, what=what, program=server)


async def _under_crunch(server: Server, task: str, sizes: Sizes) -> Latency:
    load_s = sizes.cpu_load_seconds
    job_ids = [await _start(server, task, {"seconds": load_s + 30}) for _ in range(2)]

    async def crunching() -> bool:
        # Running and past its first round: a worker process is up and burning CPU.
        return all(
            job["state"] == "running" and job["progress"] and job["progress"]["current"]
            for job in await _jobs(server, job_ids)
        )

    try:
        await until(crunching, seconds=30, what=f"two {task} jobs crunching", program=server)
        return await probe(server, f"/api/jobs/{job_ids[0]}", seconds=load_s, rps=sizes.cpu_rps)
    finally:
        for job_id in job_ids:
            await server.json("POST", f"/api/jobs/{job_id}/cancel", expect=(202, 409))
        await _finished(server, job_ids, f"{task} jobs cancelled")


async def jobcast_under_cpu(server: Server, sizes: Sizes) -> tuple[CpuResult, CpuResult]:
    """jobcast: a job's GET idle, then with two ``crunch`` jobs in processes, then in threads."""
    probe_id = await _start(server, "sleep", {"seconds": 0.01, "steps": 1})
    await _finished(server, [probe_id], "a 10 ms sleep job ending")
    path, idle_s = f"/api/jobs/{probe_id}", sizes.cpu_idle_seconds
    idle = await probe(server, path, seconds=idle_s, rps=sizes.cpu_rps)
    process = await _under_crunch(server, "crunch", sizes)
    thread = await _under_crunch(server, "crunch_thread", sizes)
    return (
        CpuResult(server.name, "process", idle, process),
        CpuResult(server.name, "thread", idle, thread),
    )


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

    @classmethod
    def of(cls, server: str, method: str, delays: list[float], missed: int) -> PushResult:
        if not delays:
            return cls(server, method, 0, missed, math.nan, math.nan, math.nan, math.nan)
        p50, p99, mean = percentile(delays, 50), percentile(delays, 99), sum(delays) / len(delays)
        return cls(server, method, len(delays), missed, p50, p99, max(delays), mean)


class _Watch(RecordingStream):
    """Times each ``running`` and terminal event: wall-clock arrival minus the event's ``ts``
    (jobcast's wall-clock time of the change; a monotonic reading shifted by one offset would
    drift from it as the clock is slewed). ``ended`` resolves on ``job_id``'s terminal event."""

    def __init__(self, request: bytes, ready: Countdown) -> None:
        super().__init__(request, ready, ready_on_frame=True)
        self.delays: list[float] = []
        self.job_id = ""
        self.ended: asyncio.Future[None] | None = None

    def on_frame(self, ident: int | None, event: str, data: bytes, at: float) -> None:
        if event != "running" and event not in _TERMINAL:
            return
        arrived = time.time()
        change = json.loads(data)
        self.delays.append((arrived - change["ts"]) * 1000)
        if event in _TERMINAL and change["job"]["id"] == self.job_id:
            if self.ended is not None and not self.ended.done():
                self.ended.set_result(None)


async def jobcast_push(server: Server, *, trials: int, job_s: float) -> PushResult:
    """SSE: each job's ``running`` and ``succeeded`` event, as :class:`_Watch` times them."""
    ready = Countdown(1)
    watch = _Watch(stream_request(server.host, server.port, "/api/events"), ready)
    await connect(server.host, server.port, watch, seconds=30)
    try:
        async with asyncio.timeout(10):
            await ready.reached
        for _ in range(trials):
            watch.ended = asyncio.get_running_loop().create_future()
            watch.job_id = await _start(server, "sleep", {"seconds": job_s, "steps": 1})
            async with asyncio.timeout(job_s + 10):
                await watch.ended
    finally:
        watch.abort()
    return PushResult.of(server.name, "SSE push", watch.delays, 0)


async def recipe_poll(
    server: Server, *, trials: int, interval: float, job_s: float, seed: int = 7
) -> PushResult:
    """The recipe polled every ``interval``: response time minus the flag's ``changed_at``;
    each trial starts at a random phase of the polling cycle, as a user's click would."""
    delays: list[float] = []
    missed = 0
    last: tuple[bool, float] | None = None
    ended = asyncio.Event()

    async def poll() -> None:
        nonlocal last, missed
        start = time.monotonic()
        k = 0
        while True:
            k += 1
            status = await server.json("GET", _RECIPE)
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
            await server.json("POST", _RECIPE)
            async with asyncio.timeout(job_s + 3 * interval + 10):
                await ended.wait()
    finally:
        poller.cancel()
        with contextlib.suppress(asyncio.CancelledError, StreamError, HttpError, OSError):
            await poller
    return PushResult.of(server.name, f"poll every {interval:g} s", delays, missed)
