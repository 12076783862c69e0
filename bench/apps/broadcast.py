"""Reference: one broadcaster for every client, each batch framed once, no task woken per client.

The publisher adds each event's frame to a batch and wakes one task. That task joins the
batch and, for every client that is caught up, calls the client's ``send`` and drives the
coroutine one step: one that completes wrote its bytes; one that suspends is waiting for the
client's socket to drain, and the client's own task finishes that write, sends what came
meanwhile, and joins the broadcast again. The shape jobcast's stream engine aims at, bare:
no framework, and it ignores ``Last-Event-ID``.

Same routes as ``bare``: ``GET /events``, ``POST /publish?n=&rate=``, ``GET /healthz``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

from ._ticker import Ticker, encode, reference_app


class _Client:
    __slots__ = ("backlog", "gone", "send", "waiter", "write")

    def __init__(self, send: Any) -> None:
        self.send = send
        self.backlog: list[bytes] = []  # what came while its own task writes
        self.write: tuple[Coroutine[Any, Any, None], Any] | None = None  # a suspended send
        self.gone = False
        self.waiter: asyncio.Future[None] | None = None

    def wake(self) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)


class _Broadcaster:
    def __init__(self) -> None:
        self.caught_up: set[_Client] = set()
        self.behind: set[_Client] = set()
        self._batch: list[bytes] = []
        self._wake: asyncio.Future[None] | None = None

    def publish(self, item: dict[str, Any]) -> None:
        self._batch.append(encode(item))
        if self._wake is not None and not self._wake.done():
            self._wake.set_result(None)

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self._batch:
                self._wake = loop.create_future()
                await self._wake
            body = b"".join(self._batch)
            self._batch.clear()
            for client in self.behind:
                client.backlog.append(body)
            message = {"type": "http.response.body", "body": body, "more_body": True}
            for client in list(self.caught_up):
                write = client.send(message)
                try:
                    step = write.send(None)
                except StopIteration:
                    continue  # written
                except Exception:
                    client.gone = True
                    step = None
                self.caught_up.discard(client)  # its own task takes it from here
                if not client.gone:
                    self.behind.add(client)
                    client.write = (write, step)
                client.wake()


broadcaster = _Broadcaster()
ticker = Ticker(broadcaster.publish)
_tasks: set[asyncio.Task[None]] = set()


def _spawn(coro: Coroutine[Any, Any, None]) -> None:
    task = asyncio.get_running_loop().create_task(coro)
    _tasks.add(task)
    task.add_done_callback(_tasks.discard)


async def _watch_disconnect(receive: Any, client: _Client) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
    client.gone = True
    client.wake()


async def _finish(write: Coroutine[Any, Any, None], step: Any) -> None:
    """Drive a send that suspended on flow control to its end."""
    while True:
        if isinstance(step, asyncio.Future):
            await asyncio.wait([step])
        else:
            await asyncio.sleep(0)
        try:
            step = write.send(None)
        except StopIteration:
            return


async def _stream(receive: Any, send: Any) -> None:
    client = _Client(send)
    loop = asyncio.get_running_loop()
    headers = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-store")]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    broadcaster.caught_up.add(client)
    _spawn(_watch_disconnect(receive, client))
    try:
        while not client.gone:
            client.waiter = loop.create_future()
            await client.waiter
            client.waiter = None
            if client.write is not None:
                write, step = client.write
                client.write = None
                await _finish(write, step)
            while client.backlog and not client.gone:
                body = b"".join(client.backlog)
                client.backlog.clear()
                await send({"type": "http.response.body", "body": body, "more_body": True})
            if not client.gone:  # caught up: back into the broadcast
                broadcaster.behind.discard(client)
                broadcaster.caught_up.add(client)
    finally:
        broadcaster.caught_up.discard(client)
        broadcaster.behind.discard(client)


app = reference_app(
    _stream,
    ticker,
    lambda: len(broadcaster.caught_up) + len(broadcaster.behind),
    lambda: _spawn(broadcaster.run()),
)
