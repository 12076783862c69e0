"""tqdm inside a task reports the job's progress, with no edits to the task.

A bar created in a job's thread, or in its worker process, is watched by that job's
context: the supervisor reads the bar's ``n``, ``total`` and ``desc`` on its own schedule, so
the bar's updates cost nothing more than tqdm's own. Bars created anywhere else are left
alone: the hook looks at the creating thread, and does nothing outside a job.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from .context import JobContext

__all__ = ["bound", "install"]

_current = threading.local()
_install_lock = threading.Lock()


def install() -> None:
    """Hook tqdm's constructor, once per process; nothing happens without tqdm."""
    try:
        from tqdm.std import tqdm
    except ImportError:
        return
    with _install_lock:
        if getattr(tqdm, "_jobcast_hooked", False):
            return
        original = tqdm.__new__

        def __new__(cls: type[Any], *args: Any, **kwargs: Any) -> Any:
            bar = original(cls, *args, **kwargs)
            ctx: JobContext | None = getattr(_current, "ctx", None)
            if ctx is not None:
                ctx.watch(bar)
            return bar

        tqdm.__new__ = staticmethod(__new__)
        tqdm._jobcast_hooked = True


@contextmanager
def bound(ctx: JobContext) -> Iterator[None]:
    """Within this block, tqdm bars created by this thread report to ``ctx``."""
    _current.ctx = ctx
    try:
        yield
    finally:
        _current.ctx = None
