"""Process mode: a task runs in a spawned worker process, at a lower CPU priority.

CPU-bound work in a thread holds the GIL and stalls the API; in its own process it cannot.
The worker reports through a pipe in batches: a reporter thread there sends the progress
reading when it changed (at most once per interval) and log lines as they come, the way
:class:`~jobcast.JobContext` hands them over in the server. Cancel is SIGTERM (the worker
turns it into ``ctx.cancelled``), then SIGKILL after a grace period for code that does not
look; a timeout or a shutdown that gives up kills at once.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import signal
import threading
import traceback
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

from . import _tqdm, _undertaker
from ._threads import run_in_daemon_thread
from ._wire import describe
from .context import JobContext
from .exceptions import JobCancelled, TaskError

__all__ = ["run_in_process"]

_SPAWN = multiprocessing.get_context("spawn")  # fork would copy the server's threads and loop

Message = tuple[Any, ...]


async def run_in_process(
    func: Callable[..., Any],
    ctx: JobContext,
    params: dict[str, Any],
    *,
    nice: int,
    kill_grace: float,
    interval: float,
) -> Any:
    """Run ``func(ctx, **params)`` in a new worker process; return its result.

    Progress and log lines arrive on ``ctx`` as if the task ran here. Raises
    :class:`~jobcast.JobCancelled` when the task stopped on cancel, and
    :class:`~jobcast.TaskError` when it raised or its process died.
    """
    if ctx.cancelled:  # cancelled between dispatch and now: start nothing
        raise JobCancelled(ctx.job_id)
    receiver, sender = _SPAWN.Pipe(duplex=False)
    process = _SPAWN.Process(
        target=_worker,
        args=(sender, func, ctx.job_id, ctx.task, params, nice, interval, os.getpid()),
        name=f"jobcast-{ctx.task}-{ctx.job_id[:8]}",
        daemon=True,
    )
    process.start()
    assert process.pid is not None
    group = process.pid  # the worker leads a process group of its own
    _undertaker.watch(group)
    sender.close()  # the worker holds the only writing end: its exit means EOF here
    loop = asyncio.get_running_loop()

    def terminate() -> None:
        if process.pid is not None and process.exitcode is None:
            os.kill(process.pid, signal.SIGTERM)
            loop.call_later(kill_grace, process.kill)

    ctx.on_cancel(terminate)
    try:
        final = await run_in_daemon_thread(
            lambda: _relay(receiver, ctx, process), name=f"{process.name}-relay"
        )
    finally:
        receiver.close()
        # The worker has ended (and was reaped), or a timeout or a shutdown past its grace
        # period gives up on it: either way nothing of its group may run on. Until all of
        # the group is gone, no other group can have its id.
        _kill_group(group)
        _undertaker.forget(group)
    if final is not None:
        kind, *rest = final
        if kind == "result":
            return rest[0]
        if kind == "cancelled":
            raise JobCancelled(ctx.job_id)
        type_name, message, trace = rest
        raise TaskError(type_name, message, trace=trace)
    if ctx.cancelled:  # killed after it did not stop within the grace period
        raise JobCancelled(ctx.job_id)
    code = process.exitcode
    how = (
        f"signal {signal.Signals(-code).name}" if code is not None and code < 0 else f"code {code}"
    )
    raise TaskError(
        "ProcessDied",
        f"the worker process died with {how} before the task returned; see the server log "
        "(out of memory is a common cause)",
    )


def _kill_group(group: int) -> None:
    """SIGKILL the worker's group: the worker if it still runs, and programs its task left."""
    try:
        os.killpg(group, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass  # nothing left


def _relay(receiver: Connection, ctx: JobContext, process: Any) -> Message | None:
    """Runs in a thread: feed the worker's reports into ``ctx`` until its final message."""
    final: Message | None = None
    while True:
        try:
            message: Message = receiver.recv()
        except (EOFError, OSError):
            break
        kind = message[0]
        if kind == "progress":
            ctx.progress(message[1], message[2], message[3])
        elif kind == "log":
            for line in message[1]:
                ctx.log(line)
        else:
            final = message
    process.join()
    return final


class _Reporter(threading.Thread):
    """In the worker: sends progress (when it changed) and log lines up the pipe."""

    def __init__(self, sender: Connection, interval: float) -> None:
        super().__init__(name="jobcast-reporter", daemon=True)
        self.sender = sender
        self.interval = interval
        self.ctx: JobContext | None = None
        self._wake = threading.Event()
        self._done = False
        self._reading: tuple[Any, ...] | None = None

    def call_soon_threadsafe(self, callback: Callable[[], object], /) -> None:
        self._wake.set()  # the context asks for a flush: the loop below does it

    def send_lines(self, lines: list[str]) -> None:
        self.sender.send(("log", lines))

    def run(self) -> None:
        while not self._done:
            self._wake.wait(self.interval)
            self._wake.clear()
            self.report()

    def report(self) -> None:
        ctx = self.ctx
        assert ctx is not None
        ctx._flush()
        reading = ctx.reading()
        if reading != self._reading:
            self._reading = reading
            self.sender.send(("progress", *reading))

    def finish(self) -> None:
        self._done = True
        self._wake.set()
        self.join()
        self.report()


def _worker(
    sender: Connection,
    func: Callable[..., Any],
    job_id: str,
    task: str,
    params: dict[str, Any],
    nice: int,
    interval: float,
    parent: int,
) -> None:
    _undertaker.die_with_parent(parent)
    os.setsid()  # a group of its own, which the server kills whole if it dies
    os.nice(nice)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl+C is the server's to handle
    reporter = _Reporter(sender, interval)
    ctx = JobContext(job_id, task, params, loop=reporter, on_lines=reporter.send_lines)
    reporter.ctx = ctx
    signal.signal(signal.SIGTERM, lambda signum, frame: ctx.cancel())
    reporter.start()
    _tqdm.install()
    final: Message
    try:
        with _tqdm.bound(ctx):
            final = ("result", func(ctx, **params))
    except JobCancelled:
        final = ("cancelled",)
    except BaseException as exc:
        final = ("error", describe(type(exc).__name__, 200), describe(exc), traceback.format_exc())
    reporter.finish()
    try:
        sender.send(final)
    except Exception as exc:  # the result could not be pickled
        message = f"the task's result cannot be sent back from its process: {exc}"
        sender.send(("error", "ResultNotSerializable", message, traceback.format_exc()))
    sender.close()
