"""The SQLite store: what it keeps, how it writes, and how it refuses files it cannot use."""

from __future__ import annotations

import dataclasses
import json
import sqlite3
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest

from jobcast import Job, JobContext, JobState
from jobcast.events import Event
from jobcast.exceptions import StoreError
from jobcast.jobs import JobError, Progress
from jobcast.store import Recovered, SqliteStore
from jobcast.store.sqlite import SCHEMA_VERSION
from tests.apps import make_jobs
from tests.conftest import wait_job, wait_until

pytestmark = pytest.mark.anyio

DAY = 86_400.0


class Recorder:
    """Publishes events for jobs into a store the way the runner does: numbered, in order."""

    def __init__(self, store: SqliteStore, next_seq: int) -> None:
        self.store = store
        self.seq = next_seq
        self.events: list[Event] = []

    def __call__(self, job: Job, name: str | None = None, **payload: Any) -> Event:
        name = name or job.state.value
        if name == "log":
            payload = {"job_id": job.id, **payload}
        else:
            job.first_seq = job.first_seq or self.seq
            job.last_seq = self.seq
            payload = {"job": job.snapshot()}
        event = Event.create(
            self.seq, time.time(), name, job_id=job.id, task=job.task, payload=payload
        )
        self.store.record(event, job)
        self.events.append(event)
        self.seq += 1
        return event


def query(path: Path, sql: str) -> list[tuple[Any, ...]]:
    """Read the file the way an operator would, beside the running store."""
    conn = sqlite3.connect(path)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


def count_events(path: Path) -> int:
    count: int = query(path, "SELECT count(*) FROM events")[0][0]
    return count


@asynccontextmanager
async def opened(store: SqliteStore) -> AsyncIterator[Recovered]:
    recovered = await store.open()
    try:
        yield recovered
    finally:
        await store.aclose()


def files_in(path: Path) -> list[str]:
    return sorted(entry.name for entry in path.iterdir())


def fields(job: Job) -> tuple[Any, ...]:
    return dataclasses.astuple(job)


# -- what it keeps -------------------------------------------------------------------------------


async def test_a_new_file_starts_at_1_in_wal_mode_with_the_schema_version(
    tmp_path: Path,
) -> None:
    path = tmp_path / "jobs.db"

    async with opened(SqliteStore(path)) as recovered:
        assert (recovered.next_seq, recovered.jobs, recovered.events) == (1, [], [])

    assert query(path, "PRAGMA journal_mode") == [("wal",)]
    assert query(path, "SELECT value FROM meta WHERE key = 'schema_version'") == [
        (str(SCHEMA_VERSION),)
    ]


def ago(seconds: float) -> float:
    """A job timestamp ``seconds`` ago: to the microsecond, as jobcast keeps them."""
    return round(time.time() - seconds, 6)


async def test_jobs_and_events_come_back_exactly_after_a_reopen(tmp_path: Path) -> None:
    path = tmp_path / "jobs.db"
    done = Job(task="resize", params={"folder": "in", "sizes": [1, 2]}, created_at=ago(60))
    failed = Job(task="crunch", params={}, created_at=ago(50.25))
    waiting = Job(task="resize", params={"folder": "later"}, created_at=ago(40.5))
    store = SqliteStore(path)
    async with opened(store) as recovered:
        record = Recorder(store, recovered.next_seq)
        for job in (done, failed, waiting):
            record(job)
        done.state, done.started_at = JobState.RUNNING, ago(30)
        record(done)
        done.progress = Progress(3, 12.0, "img_003.png", rate=1.5, elapsed_s=2.0)
        record(done, "progress")
        record(done, "log", line="resized img_003.png ✓")
        done.state, done.finished_at, done.result = JobState.SUCCEEDED, ago(20), {"count": 12}
        record(done)
        failed.state, failed.finished_at = JobState.FAILED, ago(10)
        failed.error = JobError("ValueError", "kaput")
        record(failed)

    async with opened(SqliteStore(path)) as again:
        assert [fields(job) for job in again.jobs] == [
            fields(done),
            fields(failed),
            fields(waiting),
        ]
        assert again.events == record.events  # the same bytes, to be replayed as they were sent
        assert again.next_seq == record.seq


async def test_only_the_tail_of_the_log_that_fits_the_buffer_is_read_back(
    tmp_path: Path,
) -> None:
    path = tmp_path / "jobs.db"
    store = SqliteStore(path)
    job = Job(task="shout", params={})
    async with opened(store) as recovered:
        record = Recorder(store, recovered.next_seq)
        for i in range(50):
            record(job, "log", line=f"line {i}")

    async with opened(SqliteStore(path, tail=10)) as again:
        assert [event.seq for event in again.events] == list(range(41, 51))
        assert again.next_seq == 51


async def test_many_events_are_committed_in_few_transactions_with_each_job_once(
    tmp_path: Path,
) -> None:
    path = tmp_path / "jobs.db"
    store = SqliteStore(path)
    job = Job(task="count", params={"n": 10_000}, state=JobState.RUNNING)
    async with opened(store) as recovered:
        record = Recorder(store, recovered.next_seq)
        for i in range(10_000):
            job.progress = Progress(i + 1, 10_000.0)
            record(job, "progress")
        await store.flush()

        assert store.committed_seq == record.seq - 1
        assert store.batches < 100, f"{store.batches} transactions for 10,000 events"
        stored = query(path, "SELECT last_seq, data FROM jobs")
    assert count_events(path) == 10_000
    assert len(stored) == 1 and stored[0][0] == record.seq - 1
    assert '"current":10000' in stored[0][1]


async def test_forgotten_jobs_are_not_restored(tmp_path: Path) -> None:
    path = tmp_path / "jobs.db"
    store = SqliteStore(path)
    kept, dropped = Job(task="a", params={}), Job(task="b", params={})
    async with opened(store) as recovered:
        record = Recorder(store, recovered.next_seq)
        record(kept)
        record(dropped)
        store.forget([dropped.id])

    async with opened(SqliteStore(path)) as again:
        assert [job.id for job in again.jobs] == [kept.id]


# -- retention -----------------------------------------------------------------------------------


async def test_retention_applies_at_open_to_events_and_to_old_finished_jobs(
    tmp_path: Path,
) -> None:
    path = tmp_path / "jobs.db"
    store = SqliteStore(path)
    old = Job(task="a", params={}, state=JobState.SUCCEEDED, finished_at=time.time() - 8 * DAY)
    recent = Job(task="a", params={}, state=JobState.FAILED, finished_at=time.time() - 6 * DAY)
    running = Job(task="a", params={}, state=JobState.RUNNING, created_at=time.time() - 9 * DAY)
    async with opened(store) as recovered:
        record = Recorder(store, recovered.next_seq)
        for job in (old, recent, running):
            record(job)
        for i in range(300):
            record(running, "log", line=f"line {i}")

    async with opened(SqliteStore(path, retain_events=100, retain_days=7)) as again:
        assert [job.id for job in again.jobs] == [recent.id, running.id]
        assert [event.seq for event in again.events] == list(range(204, 304))
        assert again.next_seq == 304  # ids go on from the newest, pruned or not
    assert count_events(path) == 100


async def test_old_events_are_pruned_in_the_background(tmp_path: Path) -> None:
    path = tmp_path / "jobs.db"
    store = SqliteStore(path, retain_events=50, prune_interval=0.05)
    job = Job(task="shout", params={})
    async with opened(store) as recovered:
        record = Recorder(store, recovered.next_seq)
        for i in range(500):
            record(job, "log", line=f"line {i}")
        await store.flush()
        wait_until(lambda: count_events(path) == 50)
        assert query(path, "SELECT min(seq), max(seq) FROM events") == [(451, 500)]


# -- files it refuses ----------------------------------------------------------------------------


async def test_a_second_store_on_the_same_file_is_refused_until_the_first_closes(
    tmp_path: Path,
) -> None:
    path = tmp_path / "jobs.db"
    first = SqliteStore(path)
    async with opened(first):
        with pytest.raises(StoreError, match="another jobcast server") as refused:
            await SqliteStore(path).open()
        assert refused.value.path == str(path)
        assert str(path) in str(refused.value) and "JOBCAST_DB" in str(refused.value)

    async with opened(SqliteStore(path)) as recovered:
        assert recovered.next_seq == 1


async def test_a_corrupt_file_is_refused_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "jobs.db"
    path.write_bytes(b"this is no database, just bytes\n" * 200)

    with pytest.raises(StoreError, match="not a jobcast database, or is corrupt") as refused:
        await SqliteStore(path).open()

    assert str(path) in str(refused.value) and "move it away" in str(refused.value)
    async with opened(SqliteStore(path.with_name("other.db"))):
        pass  # the refused store let go of its lock and file


async def test_another_programs_database_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "theirs.db"
    query(path, "CREATE TABLE users (name TEXT)")

    with pytest.raises(StoreError, match="not a jobcast one"):
        await SqliteStore(path).open()


async def test_a_newer_schema_is_refused_rather_than_misread(tmp_path: Path) -> None:
    path = tmp_path / "jobs.db"
    async with opened(SqliteStore(path)):
        pass
    conn = sqlite3.connect(path)
    with conn:
        conn.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    conn.close()

    with pytest.raises(StoreError, match="newer jobcast .*schema version 99") as refused:
        await SqliteStore(path).open()
    assert str(path) in str(refused.value) and "upgrade jobcast" in str(refused.value)


@pytest.mark.parametrize("where", ["missing directory", "a directory"])
async def test_a_path_that_cannot_be_written_is_refused_naming_it(
    tmp_path: Path, where: str
) -> None:
    path = tmp_path / "missing" / "jobs.db" if where == "missing directory" else tmp_path

    with pytest.raises(StoreError) as refused:
        await SqliteStore(path).open()

    assert str(path) in str(refused.value)
    assert "writable" in str(refused.value)


def test_memory_is_not_a_file_path() -> None:
    with pytest.raises(ValueError, match="MemoryStore"):
        SqliteStore(":memory:")


# -- a full disk ---------------------------------------------------------------------------------


async def test_a_full_disk_holds_every_write_until_space_is_freed_and_says_so(
    tmp_path: Path,
) -> None:
    path = tmp_path / "jobs.db"
    store = SqliteStore(path, max_bytes=64 * 1024)  # a file that cannot grow is a full disk
    health: list[StoreError | None] = []
    healthy_again = anyio.Event()
    stored: list[int] = []

    def on_health(problem: StoreError | None) -> None:
        health.append(problem)
        if problem is None:
            healthy_again.set()

    job = Job(task="flood", params={}, state=JobState.RUNNING)
    async with opened(store) as recovered:
        store.on_health(on_health)
        store.on_stored(stored.append)
        record = Recorder(store, recovered.next_seq)
        with anyio.fail_after(5):
            while not health:  # a report reaches the loop before the flush it precedes
                record(job, "log", line="x" * 4000)
                await store.flush()
        committed = store.committed_seq
        for _ in range(3):
            record(job, "log", line="y" * 4000)
        await store.flush()  # one more attempt, which fails too
        # Nothing past what is written was reported stored, so no stream has shown it.
        assert max(stored, default=0) <= committed < record.events[-1].seq
        assert query(path, "SELECT max(seq) FROM events") == [(committed,)]
        assert health == [health[0]] and health[0] is not None
        assert str(path) in str(health[0]) and "full" in str(health[0])

        # The operator frees space: what waited is written, in order, and reported.
        conn = sqlite3.connect(path)
        conn.execute("DELETE FROM events WHERE seq <= ?", (committed,))
        conn.commit()
        conn.close()
        with anyio.fail_after(10):
            await healthy_again.wait()
        await store.flush()
    newest = record.events[-1].seq
    assert health[-1] is None and stored[-1] == newest
    written = [seq for (seq,) in query(path, "SELECT seq FROM events ORDER BY seq")]
    assert written == list(range(committed + 1, newest + 1))


async def test_a_clean_restart_keeps_queued_jobs_and_requeues_retry_tasks(
    tmp_path: Path,
) -> None:
    path = tmp_path / "jobs.db"
    jobs = make_jobs(db=str(path), max_workers=2, grace_period=0.5)
    async with jobs.lifespan():
        runner = jobs.runner
        held = (await runner.submit("hold", {"name": "restart-held"})).job
        retried = (await runner.submit("resumable", {"name": "restart-retried"})).job
        waiting = (await runner.submit("count", {"n": 5})).job
        await wait_job(jobs, retried.id, lambda job: job.state is JobState.RUNNING)
        stopped_at = runner.log.last_seq

    assert held.state is JobState.INTERRUPTED
    assert retried.state is JobState.QUEUED and waiting.state is JobState.QUEUED

    again = make_jobs(db=str(path), max_workers=2)
    async with again.lifespan():
        runner = again.runner
        assert runner.log.first_seq <= stopped_at < runner.log.last_seq  # ids go on
        assert runner.get(held.id).state is JobState.INTERRUPTED
        assert (await wait_job(again, waiting.id)).state is JobState.SUCCEEDED
        await wait_job(again, retried.id, lambda job: job.state is JobState.RUNNING)
        lines = [
            event.frame.decode()
            for event in runner.log.iter_after(0)
            if event.job_id == retried.id and event.name == "log"
        ]
        assert any("queued again, to run from the start" in line for line in lines)


async def test_a_job_of_a_task_no_longer_registered_fails_after_a_restart(
    tmp_path: Path,
) -> None:
    path = tmp_path / "jobs.db"
    before = make_jobs(db=str(path), max_workers=1, grace_period=0.5)

    @before.task
    def retired(ctx: JobContext) -> None:
        """A task the next version of the app no longer has."""

    async with before.lifespan():
        runner = before.runner
        blocker = (await runner.submit("hold", {"name": "retired-blocker"})).job
        orphan = (await runner.submit("retired", {})).job
        await wait_job(before, blocker.id, lambda job: job.state is JobState.RUNNING)

    after = make_jobs(db=str(path))
    async with after.lifespan():
        job = after.runner.get(orphan.id)
        assert job.state is JobState.FAILED and job.error is not None
        assert "'retired' is no longer registered" in job.error.message


async def test_the_writer_keeps_up_with_many_jobs_logging_at_once(tmp_path: Path) -> None:
    path = tmp_path / "jobs.db"
    jobs = make_jobs(db=str(path), max_workers=8, event_buffer=100_000)
    async with jobs.lifespan():
        runner = jobs.runner
        ids = [
            (await runner.submit("flood", {"lines": 5000, "width": 50})).job.id for _ in range(6)
        ]
        ids += [(await runner.submit("count", {"n": 200_000})).job.id for _ in range(2)]
        for job_id in ids:
            await wait_job(jobs, job_id, seconds=30)
        published = runner.log.iter_after(0)
        states = {job_id: runner.get(job_id).state for job_id in ids}

    async with opened(SqliteStore(path, tail=100_000)) as stored:
        assert stored.events == published  # every event, in order, the same bytes
        assert {job.id: job.state for job in stored.jobs} == states
    assert set(states.values()) == {JobState.SUCCEEDED}
    assert len(published) > 6 * 5000


async def test_the_memory_setting_keeps_nothing_on_disk_and_the_default_is_jobcast_db(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    async with make_jobs(db=":memory:").lifespan():
        pass
    assert files_in(tmp_path) == []

    monkeypatch.delenv("JOBCAST_DB")
    async with make_jobs().lifespan():
        pass
    assert files_in(tmp_path) == ["jobcast.db", "jobcast.db.lock"]


async def test_a_job_row_is_its_snapshot_and_rows_of_the_earlier_layout_are_still_read(
    tmp_path: Path,
) -> None:
    path = tmp_path / "jobs.db"
    store = SqliteStore(path)
    job = Job(
        task="resize", params={"folder": "in"}, state=JobState.RUNNING, created_at=time.time()
    )
    async with opened(store) as recovered:
        record = Recorder(store, recovered.next_seq)
        record(job)
        await store.flush()
    ((data,),) = query(path, "SELECT data FROM jobs")
    assert json.loads(data)["snapshot"] == job.snapshot()  # the encoding clients see

    # A row as the first version wrote it: the job's fields one by one.
    old = {
        "params": {"folder": "old"},
        "started_at": ago(2),
        "progress": {"current": 3, "total": 4, "message": "m", "rate": 1.5, "elapsed_s": 2.0},
        "result": None,
        "error": {"type": "Interrupted", "message": "gone"},
    }
    conn = sqlite3.connect(path)
    conn.execute(
        "INSERT INTO jobs VALUES ('old-job', 'resize', 'interrupted', ?, ?, 1, 2, ?)",
        (ago(3), ago(1), json.dumps(old)),
    )
    conn.commit()
    conn.close()
    async with opened(SqliteStore(path)) as again:
        restored = {job.id: job for job in again.jobs}
    earlier = restored["old-job"]
    assert (earlier.state, earlier.params, earlier.started_at) == (
        JobState.INTERRUPTED,
        {"folder": "old"},
        old["started_at"],
    )
    assert earlier.progress is not None and earlier.progress.current == 3
    assert restored[job.id].snapshot() == job.snapshot()
