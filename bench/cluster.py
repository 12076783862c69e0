"""What the scale-out scenario starts besides the API processes: Redis and a jobcast worker.

Both are plain subprocesses of the run's :class:`~bench.servers.Processes`, stopped with the
servers whatever ends the run. Redis runs on a free loopback port, its working directory in the
run's temporary directory, with persistence off: every run starts from an empty deployment.
"""

from __future__ import annotations

import asyncio
import shutil
import sys
import time
from collections.abc import Awaitable, Callable

from .config import JOBCAST_LIMITS
from .servers import HOST, Processes, Program, free_port

__all__ = ["REDIS_SERVER", "redis_server", "redis_version", "start_redis", "start_worker"]

#: The Redis server the scenario runs (Debian's ``redis-server`` package).
REDIS_SERVER = "/usr/bin/redis-server"


def redis_server() -> str | None:
    """The ``redis-server`` to run, or None when there is none."""
    return shutil.which("redis-server") or shutil.which(REDIS_SERVER)


async def redis_version() -> str:
    """What ``redis-server --version`` says (for the results), or why there is nothing."""
    executable = redis_server()
    if executable is None:
        return "absent"
    proc = await asyncio.create_subprocess_exec(
        executable, "--version", stdout=asyncio.subprocess.PIPE
    )
    out, _ = await proc.communicate()
    return out.decode(errors="replace").strip()


async def _redis_command(port: int, *args: str, seconds: float = 5.0) -> bytes:
    """One command in RESP, on a fresh connection; the raw reply (enough for readiness)."""
    request = f"*{len(args)}\r\n".encode()
    for arg in args:
        data = arg.encode()
        request += b"$%d\r\n%s\r\n" % (len(data), data)
    async with asyncio.timeout(seconds):
        reader, writer = await asyncio.open_connection(HOST, port)
        try:
            writer.write(request)
            await writer.drain()
            return await reader.readline()
        finally:
            writer.close()
            await writer.wait_closed()


async def _until(
    program: Program, seconds: float, what: str, ready: Callable[[], Awaitable[bool]]
) -> None:
    deadline = time.monotonic() + seconds
    while True:
        program.check_alive()
        try:
            if await ready():
                return
        except (OSError, TimeoutError):
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"{program.name} did not {what} within {seconds:g} s:\n{program.log_tail()}"
            )
        await asyncio.sleep(0.05)


async def start_redis(procs: Processes, *, seconds: float = 30.0) -> tuple[Program, str]:
    """Start an empty Redis on a free loopback port; return it and its URL once it answers."""
    executable = redis_server()
    if executable is None:
        raise RuntimeError(
            "the cluster scenario needs redis-server (Debian: apt-get install redis-server)"
        )
    port = free_port()
    data = procs.workdir / f"redis-{port}"
    data.mkdir()
    command = [
        executable,
        "--port", str(port),
        "--bind", HOST,
        "--dir", str(data),
        "--save", "",  # no snapshots, no append-only file: nothing outlives the run
        "--appendonly", "no",
        "--daemonize", "no",
        "--loglevel", "warning",
        "--logfile", "",  # to stdout, the program's log in the run's directory
    ]  # fmt: skip
    redis = await procs.spawn("Redis", command)

    async def answers() -> bool:
        return await _redis_command(port, "PING") == b"+PONG\r\n"

    await _until(redis, seconds, "answer PING", answers)
    return redis, f"redis://{HOST}:{port}/0"


async def start_worker(
    procs: Processes, redis_url: str, *, prefix: str = "jobcast", seconds: float = 60.0
) -> Program:
    """Start ``jobcast worker`` for the bench's tasks; return it once its heartbeat is in
    Redis (it has joined the queue's consumer group by then)."""
    env = {"JOBCAST_REDIS_URL": redis_url, "JOBCAST_REDIS_PREFIX": prefix, **JOBCAST_LIMITS}
    command = [sys.executable, "-m", "jobcast", "worker", "bench.apps.jobcast_app:jobs"]
    worker = await procs.spawn("jobcast worker", command, env=env)
    port = int(redis_url.rsplit(":", 1)[1].split("/", 1)[0])

    async def beating() -> bool:
        reply = await _redis_command(port, "KEYS", f"{prefix}:worker:*")
        return reply.startswith(b"*") and reply != b"*0\r\n"

    await _until(worker, seconds, "join the Redis queue", beating)
    return worker
