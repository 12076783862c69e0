"""How many events a second the SQLite store's writer thread commits (a benchmark, not a test).

The event loop records ``--events`` events as fast as it can, the way the runner does while
jobs flood it: a mix of log lines and job state/progress events over ``--jobs`` jobs, already
encoded. The figure is events divided by the time from the first ``record()`` to the moment
the writer has committed the last one (``flush()``). It also prints what ``record()`` costs
the loop per call, which is all the store adds to publishing an event.

    .venv/bin/python bench/sqlite_writer.py            # median of 5 runs of 200,000 events
    .venv/bin/python bench/sqlite_writer.py --runs 3 --events 50000
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio

from jobcast.events import Event
from jobcast.jobs import Job, JobState, Progress
from jobcast.store import SqliteStore


def workload(events: int, jobs: int) -> list[tuple[Event, Job]]:
    """Events as the runner publishes them: four log lines for each progress event."""
    running = [
        Job(task="resize", params={"folder": f"in/{i}"}, state=JobState.RUNNING)
        for i in range(jobs)
    ]
    made: list[tuple[Event, Job]] = []
    now = time.time()
    for seq in range(1, events + 1):
        job = running[seq % jobs]
        payload: dict[str, Any]
        if seq % 5:
            payload = {"job_id": job.id, "line": f"resized img_{seq:07d}.png to 1024x768 (q=80)"}
            name = "log"
        else:
            job.progress = Progress(seq, events, f"img_{seq:07d}.png", rate=1234.5, elapsed_s=9)
            job.last_seq = seq
            payload, name = {"job": job.snapshot()}, "progress"
        made.append(
            (Event.create(seq, now, name, job_id=job.id, task=job.task, payload=payload), job)
        )
    return made


async def one_run(path: Path, events: list[tuple[Event, Job]]) -> tuple[float, float]:
    """Events per second committed, and microseconds one ``record()`` costs the loop."""
    store = SqliteStore(path)
    await store.open()
    try:
        started = time.perf_counter()
        for event, job in events:
            store.record(event, job)
        recorded = time.perf_counter()
        await store.flush()
        committed = time.perf_counter()
    finally:
        await store.aclose()
    assert store.committed_seq == events[-1][0].seq
    return len(events) / (committed - started), (recorded - started) / len(events) * 1e6


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--jobs", type=int, default=100)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()

    events = workload(args.events, args.jobs)
    size = sum(len(event.frame) for event, _ in events) / len(events)
    rates: list[float] = []
    costs: list[float] = []
    for run in range(args.runs):
        with tempfile.TemporaryDirectory() as directory:
            rate, cost = await one_run(Path(directory) / "bench.db", events)
        rates.append(rate)
        costs.append(cost)
        print(f"run {run + 1}: {rate:,.0f} events/s committed, record() {cost:.2f} µs")
    print(
        f"median of {args.runs}: {statistics.median(rates):,.0f} events/s committed "
        f"({args.events:,} events of {size:.0f} bytes on average, {args.jobs} jobs); "
        f"record() costs the loop {statistics.median(costs):.2f} µs"
    )


if __name__ == "__main__":
    anyio.run(main)
