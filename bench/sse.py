"""The stream scenarios: fan-out lateness and capacity, idle memory, reconnect storm.

Each runs alike against jobcast and the references: subscribers read the server's all-events
stream while a publisher on the server emits ``log`` events on an absolute schedule (jobcast's
``ticker`` task, the references' ``/publish``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import time
from collections.abc import Sequence
from dataclasses import KW_ONLY, asdict, dataclass, field
from typing import Any

from .client import (
    TICK_RE,
    Config,
    Countdown,
    HttpError,
    RecordingStream,
    Stream,
    StreamError,
    connect,
    open_all,
)
from .config import Sizes
from .servers import Processes, Program, Server
from .stats import Histogram, median


@dataclass(slots=True)
class FanoutRun:
    """One trigger: every subscriber should get ``expected_each`` events."""

    rate: float
    subscribers: int
    expected_each: int
    complete: int
    deliveries: int
    p50_ms: float
    p99_ms: float
    max_ms: float
    timed_out: bool
    server_cpu_s: float
    client_cpu_s: float
    wall_s: float
    connect_s: float
    # Checking ids (else None): ids skipped and seen again by any stream; reset frames.
    lost: int | None = None
    duplicated: int | None = None
    resets: int | None = None
    other_cpu_s: dict[str, float] = field(default_factory=dict)  # watched processes, by name

    @property
    def delivered_all(self) -> bool:
        return self.complete == self.subscribers


@dataclass(slots=True)
class FanoutPoint:
    """One server at one rate and subscriber count: the medians of its runs."""

    server: str
    rate: float
    subscribers: int
    clients: int
    p50_ms: float = field(init=False)
    p99_ms: float = field(init=False)
    max_ms: float = field(init=False)
    delivered_all: bool = field(init=False)
    delivered_fraction: float = field(init=False)  # in the worst run
    server_cpu_us_per_delivery: float = field(init=False)
    server_cpu_share: float = field(init=False)  # of its core (all its threads), trigger to end
    client_cpu_share: float = field(init=False)  # per subscriber process, in the busiest run
    checked: bool = field(init=False)  # the ids were checked: lost, duplicated, resets count
    lost: int = field(init=False)
    duplicated: int = field(init=False)
    resets: int = field(init=False)
    other_cpu_share: dict[str, float] = field(init=False)  # each watched process, of its core
    runs: list[FanoutRun]

    def __post_init__(self) -> None:
        runs = self.runs
        self.p50_ms = median(run.p50_ms for run in runs)
        self.p99_ms = median(run.p99_ms for run in runs)
        self.max_ms = max((run.max_ms for run in runs), default=math.nan)
        self.delivered_all = bool(runs) and all(run.delivered_all for run in runs)
        self.delivered_fraction = min(
            (run.deliveries / (run.subscribers * run.expected_each) for run in runs), default=0.0
        )
        per_delivery = (run.server_cpu_s / max(1, run.deliveries) * 1e6 for run in runs)
        self.server_cpu_us_per_delivery = median(per_delivery)
        self.server_cpu_share = median(run.server_cpu_s / max(1e-9, run.wall_s) for run in runs)
        self.client_cpu_share = max(
            (run.client_cpu_s / max(1e-9, run.wall_s) / self.clients for run in runs),
            default=0.0,
        )
        self.checked = bool(runs) and all(run.lost is not None for run in runs)
        self.lost = sum(run.lost or 0 for run in runs)
        self.duplicated = sum(run.duplicated or 0 for run in runs)
        self.resets = sum(run.resets or 0 for run in runs)
        names = dict.fromkeys(name for run in runs for name in run.other_cpu_s)
        self.other_cpu_share = {
            name: median(run.other_cpu_s.get(name, math.nan) / max(1e-9, run.wall_s)
                         for run in runs)
            for name in names
        }  # fmt: skip


@dataclass(frozen=True)
class Fanout:
    """``subscribers`` streams split evenly over ``servers`` (sharing one event stream, as
    API processes through Redis do), ``clients`` subscriber processes per server, while the
    first server publishes ``rate`` events a second for ``seconds``. Server CPU is theirs
    together; ``watch`` names other processes whose CPU time counts too."""

    procs: Processes
    servers: Sequence[Server]
    subscribers: int
    rate: float
    seconds: float
    clients: int
    _: KW_ONLY
    watch: Sequence[Program] = ()
    check_ids: bool = False

    async def point(self, sizes: Sizes, name: str | None = None) -> FanoutPoint:
        """Up to ``sizes.repeat`` runs; one that lost events ends them (the server is past it)."""
        runs: list[FanoutRun] = []
        while len(runs) < sizes.repeat and (not runs or runs[-1].delivered_all):
            runs.append(await self._run(sizes.fanout_slack))
        clients = self.clients * len(self.servers)
        return FanoutPoint(name or self.servers[0].name, self.rate, self.subscribers, clients, runs)

    async def _run(self, slack: float) -> FanoutRun:
        publisher, rate, subscribers = self.servers[0], self.rate, self.subscribers
        count = max(2, round(rate * self.seconds))  # events per run
        for server in self.servers:
            await server.wait_quiet()
        connect_s = 30.0 + subscribers / 100
        async with contextlib.AsyncExitStack() as stack:
            workers = await self._workers(stack, count, connect_s)
            readies = await asyncio.gather(*(_read(worker, connect_s + 10) for worker in workers))
            watched = [*self.servers, *self.watch]
            cpu_before = [program.cpu_seconds() for program in watched]
            t0 = time.monotonic()
            job_id = await publisher.start_ticker(count, rate)
            deadline = t0 + count / rate + slack
            go = json.dumps({"t0": t0, "rate": rate, "deadline": deadline}).encode() + b"\n"
            for worker in workers:
                assert worker.stdin is not None
                worker.stdin.write(go)
                await worker.stdin.drain()
                worker.stdin.close()  # the one line it reads
            # Computing the histogram of a few million latencies takes the workers a moment.
            budget = deadline - time.monotonic() + 30 + subscribers * count / 1e6
            results = await asyncio.gather(*(_read(worker, budget) for worker in workers))
            cpu = [p.cpu_seconds() - before for p, before in zip(watched, cpu_before, strict=True)]
        lateness = Histogram()
        for result in results:
            lateness.merge(Histogram.from_json(result["lateness"]))

        def total(key: str) -> int:
            return sum(int(result[key]) for result in results)

        run = FanoutRun(
            rate=rate,
            subscribers=subscribers,
            expected_each=count,
            complete=total("complete"),
            deliveries=total("deliveries"),
            p50_ms=lateness.percentile(50),
            p99_ms=lateness.percentile(99),
            max_ms=lateness.max_ms,
            timed_out=any(result["timed_out"] for result in results),
            server_cpu_s=sum(cpu[: len(self.servers)]),
            client_cpu_s=sum(result["client_cpu_s"] for result in results),
            wall_s=max(result["wall_s"] for result in results),
            connect_s=max(ready["connect_s"] for ready in readies),
            lost=total("lost") if self.check_ids else None,
            duplicated=total("duplicated") if self.check_ids else None,
            resets=total("resets") if self.check_ids else None,
            other_cpu_s={
                p.name: c for p, c in zip(self.watch, cpu[len(self.servers) :], strict=True)
            },
        )
        if not run.delivered_all:
            await publisher.stop_ticker(job_id)
        return run

    async def _workers(
        self, stack: contextlib.AsyncExitStack, count: int, connect_s: float
    ) -> list[asyncio.subprocess.Process]:
        """Subscriber processes, ``clients`` per server, the streams split evenly over them."""
        readers = [server for server in self.servers for _ in range(self.clients)]
        n = len(readers)
        workers: list[asyncio.subprocess.Process] = []
        for i, server in enumerate(readers):
            share = self.subscribers // n + (i < self.subscribers % n)
            config = Config(server.host, server.port, server.stream_path, share, count,
                            server.ready_on_frame, connect_s, self.check_ids)  # fmt: skip
            module = self.procs.module("bench.client", json.dumps(asdict(config)))
            workers.append(await stack.enter_async_context(module))
        return workers


async def _read(worker: asyncio.subprocess.Process, seconds: float) -> dict[str, Any]:
    """The next JSON line of a subscriber process."""
    assert worker.stdout is not None
    async with asyncio.timeout(seconds):
        line = await worker.stdout.readline()
    if not line:
        raise RuntimeError(f"a subscriber process ended without an answer ({worker.returncode})")
    message: dict[str, Any] = json.loads(line)
    if "error" in message:
        raise StreamError(message["error"])
    return message


@dataclass(slots=True)
class IdleResult:
    server: str
    connections: int
    rss_before_kib: int
    rss_after_kib: int
    connect_s: float
    kib_per_connection: float


async def _open_idle(server: Server, n: int) -> tuple[list[Stream], float]:
    started = time.monotonic()
    ready = Countdown(n)
    request = server.stream_request()
    streams = [Stream(request, ready, ready_on_frame=server.ready_on_frame) for _ in range(n)]
    await open_all(server.host, server.port, streams, ready, seconds=60)
    return streams, time.monotonic() - started


async def _settled_rss(server: Server, seconds: float = 5.0) -> int:
    """RSS once it stops moving: two samples 0.25 s apart within 0.2%, or after ``seconds``."""
    deadline = time.monotonic() + seconds
    last = server.rss_kib()
    while time.monotonic() < deadline:
        await asyncio.sleep(0.25)
        now = server.rss_kib()
        if abs(now - last) <= last * 0.002:
            return now
        last = now
    return last


async def idle_memory(server: Server, connections: int) -> IdleResult:
    """Server RSS growth per open, idle stream, with ``connections`` of them open."""
    warm, _ = await _open_idle(server, min(50, connections))  # first-use allocations
    for stream in warm:
        stream.abort()
    await server.wait_quiet()
    before = await _settled_rss(server)
    streams, connect_s = await _open_idle(server, connections)
    try:
        after = await _settled_rss(server)
    finally:
        for stream in streams:
            stream.abort()
    per_connection = (after - before) / max(1, connections)
    return IdleResult(server.name, connections, before, after, connect_s, per_connection)


@dataclass(slots=True)
class StormResult:
    server: str
    clients: int
    rate: float
    ticks: int
    reconnected: int
    live: int
    complete: int
    reconnect_s: float
    settle_s: float
    lost: int
    duplicated: int
    retries: int
    settled: bool  # every client live again


class _StormStream(RecordingStream):
    """A storm client's connection: its first, which hits ``ready``, or the one after the drop,
    which resumes from the first's last id and carries on its ticks."""

    def __init__(
        self, storm: Storm, ready: Countdown | None = None, first: _StormStream | None = None
    ) -> None:
        last_id = None if first is None else first.last_id
        server = storm.server
        super().__init__(
            server.stream_request(last_id), ready, ready_on_frame=server.ready_on_frame
        )
        self.storm, self.after = storm, first is not None
        self.last_id: int | None = last_id
        self.ticks: list[int] = [] if first is None else first.ticks
        self.live_at: float | None = None  # when an event due after the drop arrived
        storm.streams.append(self)

    def on_frame(self, ident: int | None, event: str, data: bytes, at: float) -> None:
        if ident is not None:
            self.last_id = ident
        if event == "log" and (match := TICK_RE.search(data)) is not None:
            self.storm.on_tick(self, int(match.group(1)), at)


class Storm:
    """Every client drops at once mid-stream and resumes with ``Last-Event-ID``.

    Live again means: on its new connection, the client got an event that was due after the
    drop. Lost and duplicated count ticks, per client, over both connections.
    """

    def __init__(self, server: Server, sizes: Sizes) -> None:
        self.server = server
        self.n, self.rate, self.slack = sizes.storm_clients, sizes.storm_rate, sizes.storm_slack
        self.ticks = max(4, round(self.rate * sizes.storm_seconds))
        # The ticks every client has before the drop.
        self.drop_at = max(1, min(self.ticks - 2, int(self.ticks * sizes.storm_drop_at)))
        self.armed, self.live, self.done = Countdown(self.n), Countdown(self.n), Countdown(self.n)
        self.t0 = self.t_drop = math.inf
        self.streams: list[_StormStream] = []
        self.retries = 0

    def on_tick(self, stream: _StormStream, tick: int, at: float) -> None:
        stream.ticks.append(tick)
        if len(stream.ticks) == self.drop_at:
            self.armed.hit()
        if tick == self.ticks:
            self.done.hit()
        due = self.t0 + (tick - 1) / self.rate
        if stream.after and stream.live_at is None and due > self.t_drop:
            stream.live_at = at
            self.live.hit()

    async def _reconnect(self, first: _StormStream) -> _StormStream:
        server = self.server
        while True:
            try:
                return await connect(
                    server.host, server.port, _StormStream(self, first=first), seconds=30
                )
            except StreamError:
                # A refused or reset connect: retry soon, as an EventSource would.
                self.retries += 1
                if time.monotonic() > self.t_drop + self.slack:
                    raise
                await asyncio.sleep(0.1)

    async def run(self) -> StormResult:
        server, ticks, rate = self.server, self.ticks, self.rate
        job_id: str | None = None
        again: list[_StormStream] = []
        try:
            await server.wait_quiet()
            ready = Countdown(self.n)
            first = [_StormStream(self, ready) for _ in range(self.n)]
            await open_all(server.host, server.port, first, ready, seconds=60)
            self.t0 = time.monotonic()
            job_id = await server.start_ticker(ticks, rate)
            async with asyncio.timeout(ticks / rate + self.slack):
                await self.armed.reached
            self.t_drop = time.monotonic()
            for stream in first:
                stream.abort()
            tries = await asyncio.gather(*map(self._reconnect, first), return_exceptions=True)
            failed = [error for error in tries if isinstance(error, BaseException)]
            if failed and len(failed) == self.n:
                raise failed[0]
            again = [stream for stream in tries if isinstance(stream, _StormStream)]
            end = max(self.t0 + ticks / rate, self.t_drop) + self.slack
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(0.1, end - time.monotonic())):
                    await asyncio.gather(self.live.reached, self.done.reached)
        finally:
            for stream in self.streams:
                stream.abort()
        if self.done.hits < self.n:
            with contextlib.suppress(HttpError):
                await server.stop_ticker(job_id)
        reconnected = [stream.head_at for stream in again if stream.head_at is not None]
        live = [stream.live_at for stream in again if stream.live_at is not None]
        unique = [len(set(stream.ticks)) for stream in first]
        return StormResult(
            server=server.name,
            clients=self.n,
            rate=rate,
            ticks=ticks,
            reconnected=len(reconnected),
            live=len(live),
            complete=self.done.hits,
            reconnect_s=max(reconnected, default=math.nan) - self.t_drop,
            settle_s=max(live, default=math.nan) - self.t_drop if len(live) == self.n else math.nan,
            lost=sum(ticks - n for n in unique),
            duplicated=sum(len(s.ticks) - n for s, n in zip(first, unique, strict=True)),
            retries=self.retries,
            settled=len(live) == self.n,
        )
