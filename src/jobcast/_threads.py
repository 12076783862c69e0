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
import traceback
from collections.abc import Callable
from typing import TypeVar

from .exceptions import TaskError

__all__ = ["run_in_daemon_thread"]

T = TypeVar("T")

logger = logging.getLogger("jobcast")


def _travelling(exc: BaseException) -> BaseException:
    """``exc`` as it can reach the awaiting task: an ``Exception`` as itself; one a future
    refuses (``StopIteration``) or one that would stop the whole server on its way
    (``SystemExit``, ``KeyboardInterrupt``) as a :class:`~jobcast.TaskError` naming it."""
    if isinstance(exc, Exception) and not isinstance(exc, StopIteration):
        return exc
    trace = "".join(traceback.format_exception(exc))
    return TaskError(type(exc).__name__, str(exc), trace=trace)


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
            outcome, failed = _travelling(exc), True
        try:
            loop.call_soon_threadsafe(settle, outcome, failed)
        except RuntimeError:  # the loop has closed: the server stopped without it
            logger.debug("thread %s finished after the server stopped", name)

    threading.Thread(target=target, name=name, daemon=True).start()
    return await future
