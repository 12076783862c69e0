"""Servers under test: each one a uvicorn subprocess on a free loopback port; and the other
programs a scenario may need (Redis, a ``jobcast worker``).

Every process a run starts is registered with a :class:`Processes` and stopped when it closes,
whatever ends the run (a crash, Ctrl+C, SIGTERM): each gets SIGTERM and a few seconds, then
its whole process group gets SIGKILL, which also takes jobcast's worker processes.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import resource
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from .client import HttpError, request

__all__ = [
    "HOST",
    "PROJECT_ROOT",
    "Processes",
    "Program",
    "Server",
    "ServerSpec",
    "free_port",
    "raise_open_files_limit",
]

PROJECT_ROOT = Path(__file__).resolve().parents[1]
HOST = "127.0.0.1"
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def raise_open_files_limit() -> tuple[int, int]:
    """Raise this process's RLIMIT_NOFILE to the hard limit; children inherit it.

    Returns the (soft, hard) limits now in force.
    """
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


@dataclass(frozen=True, slots=True)
class ServerSpec:
    """What to serve: a display name, ``module:attr`` of an ASGI app, extra environment."""

    name: str
    app: str
    ready_path: str = "/healthz"
    env: Mapping[str, str] = field(default_factory=dict)


class Program:
    """One subprocess of a run: its pid's memory and CPU time, its log, and how to stop it."""

    def __init__(self, name: str, popen: subprocess.Popen[bytes], log: Path) -> None:
        self.name = name
        self.popen = popen
        self.log = log

    @property
    def pid(self) -> int:
        return self.popen.pid

    def rss_kib(self) -> int:
        """Resident memory of the process (not of its children)."""
        with open(f"/proc/{self.pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        raise RuntimeError(f"no VmRSS for pid {self.pid}")

    def cpu_seconds(self) -> float:
        """User + system CPU time of the process, all its threads."""
        with open(f"/proc/{self.pid}/stat") as stat:
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
            try:
                self.popen.wait(grace)
            except subprocess.TimeoutExpired:
                pass
        try:
            # The group also holds jobcast's job processes; they die with it.
            os.killpg(self.popen.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.popen.wait(5)


class Server(Program):
    """One running server: a :class:`Program` that answers HTTP on ``host:port``."""

    def __init__(self, spec: ServerSpec, popen: subprocess.Popen[bytes], port: int, log: Path):
        super().__init__(spec.name, popen, log)
        self.spec = spec
        self.port = port
        self.host = HOST


class Processes:
    """Owns every subprocess of a run and stops them all on exit, in reverse order."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self._servers: list[Program] = []
        self._others: list[asyncio.subprocess.Process] = []
        self._spawned = itertools.count()

    def __enter__(self) -> Processes:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop_all()

    def stop_all(self) -> None:
        for proc in reversed(self._others):
            if proc.returncode is None:
                try:
                    proc.kill()
                except ProcessLookupError:
                    pass
        self._others.clear()
        for server in reversed(self._servers):
            server.stop()
        self._servers.clear()

    def adopt(self, proc: asyncio.subprocess.Process) -> None:
        """Stop ``proc`` with the rest (a subscriber process)."""
        self._others.append(proc)

    def release(self, proc: asyncio.subprocess.Process) -> None:
        if proc in self._others:
            self._others.remove(proc)

    async def start(self, spec: ServerSpec, *, seconds: float = 60.0) -> Server:
        """Start ``spec`` and return once it answers ``ready_path`` (within ``seconds``)."""
        port = free_port()
        slug = "".join(c if c.isalnum() else "-" for c in spec.name)
        log = self.workdir / f"{slug}-{port}.log"
        popen = await asyncio.to_thread(_spawn, spec, port, log)
        server = Server(spec, popen, port, log)
        self._servers.append(server)
        deadline = time.monotonic() + seconds
        while True:
            server.check_alive()
            try:
                status, _ = await request("GET", HOST, port, spec.ready_path, seconds=5)
                if status == 200:
                    return server
            except (OSError, HttpError, TimeoutError):
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"{spec.name} did not answer {spec.ready_path} within {seconds:g} s:\n"
                    f"{server.log_tail()}"
                )
            await asyncio.sleep(0.05)

    async def spawn(
        self, name: str, command: Sequence[str], *, env: Mapping[str, str] | None = None
    ) -> Program:
        """Start ``command`` (stopped with the rest); the caller waits until it is ready."""
        slug = "".join(c if c.isalnum() else "-" for c in name)
        log = self.workdir / f"{slug}-{next(self._spawned)}.log"
        popen = await asyncio.to_thread(_popen, list(command), env or {}, log)
        program = Program(name, popen, log)
        self._servers.append(program)
        return program

    async def stop(self, server: Program) -> None:
        """Stop one process now (scenarios free the CPU and memory of the previous ones)."""
        if server in self._servers:
            self._servers.remove(server)
        await asyncio.to_thread(server.stop)


def _spawn(spec: ServerSpec, port: int, log: Path) -> subprocess.Popen[bytes]:
    return _popen(_uvicorn_command(spec, port), spec.env, log)


def _uvicorn_command(spec: ServerSpec, port: int) -> list[str]:
    return [
        sys.executable,
        "-m",
        "uvicorn",
        spec.app,
        "--host",
        HOST,
        "--port",
        str(port),
        "--loop",
        "uvloop",
        "--http",
        "httptools",
        "--log-level",
        "warning",
        # Every server gets the same backlog: a reconnect storm of 2,000 clients must
        # measure the server, not the kernel queue of a default 2,048.
        "--backlog",
        "4096",
        "--timeout-graceful-shutdown",
        "3",
    ]


def _popen(command: list[str], extra_env: Mapping[str, str], log: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, **extra_env, "PYTHONUNBUFFERED": "1"}
    with open(log, "wb") as out:
        popen = subprocess.Popen(
            command,
            cwd=PROJECT_ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # Ctrl+C reaches the runner, which stops us in order
        )
    return popen
