"""No orphans: a job's processes die with the server process that started them.

A command runs in a process group of its own, and so does a process-mode worker (it makes
itself a session leader first thing). Each such group is registered with this process's
undertaker: a small child process, started at the first registration, that reads ``+pgid``
and ``-pgid`` lines on a pipe. When the server process ends, however it ends (``kill -9``
included), the kernel closes its end of the pipe; the undertaker reads the end of the file,
SIGKILLs every group still registered, and exits. Nothing else holds that end: pipes are not
inherited by the programs jobs start.

SIGKILL, not SIGTERM: a server that was killed gave its jobs no grace, and a job that is
queued again after the restart (``retry_on_restart``) must not find its previous run still
at work. A process-mode worker also asks the kernel itself for SIGKILL when its parent dies
(``PR_SET_PDEATHSIG``, Linux), which covers the moment between its start and its
registration. POSIX only, like the commands.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import ctypes.util
import logging
import os
import signal
import subprocess
import sys
import threading

__all__ = ["die_with_parent", "forget", "watch"]

logger = logging.getLogger("jobcast")

#: The undertaker's whole program: standard library only, started with -I -S so that it
#: costs a few milliseconds and no import of the user's code or of jobcast.
_PROGRAM = r"""
import os, signal, sys
for number in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
    signal.signal(number, signal.SIG_IGN)  # it ends when the server ends, not before
groups = set()
for line in sys.stdin.buffer:
    sign, digits = line[:1], line[1:].strip()
    if not digits.isdigit():
        continue
    if sign == b"+":
        groups.add(int(digits))
    elif sign == b"-":
        groups.discard(int(digits))
for group in groups:
    try:
        os.killpg(group, signal.SIGKILL)
    except OSError:
        pass
"""

_PR_SET_PDEATHSIG = 1


class _Undertaker:
    """This process's undertaker child, started on first use, and the pipe to it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._process: subprocess.Popen[bytes] | None = None
        self._pid = 0  # the process that started it: a forked child must start its own
        self._broken = False

    def send(self, line: bytes) -> None:
        with self._lock:
            process = self._running()
            if process is None or process.stdin is None:
                return
            try:
                process.stdin.write(line)
                process.stdin.flush()
            except OSError as exc:
                self._give_up(f"the pipe to it failed ({exc})")

    def _running(self) -> subprocess.Popen[bytes] | None:
        if self._broken:
            return None
        process = self._process
        if process is not None and self._pid == os.getpid() and process.poll() is None:
            return process
        if process is not None and self._pid == os.getpid():
            self._give_up(f"it exited with code {process.returncode}")
            return None
        try:
            self._process = subprocess.Popen(
                [sys.executable, "-I", "-S", "-c", _PROGRAM],
                stdin=subprocess.PIPE,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,  # a signal to the server's group does not reach it
            )
        except OSError as exc:
            self._give_up(f"it could not start ({exc})")
            return None
        self._pid = os.getpid()
        atexit.register(self.close)
        return self._process

    def close(self) -> None:
        """At exit: close the pipe, so the undertaker ends now (killing what is left)."""
        with self._lock:
            process, self._process = self._process, None
        if process is None or self._pid != os.getpid():
            return
        if process.stdin is not None:
            with contextlib.suppress(OSError):
                process.stdin.close()
        try:
            process.wait(timeout=2)
        except subprocess.TimeoutExpired:
            logger.warning("jobcast's undertaker did not end within 2 s of the server")

    def _give_up(self, why: str) -> None:
        self._broken = True
        logger.error(
            "jobcast's undertaker is gone: %s; the programs of running jobs may outlive this "
            "server if it is killed (restart the server to start a new one)",
            why,
        )


_UNDERTAKER = _Undertaker()


def watch(group: int) -> None:
    """Kill process group ``group`` if this process dies before :func:`forget` is called."""
    _UNDERTAKER.send(b"+%d\n" % group)


def forget(group: int) -> None:
    """Undo :func:`watch` for ``group``, whose processes have ended (or been reaped)."""
    _UNDERTAKER.send(b"-%d\n" % group)


def die_with_parent(parent: int) -> None:
    """In a child: have the kernel SIGKILL it when ``parent`` dies (Linux), and leave at once
    if that has already happened."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
            errno = ctypes.get_errno()
            logger.warning("prctl(PR_SET_PDEATHSIG) failed: %s", os.strerror(errno))
    if os.getppid() != parent:  # the parent died before the request took effect
        os._exit(1)
