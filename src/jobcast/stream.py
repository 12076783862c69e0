"""The SSE streams: each client is a cursor into the event log, rendered as joined bytes.

A stream wakes when the log changes, takes everything between its position and the end of
the log (up to a cap) and sends it as one write: under load events batch by themselves. A
position the log no longer holds is a gap, reported as ``reset`` followed by a fresh
``snapshot``: never a silent loss.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import anyio
from sse_starlette import EventSourceResponse
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Message, Send

from .eventlog import EventLog, Gap
from .events import Event, encode_frame
from .runner import Runner

__all__ = ["EventStream", "all_jobs_stream", "job_stream", "last_event_id"]

#: Most events looked at per wake-up, and most bytes sent in one write: together they bound
#: the work and the memory that one client, however far behind, can take at a time.
READ_LIMIT = 1000
WRITE_LIMIT = 64 * 1024
KEEPALIVE = b": keepalive\n\n"
_MAX_ID = 2**63 - 1


class EventStream(EventSourceResponse):
    """sse-starlette's response, fed bytes that are already SSE frames.

    It runs no ping task per connection (``ping=0``): one timer pokes the event log and every
    idle stream then writes a keepalive comment, which costs one task for all clients. At
    shutdown it gives the stream ``grace`` seconds to end by itself: the service first records
    what happened to the running jobs, then closes the log, and every stream sends those last
    events and ends cleanly instead of being cut.
    """

    def __init__(self, frames: AsyncIterator[bytes], *, grace: float) -> None:
        super().__init__(frames, ping=0, shutdown_event=anyio.Event(), shutdown_grace_period=grace)

    async def _send_with_timeout(self, send: Send, message: Message) -> None:
        # sse-starlette wraps every send in anyio.move_on_after, even with no timeout set:
        # measured, that cancel scope was the largest cost per write. Without a timeout
        # there is nothing to bound, so send directly.
        if self.send_timeout is None:
            await send(message)
        else:
            await super()._send_with_timeout(send, message)


def last_event_id(request: Request) -> int | None:
    """The client's resume position: ``Last-Event-ID``, else ``?last_event_id=``.

    Anything but a positive integer is treated as absent (a fresh start), never an error.
    """
    raw = request.headers.get("last-event-id") or request.query_params.get("last_event_id")
    if raw is None:
        return None
    raw = raw.strip()
    if not raw.isascii() or not raw.isdigit():
        return None
    value = int(raw)
    return value if 0 < value <= _MAX_ID else None


def _snapshot_frame(seq: int, jobs: list[dict[str, Any]]) -> bytes:
    return encode_frame("snapshot", {"seq": seq, "ts": round(time.time(), 6), "jobs": jobs}, seq)


def _reset_frame(position: int, log: EventLog) -> bytes:
    data = {
        "ts": round(time.time(), 6),
        "last_event_id": position,
        "first_retained": log.first_seq,
        "reason": "events after your last id are no longer retained; a fresh snapshot follows",
    }
    return encode_frame("reset", data)


async def _follow(
    log: EventLog,
    position: int,
    *,
    first: bytes,
    accept: Callable[[Event], bool],
    snapshot: Callable[[], tuple[bytes, int]],
    done: Callable[[int], bool],
) -> AsyncIterator[bytes]:
    """Yield everything after ``position`` that ``accept`` passes, joined per wake-up.

    ``snapshot()`` gives the frame that replaces lost history and the position it stands at;
    ``done(position)`` says when the stream has said all it will.
    """
    log.subscribers += 1
    try:
        pending = first
        while True:
            if position > log.visible_seq and not log.closed:
                # A snapshot stands at the newest event, which the store has not kept yet.
                await log.wait(log.visible_seq)
                continue
            try:
                batch = log.read(position, READ_LIMIT)
            except Gap:
                pending += _reset_frame(position, log)
                frame, position = snapshot()
                pending += frame
                continue
            parts = [pending]
            size = len(pending)
            for event in batch:
                position = event.seq
                if accept(event):
                    parts.append(event.frame)
                    size += len(event.frame)
                    if size >= WRITE_LIMIT:
                        break
            if size:
                yield b"".join(parts)
                pending = b""
            if done(position) or log.closed:
                return
            if position < log.visible_seq:
                continue
            await log.wait(position)
            if log.visible_seq == position and not log.closed:
                pending = KEEPALIVE  # woken with nothing new: the keepalive timer
    finally:
        log.subscribers -= 1


def _retry_frame(retry_ms: int) -> bytes:
    return f"retry: {retry_ms}\n\n".encode()


def all_jobs_stream(runner: Runner, request: Request, task: str | None) -> Response:
    """``GET /api/events``: a snapshot (or a replay after the client's id), then live."""
    log = runner.log

    def snapshot() -> tuple[bytes, int]:
        return _snapshot_frame(log.last_seq, runner.snapshot(task)), log.last_seq

    position = last_event_id(request)
    first = _retry_frame(runner.settings.retry_ms)
    if position is None:
        frame, position = snapshot()
        first += frame
    frames = _follow(
        log,
        position,
        first=first,
        accept=(lambda event: True) if task is None else (lambda event: event.task == task),
        snapshot=snapshot,
        done=lambda position: False,
    )
    return EventStream(frames, grace=runner.settings.grace_period + 1)


def job_stream(runner: Runner, request: Request, job_id: str) -> Response:
    """``GET /api/jobs/{id}/events``: the job's retained history, then live, then the end.

    A client that has already seen the terminal event gets 204, which tells a browser to stop
    reconnecting.
    """
    job = runner.get(job_id)
    log = runner.log

    def snapshot() -> tuple[bytes, int]:
        return _snapshot_frame(log.last_seq, [job.snapshot()]), log.last_seq

    position = last_event_id(request)
    if position is not None and job.finished and position >= job.last_seq:
        return Response(status_code=204)
    first = _retry_frame(runner.settings.retry_ms)
    if position is None:
        if job.first_seq >= log.first_seq:  # its whole history is still retained
            position = job.first_seq - 1
        else:
            frame, position = snapshot()
            first += frame
    frames = _follow(
        log,
        position,
        first=first,
        accept=lambda event: event.job_id == job.id,
        snapshot=snapshot,
        done=lambda position: job.finished and position >= job.last_seq,
    )
    return EventStream(frames, grace=runner.settings.grace_period + 1)


async def wait_for_exit_signal() -> None:
    """Return when the server was told to stop (SIGTERM, Ctrl+C), as sse-starlette sees it."""
    await EventSourceResponse._listen_for_exit_signal()
