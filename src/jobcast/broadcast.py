"""The broadcaster: one task per event log, writing each batch of new events to every stream
that is caught up.

A stream that has sent everything up to the broadcaster's position *joins* it and parks (see
:mod:`jobcast.stream`). When events become visible, the broadcaster takes the whole batch,
frames it once per filter (every job, one task, one job) and, for each parked stream, calls
its ``send`` and drives that coroutine one step. A write that completes has put its bytes on
the socket: no task was woken for it. One that suspends is waiting for the client's socket to
drain: the stream is *handed back* with that write, and its own task finishes it, catches up
from the log and joins again. A stream is also handed back when its job has ended, when the
log is closed, and when the batch is gone from the log (a gap, which the stream reports).

Measured beside a stream per task (``python -m bench``; see the README's Performance
section), this is what makes fan-out cost one pass over the streams per batch instead of one
wake-up per stream per event.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Callable, Generator
from typing import Any

from starlette.types import Send

from .eventlog import EventLog, Gap
from .events import Event

__all__ = ["EVERY_JOB", "WRITE_LIMIT", "Broadcaster", "Filter", "Subscriber", "Write", "chunks"]

#: Most bytes sent in one write: bounds what one batch holds per filter, however large.
WRITE_LIMIT = 64 * 1024
KEEPALIVE = b": keepalive\n\n"

#: Which events a stream shows: ``("", "")`` every job's, ``("task", name)`` one task's,
#: ``("job", id)`` one job's. Plain tuples: the broadcaster looks two up per event.
Filter = tuple[str, str]
EVERY_JOB: Filter = ("", "")


def shown_by(event: Event) -> tuple[Filter, Filter, Filter]:
    """The filters whose streams show ``event``: every job's, its task's, its job's."""
    return EVERY_JOB, ("task", event.task), ("job", event.job_id)


def accepts(which: Filter, event: Event) -> bool:
    """Whether a stream with filter ``which`` shows ``event``."""
    return which in shown_by(event)


def chunks(events: list[Event]) -> list[tuple[bytes, int]]:
    """The frames of ``events`` joined into writes of about :data:`WRITE_LIMIT` bytes at most,
    each with the sequence number of its last event."""
    out: list[tuple[bytes, int]] = []
    parts: list[bytes] = []
    size = 0
    for event in events:
        parts.append(event.frame)
        size += len(event.frame)
        if size >= WRITE_LIMIT:
            out.append((b"".join(parts), event.seq))
            parts, size = [], 0
    if parts:
        out.append((b"".join(parts), events[-1].seq))
    return out


class Write:
    """A ``send`` that another task started and that suspended: awaiting it runs the rest.

    The broadcaster drives each caught-up stream's ``send`` one step, in the stream's
    context (its context variables as they were when it parked); when the step suspends
    (the socket's buffer is full), the coroutine and what it waits on are handed to the
    stream's own task, which awaits this and so resumes it as ``await`` would have: the same
    wait, in the same context, cancellation thrown into it.

    One difference remains: the first step ran in the broadcaster's task. A ``send`` wrapper
    that ties something to the current task across a suspended write (``asyncio.timeout``,
    an anyio cancel scope) sees two tasks; a context variable set and reset around the
    write, as tracing does, works.
    """

    __slots__ = ("_context", "_coro", "_step")

    def __init__(
        self, coro: Generator[Any, Any, Any], step: Any, context: contextvars.Context
    ) -> None:
        self._coro = coro  # the write's ``__await__()``: what an ``await`` would drive
        self._step = step
        self._context = context

    def __await__(self) -> Generator[Any, None, None]:
        coro, step, run = self._coro, self._step, self._context.run
        while True:
            try:
                yield step
            except BaseException as exc:  # cancellation, or an error: into the write
                try:
                    step = run(coro.throw, exc)
                except StopIteration:
                    return
            else:
                try:
                    step = run(coro.send, None)
                except StopIteration:
                    return

    def close(self) -> None:
        """Abandon the write (its stream is ending without it)."""
        self._context.run(self._coro.close)


class Subscriber:
    """One stream as the broadcaster sees it: where it is, what it shows, how to write to it,
    and how to wake its own task.

    While it is joined, its position is the broadcaster's; when handed back, ``position`` is
    how far its bytes go, ``write`` a suspended write to finish first, ``error`` what its
    ``send`` raised.
    """

    __slots__ = ("context", "done", "error", "filter", "park", "position", "send", "write")

    def __init__(
        self,
        send: Send,
        which: Filter,
        position: int,
        done: Callable[[int], bool] | None = None,
    ) -> None:
        self.send = send
        self.filter = which
        self.position = position
        self.done = done  # for a job's stream: whether it has said everything at a position
        self.park: asyncio.Task[Any] | None = None  # its own task, while it is parked
        #: Its task's context variables as they were when it parked: its writes run there.
        self.context = contextvars.copy_context()
        self.write: Write | None = None
        self.error: BaseException | None = None


class Broadcaster:
    """Writes each batch of an :class:`~jobcast.eventlog.EventLog`'s visible events to every
    joined :class:`Subscriber`; :meth:`run` is its task."""

    def __init__(self, log: EventLog) -> None:
        self.log = log
        #: Everything up to here has been written to every joined subscriber.
        self.position = log.visible_seq
        self._groups: dict[Filter, set[Subscriber]] = {}
        # Subscribers ahead of the broadcaster (they read the log up to an event it has not
        # taken yet): they join the group once it has caught up with them.
        self._ahead: set[Subscriber] = set()
        self._running = False

    def __len__(self) -> int:
        return sum(map(len, self._groups.values())) + len(self._ahead)

    def join(self, subscriber: Subscriber) -> bool:
        """Take ``subscriber``, which has written everything up to its position, into the
        broadcast; False if it is behind the broadcaster (it has more to read first), or if
        the broadcaster is not running (the log is closed, or the service stopping)."""
        if not self._running or self.log.closed or subscriber.position < self.position:
            return False
        subscriber.write = subscriber.error = None
        if subscriber.position == self.position:
            self._groups.setdefault(subscriber.filter, set()).add(subscriber)
        else:
            self._ahead.add(subscriber)
        return True

    def leave(self, subscriber: Subscriber) -> None:
        """Let go of ``subscriber`` (its client left); harmless if it is not joined."""
        self._ahead.discard(subscriber)
        group = self._groups.get(subscriber.filter)
        if group is not None:
            group.discard(subscriber)
            if not group:
                del self._groups[subscriber.filter]

    async def run(self) -> None:
        """Broadcast until the log is closed, then hand every subscriber back to end."""
        log = self.log
        self.position = log.visible_seq
        self._running = True
        try:
            while not log.closed:
                await log.wait(self.position)
                if log.visible_seq > self.position:
                    self._advance(log.visible_seq)
                elif not log.closed:  # woken with nothing new: the keepalive timer
                    self._keepalive()
        finally:
            self._running = False
            self._hand_back_all(self.position)

    # -- one batch -------------------------------------------------------------------------------

    def _advance(self, end: int) -> None:
        start = self.position
        self.position = end
        if not self._groups and not self._ahead:
            return
        try:
            events = self.log.read(start, end - start)
        except Gap:  # the batch is no longer in the log: each stream reports the gap itself
            self._hand_back_all(start)
            return
        for which, batch in _select(events, self._groups).items():
            if not batch:
                continue
            writes = chunks(batch)
            for subscriber in list(self._groups[which]):
                self._deliver(subscriber, writes, end)
        # Then those it has caught up with: what each lacks of the batch, and into its group
        # (after the group's write, which starts before their position).
        for subscriber in [s for s in self._ahead if s.position <= end]:
            self._ahead.discard(subscriber)
            later = events[subscriber.position - start :]
            mine = [event for event in later if accepts(subscriber.filter, event)]
            if self._deliver(subscriber, chunks(mine) if mine else [], end):
                self._groups.setdefault(subscriber.filter, set()).add(subscriber)

    def _deliver(self, subscriber: Subscriber, writes: list[tuple[bytes, int]], end: int) -> bool:
        """Write ``writes`` to ``subscriber``; whether it stays joined."""
        for index, (body, last) in enumerate(writes):
            message = {"type": "http.response.body", "body": body, "more_body": True}
            context = subscriber.context
            try:
                write = context.run(subscriber.send, message).__await__()
                step = context.run(write.send, None)
            except StopIteration:
                continue
            except (Exception, asyncio.CancelledError) as exc:
                # The stream's, not the broadcaster's (which is never cancelled while it
                # runs): its own task raises it, as an ``await`` of that write would have.
                subscriber.error = exc
                self._hand_back(subscriber, end)
                return False
            subscriber.write = Write(write, step, context)
            self._hand_back(subscriber, end if index == len(writes) - 1 else last)
            return False
        if subscriber.done is not None and subscriber.done(end):
            self._hand_back(subscriber, end)
            return False
        return True

    def _keepalive(self) -> None:
        for group in list(self._groups.values()):
            for subscriber in list(group):
                self._deliver(subscriber, [(KEEPALIVE, self.position)], self.position)

    def _hand_back_all(self, position: int) -> None:
        for subscriber in list(self._ahead):
            self._hand_back(subscriber, subscriber.position)
        for group in list(self._groups.values()):
            for subscriber in list(group):
                self._hand_back(subscriber, position)

    def _hand_back(self, subscriber: Subscriber, position: int) -> None:
        self.leave(subscriber)
        subscriber.position = position
        task, subscriber.park = subscriber.park, None
        if task is not None:
            task.cancel()  # it learns why from ``park`` being let go of


def _select(events: list[Event], groups: dict[Filter, Any]) -> dict[Filter, list[Event]]:
    """The events each filter of ``groups`` shows, in one pass over ``events``."""
    selected: dict[Filter, list[Event]] = {which: [] for which in groups}
    for event in events:
        for which in shown_by(event):
            if (batch := selected.get(which)) is not None:
                batch.append(event)
    return selected
