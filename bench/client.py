"""The load client: raw asyncio sockets speaking just enough HTTP/1.1, chunked coding and SSE.

A general client (httpx, aiohttp) costs tens of microseconds per read; at a million deliveries
a second spread over a thousand streams that would make the client, not the server, the thing
measured. Here a stream is an :class:`asyncio.Protocol` whose ``data_received`` dechunks and
cuts frames with a few C-level ``bytes`` operations, and hands complete frames to a subclass:

- :class:`CountingStream` counts the frames of one event name per read, for fan-out: one
  ``bytes.count`` and one tuple per read, however many events the read carries.
- :class:`SequencedStream` counts the same way and also checks that the ``id:`` of every
  frame follows the one before: one ``re.findall`` and one list comparison per read.
- :class:`RecordingStream` parses every frame (``id``, ``event``, ``data``), for resume checks.

Times are ``time.monotonic()``: on Linux it is the system-wide CLOCK_MONOTONIC, so arrival
times taken in a subscriber process compare with a trigger time taken in the runner.
"""

from __future__ import annotations

import asyncio
import json
import re
import socket
import struct
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar, cast

__all__ = [
    "CountingStream",
    "Countdown",
    "Frame",
    "HttpError",
    "RecordingStream",
    "SequencedStream",
    "StreamError",
    "Tally",
    "connect",
    "request",
    "request_json",
]

# Closing with SO_LINGER 0 resets the connection instead of leaving it in TIME_WAIT: a full run
# opens tens of thousands of streams to a handful of ports, more than the ephemeral range holds
# for a minute. A reset is also what a dropped network looks like to a server.
_LINGER_OFF = struct.pack("ii", 1, 0)
P = TypeVar("P", bound="_SSEProtocol")
TICK_RE = re.compile(rb'"line": ?"tick (\d+)/')
_ID_RE = re.compile(rb"^id: (\d+)$", re.MULTILINE)
_RESET = b"event: reset\n"


class HttpError(Exception):
    """Raised when a server answers a request with an unexpected status."""

    def __init__(self, method: str, path: str, status: int, body: bytes) -> None:
        self.status = status
        self.body = body
        super().__init__(f"{method} {path} answered {status}: {body[:300]!r}")


class StreamError(Exception):
    """Raised when a stream cannot be opened or answers anything but 200."""


@dataclass(slots=True)
class Tally:
    """Counts shared by many streams, with futures that resolve when a count is reached.

    Waiting on one future per condition instead of one per stream keeps a run of 5,000 streams
    from scheduling 5,000 waiters.
    """

    total: int
    ready: int = 0
    complete: int = 0
    all_ready: asyncio.Future[None] = field(default_factory=lambda: _future())
    all_complete: asyncio.Future[None] = field(default_factory=lambda: _future())

    def mark_ready(self) -> None:
        self.ready += 1
        if self.ready >= self.total and not self.all_ready.done():
            self.all_ready.set_result(None)

    def mark_complete(self) -> None:
        self.complete += 1
        if self.complete >= self.total and not self.all_complete.done():
            self.all_complete.set_result(None)


def _future() -> asyncio.Future[None]:
    return asyncio.get_running_loop().create_future()


class _SSEProtocol(asyncio.Protocol):
    """One HTTP/1.1 GET of an event stream: head, chunked body, SSE frames.

    Readiness (``tally.mark_ready``) is the 200 head, or with ``ready_on_frame`` the first
    complete frame: jobcast sends a snapshot first, and once a client has it, its cursor is
    fixed, so nothing published after can be missed.
    """

    def __init__(self, request: bytes, tally: Tally | None, *, ready_on_frame: bool) -> None:
        self._request = request
        self.tally = tally
        self.ready_on_frame = ready_on_frame
        self.transport: asyncio.Transport | None = None
        self.status: int | None = None
        self.head_at: float | None = None
        self.first_frame_at: float | None = None
        self.closed: asyncio.Future[None] = _future()
        self.head_seen: asyncio.Future[None] = _future()
        self._head = b""
        self._chunked = False
        self._raw = b""  # undecoded chunked bytes: a size line cut by a read
        self._left = 0  # data bytes left in the current chunk
        self._skip = 0  # bytes of the CRLF after a chunk's data still to skip
        self._text = b""  # an incomplete SSE frame

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports quack like asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_OFF)
        self.transport.write(self._request)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.head_seen.done():
            self.head_seen.set_exception(StreamError(f"connection closed before the head: {exc}"))
        if not self.closed.done():
            self.closed.set_result(None)

    def abort(self) -> None:
        """Drop the connection at once, as a network failure would."""
        if self.transport is not None:
            self.transport.abort()

    def data_received(self, data: bytes) -> None:
        now = time.monotonic()
        if self.status is None:
            self._head += data
            end = self._head.find(b"\r\n\r\n")
            if end < 0:
                return
            head, data = self._head[:end], self._head[end + 4 :]
            self._head = b""
            self.status = int(head.split(b" ", 2)[1])
            self._chunked = b"transfer-encoding: chunked" in head.lower()
            self.head_at = now
            if self.status != 200:
                self.head_seen.set_exception(StreamError(f"the stream answered {self.status}"))
                self.abort()
                return
            self.head_seen.set_result(None)
            if self.tally is not None and not self.ready_on_frame:
                self.tally.mark_ready()
            if not data:
                return
        payload = self._dechunk(data) if self._chunked else data
        text = self._text + payload if self._text else payload
        if b"\r" in text:
            # sse-starlette ends lines with CRLF by default; a CR cut from its LF by a read
            # stays at the end of the buffer and is replaced with the next read.
            text = text.replace(b"\r\n", b"\n")
        end = text.rfind(b"\n\n")
        if end < 0:
            self._text = text
            return
        self._text = text[end + 2 :]
        if self.first_frame_at is None:
            self.first_frame_at = now
            if self.tally is not None and self.ready_on_frame:
                self.tally.mark_ready()
        self.frames_received(text[: end + 2], now)

    def _dechunk(self, data: bytes) -> bytes:
        buf = self._raw + data if self._raw else data
        out: list[bytes] = []
        pos, size = 0, len(buf)
        while pos < size:
            if self._skip:
                step = min(self._skip, size - pos)
                pos += step
                self._skip -= step
            elif self._left:
                step = min(self._left, size - pos)
                out.append(buf[pos : pos + step])
                pos += step
                self._left -= step
                if not self._left:
                    self._skip = 2
            else:
                eol = buf.find(b"\r\n", pos)
                if eol < 0:
                    break
                length = int(buf[pos:eol].split(b";", 1)[0], 16)
                pos = eol + 2
                if length == 0:  # the last chunk: the server ended the stream
                    pos = size
                    break
                self._left = length
        self._raw = buf[pos:]
        return out[0] if len(out) == 1 else b"".join(out)

    def frames_received(self, block: bytes, now: float) -> None:
        """``block`` holds one or more complete frames, LF-separated, ending in a blank line."""


class CountingStream(_SSEProtocol):
    """Counts the frames of one event name; keeps one ``(time, first index, count)`` per read.

    The k-th counted event (k from 0) arrived at the time of the read that carried it, which
    is all lateness needs, without touching each event in Python while the load runs.
    """

    def __init__(
        self,
        request: bytes,
        tally: Tally | None,
        *,
        event: str,
        expect: int,
        ready_on_frame: bool,
    ) -> None:
        super().__init__(request, tally, ready_on_frame=ready_on_frame)
        self._pattern = f"event: {event}\n".encode()
        self.expect = expect
        self.matched = 0
        self.batches: list[tuple[float, int, int]] = []

    def reset(self) -> None:
        self.matched = 0
        self.batches.clear()

    def frames_received(self, block: bytes, now: float) -> None:
        count = block.count(self._pattern)
        if not count:
            return
        before = self.matched
        self.matched = before + count
        self.batches.append((now, before, count))
        if before < self.expect <= self.matched and self.tally is not None:
            self.tally.mark_complete()


class SequencedStream(CountingStream):
    """A :class:`CountingStream` that also checks the ids: each one after the one before.

    jobcast numbers every event of its log, and the all-events stream sends each with its id,
    from the id of the first snapshot on: a client that misses nothing sees consecutive ids.
    ``lost`` counts the ids skipped, ``duplicated`` the ids seen again (or out of order),
    ``resets`` the ``reset`` frames (the server saying it dropped history for this client).
    A read whose ids run on from the last costs one ``findall`` and one list comparison.
    """

    def __init__(
        self,
        request: bytes,
        tally: Tally | None,
        *,
        event: str,
        expect: int,
        ready_on_frame: bool,
    ) -> None:
        super().__init__(request, tally, event=event, expect=expect, ready_on_frame=ready_on_frame)
        self.last_id: int | None = None
        self.lost = 0
        self.duplicated = 0
        self.resets = 0

    def frames_received(self, block: bytes, now: float) -> None:
        super().frames_received(block, now)
        found = _ID_RE.findall(block)
        if _RESET in block:
            self.resets += block.count(_RESET)
        if not found:
            return
        ids = list(map(int, found))
        last = self.last_id
        if last is not None and ids == list(range(last + 1, last + 1 + len(ids))):
            self.last_id = ids[-1]
            return
        for ident in ids:
            if last is None or ident == last + 1:
                last = ident
            elif ident > last:
                self.lost += ident - last - 1
                last = ident
            else:
                self.duplicated += 1
        self.last_id = last


@dataclass(slots=True)
class Frame:
    """One parsed SSE frame and the monotonic time of the read that carried it."""

    id: int | None
    event: str
    data: bytes
    at: float


class RecordingStream(_SSEProtocol):
    """Parses every frame; remembers the last ``id:`` for a resume with ``Last-Event-ID``."""

    def __init__(self, request: bytes, tally: Tally | None, *, ready_on_frame: bool) -> None:
        super().__init__(request, tally, ready_on_frame=ready_on_frame)
        self.frames: list[Frame] = []
        self.last_id: int | None = None

    def frames_received(self, block: bytes, now: float) -> None:
        for raw in block.split(b"\n\n"):
            if not raw:
                continue
            event, data, ident = "message", b"", None
            for line in raw.split(b"\n"):
                name, _, value = line.partition(b":")
                value = value[1:] if value[:1] == b" " else value
                if name == b"data":
                    data = value if not data else data + b"\n" + value
                elif name == b"event":
                    event = value.decode()
                elif name == b"id":
                    ident = int(value)
            if ident is not None:
                self.last_id = ident
            if data:
                self.on_frame(Frame(ident, event, data, now))

    def on_frame(self, frame: Frame) -> None:
        """Called for each frame with data; keeps it by default."""
        self.frames.append(frame)


class Countdown:
    """A future that resolves once :meth:`hit` was called ``total`` times."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.hits = 0
        self.reached: asyncio.Future[None] = _future()
        if total <= 0:
            self.reached.set_result(None)

    def hit(self) -> None:
        self.hits += 1
        if self.hits >= self.total and not self.reached.done():
            self.reached.set_result(None)


def stream_request(host: str, port: int, path: str, headers: Mapping[str, str] | None) -> bytes:
    extra = "".join(f"{name}: {value}\r\n" for name, value in (headers or {}).items())
    return (
        f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nAccept: text/event-stream\r\n{extra}\r\n"
    ).encode()


async def connect(host: str, port: int, protocol: P, *, seconds: float = 30.0) -> P:
    """Open ``protocol``'s stream and wait for a 200 head; raise :class:`StreamError` else."""
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(seconds):
            await loop.create_connection(lambda: protocol, host, port)
            await protocol.head_seen
    except (OSError, TimeoutError) as exc:
        protocol.abort()
        raise StreamError(f"cannot open a stream on {host}:{port}: {exc!r}") from exc
    return protocol


async def request(
    method: str,
    host: str,
    port: int,
    path: str,
    body: bytes = b"",
    *,
    seconds: float = 30.0,
) -> tuple[int, bytes]:
    """One request on a fresh connection (``Connection: close``): status and body."""
    async with asyncio.timeout(seconds):
        reader, writer = await asyncio.open_connection(host, port)
        try:
            head = (
                f"{method} {path} HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: close\r\n"
                f"Content-Length: {len(body)}\r\n"
            )
            if body:
                head += "Content-Type: application/json\r\n"
            writer.write(head.encode() + b"\r\n" + body)
            answer = await reader.read()
        finally:
            writer.close()
            await writer.wait_closed()
    head_bytes, _, payload = answer.partition(b"\r\n\r\n")
    if not head_bytes:
        raise HttpError(method, path, 0, b"(no answer)")
    status = int(head_bytes.split(b" ", 2)[1])
    if b"transfer-encoding: chunked" in head_bytes.lower():
        payload = _dechunk_all(payload)
    return status, payload


def _dechunk_all(payload: bytes) -> bytes:
    out: list[bytes] = []
    pos = 0
    while True:
        eol = payload.find(b"\r\n", pos)
        if eol < 0:
            break
        length = int(payload[pos:eol].split(b";", 1)[0], 16)
        if length == 0:
            break
        out.append(payload[eol + 2 : eol + 2 + length])
        pos = eol + 2 + length + 2
    return b"".join(out)


async def request_json(
    method: str,
    host: str,
    port: int,
    path: str,
    body: object = None,
    *,
    expect: tuple[int, ...] = (200, 202),
    seconds: float = 30.0,
) -> Any:
    """A JSON request; raises :class:`HttpError` on a status not in ``expect``."""
    raw = b"" if body is None else json.dumps(body).encode()
    status, payload = await request(method, host, port, path, raw, seconds=seconds)
    if status not in expect:
        raise HttpError(method, path, status, payload)
    return json.loads(payload) if payload else None
