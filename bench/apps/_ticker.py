"""The references' publisher: jobcast's ``ticker`` schedule, and events shaped like its logs."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Callable
from typing import Any

__all__ = ["Ticker"]


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
