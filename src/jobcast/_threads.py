"""Run a blocking call in a daemon thread, awaitable from the event loop.

``anyio.to_thread.run_sync`` would do, but its worker threads are not daemon threads: a task
that ignores cancellation keeps the interpreter from exiting after shutdown, however long it
runs. A job thread that outlives the grace period must be abandoned, not waited for, so each
job gets its own daemon thread (one per running job, bounded by the worker limit).
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from typing import TypeVar

__all__ = ["run_in_daemon_thread"]

T = TypeVar("T")

logger = logging.getLogger("jobcast")


async def run_in_daemon_thread(func: Callable[[], T], *, name: str) -> T:
    """Call ``func()`` in a new daemon thread and return its result (or raise its exception).

    If the awaiting task is cancelled, the thread is abandoned: it runs on, and whatever it
    returns or raises is logged and dropped.
    """
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def settle(outcome: T | BaseException, failed: bool) -> None:
        if future.done():  # the awaiting task was cancelled and let the thread go
            logger.debug("thread %s finished after it was abandoned", name)
        elif failed:
            assert isinstance(outcome, BaseException)
            future.set_exception(outcome)
        else:
            future.set_result(outcome)  # type: ignore[arg-type]

    def target() -> None:
        try:
            outcome: T | BaseException = func()
            failed = False
        except BaseException as exc:  # handed to the awaiting task, which reports it
            outcome, failed = exc, True
        try:
            loop.call_soon_threadsafe(settle, outcome, failed)
        except RuntimeError:  # the loop has closed: the server stopped without it
            logger.debug("thread %s finished after the server stopped", name)

    threading.Thread(target=target, name=name, daemon=True).start()
    return await future
