"""Built-in demo tasks, served by ``jobcast serve`` when it is given no target.

Also keeps the original recipe's two endpoints working (``/api/background-task``), backed by
real jobs, so a client written for the recipe still works, and stays right when runs overlap.
"""

from __future__ import annotations

import sys
import time
from typing import Annotated, Any

from fastapi import APIRouter
from pydantic import Field

from .api import JobcastRoute
from .app import JobCast
from .context import JobContext

__all__ = ["app", "jobs"]

jobs = JobCast()


@jobs.task
def sleep(
    ctx: JobContext,
    seconds: Annotated[float, Field(gt=0, le=3600, description="total duration")] = 5.0,
    steps: Annotated[int, Field(ge=1, le=10_000, description="progress steps")] = 10,
) -> dict[str, Any]:
    """Sleep for `seconds`, in `steps` equal steps, reporting progress after each."""
    for step in ctx.track(range(steps), description="sleeping"):
        ctx.sleep(seconds / steps)
        ctx.log(f"step {step + 1}/{steps} done")
    return {"slept_s": seconds, "steps": steps}


@jobs.task
def heavy(
    ctx: JobContext,
    seconds: Annotated[float, Field(gt=0, le=3600, description="how long the work takes")] = 10.0,
) -> dict[str, Any]:
    """The recipe's heavy task: ten seconds of work (a sleep), now with progress and cancel."""
    steps = 100
    ctx.log("heavy task started")
    for _ in ctx.track(range(steps), description="working"):
        ctx.sleep(seconds / steps)
    ctx.log("heavy task finished")
    return {"message": "done", "seconds": seconds}


@jobs.task
def fail(
    ctx: JobContext,
    steps: Annotated[int, Field(ge=0, le=1000, description="steps done before failing")] = 3,
    message: Annotated[str, Field(max_length=200)] = "something went wrong",
    step_seconds: Annotated[float, Field(ge=0, le=60)] = 0.2,
) -> None:
    """Work for a few steps, then raise RuntimeError(message): shows how failures look."""
    for step in ctx.track(range(steps), description="working before the failure"):
        ctx.sleep(step_seconds)
        ctx.log(f"step {step + 1} done")
    raise RuntimeError(message)


@jobs.task
def ticker(
    ctx: JobContext,
    count: Annotated[int, Field(ge=1, le=1_000_000, description="log lines to emit")] = 100,
    rate: Annotated[float, Field(gt=0, le=10_000, description="lines per second")] = 10.0,
) -> dict[str, Any]:
    """Emit `count` log lines at `rate` per second, on an absolute schedule.

    Line k is due at start + k / rate, so a slow consumer shows up as lateness rather than as
    a slower ticker: useful to watch, and to load-test the streams.
    """
    ctx.progress(0, count, "ticking")
    start = time.monotonic()
    for k in range(count):
        delay = start + k / rate - time.monotonic()
        if delay > 0:
            ctx.sleep(delay)
        else:
            ctx.raise_if_cancelled()
        ctx.log(f"tick {k + 1}/{count}")
        ctx.current = k + 1
    return {"ticks": count, "seconds": round(time.monotonic() - start, 3)}


@jobs.task(mode="process")
def crunch(
    ctx: JobContext,
    seconds: Annotated[float, Field(gt=0, le=3600, description="CPU time to burn")] = 10.0,
) -> dict[str, Any]:
    """CPU-bound work in a worker process at lower priority: the API stays fast meanwhile.

    The same loop in a thread would hold the GIL and slow every request.
    """
    ctx.progress(0, seconds, "crunching")
    start = time.monotonic()
    rounds = 0
    while (elapsed := time.monotonic() - start) < seconds:
        sum(i * i for i in range(10_000))
        rounds += 1
        ctx.progress(round(elapsed, 2), seconds)
        ctx.raise_if_cancelled()
    ctx.progress(seconds, seconds, "done")
    return {"rounds": rounds, "seconds": seconds}


jobs.command(
    "batch",
    [
        sys.executable,
        "-m",
        "jobcast.demo_batch",
        "--items",
        "{items}",
        "--delay",
        "{delay}",
        "--fail-at",
        "{fail_at}",
    ],
    params={
        "items": (Annotated[int, Field(ge=1, le=100_000, description="items to process")], 20),
        "delay": (Annotated[float, Field(ge=0, le=60, description="seconds per item")], 0.2),
        "fail_at": (Annotated[int, Field(ge=0, description="fail at this item; 0: never")], 0),
    },
    description="An existing batch script, run as a command: its output is the job's log.",
)


# jobcast's route class: the recipe's routes follow the same rules (HEAD on GET included).
recipe = APIRouter(tags=["recipe"], route_class=JobcastRoute.for_settings(jobs.settings))


@recipe.post("/api/background-task")
async def execute_background_task() -> dict[str, str]:
    """The recipe's start button: starts a `heavy` job (watch it on /api/events)."""
    await jobs.start("heavy")
    return {"message": "ok"}


@recipe.get("/api/background-task")
async def fetch_background_task() -> dict[str, bool]:
    """The recipe's status flag: true while any `heavy` job is queued or running."""
    active = (job for job in jobs.runner.jobs.values() if not job.finished)
    return {"status": any(job.task == "heavy" for job in active)}


app = jobs.create_app()
app.include_router(recipe)
