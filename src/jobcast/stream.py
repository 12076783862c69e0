"""The SSE streams: each client is a cursor into the event log, rendered as joined bytes.

A stream wakes when the log changes, takes everything between its position and the end of
the log (up to a cap) and sends it as one write: under load events batch by themselves. A
position the log no longer holds is a gap, reported as ``reset`` followed by a fresh
``snapshot``: never a silent loss. So is a position the log never reached (an id from
another server, or from a database since deleted).

Each stream holds a slot of :class:`~jobcast._limits.StreamSlots` from before its answer
until its response ends, however it ends: the limits on open streams count those slots, and
the slots' watchdog drops a client that stopped reading.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import struct
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import anyio
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Message, Receive, Scope, Send

from ._limits import Slot, StreamSlots, client_key
from .eventlog import EventLog, Gap
from .events import Event, encode_frame
from .service import Service

__all__ = ["EventStream", "all_jobs_stream", "job_stream", "last_event_id"]

#: Most events looked at per wake-up, and most bytes sent in one write: together they bound
#: the work and the memory that one client, however far behind, can take at a time.
READ_LIMIT = 1000
WRITE_LIMIT = 64 * 1024
KEEPALIVE = b": keepalive\n\n"
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
    """The answer of a stream: bytes that are SSE frames already, sent as plain ASGI
    messages, one per chunk the frames iterator yields.

    Per connection it runs one task besides the response itself: a listener that ends the
    stream when the client leaves. Keepalives come from one timer for every stream (the
    event log is poked and each idle stream writes a comment), and shutdown closes the event
    log, which ends every stream after its last events. A write is stamped while it waits,
    and one watchdog for every stream drops those that waited too long
    (:meth:`~jobcast._limits.StreamSlots.watch`).
    """

    media_type = "text/event-stream"

    def __init__(
        self,
        frames: AsyncIterator[bytes],
        *,
        slot: Slot | None = None,
        slots: StreamSlots | None = None,
    ) -> None:
        self.status_code = 200
        self.background = None
        self.raw_headers = list(_HEADERS)
        self._frames = frames
        self._slot = slot
        self._slots = slots

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        slot = self._slot
        try:
            if scope["method"] == "HEAD":  # the head only, never a stream
                await send(self._start())
                await send({"type": "http.response.body", "body": b"", "more_body": False})
                return
            with anyio.CancelScope() as cancel:
                if slot is not None:
                    slot.scope = cancel
                await self._serve(receive, send)
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

    def _start(self) -> Message:
        return {"type": "http.response.start", "status": 200, "headers": self.raw_headers}

    async def _serve(self, receive: Receive, send: Send) -> None:
        """Send the frames until they end or the client leaves."""
        await send(self._start())
        slot = self._slot
        try:
            async with anyio.create_task_group() as task_group:

                async def leave_on_disconnect() -> None:
                    while (await receive())["type"] != "http.disconnect":
                        pass
                    task_group.cancel_scope.cancel()

                task_group.start_soon(leave_on_disconnect)
                async for chunk in self._frames:
                    message = {"type": "http.response.body", "body": chunk, "more_body": True}
                    if slot is None:
                        await send(message)
                        continue
                    slot.sending_since = time.monotonic()
                    await send(message)
                    slot.sending_since = 0.0
                await send({"type": "http.response.body", "body": b"", "more_body": False})
                task_group.cancel_scope.cancel()
        except BaseExceptionGroup as group:  # raise what failed, not the group around it
            if len(group.exceptions) == 1:
                raise group.exceptions[0] from None
            raise


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


async def _follow(
    log: EventLog,
    position: int,
    *,
    first: bytes,
    accept: Callable[[Event], bool],
    snapshot: Callable[[], tuple[bytes, int]],
    done: Callable[[int], bool],
    catch_up: Callable[[int], Awaitable[None]],
) -> AsyncIterator[bytes]:
    """Yield everything after ``position`` that ``accept`` passes, joined per wake-up.

    ``snapshot()`` gives the frame that replaces lost history and the position it stands at;
    ``done(position)`` says when the stream has said all it will; ``catch_up(position)``
    waits, a bounded time, for events another process has published up to ``position``.
    """
    log.subscribers += 1
    try:
        pending = first
        asked = False
        while True:
            if position > log.last_seq and not asked:
                # With Redis an id may come from another API process that is ahead of this
                # one: resume from it once this process has read that far.
                asked = True
                await catch_up(position)
                continue
            if position > log.last_seq:
                # An id this log never gave out: waiting for the log to reach it would leave
                # the client silent for as long, so it starts over like after a gap.
                pending += _reset_frame(position, log, _UNKNOWN)
                frame, position = snapshot()
                pending += frame
                continue
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


def _open(
    streams: StreamSlots | None, request: Request, frames: AsyncIterator[bytes]
) -> EventStream:
    if streams is None:
        return EventStream(frames)
    return EventStream(frames, slot=streams.take(client_key(request.scope)), slots=streams)


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
    frames = _follow(
        log,
        position,
        first=first,
        accept=(lambda event: True) if task is None else (lambda event: event.task == task),
        snapshot=snapshot,
        done=lambda position: False,
        catch_up=runner.catch_up,
    )
    return _open(streams, request, frames)


async def job_stream(
    runner: Service, request: Request, job_id: str, streams: StreamSlots | None = None
) -> Response:
    """``GET /api/jobs/{id}/events``: the job's retained history, then live, then the end.

    A client that has already seen the terminal event gets 204, which tells a browser to stop
    reconnecting.
    """
    job = await runner.find(job_id)
    log = runner.log

    def snapshot() -> tuple[bytes, int]:
        shown = [] if job.shown is None else [job.shown]
        return _snapshot_frame(log.visible_seq, shown), log.visible_seq

    position = last_event_id(request)
    if position is not None and job.finished and position >= job.last_seq:
        return Response(status_code=204)
    start = job.first_seq - 1 if position is None else max(position, job.first_seq - 1)

    async def frames() -> AsyncIterator[bytes]:
        first, at = _retry_frame(runner.settings.retry_ms), start
        if at + 1 < log.first_seq and not runner.backend.durable and position is None:
            frame, at = snapshot()  # nothing keeps what memory lost: the job as it is
            first += frame
        # What memory no longer holds of the job comes from where it is kept (the store,
        # Redis), a page at a time, until memory takes over.
        while at + 1 < log.first_seq and at <= log.last_seq and runner.backend.durable:
            kept = await runner.kept(job, after=at, limit=READ_LIMIT)
            yield first + b"".join(event.frame for event in kept)
            first = b""
            at = kept[-1].seq if len(kept) == READ_LIMIT else log.first_seq - 1
        async for frame in _follow(
            log,
            at,
            first=first,
            accept=lambda event: event.job_id == job.id,
            snapshot=snapshot,
            done=lambda position: job.finished and position >= job.last_seq,
            catch_up=runner.catch_up,
        ):
            yield frame

    return _open(streams, request, frames())
