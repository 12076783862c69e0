"""``jobcast worker``: runs the jobs of a Redis deployment, on any machine.

It is the one :class:`~jobcast.worker.Worker`, over the Redis backend: it takes jobs from the
queue through the consumer group, starts each with one checked change (so a cancel that came
first wins), runs it exactly as a single process would, and records what it does through the
lifecycle. Its heartbeat key tells the others it is alive; cancels reach it on a pub/sub
channel, and through its heartbeat round should a message be missed. It also takes back the
jobs of dead workers, as every process does. SIGTERM drains it: it takes no more jobs, lets
running ones finish within the grace period, then stops them (``interrupted``, or queued
again for ``retry_on_restart`` tasks); a second SIGTERM skips the wait.
"""

from __future__ import annotations

import functools
import logging
import os
import secrets
import signal
import socket

import anyio

from ..backends._redis import connect
from ..backends.redis import RedisBackend
from ..lifecycle import Lifecycle
from ..settings import Settings
from ..tasks import TaskRegistry
from ..worker import Worker

__all__ = ["serve_worker"]

logger = logging.getLogger("jobcast")


async def serve_worker(registry: TaskRegistry, settings: Settings) -> None:
    """Run a worker until SIGTERM or Ctrl+C (drain), or a second one (stop at once).

    Raises :class:`~jobcast.BackendUnavailable` when Redis cannot be reached at start.
    """
    assert settings.redis_url is not None
    redis = connect(settings.redis_url)
    name = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"
    backend = RedisBackend(redis, settings, None)
    try:
        await backend.join(name)  # here, so that Redis being down is reported as itself
        async with anyio.create_task_group() as group:
            backend.task_group = group
            lifecycle = Lifecycle(registry, settings, backend)
            worker = Worker(
                registry, settings, backend, lifecycle, group, name=name, who=f"the worker {name}"
            )
            reaper = functools.partial(backend.take_back, lifecycle, spare=name)
            group.start_soon(reaper, name=f"jobcast reaper {name}")
            group.start_soon(lifecycle.scheduler().run, name=f"jobcast schedules {name}")
            group.start_soon(_on_signals, worker)
            logger.info("worker %s takes jobs (up to %d at once)", name, settings.max_workers)
            try:
                await worker.run()
            finally:
                with anyio.CancelScope(shield=True):
                    await worker.drain()
                    await backend.flushed(name, settings.grace_period)
                    group.cancel_scope.cancel()
        await backend.leave(name)
    finally:
        await redis.aclose()


async def _on_signals(worker: Worker) -> None:
    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for signum in signals:
            name = signal.Signals(signum).name
            if worker.taking:
                logger.info("%s: draining; no more jobs are taken", name)
                worker.stop_taking()
            else:
                logger.warning("second %s: stopping the running jobs now", name)
                worker.hurry()
