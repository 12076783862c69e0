"""The load client: raw asyncio sockets speaking just enough HTTP/1.1, chunked coding and SSE.

A general client (httpx, aiohttp) costs tens of microseconds per read: at a million deliveries
a second it, not the server, would be measured. Here a stream is an :class:`asyncio.Protocol`
that dechunks and cuts frames with a few C-level ``bytes`` operations per read. Times are
``time.monotonic()``, system-wide on Linux: a subscriber process's arrival times compare with
the runner's trigger time.

``python -m bench.client CONFIG_JSON`` is a subscriber process for one fan-out run, so that
reading thousands of streams can use a core of its own. One JSON line each way:

1. it opens ``n`` streams, then prints ``{"ready": ...}`` (or ``{"error": ...}``);
2. the runner triggers the publisher and sends ``{"t0": ..., "rate": ..., "deadline": ...}``,
   where ``t0`` is the monotonic time just before the trigger;
3. it waits until every stream has ``expect`` events or the deadline passes, then prints the
   result: deliveries, complete streams, and a histogram of lateness. Event k (from 0) was due
   at ``t0 + k / rate``; its lateness is its arrival minus that. With ``check_ids``, it also
   counts the ids each stream skipped or saw twice, and the ``reset`` frames.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import socket
import struct
import sys
import time
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar, cast

from .stats import Histogram

# Closing with SO_LINGER 0 resets the connection instead of leaving it in TIME_WAIT: a full run
# opens tens of thousands of streams to a handful of ports, more than the ephemeral range holds
# for a minute. A reset is also what a dropped network looks like to a server.
_LINGER_OFF = struct.pack("ii", 1, 0)
S = TypeVar("S", bound="Stream")
T = TypeVar("T")
TICK_RE = re.compile(rb'"line": ?"tick (\d+)/')
_ID_RE = re.compile(rb"^id: (\d+)$", re.MULTILINE)
_RESET = b"event: reset\n"
_LOG = b"event: log\n"


class HttpError(Exception):
    """A server answered a request with an unexpected status, or not at all."""


class StreamError(Exception):
    """A stream could not be opened, or answered anything but 200."""


class Countdown:
    """A future that resolves once :meth:`hit` was called ``total`` times: a run of 5,000
    streams waits on one future, not 5,000."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.hits = 0
        self.reached: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if total <= 0:
            self.reached.set_result(None)

    def hit(self) -> None:
        self.hits += 1
        if self.hits >= self.total and not self.reached.done():
            self.reached.set_result(None)


class Stream(asyncio.Protocol):
    """One HTTP/1.1 GET of an event stream: head, chunked body, SSE frames. It hits ``ready``
    on the 200 head, or with ``ready_on_frame`` on the first frame (jobcast's snapshot, after
    which its cursor is fixed: nothing published later can be missed)."""

    def __init__(self, request: bytes, ready: Countdown | None, *, ready_on_frame: bool) -> None:
        self._request = request
        self.ready = ready
        self.ready_on_frame = ready_on_frame
        self.transport: asyncio.Transport | None = None
        self.status: int | None = None
        self.head_at: float | None = None
        self.first_frame_at: float | None = None
        self.head_seen: asyncio.Future[None] = asyncio.get_running_loop().create_future()
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
            if self.ready is not None and not self.ready_on_frame:
                self.ready.hit()
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
            if self.ready is not None and self.ready_on_frame:
                self.ready.hit()
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


class CountingStream(Stream):
    """Counts ``log`` frames, one ``(time, first index, count)`` per read: the k-th event
    arrived with the read that carried it, all lateness needs, without touching each event in
    Python while the load runs. It hits ``complete`` at the ``expect``-th event."""

    def __init__(
        self,
        request: bytes,
        ready: Countdown,
        complete: Countdown,
        *,
        expect: int,
        ready_on_frame: bool,
    ) -> None:
        super().__init__(request, ready, ready_on_frame=ready_on_frame)
        self.complete = complete
        self.expect = expect
        self.matched = 0
        self.batches: list[tuple[float, int, int]] = []

    def frames_received(self, block: bytes, now: float) -> None:
        count = block.count(_LOG)
        if not count:
            return
        before = self.matched
        self.matched = before + count
        self.batches.append((now, before, count))
        if before < self.expect <= self.matched:
            self.complete.hit()


class SequencedStream(CountingStream):
    """A :class:`CountingStream` that also checks that each id follows the one before, as
    jobcast's all-events stream numbers them from the first snapshot on. ``lost`` counts ids
    skipped, ``duplicated`` ids seen again (or out of order), ``resets`` ``reset`` frames."""

    last_id: int | None = None
    lost = 0
    duplicated = 0
    resets = 0

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


class RecordingStream(Stream):
    """Parses every frame and hands each one with data to :meth:`on_frame`, with the monotonic
    time of the read that carried it."""

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
            if data:
                self.on_frame(ident, event, data, now)

    def on_frame(self, ident: int | None, event: str, data: bytes, at: float) -> None:
        raise NotImplementedError


def stream_request(host: str, port: int, path: str, last_id: int | None = None) -> bytes:
    extra = "" if last_id is None else f"Last-Event-ID: {last_id}\r\n"
    return (
        f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nAccept: text/event-stream\r\n{extra}\r\n"
    ).encode()


async def connect(host: str, port: int, stream: S, *, seconds: float) -> S:
    """Open ``stream`` and wait for a 200 head; raise :class:`StreamError` else."""
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(seconds):
            await loop.create_connection(lambda: stream, host, port)
            await stream.head_seen
    except (OSError, TimeoutError) as exc:
        stream.abort()
        raise StreamError(f"cannot open a stream on {host}:{port}: {exc!r}") from exc
    return stream


async def open_all(
    host: str, port: int, streams: Sequence[S], ready: Countdown, *, seconds: float
) -> None:
    """Open ``streams``, at most 500 connecting at once, and wait until ``ready`` is reached."""
    gate = asyncio.Semaphore(500)

    async def one(stream: S) -> None:
        async with gate:
            await connect(host, port, stream, seconds=seconds)

    await asyncio.gather(*(one(stream) for stream in streams))
    async with asyncio.timeout(seconds):
        await ready.reached


async def request(
    method: str, host: str, port: int, path: str, body: bytes = b"", *, seconds: float = 30.0
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
        raise HttpError(f"{method} {path}: no answer")
    status = int(head_bytes.split(b" ", 2)[1])
    if b"transfer-encoding: chunked" in head_bytes.lower():
        payload = _dechunk_all(payload)
    return status, payload


def _dechunk_all(payload: bytes) -> bytes:
    out: list[bytes] = []
    pos = 0
    while (eol := payload.find(b"\r\n", pos)) >= 0:
        length = int(payload[pos:eol].split(b";", 1)[0], 16)
        if length == 0:
            break
        out.append(payload[eol + 2 : eol + 2 + length])
        pos = eol + 2 + length + 2
    return b"".join(out)


@dataclass(frozen=True, slots=True)
class Config:
    host: str
    port: int
    path: str
    n: int  # streams to open
    expect: int  # events each stream should get
    ready_on_frame: bool
    connect_timeout: float
    check_ids: bool  # count skipped and repeated ids (SequencedStream)


def _result(streams: list[CountingStream], expect: int, t0: float, rate: float) -> dict[str, Any]:
    lateness = Histogram()
    for stream in streams:
        for at, first, count in stream.batches:
            base = (at - t0) * 1000.0
            for k in range(first, min(first + count, expect)):
                lateness.add_ms(base - k * 1000.0 / rate)
    checked = [stream for stream in streams if isinstance(stream, SequencedStream)]
    return {
        "complete": sum(1 for stream in streams if stream.matched >= expect),
        "deliveries": sum(min(stream.matched, expect) for stream in streams),
        "lateness": vars(lateness),
        "lost": sum(stream.lost for stream in checked),
        "duplicated": sum(stream.duplicated for stream in checked),
        "resets": sum(stream.resets for stream in checked),
    }


async def run(config: Config) -> None:
    started = time.monotonic()
    ready, complete = Countdown(config.n), Countdown(config.n)
    kind = SequencedStream if config.check_ids else CountingStream
    request = stream_request(config.host, config.port, config.path)
    streams = [
        kind(request, ready, complete, expect=config.expect, ready_on_frame=config.ready_on_frame)
        for _ in range(config.n)
    ]
    try:
        await open_all(config.host, config.port, streams, ready, seconds=config.connect_timeout)
    except (StreamError, TimeoutError) as exc:
        _say({"error": f"{type(exc).__name__}: {exc}"})
        return
    _say({"ready": True, "connect_s": time.monotonic() - started})
    line = await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    if not line:
        return  # the runner is gone
    go = json.loads(line)
    cpu_before = time.process_time()
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(max(0.0, go["deadline"] - time.monotonic())):
            await complete.reached
    wall, timed_out = time.monotonic() - go["t0"], not complete.reached.done()
    cpu = time.process_time() - cpu_before
    for stream in streams:
        stream.abort()
    result = _result(streams, config.expect, go["t0"], go["rate"])
    _say({**result, "timed_out": timed_out, "client_cpu_s": cpu, "wall_s": wall})


def _say(message: dict[str, Any]) -> None:
    print(json.dumps(message), flush=True)


def run_loop(main: Coroutine[Any, Any, T]) -> T:
    """Run ``main`` on uvloop (uvicorn[standard] brings it), else on asyncio's own loop."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    return uvloop.run(main)


if __name__ == "__main__":
    run_loop(run(Config(**json.loads(sys.argv[1]))))
