"""The references' publisher: jobcast's ``ticker`` schedule, and events shaped like its logs."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qs

__all__ = ["Ticker", "encode", "reference_app"]


class Ticker:
    """Numbers events and publishes ``n`` of them at ``rate`` per second, on jobcast's schedule.

    Event k (from 0) is due at start + k / rate, as in jobcast's ``ticker`` task: a publisher
    that falls behind shows up as lateness, never as a slower rate. Each event carries the
    fields of a jobcast ``log`` event (a 32-character job id, a ``tick k/n`` line), so every
    server sends frames of about the same size.
    """

    def __init__(self, publish: Callable[[dict[str, Any]], None]) -> None:
        self._publish = publish
        self.seq = 0
        self.running: set[asyncio.Task[None]] = set()  # held, so a task is not collected

    def start(self, n: int, rate: float) -> None:
        task = asyncio.get_running_loop().create_task(self._run(n, rate))
        self.running.add(task)
        task.add_done_callback(self.running.discard)

    async def _run(self, n: int, rate: float) -> None:
        job_id = uuid.uuid4().hex
        loop = asyncio.get_running_loop()
        start = loop.time()
        for k in range(n):
            delay = start + k / rate - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            self.seq += 1
            item = {"seq": self.seq, "ts": round(time.time(), 6), "job_id": job_id}
            self._publish({**item, "line": f"tick {k + 1}/{n}"})


def encode(item: dict[str, Any]) -> bytes:
    """The one SSE frame of an event, as jobcast encodes its own."""
    return f"id: {item['seq']}\nevent: log\ndata: {json.dumps(item)}\n\n".encode()


Stream = Callable[[Any, Any], Awaitable[None]]


def reference_app(
    stream: Stream,
    ticker: Ticker,
    subscribers: Callable[[], int],
    startup: Callable[[], None] = lambda: None,
) -> Callable[[dict[str, Any], Any, Any], Awaitable[None]]:
    """A bare ASGI reference server: ``GET /events`` (``stream``), ``POST /publish?n=&rate=``
    (``ticker``), ``GET /healthz`` (how many ``subscribers``); ``startup`` at its start."""

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    startup()
                    await send({"type": "lifespan.startup.complete"})
                else:
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        path = scope["path"]
        if path == "/events":
            await stream(receive, send)
        elif path == "/publish" and scope["method"] == "POST":
            query = parse_qs(scope["query_string"].decode())
            ticker.start(int(query.get("n", ["100"])[0]), float(query.get("rate", ["10"])[0]))
            await _json(send, {"ok": True})
        elif path == "/healthz":
            await _json(send, {"subscribers": subscribers(), "publishing": len(ticker.running)})
        else:
            await send({"type": "http.response.start", "status": 404, "headers": []})
            await send({"type": "http.response.body", "body": b""})

    return app


async def _json(send: Any, data: object) -> None:
    headers = [(b"content-type", b"application/json")]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": json.dumps(data).encode()})
