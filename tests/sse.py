"""A small SSE client for the tests: parses frames off a real HTTP stream."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import anyio
import httpx


@dataclass
class Frame:
    event: str
    data: Any
    id: int | None = None


@dataclass
class Stream:
    response: httpx.Response
    retry: int | None = None
    comments: list[str] = field(default_factory=list)
    _lines: AsyncIterator[str] | None = None

    async def next(self, seconds: float = 5.0) -> Frame:
        """The next frame with data; comments and ``retry:`` are recorded on the way."""
        frame = await self._read(seconds, stop_at_comment=False)
        assert frame is not None
        return frame

    async def _read(self, seconds: float, *, stop_at_comment: bool) -> Frame | None:
        if self._lines is None:
            self._lines = self.response.aiter_lines()
        fields: dict[str, str] = {}
        with anyio.fail_after(seconds):
            async for line in self._lines:
                if line == "":
                    if "data" in fields:
                        raw_id = fields.get("id")
                        return Frame(
                            fields.get("event", "message"),
                            json.loads(fields["data"]),
                            int(raw_id) if raw_id else None,
                        )
                    fields.clear()
                    continue
                if line.startswith(":"):
                    self.comments.append(line[1:].strip())
                    if stop_at_comment:
                        return None
                    continue
                name, _, value = line.partition(":")
                value = value.removeprefix(" ")
                if name == "retry":
                    self.retry = int(value)
                else:
                    fields[name] = value
        raise EOFError("the stream ended")

    async def comment(self, seconds: float = 5.0) -> str:
        """Skip to the next comment line (a keepalive) and return its text."""
        seen = len(self.comments)
        with anyio.fail_after(seconds):
            while len(self.comments) == seen:
                await self._read(seconds, stop_at_comment=True)
        return self.comments[seen]

    async def until(self, predicate: Any, seconds: float = 5.0) -> list[Frame]:
        """Frames up to and including the first one ``predicate`` accepts."""
        frames: list[Frame] = []
        with anyio.fail_after(seconds):
            while True:
                frame = await self.next(seconds)
                frames.append(frame)
                if predicate(frame):
                    return frames

    async def rest(self, seconds: float = 5.0) -> list[Frame]:
        """Every frame until the server ends the stream."""
        frames: list[Frame] = []
        with anyio.fail_after(seconds):
            while True:
                try:
                    frames.append(await self.next(seconds))
                except EOFError:
                    return frames


@asynccontextmanager
async def open_stream(
    client: httpx.AsyncClient, url: str, *, last_event_id: int | None = None
) -> AsyncIterator[Stream]:
    headers = {} if last_event_id is None else {"Last-Event-ID": str(last_event_id)}
    async with client.stream("GET", url, headers=headers) as response:
        yield Stream(response)
