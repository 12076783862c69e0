"""What task code gets: :class:`JobContext`, to report progress and logs and to see a cancel.

Every method here runs in the job's worker thread, so each is built to cost about what
``tqdm.update()`` costs: ``progress``, ``advance`` and ``track`` only store numbers, which the
job's supervisor reads on its own schedule (at most once per progress interval). ``log`` hands
lines to the event loop in batches: one ``call_soon_threadsafe`` for however many lines pile
up before the loop gets to them.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sized
from typing import Any, Protocol, TypeVar

from ._wire import describe
from .exceptions import JobCancelled

__all__ = ["JobContext"]

T = TypeVar("T")


class Scheduler(Protocol):
    """Where log flushes run: the event loop in the server, a reporter thread in a worker."""

    def call_soon_threadsafe(self, callback: Callable[[], object], /) -> Any: ...


class JobContext:
    """The handle a task receives as its first argument.

    Progress follows tqdm: ``current`` out of ``total`` (``None`` when unknown), plus a short
    ``message``. Cancellation is cooperative: check :attr:`cancelled`, call
    :meth:`raise_if_cancelled`, or use :meth:`track` and :meth:`sleep`, which do it for you.
    """

    __slots__ = (
        "_bar",
        "_cancel",
        "_cancel_hooks",
        "_flush_scheduled",
        "_loop",
        "_on_lines",
        "_pending",
        "_stop",
        "current",
        "job_id",
        "message",
        "params",
        "task",
        "total",
    )

    def __init__(
        self,
        job_id: str,
        task: str,
        params: dict[str, object],
        *,
        loop: Scheduler,
        on_lines: Callable[[list[str]], None],
    ) -> None:
        self.job_id = job_id
        self.task = task
        self.params = params
        self.current: float = 0
        self.total: float | None = None
        self.message: str | None = None
        self._stop = False  # read on every tracked item: a plain attribute is the cheapest check
        self._cancel = threading.Event()  # what ctx.sleep() waits on
        self._cancel_hooks: list[Callable[[], None]] = []
        self._bar: Any = None  # a tqdm bar created in this job, read in place of the numbers
        self._pending: deque[str] = deque()
        self._flush_scheduled = False
        self._loop = loop
        self._on_lines = on_lines

    # -- progress --------------------------------------------------------------------------

    def progress(
        self, current: float, total: float | None = None, message: str | None = None
    ) -> None:
        """Set the progress: ``current`` items done out of ``total``, with an optional message."""
        self.current = current
        if total is not None:
            self.total = total
        if message is not None:
            self.message = message

    def reading(self) -> tuple[float, float | None, str | None]:
        """The progress now: ``(current, total, message)``, from a watched tqdm bar if any."""
        bar = self._bar
        if bar is None:
            return self.current, self.total, self.message
        return bar.n, bar.total, bar.desc or self.message

    def watch(self, bar: Any) -> None:
        """Report a tqdm bar's progress as the job's (tqdm bars made in a job call this).

        The outermost open bar wins: inner bars that come and go do not replace it.
        """
        if self._bar is None or getattr(self._bar, "disable", False):
            self._bar = bar

    def advance(self, n: float = 1) -> None:
        """Add ``n`` to the current progress (``tqdm.update(n)``)."""
        self.current += n

    def track(
        self, iterable: Iterable[T], *, total: float | None = None, description: str | None = None
    ) -> Iterator[T]:
        """Iterate like ``tqdm(iterable)``: count each item done, and stop when cancelled.

        ``total`` (the number of items) defaults to ``len(iterable)`` when it has one. Progress
        counts on from where it stands, so several tracked loops add up in one job.
        """
        if total is None and isinstance(iterable, Sized):
            total = len(iterable)
        self.progress(self.current, None if total is None else self.current + total, description)
        for item in iterable:
            if self._stop:
                raise JobCancelled(self.job_id)
            yield item
            self.current += 1

    # -- logs ------------------------------------------------------------------------------

    def log(self, line: object) -> None:
        """Publish one log line for this job (``str(line)``; one event per line).

        Never raises: an object whose ``str()`` fails is logged as a line saying so.
        """
        text = line if type(line) is str else describe(line)
        if "\n" in text or "\r" in text:
            self._pending.extend(text.splitlines())
        else:
            self._pending.append(text)
        # Flag check after the append: either the scheduled flush sees this line, or the
        # flush already ran, cleared the flag first, and this call schedules another.
        if not self._flush_scheduled:
            self._flush_scheduled = True
            try:
                self._loop.call_soon_threadsafe(self._flush)
            except RuntimeError:
                # The loop is gone: the server stopped and abandoned this thread. Drop the
                # lines and clear the flag, so later calls drop theirs too instead of piling up.
                self._pending.clear()
                self._flush_scheduled = False

    def _flush(self) -> None:
        self._flush_scheduled = False
        lines: list[str] = []
        pending = self._pending
        while pending:
            lines.append(pending.popleft())
        if lines:
            self._on_lines(lines)

    # -- cancellation ----------------------------------------------------------------------

    @property
    def cancelled(self) -> bool:
        """Whether the job was asked to stop. Task code should return or raise soon after."""
        return self._stop

    def raise_if_cancelled(self) -> None:
        """Raise :class:`~jobcast.JobCancelled` if the job was asked to stop."""
        if self._stop:
            raise JobCancelled(self.job_id)

    def sleep(self, seconds: float) -> None:
        """Sleep, but wake and raise :class:`~jobcast.JobCancelled` as soon as cancelled."""
        if self._cancel.wait(seconds):
            raise JobCancelled(self.job_id)

    def cancel(self) -> None:
        """Ask the task to stop (called by the runner, on the event loop)."""
        first = not self._stop
        self._stop = True
        self._cancel.set()
        if first:
            for hook in self._cancel_hooks:
                hook()

    def on_cancel(self, hook: Callable[[], None]) -> None:
        """Call ``hook`` when the job is cancelled (executors use it to signal a process).

        If the job is already cancelled, ``hook`` is called at once.
        """
        if self._stop:
            hook()
        else:
            self._cancel_hooks.append(hook)
