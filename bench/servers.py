"""The processes of a run: servers under test (uvicorn on a free loopback port), the other
programs a scenario needs (Redis, a ``jobcast worker``), and ``python -m`` helpers.

A :class:`Processes` stops every one of them when it closes, whatever ends the run (a crash,
Ctrl+C, SIGTERM): each gets SIGTERM and a few seconds, then its whole process group SIGKILL,
which also takes jobcast's worker processes.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from .client import HttpError, request, stream_request
from .config import JOBCAST_LIMITS, ServerSpec

PROJECT_ROOT = Path(__file__).resolve().parents[1]
HOST = "127.0.0.1"
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
_PAGE_KIB = os.sysconf("SC_PAGE_SIZE") // 1024


def raise_open_files_limit() -> tuple[int, int]:
    """Raise RLIMIT_NOFILE to the hard limit (children inherit it); the (soft, hard) now."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else 1 << 20
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


class Program:
    """One subprocess of a run, in a session of its own (Ctrl+C reaches the runner, which
    stops it in order), its output in ``log``."""

    def __init__(self, name: str, command: Sequence[str], env: Mapping[str, str], log: Path):
        self.name = name
        self.log = log
        with open(log, "wb") as out:
            self.popen = subprocess.Popen(
                command,
                cwd=PROJECT_ROOT,
                env={**os.environ, **env, "PYTHONUNBUFFERED": "1"},
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def rss_kib(self) -> int:
        """Resident memory of the process (not of its children)."""
        with open(f"/proc/{self.popen.pid}/statm") as statm:
            return int(statm.read().split()[1]) * _PAGE_KIB

    def cpu_seconds(self) -> float:
        """User + system CPU time of the process, all its threads."""
        with open(f"/proc/{self.popen.pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def check_alive(self) -> None:
        if self.popen.poll() is not None:
            raise RuntimeError(
                f"{self.name} exited with {self.popen.returncode}:\n{self.log_tail()}"
            )

    def stop(self, grace: float = 5.0) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.popen.wait(grace)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, signal.SIGKILL)  # with jobcast's job processes
        self.popen.wait(5)


class Server(Program):
    """A :class:`Program` serving ``spec`` with uvicorn on ``host:port``."""

    def __init__(self, spec: ServerSpec, port: int, log: Path) -> None:
        command = [
            sys.executable, "-m", "uvicorn", spec.app, "--host", HOST, "--port", str(port),
            "--loop", "uvloop", "--http", "httptools", "--log-level", "warning",
            # Every server gets the same backlog: a reconnect storm of 2,000 clients must
            # measure the server, not the kernel queue of a default 2,048.
            "--backlog", "4096", "--timeout-graceful-shutdown", "3",
        ]  # fmt: skip
        super().__init__(spec.name, command, spec.env, log)
        self.spec = spec
        self.host = HOST
        self.port = port
        self.jobcast = spec.app.startswith("bench.apps.jobcast_app")
        self.stream_path = "/api/events" if self.jobcast else "/events"
        # jobcast's stream starts with a snapshot: once a client has it, its cursor is set.
        # The references register a client before answering, so the head is enough.
        self.ready_on_frame = self.jobcast

    async def json(
        self, method: str, path: str, body: object = None, *, expect: tuple[int, ...] = (200, 202)
    ) -> Any:
        """A JSON request; raises :class:`HttpError` on a status not in ``expect``."""
        raw = b"" if body is None else json.dumps(body).encode()
        status, payload = await request(method, self.host, self.port, path, raw)
        if status not in expect:
            raise HttpError(f"{method} {path} answered {status}: {payload[:300]!r}")
        return json.loads(payload) if payload else None

    def stream_request(self, last_id: int | None = None) -> bytes:
        return stream_request(self.host, self.port, self.stream_path, last_id)

    async def start_ticker(self, count: int, rate: float) -> str | None:
        """Start publishing ``count`` events at ``rate``; jobcast's job id, if any."""
        if self.jobcast:
            body = {"count": count, "rate": rate}
            return str((await self.json("POST", "/api/tasks/ticker/jobs", body))["id"])
        await self.json("POST", f"/publish?n={count}&rate={rate:g}")
        return None

    async def stop_ticker(self, job_id: str | None) -> None:
        if job_id is not None:
            await self.json("POST", f"/api/jobs/{job_id}/cancel", expect=(202, 409))

    async def _publishing(self) -> bool:
        if not self.jobcast:
            return bool((await self.json("GET", "/healthz"))["publishing"] > 0)
        running = await self.json("GET", "/api/jobs?state=running&limit=1")
        queued = await self.json("GET", "/api/jobs?state=queued&limit=1")
        return bool(running or queued)

    async def wait_quiet(self, seconds: float = 60.0) -> None:
        """Wait until no publisher runs, then until the server uses under 5% of a core (or
        ``seconds`` pass): after an overloaded run it may still be tearing down a thousand
        streams, and the next run must not pay for that."""

        async def stopped() -> bool:
            return not await self._publishing()

        await until(stopped, seconds=seconds, what="the publisher ending", program=self)
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            before = self.cpu_seconds()
            await asyncio.sleep(0.2)
            if self.cpu_seconds() - before < 0.01:
                return


async def until(
    ready: Callable[[], Awaitable[bool]], *, seconds: float, what: str, program: Program
) -> None:
    """Poll ``ready`` every 50 ms until it holds, while ``program`` stays up; a connection
    refused, reset or timed out counts as not yet (``program`` may be starting)."""
    deadline = time.monotonic() + seconds
    while True:
        program.check_alive()
        with contextlib.suppress(OSError, TimeoutError, HttpError):
            if await ready():
                return
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"{program.name}: {what} did not happen within {seconds:g} s:\n{program.log_tail()}"
            )
        await asyncio.sleep(0.05)


class Processes:
    """Owns every subprocess of a run and stops them all on exit, in reverse order."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self._programs: list[Program] = []
        self._children: list[asyncio.subprocess.Process] = []
        self._logs = itertools.count()

    def __enter__(self) -> Processes:
        return self

    def __exit__(self, *exc_info: object) -> None:
        for child in reversed(self._children):
            if child.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    child.kill()
        for program in reversed(self._programs):
            program.stop()

    def _log(self, name: str) -> Path:
        slug = "".join(c if c.isalnum() else "-" for c in name)
        return self.workdir / f"{slug}-{next(self._logs)}.log"

    async def spawn(
        self, name: str, command: Sequence[str], *, env: Mapping[str, str] = {}
    ) -> Program:
        """Start ``command``, stopped with the rest; the caller waits until it is ready."""
        program = await asyncio.to_thread(Program, name, command, env, self._log(name))
        self._programs.append(program)
        return program

    async def start(self, spec: ServerSpec, *, seconds: float = 60.0) -> Server:
        """Start ``spec`` and return once it answers ``ready_path`` with a 200."""
        port = free_port()
        server = await asyncio.to_thread(Server, spec, port, self._log(spec.name))
        self._programs.append(server)

        async def answers() -> bool:
            status, _ = await request("GET", HOST, port, spec.ready_path, seconds=5)
            return status == 200

        await until(answers, seconds=seconds, what=f"answer {spec.ready_path}", program=server)
        return server

    async def stop(self, program: Program) -> None:
        """Stop one process now: a scenario frees the CPU and memory of the one before."""
        if program in self._programs:
            self._programs.remove(program)
        await asyncio.to_thread(program.stop)

    @contextlib.asynccontextmanager
    async def module(self, name: str, *args: str) -> AsyncIterator[asyncio.subprocess.Process]:
        """``python -m name *args`` with stdin and stdout piped, killed on the way out."""
        pipe = asyncio.subprocess.PIPE
        child = await asyncio.create_subprocess_exec(
            sys.executable, "-m", name, *args, stdin=pipe, stdout=pipe, cwd=PROJECT_ROOT,
            start_new_session=True,  # Ctrl+C reaches the runner, which stops it
        )  # fmt: skip
        self._children.append(child)
        try:
            yield child
        finally:
            if child.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    child.kill()
            if child.stdin is not None:
                child.stdin.close()
            await child.wait()
            self._children.remove(child)


def redis_server() -> str | None:
    """The ``redis-server`` to run (Debian's package puts it in /usr/bin), or None."""
    return shutil.which("redis-server") or shutil.which("/usr/bin/redis-server")


def redis_version() -> str:
    executable = redis_server()
    if executable is None:
        return "absent"
    return subprocess.run([executable, "--version"], capture_output=True, text=True).stdout.strip()


async def _redis(port: int, *args: str) -> bytes:
    """One command in RESP on a fresh connection; the first line of the reply."""
    command = f"*{len(args)}\r\n".encode()
    for arg in args:
        command += b"$%d\r\n%s\r\n" % (len(arg.encode()), arg.encode())
    async with asyncio.timeout(5):
        reader, writer = await asyncio.open_connection(HOST, port)
        try:
            writer.write(command)
            await writer.drain()
            return await reader.readline()
        finally:
            writer.close()
            await writer.wait_closed()


async def start_redis(procs: Processes) -> tuple[Program, str]:
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
        executable, "--port", str(port), "--bind", HOST, "--dir", str(data),
        # No snapshots, no append-only file: nothing outlives the run. The log goes to
        # stdout, the program's log in the run's directory.
        "--save", "", "--appendonly", "no", "--daemonize", "no",
        "--loglevel", "warning", "--logfile", "",
    ]  # fmt: skip
    redis = await procs.spawn("Redis", command)

    async def answers() -> bool:
        return await _redis(port, "PING") == b"+PONG\r\n"

    await until(answers, seconds=30, what="answer PING", program=redis)
    return redis, f"redis://{HOST}:{port}/0"


async def start_worker(procs: Processes, redis_url: str) -> Program:
    """Start ``jobcast worker`` for the bench's tasks; return it once its heartbeat is in
    Redis (it has joined the queue's consumer group by then)."""
    prefix = "jobcast"
    env = {"JOBCAST_REDIS_URL": redis_url, "JOBCAST_REDIS_PREFIX": prefix, **JOBCAST_LIMITS}
    command = [sys.executable, "-m", "jobcast", "worker", "bench.apps.jobcast_app:jobs"]
    worker = await procs.spawn("jobcast worker", command, env=env)
    port = int(redis_url.rsplit(":", 1)[1].split("/", 1)[0])

    async def beating() -> bool:
        reply = await _redis(port, "KEYS", f"{prefix}:worker:*")
        return reply.startswith(b"*") and reply != b"*0\r\n"

    await until(beating, seconds=60, what="join the Redis queue", program=worker)
    return worker
