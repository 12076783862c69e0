"""The SSE streams: each client is a cursor into the event log, rendered as joined bytes.

A stream first sends, from its own task, what it has not seen: a snapshot or a replay after
its ``Last-Event-ID``, up to a cap per write. Once caught up it joins the log's
:class:`~jobcast.broadcast.Broadcaster`, which writes each batch of new events to every
caught-up stream at once, and is handed back to its own task whenever it falls behind. A
position the log no longer holds is a gap, reported as ``reset`` followed by a fresh
``snapshot``: never a silent loss. So is a position the log never reached (an id from
another server, or from a database since deleted).

Each stream holds a slot of :class:`~jobcast._limits.StreamSlots` from before its answer
until its response ends, however it ends: the limits on open streams count those slots, and
the slots' watchdog drops a client that stopped reading.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import socket
import struct
import time
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from ._limits import Slot, StreamSlots, client_key
from .broadcast import EVERY_JOB, KEEPALIVE, WRITE_LIMIT, Filter, Subscriber, accepts
from .eventlog import EventLog, Gap
from .events import Event, encode_frame
from .jobs import Job
from .service import Service

__all__ = ["EventStream", "all_jobs_stream", "job_stream", "last_event_id"]

#: Most events a stream looks at per read of its own; with the most bytes sent in one write
#: (:data:`~jobcast.broadcast.WRITE_LIMIT`), what bounds the work and the memory that one
#: client, however far behind, can take at a time.
READ_LIMIT = 1000
_MAX_ID = 2**63 - 1

logger = logging.getLogger("jobcast")


#: The answer's head: an event stream, never cached, never buffered by a proxy.
_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-store"),
    (b"connection", b"keep-alive"),
    (b"x-accel-buffering", b"no"),
]


class EventStream(Response):
    """The answer of a stream: SSE frames sent as plain ASGI messages.

    The connection's own task runs it: it sends what the client lacks (the snapshot or a
    replay, a write the broadcaster left suspended, events it fell behind on), and once
    caught up it joins the :class:`~jobcast.broadcast.Broadcaster` and parks on ``receive``,
    which returns when the client leaves. No other task runs per connection. Keepalives come
    from one timer for every stream, through the broadcaster; shutdown closes the event log,
    which ends every stream after its last events. A write of the stream's own is stamped
    while it waits, and one watchdog for every stream drops those that waited too long
    (:meth:`~jobcast._limits.StreamSlots.watch`).
    """

    media_type = "text/event-stream"

    def __init__(
        self, follow: _Follow, *, slot: Slot | None = None, slots: StreamSlots | None = None
    ) -> None:
        self.status_code = 200
        self.background = None
        self.raw_headers = list(_HEADERS)
        self._follow = follow
        self._slot = slot
        self._slots = slots

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        slot = self._slot
        try:
            start = {"type": "http.response.start", "status": 200, "headers": self.raw_headers}
            if scope["method"] == "HEAD":  # the head only, never a stream
                await send(start)
                await send({"type": "http.response.body", "body": b"", "more_body": False})
                return
            if slot is not None:
                slot.task = asyncio.current_task()
            try:
                # Every write is stamped, the first and the last too: a client that stopped
                # reading would keep its stream for as long as either waits.
                await _stamped(slot, send(start))
                await self._follow.run(receive, send, slot)
                end = {"type": "http.response.body", "body": b"", "more_body": False}
                await _stamped(slot, send(end))
            except asyncio.CancelledError:
                if not _interrupted(slot is not None and slot.dropped):
                    raise
            if slot is not None and slot.dropped:
                logger.info(
                    "dropped a stream to %s: it read nothing for %s s",
                    slot.client,
                    self._slots.send_timeout if self._slots else "?",
                )
                await _abort(receive)
        finally:
            if slot is not None and self._slots is not None:
                self._slots.give_back(slot)


async def _abort(receive: Receive) -> None:
    """Cut the connection of a client that stopped reading, and free what it holds.

    Merely returning would make the server close the connection politely, which waits for
    the unsent bytes to drain first: a client that never reads would keep its socket, its
    kernel buffers (megabytes on loopback) and a file descriptor, no longer counted by any
    limit. ASGI has no way to abort a connection, but uvicorn's ``receive`` is a method of
    the connection's request cycle, which holds the asyncio transport: abort that. With any
    other server, the connection is closed the polite way. Either way the client reconnects
    with its last id once it reads again, and loses nothing.
    """
    transport = getattr(getattr(receive, "__self__", None), "transport", None)
    abort = getattr(transport, "abort", None)
    if not callable(abort):
        return
    sock = transport.get_extra_info("socket")  # type: ignore[union-attr]
    if sock is not None:
        # Linger 0: the kernel drops the unsent bytes and resets the connection, instead of
        # keeping them, orphaned, for as long as the client keeps its window shut.
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    abort()
    with anyio.move_on_after(1):
        # The server learns of it on its next turn; waiting for that saves it from
        # reporting a response that ended incomplete.
        while (await receive())["type"] != "http.disconnect":
            pass


def last_event_id(request: Request) -> int | None:
    """The client's resume position: ``Last-Event-ID``, else ``?last_event_id=``.

    Anything but a positive integer is treated as absent (a fresh start), never an error.
    """
    raw = request.headers.get("last-event-id") or request.query_params.get("last_event_id")
    if raw is None:
        return None
    raw = raw.strip()
    if not raw.isascii() or not raw.isdigit() or len(raw) > len(str(_MAX_ID)):
        return None
    value = int(raw)
    return value if 0 < value <= _MAX_ID else None


def _snapshot_frame(seq: int, jobs: list[dict[str, Any]]) -> bytes:
    return encode_frame("snapshot", {"seq": seq, "ts": round(time.time(), 6), "jobs": jobs}, seq)


_GONE = "events after your last id are no longer retained; a fresh snapshot follows"
_UNKNOWN = "your last id is newer than any event of this server; a fresh snapshot follows"


def _reset_frame(position: int, log: EventLog, reason: str = _GONE) -> bytes:
    data = {
        "ts": round(time.time(), 6),
        "last_event_id": position,
        "first_retained": log.first_seq,
        "reason": reason,
    }
    return encode_frame("reset", data)


class _Follow:
    """One client's way through the log: what it has not seen, in order, then live.

    ``snapshot()`` gives the frame that replaces lost history and the position it stands at;
    ``done(position)`` says when the stream has said all it will; ``catch_up(position)``
    waits, a bounded time, for events another process has published up to ``position``;
    ``kept(position)`` reads what the log no longer holds (the events before its
    ``first_seq`` at the call) from where the backend keeps it.
    """

    def __init__(
        self,
        service: Service,
        position: int,
        *,
        which: Filter,
        first: bytes,
        snapshot: Callable[[], tuple[bytes, int]],
        done: Callable[[int], bool] | None = None,
        kept: Callable[[int], Awaitable[list[Event]]] | None = None,
    ) -> None:
        self.log = service.log
        self.broadcaster = service.broadcaster
        self.catch_up = service.catch_up
        self.position = position
        self.which = which
        self.first = first
        self.snapshot = snapshot
        self.done = done
        self.kept = kept

    async def run(self, receive: Receive, send: Send, slot: Slot | None) -> None:
        """Send the client everything after its position until the stream ends or the
        client leaves."""
        log, broadcaster = self.log, self.broadcaster
        subscriber = Subscriber(send, self.which, self.position, self.done)
        pending = self.first
        asked = False
        log.subscribers += 1
        try:
            while True:
                if subscriber.write is not None:  # the broadcaster's, held by a full socket
                    write, subscriber.write = subscriber.write, None
                    await _stamped(slot, write)
                if subscriber.error is not None:
                    raise subscriber.error
                position = subscriber.position
                if position > log.last_seq and not asked:
                    # With Redis an id may come from another API process that is ahead of
                    # this one: resume from it once this process has read that far.
                    asked = True
                    await self.catch_up(position)
                    continue
                if position > log.last_seq:
                    # An id this log never gave out: waiting for the log to reach it would
                    # leave the client silent for as long, so it starts over like after a gap.
                    pending += _reset_frame(position, log, _UNKNOWN)
                    frame, subscriber.position = self.snapshot()
                    pending += frame
                    continue
                if position > log.visible_seq and not log.closed:
                    # A snapshot stands at the newest event, which the store has not kept yet.
                    await log.wait(log.visible_seq)
                    continue
                try:
                    body, position = await self._read(position)
                except Gap:
                    pending += _reset_frame(position, log)
                    frame, subscriber.position = self.snapshot()
                    pending += frame
                    continue
                if pending or body:
                    message = {"type": "http.response.body", "body": pending + body}
                    await _stamped(slot, send({**message, "more_body": True}))
                    pending = b""
                subscriber.position = position
                if self.done is not None and self.done(position):
                    return
                if log.closed and position >= log.visible_seq:  # the end: all of it was sent
                    return
                if position < log.visible_seq or log.closed:
                    continue
                if not broadcaster.join(subscriber):
                    # Behind it (the broadcaster moved on while this stream wrote: read on),
                    # or it has stopped (the service is stopping: follow the log alone).
                    await log.wait(position)
                    if log.visible_seq == position and not log.closed:
                        pending = KEEPALIVE
                    continue
                subscriber.park = asyncio.current_task()
                subscriber.context = contextvars.copy_context()
                try:
                    while (await receive())["type"] != "http.disconnect":
                        pass
                except asyncio.CancelledError:
                    # Handed back by the broadcaster (which let go of its task first): go on.
                    if not _interrupted(subscriber.park is None):
                        raise
                    continue
                subscriber.park = None
                return  # the client left
        finally:
            log.subscribers -= 1
            broadcaster.leave(subscriber)
            if subscriber.write is not None:
                subscriber.write.close()

    async def _read(self, position: int) -> tuple[bytes, int]:
        """The frames of the next events after ``position`` this stream shows, at most
        about :data:`WRITE_LIMIT` bytes of them, and the position they reach."""
        log = self.log
        first = log.first_seq
        if self.kept is not None and position + 1 < first and position <= log.last_seq:
            # What memory no longer holds comes from where it is kept (the store, Redis), a
            # page at a time, until memory takes over. The page ends where memory began when
            # it was asked for: memory may have dropped more while the store answered.
            kept = await self.kept(position)
            body = b"".join(event.frame for event in kept)
            return body, kept[-1].seq if len(kept) == READ_LIMIT else first - 1
        parts: list[bytes] = []
        size = 0
        for event in log.read(position, READ_LIMIT):
            position = event.seq
            if accepts(self.which, event):
                parts.append(event.frame)
                size += len(event.frame)
                if size >= WRITE_LIMIT:
                    break
        return b"".join(parts), position


def _interrupted(ours: bool) -> bool:
    """Whether the cancellation being handled is only the interruption of this stream's
    own (``ours``: the broadcaster's hand-back, the watchdog's drop), which it then takes
    back; any other cancellation, alone or as well, goes on."""
    task = asyncio.current_task()
    return ours and task is not None and task.uncancel() == 0


async def _stamped(slot: Slot | None, write: Awaitable[None]) -> None:
    """Await a write of the stream's own, stamped for the watchdog while it waits."""
    if slot is None:
        await write
        return
    slot.sending_since = time.monotonic()
    await write
    slot.sending_since = 0.0


def _retry_frame(retry_ms: int) -> bytes:
    return f"retry: {retry_ms}\n\n".encode()


def _open(streams: StreamSlots | None, request: Request, follow: _Follow) -> EventStream:
    if streams is None:
        return EventStream(follow)
    return EventStream(follow, slot=streams.take(client_key(request.scope)), slots=streams)


def all_jobs_stream(
    runner: Service, request: Request, task: str | None, streams: StreamSlots | None = None
) -> Response:
    """``GET /api/events``: a snapshot (or a replay after the client's id), then live.

    Raises :class:`~jobcast.exceptions.UnknownTask` for a ``task`` filter naming no task (a
    404 rather than a stream that stays empty), and
    :class:`~jobcast.exceptions.TooManyStreams` or :class:`~jobcast.exceptions.StreamsFull`
    past the limits.
    """
    if task is not None:
        runner.registry.get(task)
    log = runner.log

    def snapshot() -> tuple[bytes, int]:
        # Jobs as of their newest stored events: the snapshot stands at the newest visible one.
        return _snapshot_frame(log.visible_seq, runner.snapshot(task)), log.visible_seq

    position = last_event_id(request)
    first = _retry_frame(runner.settings.retry_ms)
    if position is None:
        frame, position = snapshot()
        first += frame
    which = EVERY_JOB if task is None else ("task", task)
    follow = _Follow(runner, position, which=which, first=first, snapshot=snapshot)
    return _open(streams, request, follow)


async def job_stream(
    runner: Service, request: Request, job_id: str, streams: StreamSlots | None = None
) -> Response:
    """``GET /api/jobs/{id}/events``: the job's retained history, then live, then the end.

    A client that has already seen the terminal event gets 204, which tells a browser to stop
    reconnecting.
    """
    job = await runner.find(job_id)
    log = runner.log

    def now() -> Job:
        # The job as this process knows it now: starting over from what Redis holds (after
        # it lost its history) makes each job anew.
        return runner.jobs.get(job.id, job)

    def snapshot() -> tuple[bytes, int]:
        shown = now().shown
        return _snapshot_frame(log.visible_seq, [] if shown is None else [shown]), log.visible_seq

    def done(position: int) -> bool:
        current = now()
        return current.finished and position >= current.last_seq

    position = last_event_id(request)
    if position is not None and job.finished and position >= job.last_seq:
        return Response(status_code=204)
    at = job.first_seq - 1 if position is None else max(position, job.first_seq - 1)
    first = _retry_frame(runner.settings.retry_ms)
    durable = runner.backend.durable
    if at + 1 < log.first_seq and not durable and position is None:
        frame, at = snapshot()  # nothing keeps what memory lost: the job as it is
        first += frame

    async def kept(after: int) -> list[Event]:
        return await runner.kept(job, after=after, limit=READ_LIMIT)

    follow = _Follow(
        runner,
        at,
        which=("job", job.id),
        first=first,
        snapshot=snapshot,
        done=done,
        kept=kept if durable else None,
    )
    return _open(streams, request, follow)
