"""Streams under hostile clients: stalled readers and connection churn."""

from __future__ import annotations

import asyncio
import gc
import socket
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from tests.conftest import Process, wait_until
from tests.sse import open_stream

pytestmark = [pytest.mark.anyio, pytest.mark.integration]  # child processes, servers


def stalled_client(port: int, path: str = "/api/events") -> socket.socket:
    """Open a stream and never read from it, with a tiny receive buffer."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n".encode())
    return sock


async def test_stalled_clients_slow_no_one_and_cost_bounded_memory(
    spawn: Callable[..., Process],
) -> None:
    server = spawn()
    stalled = [stalled_client(server.port) for _ in range(10)]
    try:
        async with httpx.AsyncClient(timeout=30) as client:
            # Warm up, so the baseline includes what a first job costs.
            await client.post(f"{server.url}/api/tasks/flood/jobs", json={"lines": 10})
            baseline = server.rss_kib
            async with open_stream(client, f"{server.url}/api/events") as stream:
                await stream.next()
                response = await client.post(
                    f"{server.url}/api/tasks/flood/jobs", json={"lines": 8000, "width": 2500}
                )
                job_id = response.json()["id"]
                frames = await stream.until(
                    lambda f: f.event == "succeeded" and f.data["job"]["id"] == job_id,
                    seconds=60,
                )
            grown_mib = (server.rss_kib - baseline) / 1024
    finally:
        for sock in stalled:
            sock.close()
    lines = [f.data["line"][:6] for f in frames if f.event == "log" and f.data["job_id"] == job_id]
    # The reader got every line, in order, while ten clients read nothing.
    assert lines == [f"{i:06d}" for i in range(8000)]
    # 20 MB went out and the log retains it all; had the server queued it for each stalled
    # client, ten of them would add 200 MB more. A write is at most 64 KiB per client.
    assert grown_mib < 60, f"server grew by {grown_mib:.0f} MiB"


async def test_connect_disconnect_cycles_leave_nothing_behind(
    serve: Callable[..., Any],
) -> None:
    jobs, server = serve()
    loop = jobs.runner.worker._execution._loop

    async def count_tasks() -> int:
        return len(asyncio.all_tasks())

    def tasks_now() -> int:
        return asyncio.run_coroutine_threadsafe(count_tasks(), loop).result(5)

    async with httpx.AsyncClient(timeout=10) as client:
        for _ in range(50):  # warm up pools and caches
            async with open_stream(client, f"{server.url}/api/events") as stream:
                await stream.next()
        wait_until(lambda: jobs.runner.log.subscribers == 0)
        tasks_before = tasks_now()
        gc.collect()
        objects_before = len(gc.get_objects())
        for i in range(1000):
            path = "/api/events" if i % 2 else "/api/events?task=count"
            async with open_stream(client, f"{server.url}{path}") as stream:
                await stream.next()
    wait_until(lambda: jobs.runner.log.subscribers == 0)
    assert len(jobs.runner.broadcaster) == 0
    assert tasks_now() == tasks_before
    gc.collect()
    assert len(gc.get_objects()) - objects_before < 2000
