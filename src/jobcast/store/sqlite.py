"""The SQLite store, jobcast's default: jobs and the event log in one file.

The runner records every event on the event loop, where nothing may block, so
:meth:`SqliteStore.record` only puts the event and a copy of its job's fields on a queue. One
writer thread drains that queue and commits whatever piled up in one transaction: the cost of
a commit is shared by every event that waited for it, and under load batches grow by
themselves. The same thread prunes old events and finished jobs every few seconds.

Durability is WAL with ``synchronous=NORMAL``: a committed batch survives the process being
killed (``kill -9``); a power cut may lose the last commits, never the file's consistency.
What is still in the queue when the process is killed is lost: at most the last few
milliseconds of events. No client has seen them: the writer reports each batch it wrote
(:meth:`SqliteStore.on_stored`) and the event log shows streams only what was reported, so
the ids handed out again after the restart are new to everyone. A clean stop (SIGTERM,
Ctrl+C) flushes the queue and loses nothing.

Replay after a restart reaches back as far as the in-memory event log (``event_buffer``): the
database keeps more (``retain_events``) for history, and a client resuming from an older id
gets ``reset`` and a fresh ``snapshot``, as the stream contract allows.

A second server on the same file is refused: the store holds an exclusive ``flock`` on
``<db>.lock`` for as long as it is open, which the kernel releases when the process dies, however
it dies.
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import logging
import os
import queue
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import anyio

from ..events import Event, encode_json
from ..exceptions import StoreError
from ..jobs import Job, JobError, JobState, Progress
from .base import Recovered

__all__ = ["SCHEMA_VERSION", "SqliteStore"]

logger = logging.getLogger("jobcast")

#: The layout this code writes; a file with a newer one is refused rather than misread.
SCHEMA_VERSION = 1

_SCHEMA = f"""
BEGIN;
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE jobs (
    id TEXT PRIMARY KEY,
    task TEXT NOT NULL,
    state TEXT NOT NULL,
    created_at REAL NOT NULL,
    finished_at REAL,
    first_seq INTEGER NOT NULL,
    last_seq INTEGER NOT NULL,
    data TEXT NOT NULL
);
CREATE INDEX jobs_by_finished_at ON jobs (finished_at) WHERE finished_at IS NOT NULL;
CREATE TABLE events (
    seq INTEGER PRIMARY KEY,
    ts REAL NOT NULL,
    name TEXT NOT NULL,
    job_id TEXT NOT NULL,
    task TEXT NOT NULL,
    frame BLOB NOT NULL
);
INSERT INTO meta (key, value) VALUES ('schema_version', '{SCHEMA_VERSION}');
COMMIT;
"""

_INSERT_EVENT = "INSERT INTO events (seq, ts, name, job_id, task, frame) VALUES (?, ?, ?, ?, ?, ?)"
_UPSERT_JOB = """
INSERT INTO jobs (id, task, state, created_at, finished_at, first_seq, last_seq, data)
VALUES (?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (id) DO UPDATE SET
    state = excluded.state,
    finished_at = excluded.finished_at,
    first_seq = excluded.first_seq,
    last_seq = excluded.last_seq,
    data = excluded.data
"""

#: Most queue items in one transaction: bounds the time a commit takes and its memory.
MAX_BATCH = 5000
_DAY = 86_400.0
_WAL_LIMIT = 64 << 20  # bytes the WAL file is truncated back to after a checkpoint
_LOG_EVERY = 60.0  # seconds between two log lines about the same streak of failed writes
_RETRY_FIRST, _RETRY_MOST = 0.05, 2.0  # seconds before a failed write is tried again


# What record() captures of a job, on the loop, at each event about its state: its snapshot
# (the one encoding of a job, as clients and Redis see it) and the columns beside it. Jobs
# change on the loop while the writer runs, so the writer must not read the Job itself.
_JobFields = tuple[
    str,  # id
    str,  # task
    str,  # state
    float,  # created_at
    float | None,  # finished_at
    int,  # first_seq
    int,  # last_seq
    dict[str, Any],  # kept beside the snapshot: updated_at, and a scheduled job's tick
    dict[str, Any],  # the snapshot
]


@dataclass(slots=True, frozen=True)
class _State:
    """A value of the service's own, kept in the meta table (a schedule's state)."""

    key: str
    value: dict[str, Any]


@dataclass(slots=True, frozen=True)
class _Forget:
    job_ids: tuple[str, ...]
    events: bool = False  # their events go too (a job deleted, rather than aged out)


@dataclass(slots=True, frozen=True)
class _Flush:
    """Call ``done`` once everything queued before it is committed; ``stop`` ends the thread."""

    done: Callable[[], None]
    stop: bool = False


_Item = tuple[Event, _JobFields | None] | _Forget | _Flush | _State

#: Where the service's own values are kept in the meta table, and how they are told apart.
_STATE_PREFIX = "state:"


class SqliteStore:
    """Jobs and events in a SQLite file, written by one thread in batches.

    :meth:`open` reads back the newest ``tail`` events, for the in-memory event log (the
    app gives its ``event_buffer``). ``retain_events`` events and finished jobs for
    ``retain_days`` days are kept; older ones are pruned at open and then every
    ``prune_interval`` seconds. ``max_bytes`` caps the file's size: past it, writes fail as
    on a full disk.
    """

    durable = True

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        tail: int = 10_000,
        retain_events: int = 100_000,
        retain_days: float = 7.0,
        prune_interval: float = 5.0,
        max_bytes: int | None = None,
        close_timeout: float = 10.0,
    ) -> None:
        path = os.fspath(path)
        if not path or path == ":memory:":
            raise ValueError(
                f"path must be a file path, got {path!r}; use MemoryStore to keep nothing"
            )
        if tail < 0:
            raise ValueError(f"tail must not be negative, got {tail!r}")
        if retain_events < 1:
            raise ValueError(f"retain_events must be at least 1, got {retain_events!r}")
        if not retain_days > 0:
            raise ValueError(f"retain_days must be positive, got {retain_days!r}")
        if not prune_interval > 0:
            raise ValueError(f"prune_interval must be positive, got {prune_interval!r}")
        if max_bytes is not None and max_bytes < 1:
            raise ValueError(f"max_bytes must be positive, got {max_bytes!r}")
        if not close_timeout > 0:
            raise ValueError(f"close_timeout must be positive, got {close_timeout!r}")
        self.path = os.path.abspath(path)
        self.lock_path = self.path + ".lock"
        self.tail = tail
        self.retain_events = retain_events
        self.retain_days = retain_days
        self.prune_interval = prune_interval
        self.max_bytes = max_bytes
        self.close_timeout = close_timeout
        #: Transactions committed and the newest event in them: for tests and benchmarks.
        self.batches = 0
        self.committed_seq = 0
        self._inbox: queue.SimpleQueue[_Item] | None = None  # there while the store is open
        self._writer: threading.Thread | None = None
        self._conn: sqlite3.Connection | None = None
        self._lock_fd: int | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._on_health: Callable[[StoreError | None], None] | None = None
        self._on_stored: Callable[[int], None] | None = None
        self._failing_since: float | None = None  # when writes started failing, for the log
        self._logged_at = 0.0

    def __repr__(self) -> str:
        return f"SqliteStore({self.path!r})"

    # -- the Store Protocol, on the event loop ---------------------------------------------------

    async def open(self) -> Recovered:
        """Lock and open the file (creating it), prune it, and return what it holds.

        Raises :class:`~jobcast.exceptions.StoreError` naming the path when another server
        holds the file, or when it cannot be created, read or written, or is not a jobcast
        database this version understands.
        """
        if self._inbox is not None or self._writer is not None and self._writer.is_alive():
            raise RuntimeError(f"{self!r} is already open, or still closing")
        self._loop = asyncio.get_running_loop()
        recovered = await anyio.to_thread.run_sync(self._open)
        self._inbox = queue.SimpleQueue()
        self._writer = threading.Thread(
            target=self._write_forever,
            args=(self._inbox,),
            name=f"jobcast-sqlite-writer {self.path}",
            daemon=True,
        )
        self._writer.start()
        return recovered

    def on_stored(self, callback: Callable[[int], None]) -> None:
        """Have ``callback(seq)`` called on the event loop after each batch of events."""
        self._on_stored = callback

    def on_health(self, callback: Callable[[StoreError | None], None]) -> None:
        """Have ``callback(problem)`` called on the event loop when writes start failing,
        and ``callback(None)`` when they succeed again."""
        self._on_health = callback

    def record(self, event: Event, job: Job) -> None:
        inbox = self._inbox
        if inbox is None:
            raise RuntimeError(f"{self!r} is not open")
        if event.name in ("log", "deleted"):  # these change nothing of the job's row
            inbox.put((event, None))
            return
        fields = (
            job.id,
            job.task,
            job.state.value,
            job.created_at,
            job.finished_at,
            job.first_seq,
            job.last_seq,
            {"updated_at": job.updated_at, "tick": job.tick},
            job.snapshot(),
        )
        inbox.put((event, fields))

    def set_state(self, key: str, value: dict[str, Any]) -> None:
        if self._inbox is not None:
            self._inbox.put(_State(key, value))

    def forget(self, job_ids: list[str]) -> None:
        if job_ids and self._inbox is not None:
            self._inbox.put(_Forget(tuple(job_ids)))

    def delete(self, job_id: str) -> None:
        if self._inbox is not None:
            self._inbox.put(_Forget((job_id,), events=True))

    async def history(
        self, job_id: str, *, after: int = 0, limit: int = 1000, names: tuple[str, ...] = ()
    ) -> list[Event]:
        """The stored events of ``job_id`` after ``after``, oldest first (only ``names``, if
        given); read on a connection of its own, in a thread, beside the writer."""
        return await anyio.to_thread.run_sync(self._history, job_id, after, limit, names)

    def _history(self, job_id: str, after: int, limit: int, names: tuple[str, ...]) -> list[Event]:
        query = "SELECT seq, ts, name, job_id, task, frame FROM events WHERE job_id = ? AND seq > ?"
        if names:
            query += f" AND name IN ({', '.join('?' * len(names))})"
        try:
            conn = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True)
            try:
                rows = conn.execute(
                    query + " ORDER BY seq LIMIT ?", (job_id, after, *names, limit)
                ).fetchall()
            finally:
                conn.close()
        except sqlite3.Error as exc:
            raise self._error(exc) from exc
        return [Event(*row) for row in rows]

    async def flush(self) -> None:
        """Wait until everything recorded so far is committed, or its failure reported."""
        if self._inbox is None:
            return
        loop = asyncio.get_running_loop()
        committed: asyncio.Future[None] = loop.create_future()
        self._inbox.put(_Flush(lambda: _settle_threadsafe(loop, committed)))
        await committed

    async def aclose(self) -> None:
        """Write what is queued, stop the writer thread and release the file.

        Waits ``close_timeout`` seconds at most, even when cancelled. A writer still busy
        then is left to finish on its own (it is a daemon thread) and keeps the lock.
        """
        inbox, self._inbox = self._inbox, None
        if inbox is None:
            return
        loop = asyncio.get_running_loop()
        stopped: asyncio.Future[None] = loop.create_future()
        inbox.put(_Flush(lambda: _settle_threadsafe(loop, stopped), stop=True))
        with anyio.CancelScope(shield=True), anyio.move_on_after(self.close_timeout + 1):
            await stopped
        if not stopped.done():
            logger.warning(
                "%s: the writer is still busy %g s after closing began; what it has not "
                "written yet may be lost",
                self.path,
                self.close_timeout,
            )

    # -- opening, in a worker thread -------------------------------------------------------------

    def _open(self) -> Recovered:
        self._lock()
        try:
            self._conn = self._connect()
            return self._recover(self._conn)
        except BaseException:
            self._release()
            raise

    def _lock(self) -> None:
        try:
            fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise StoreError(
                self.path,
                f"cannot create its lock file {self.lock_path} ({exc.strerror})",
                "check that the directory exists and is writable, or set JOBCAST_DB to "
                "another file",
            ) from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise StoreError(
                self.path,
                f"another jobcast server (pid {holder}) is using it and holds {self.lock_path}",
                "stop that server first, or set JOBCAST_DB to another file",
            ) from exc
        except OSError as exc:
            os.close(fd)
            raise StoreError(
                self.path,
                f"cannot lock {self.lock_path} ({exc.strerror})",
                "put the file on a local disk, or set JOBCAST_DB to another file",
            ) from exc
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)  # names the holder to a refused server
        self._lock_fd = fd

    def _connect(self) -> sqlite3.Connection:
        try:
            # The connection is made here and used by the writer thread only from now on.
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        except sqlite3.Error as exc:
            raise self._error(exc) from exc
        try:
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if mode != "wal":
                logger.warning("%s: WAL is not available here, using %s mode", self.path, mode)
            conn.execute("PRAGMA synchronous = NORMAL")
            conn.execute(f"PRAGMA journal_size_limit = {_WAL_LIMIT}")
            if self.max_bytes is not None:
                page_size = conn.execute("PRAGMA page_size").fetchone()[0]
                conn.execute(f"PRAGMA max_page_count = {max(1, self.max_bytes // page_size)}")
            self._check_schema(conn)
            # A job's own events, read for its log and for replays past the memory's.
            conn.execute("CREATE INDEX IF NOT EXISTS events_by_job ON events (job_id, seq)")
            self._prune(conn)
        except sqlite3.Error as exc:
            conn.close()
            raise self._error(exc) from exc
        except BaseException:
            conn.close()
            raise
        return conn

    def _check_schema(self, conn: sqlite3.Connection) -> None:
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
        if not tables:
            conn.executescript(_SCHEMA)
            return
        if "meta" not in tables:
            raise StoreError(
                self.path,
                "is a SQLite database, but not a jobcast one (it has no meta table)",
                "set JOBCAST_DB to another file",
            )
        row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        version = row[0] if row else None
        if version == str(SCHEMA_VERSION):
            return
        if isinstance(version, str) and version.isdigit() and int(version) > SCHEMA_VERSION:
            raise StoreError(
                self.path,
                f"was written by a newer jobcast (schema version {version}; this one reads "
                f"version {SCHEMA_VERSION})",
                "upgrade jobcast, or set JOBCAST_DB to another file",
            )
        raise StoreError(
            self.path,
            f"has an unknown schema version ({version!r})",
            "move it away to start afresh, or set JOBCAST_DB to another file",
        )

    def _recover(self, conn: sqlite3.Connection) -> Recovered:
        try:
            rows = conn.execute(
                "SELECT id, task, state, created_at, finished_at, first_seq, last_seq, data "
                "FROM jobs ORDER BY created_at, first_seq"
            ).fetchall()
            jobs = [_job_from_row(row) for row in rows]
            newest_event = conn.execute("SELECT max(seq) FROM events").fetchone()[0] or 0
            newest = max([newest_event, *(job.last_seq for job in jobs)])
            events: list[Event] = []
            if self.tail and newest_event == newest:
                rows = conn.execute(
                    "SELECT seq, ts, name, job_id, task, frame FROM events "
                    "ORDER BY seq DESC LIMIT ?",
                    (self.tail,),
                ).fetchall()
                events = [Event(*row) for row in reversed(rows)]
            rows = conn.execute(
                "SELECT key, value FROM meta WHERE key LIKE ?", (_STATE_PREFIX + "%",)
            ).fetchall()
            state = {key.removeprefix(_STATE_PREFIX): json.loads(value) for key, value in rows}
        except sqlite3.Error as exc:
            raise self._error(exc) from exc
        except (ValueError, KeyError, TypeError) as exc:
            raise StoreError(
                self.path,
                f"holds a job jobcast cannot read ({exc!r})",
                "move it away to start afresh, or set JOBCAST_DB to another file",
            ) from exc
        self.committed_seq = newest
        return Recovered(next_seq=newest + 1, jobs=jobs, events=events, state=state)

    def _error(self, exc: sqlite3.Error) -> StoreError:
        """A :class:`StoreError` saying what ``exc`` means for this file and what to do."""
        code = getattr(exc, "sqlite_errorname", "")
        if code in ("SQLITE_NOTADB", "SQLITE_CORRUPT"):
            problem = f"is not a jobcast database, or is corrupt ({exc})"
            remedy = "move it away to start afresh, or set JOBCAST_DB to another file"
        elif code == "SQLITE_FULL":
            problem = f"cannot be written: the disk or the file's size limit is full ({exc})"
            remedy = "free disk space, or set JOBCAST_DB to a file on another disk"
        elif code.startswith("SQLITE_IOERR"):
            problem = f"cannot be written: the disk refused a write ({exc})"
            remedy = (
                "check that the disk has free space and works (and the server's file size "
                "limit, ulimit -f), or set JOBCAST_DB to a file on another disk"
            )
        elif code.startswith(("SQLITE_CANTOPEN", "SQLITE_READONLY", "SQLITE_PERM")):
            problem = f"cannot be opened for writing ({exc})"
            remedy = (
                "check that its directory exists and that the file and the directory are "
                "writable, or set JOBCAST_DB to another file"
            )
        else:
            problem = f"cannot be used ({exc})"
            remedy = "check the file and the disk, or set JOBCAST_DB to another file"
        return StoreError(self.path, problem, remedy)

    def _release(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing the descriptor releases the flock
            self._lock_fd = None

    # -- the writer thread -------------------------------------------------------------------

    def _write_forever(self, inbox: queue.SimpleQueue[_Item]) -> None:
        assert self._conn is not None
        conn = self._conn
        next_prune = time.monotonic() + self.prune_interval
        retry: list[_Item] = []  # what a failed transaction held: it goes first next time
        delay = 0.0  # seconds to wait before trying it again; doubles while writes fail
        stop_at: float | None = None  # when closing began, once it has
        while True:
            batch, retry = retry, []
            wait = delay if batch else max(0.0, next_prune - time.monotonic())
            try:
                batch.append(inbox.get(timeout=wait))
                while len(batch) < MAX_BATCH:
                    batch.append(inbox.get_nowait())
            except queue.Empty:
                pass
            flushes = [item for item in batch if isinstance(item, _Flush)]
            written = self._write(conn, batch)
            if written and time.monotonic() >= next_prune:
                next_prune = time.monotonic() + self.prune_interval
                self._prune_quietly(conn)
            stopping = any(flush.stop for flush in flushes)
            if stopping and stop_at is None:
                stop_at = time.monotonic()
            if not written:
                delay = min(max(2 * delay, _RETRY_FIRST), _RETRY_MOST)
                retry = [item for item in batch if not isinstance(item, _Flush)]
                if stop_at is not None and time.monotonic() - stop_at < self.close_timeout:
                    retry += [flush for flush in flushes if flush.stop]  # closing: try again
                    flushes = [flush for flush in flushes if not flush.stop]
                    stopping = False
                elif stopping:
                    logger.error(
                        "%s: closing with %d writes the database refused; they are lost",
                        self.path,
                        len(retry),
                    )
            else:
                delay = 0.0
            if stopping:
                # Closing checkpoints the WAL: done here, off the loop, before anyone is told.
                self._release()
                for flush in flushes:
                    flush.done()
                return
            for flush in flushes:  # each waited for one attempt at what came before it
                flush.done()

    def _write(self, conn: sqlite3.Connection, batch: list[_Item]) -> bool:
        """Commit ``batch`` in one transaction; return whether it was written.

        Events are shown to the streams only once written: a batch that fails is kept and
        written again, and until then the store reports itself failing.
        """
        events: list[tuple[int, float, str, str, str, bytes]] = []
        jobs: dict[str, _JobFields] = {}  # each job once, as of its newest event
        forgotten: set[str] = set()
        deleted: set[str] = set()  # with their events
        states: dict[str, str] = {}
        for item in batch:
            if type(item) is tuple:
                event, fields = item
                events.append(
                    (event.seq, event.ts, event.name, event.job_id, event.task, event.frame)
                )
                if fields is not None:
                    jobs[fields[0]] = fields
            elif isinstance(item, _Forget):
                for job_id in item.job_ids:
                    jobs.pop(job_id, None)
                forgotten.update(item.job_ids)
                if item.events:
                    deleted.update(item.job_ids)
            elif isinstance(item, _State):
                states[_STATE_PREFIX + item.key] = encode_json(item.value)
        if not (events or jobs or forgotten or states):
            return True
        try:
            rows = [_job_row(fields) for fields in jobs.values()]
            conn.execute("BEGIN")
            conn.executemany(_INSERT_EVENT, events)
            conn.executemany(_UPSERT_JOB, rows)
            conn.executemany("DELETE FROM jobs WHERE id = ?", [(job_id,) for job_id in forgotten])
            conn.executemany(
                "DELETE FROM events WHERE job_id = ? AND name != 'deleted'",
                [(job_id,) for job_id in deleted],
            )
            conn.executemany(
                "INSERT INTO meta (key, value) VALUES (?, ?) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                list(states.items()),
            )
            conn.execute("COMMIT")
        except Exception as exc:
            _rollback(conn)
            self._report(exc)
            return False
        self._acknowledge(events)
        self.batches += 1
        if events:
            self.committed_seq = events[-1][0]
        if self._failing_since is not None:
            logger.warning(
                "%s: writes succeed again, after %.1f s",
                self.path,
                time.monotonic() - self._failing_since,
            )
            self._failing_since = None
            self._tell_health(None)
        return True

    def _acknowledge(self, events: list[tuple[int, float, str, str, str, bytes]]) -> None:
        callback, loop = self._on_stored, self._loop
        if not events or callback is None or loop is None:
            return
        try:
            loop.call_soon_threadsafe(callback, events[-1][0])
        except RuntimeError:  # the loop has closed: nobody is left to tell
            pass

    def _prune(self, conn: sqlite3.Connection) -> None:
        cutoff = time.time() - self.retain_days * _DAY
        try:
            conn.execute("BEGIN")
            conn.execute(
                "DELETE FROM events WHERE seq <= (SELECT max(seq) FROM events) - ?",
                (self.retain_events,),
            )
            conn.execute("DELETE FROM jobs WHERE finished_at < ?", (cutoff,))
            conn.execute("COMMIT")
        except BaseException:
            _rollback(conn)
            raise

    def _prune_quietly(self, conn: sqlite3.Connection) -> None:
        # Pruning frees space; when it fails, the next write says why the file is unwell.
        try:
            self._prune(conn)
        except Exception as exc:
            logger.warning(
                "%s: pruning old events failed (%s); it is tried again later", self.path, exc
            )

    def _report(self, exc: Exception) -> None:
        """Log a failed write, naming the file, and tell the service it is failing.

        A streak of failures (a full disk fails every attempt) is logged when it starts,
        every minute while it lasts, and when it ends.
        """
        if isinstance(exc, sqlite3.Error):
            error = self._error(exc)
        else:
            error = StoreError(self.path, f"a write failed ({exc!r})", "report this jobcast bug")
        now = time.monotonic()
        starting = self._failing_since is None
        if starting or now - self._logged_at >= _LOG_EVERY:
            self._failing_since = self._failing_since or now
            self._logged_at = now
            logger.error(
                "%s; what happens meanwhile is kept in memory and written once it can be",
                error,
                exc_info=not isinstance(exc, sqlite3.Error),
            )
        if starting:
            self._tell_health(error)

    def _tell_health(self, problem: StoreError | None) -> None:
        callback, loop = self._on_health, self._loop
        if callback is None or loop is None:
            return
        try:
            loop.call_soon_threadsafe(callback, problem)
        except RuntimeError:  # the loop has closed: nobody is left to tell
            pass


def _rollback(conn: sqlite3.Connection) -> None:
    # SQLite rolls back by itself on some errors (a full disk); on others it is up to us. A
    # rollback that fails too is logged rather than raised, which would hide the error that
    # matters; the writes after it then fail, and are reported, in their turn.
    if conn.in_transaction:
        try:
            conn.rollback()
        except sqlite3.Error:
            logger.exception("rollback failed")


def _settle_threadsafe(loop: asyncio.AbstractEventLoop, future: asyncio.Future[None]) -> None:
    def settle() -> None:
        if not future.done():  # its waiter may have given up
            future.set_result(None)

    try:
        loop.call_soon_threadsafe(settle)
    except RuntimeError:  # the loop has closed: nobody waits any more
        pass


def _job_row(fields: _JobFields) -> tuple[Any, ...]:
    *columns, kept, snapshot = fields
    return (*columns, encode_json({"snapshot": snapshot, **kept}))


def _job_from_row(row: tuple[Any, ...]) -> Job:
    job_id, task, state, created_at, finished_at, first_seq, last_seq, data = row
    data = json.loads(data)
    if "snapshot" in data:
        job = Job.from_snapshot(data["snapshot"])
    else:  # a row an earlier version wrote: the job's fields one by one
        progress, error = data["progress"], data["error"]
        job = Job(
            task=task,
            params=data["params"],
            id=job_id,
            state=JobState(state),
            progress=None if progress is None else Progress(**progress),
            created_at=created_at,
            started_at=data["started_at"],
            finished_at=finished_at,
            result=data["result"],
            error=None if error is None else JobError(**error),
        )
    job.first_seq, job.last_seq = first_seq, last_seq
    job.updated_at = data.get("updated_at") or 0.0
    job.tick = data.get("tick")
    return job
