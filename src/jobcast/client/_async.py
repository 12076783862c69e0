"""The asyncio (and trio) client: :class:`~jobcast.client.Client`'s methods, awaited."""

from __future__ import annotations

from collections.abc import AsyncGenerator, Mapping
from types import TracebackType
from typing import Any, TypeVar

import anyio
import httpx
from httpx_sse import aconnect_sse

from . import _protocol as protocol
from ._models import Event, Job, LogLine, Task

__all__ = ["AsyncClient"]

T = TypeVar("T")


class AsyncClient(protocol.BaseClient):
    """A jobcast server's API and streams, over HTTP, for async code:
    ``AsyncClient("http://127.0.0.1:8000")``, with the options of :class:`Client`.

    ``token`` is sent as ``Authorization: Bearer`` on every request, streams included
    (None or empty text: none; text no token could hold is a ``ValueError``).
    ``timeout`` bounds connecting and each wait for an answer; streams wait longer
    between events, and reconnect for up to ``reconnect_timeout`` seconds when they are
    cut. ``transport`` is an httpx transport of your own (proxies, socket options).
    Use it as an async context manager, or call :meth:`aclose`.
    """

    def __init__(
        self,
        base_url: str,
        token: str | None = None,
        *,
        timeout: float = protocol.DEFAULT_TIMEOUT,
        reconnect_timeout: float = protocol.RECONNECT_TIMEOUT,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        super().__init__(base_url, timeout=timeout, reconnect_timeout=reconnect_timeout)
        self._http = httpx.AsyncClient(
            base_url=self.base_url,
            headers=protocol.headers(token),
            timeout=timeout,
            transport=transport,
        )

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connections."""
        await self._http.aclose()

    # -- requests ------------------------------------------------------------------------------

    async def _run(self, plan: protocol.Plan[T]) -> T:
        try:
            call = next(plan)
            while True:
                call = plan.send(await self._send(call))
        except StopIteration as finished:
            result: T = finished.value
            return result

    async def _send(self, call: protocol.Call[Any]) -> Any:
        try:
            response = await self._http.request(
                call.method, call.path, params=call.params, json=call.json
            )
        except httpx.TransportError as exc:
            raise protocol.unreachable(self.base_url, exc) from exc
        return call.answer(response)

    async def tasks(self) -> list[Task]:
        """The tasks the server runs."""
        return await self._run(protocol.tasks())

    async def start(
        self,
        task: str,
        params: Mapping[str, Any] | None = None,
        *,
        delay: float | None = None,
        priority: int | None = None,
    ) -> Job:
        """Start a job of ``task`` with ``params``; ``delay`` seconds before it may run,
        ``priority`` ahead of lower ones. Returns the job as queued (or the equal job it
        joined)."""
        return await self._run(protocol.start(task, params, delay=delay, priority=priority))

    async def get(self, job_id: str) -> Job:
        """One job as it is now."""
        return await self._run(protocol.get(job_id))

    async def jobs(
        self, state: str | None = None, task: str | None = None, limit: int | None = None
    ) -> list[Job]:
        """Jobs, newest first; only those in ``state``, of ``task``, at most ``limit``."""
        return await self._run(protocol.jobs(state, task, limit))

    async def cancel(self, job_id: str) -> Job:
        """Cancel a queued job, or ask a running one to stop; returns it (``cancelling``)."""
        return await self._run(protocol.cancel(job_id))

    async def logs(self, job_id: str) -> list[LogLine]:
        """Every log line the server keeps of the job, oldest first."""
        return await self._run(protocol.logs(job_id))

    # -- streams -------------------------------------------------------------------------------

    def follow(self, job_id: str) -> AsyncGenerator[Event, None]:
        """The job's events: its kept history, then live, ending after its terminal event.

        Resumes after a dropped connection or a server restart from the last event
        received, so no event is missed or repeated. ``aclose()`` it to stop early.
        """
        return self._events(self._follow(job_id))

    def watch(self, task: str | None = None) -> AsyncGenerator[Event, None]:
        """Every job's events (only ``task``'s, if given): a :class:`Snapshot` first, then
        live, resuming as :meth:`follow` does; it never ends by itself."""
        return self._events(self._watch(task))

    # The same signature as Client's, and a timeout that raises WaitTimeout carrying the
    # job as last seen, which a cancel scope around the call could not.
    async def wait(self, job_id: str, timeout: float | None = None) -> Job:  # noqa: ASYNC109
        """The job once it has finished; :class:`WaitTimeout` after ``timeout`` seconds
        (checked at each event, and when the stream stays silent for the time left)."""
        waiter = protocol.Waiter(job_id, timeout)
        resume = self._follow(job_id, timeout)
        async for event in self._events(resume):
            waiter.see(event)
        return waiter.finished or waiter.ended(await self.get(job_id))

    async def result(self, job_id: str, timeout: float | None = None) -> Any:  # noqa: ASYNC109
        """The job's result once it has succeeded; :class:`JobFailed`,
        :class:`JobCancelled` (or :class:`JobInterrupted`) when it ended otherwise."""
        return protocol.outcome(await self.wait(job_id, timeout))

    async def _events(self, resume: protocol.Resume) -> AsyncGenerator[Event, None]:
        while not (resume.done or resume.expired):
            problem = "the server ended the stream"
            try:
                async with aconnect_sse(
                    self._http,
                    "GET",
                    resume.path,
                    params=resume.query,
                    headers=resume.request_headers(),
                    timeout=self._stream_timeout(resume),
                ) as source:
                    response = source.response
                    if response.status_code != 200:
                        await response.aread()
                        problem = f"the server answered {response.status_code}"
                    if resume.opened(response):
                        async for sse in source.aiter_sse():
                            event = resume.receive(sse)
                            if event is not None:
                                yield event
                            if resume.done or resume.expired:
                                return
            except httpx.TransportError as exc:
                problem = str(exc) or type(exc).__name__
            if resume.done or resume.expired:
                return
            await anyio.sleep(resume.lost(problem))
