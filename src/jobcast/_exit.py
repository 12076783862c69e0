"""Learn that the server was told to stop (SIGTERM, Ctrl+C), whichever server it is.

An ASGI app hears of a shutdown only through its lifespan, which servers run after the open
connections have closed: an event stream, which never closes by itself, would hold the server
up until it gives up on it. So the first signal is caught on its way to the server: the
handler the server installed (uvicorn, gunicorn, hypercorn: whatever is there when the app
starts) is chained, still called first, and every waiter here learns of the signal too. Signals
reach only the main thread; a server run in another thread is never told this way, and stops
its streams when its graceful-shutdown timeout ends.
"""

from __future__ import annotations

import asyncio
import signal
import threading
from types import FrameType
from typing import Any

__all__ = ["wait_for_exit_signal"]

SIGNALS = (signal.SIGINT, signal.SIGTERM)

_waiters: set[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = set()


def _chain(signum: int) -> None:
    previous = signal.getsignal(signum)
    if getattr(previous, "__jobcast_exit__", False):
        return  # chained already, in this process

    def handler(sig: int, frame: FrameType | None) -> None:
        for loop, event in list(_waiters):
            try:
                loop.call_soon_threadsafe(event.set)
            except RuntimeError:  # that loop has closed
                _waiters.discard((loop, event))
        if callable(previous):  # the server's own handler (it may raise: KeyboardInterrupt)
            previous(sig, frame)

    handler.__jobcast_exit__ = True  # type: ignore[attr-defined]
    signal.signal(signum, handler)


async def wait_for_exit_signal() -> Any:
    """Return once SIGINT or SIGTERM reaches this process; never, off the main thread."""
    loop = asyncio.get_running_loop()
    event = asyncio.Event()
    if threading.current_thread() is threading.main_thread():
        for signum in SIGNALS:
            _chain(signum)
    waiter = (loop, event)
    _waiters.add(waiter)
    try:
        await event.wait()
    finally:
        _waiters.discard(waiter)
