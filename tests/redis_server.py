"""A real ``redis-server`` for the scale-out tests: on a free loopback port, in its own
directory, with an append-only file, so that it can be stopped, killed and started again on
the same port and data."""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
from pathlib import Path

from tests.conftest import wait_until

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"


class RedisServer:
    """One ``redis-server`` process at a time, always on the same port and directory."""

    def __init__(self, directory: Path, port: int) -> None:
        self.directory = directory
        self.port = port
        self.url = f"redis://127.0.0.1:{port}/0"
        self.popen: subprocess.Popen[bytes] | None = None
        self._log = directory / "redis.log"

    @property
    def running(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def start(self) -> None:
        """Start the server (again) and return once it answers PING."""
        assert not self.running, "redis-server is already running"
        command = [
            REDIS_SERVER,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(self.directory),
            "--appendonly",
            "yes",
            "--appendfsync",
            "always",
            "--save",
            "",
            "--daemonize",
            "no",
        ]
        with self._log.open("ab") as log:
            self.popen = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        wait_until(self._answers, seconds=10)

    def stop(self) -> None:
        """SIGTERM, the way an operator stops it, and wait for it to exit."""
        self._end(signal.SIGTERM)

    def kill(self) -> None:
        """SIGKILL: no chance to write anything more."""
        self._end(signal.SIGKILL)

    def wipe(self) -> None:
        """Delete what the stopped server kept: it starts again empty, like a Redis that
        lost its data (no persistence, or a new machine)."""
        assert not self.running, "stop or kill redis-server first"
        for path in self.directory.iterdir():
            if path == self._log:
                continue
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink()

    def close(self) -> None:
        if self.running:
            self.kill()

    def output(self) -> str:
        return self._log.read_text(errors="replace")

    def _end(self, signum: signal.Signals) -> None:
        assert self.popen is not None and self.running, "redis-server is not running"
        self.popen.send_signal(signum)
        self.popen.wait(10)
        self.popen = None

    def _answers(self) -> bool:
        """Whether the server answers PING with PONG (not LOADING, not refused)."""
        assert self.popen is not None
        if self.popen.poll() is not None:
            raise RuntimeError(f"redis-server exited early:\n{self.output()}")
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(64).startswith(b"+PONG")
        except OSError:
            return False
