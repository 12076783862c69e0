"""How a task's work runs: each task carries one :class:`Executor`.

A function runs in a daemon thread of its own (:class:`ThreadExecutor`), or in a spawned
worker process at a lower CPU priority (:class:`ProcessExecutor`, for CPU-bound work that
would hold the GIL); a declared program runs as a command (:class:`CommandExecutor`). Each
turns what the work does into calls on the job's :class:`~jobcast.JobContext`, and returns
its result or raises: :class:`~jobcast.JobCancelled` when it stopped on cancel,
:class:`~jobcast.TaskError` when work outside the server failed.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from . import _tqdm
from ._process import run_in_process
from ._threads import run_in_daemon_thread
from .commands import build_argv, run_command
from .context import JobContext
from .settings import Settings

__all__ = ["CommandExecutor", "Executor", "ProcessExecutor", "ThreadExecutor"]


class Executor(Protocol):
    """Runs the work of one job."""

    @property
    def mode(self) -> str:
        """How it runs, as ``GET /api/tasks`` lists it: ``thread``, ``process`` or ``command``."""
        ...

    async def run(self, ctx: JobContext, params: dict[str, Any], settings: Settings) -> Any:
        """Run the work of job ``ctx`` with its validated ``params``; return its result."""
        ...


@dataclass(frozen=True, slots=True)
class ThreadExecutor:
    """``func(ctx, **params)`` in a daemon thread of its own (abandoned, never waited for,
    if it outlives a shutdown)."""

    func: Callable[..., Any]
    mode: str = field(default="thread", init=False)

    async def run(self, ctx: JobContext, params: dict[str, Any], settings: Settings) -> Any:
        def call() -> Any:
            with _tqdm.bound(ctx):  # tqdm bars made in the job report its progress
                return self.func(ctx, **params)

        return await run_in_daemon_thread(call, name=f"jobcast-{ctx.task}-{ctx.job_id[:8]}")


@dataclass(frozen=True, slots=True)
class ProcessExecutor:
    """``func(ctx, **params)`` in a spawned worker process, ``nice`` steps lower in CPU
    priority; ``func`` must be importable by name (a module-level function)."""

    func: Callable[..., Any]
    nice: int = 10
    mode: str = field(default="process", init=False)

    async def run(self, ctx: JobContext, params: dict[str, Any], settings: Settings) -> Any:
        return await run_in_process(
            self.func,
            ctx,
            params,
            nice=self.nice,
            kill_grace=settings.kill_grace,
            interval=settings.progress_interval / 2,
        )


@dataclass(frozen=True, slots=True)
class CommandExecutor:
    """A program: ``argv`` with ``{param}`` placeholders filled, each value inside its own
    item (no shell), run in ``cwd`` with ``env`` added to the server's environment."""

    argv: tuple[str, ...]
    cwd: str | None = None
    env: dict[str, str] = field(default_factory=dict)
    success_codes: frozenset[int] = frozenset({0})
    mode: str = field(default="command", init=False)

    async def run(self, ctx: JobContext, params: dict[str, Any], settings: Settings) -> Any:
        return await run_command(
            build_argv(self.argv, params),
            ctx,
            kill_grace=settings.kill_grace,
            cwd=self.cwd,
            # Python programs buffer a pipe's output; their lines should arrive live.
            env={**os.environ, "PYTHONUNBUFFERED": "1", **self.env},
            success_codes=self.success_codes,
            max_line=settings.max_log_line,
        )
