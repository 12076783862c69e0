"""The stream scenarios: fan-out lateness and capacity, idle memory, reconnect storm.

Each runs the same way against jobcast and the references: the subscribers read the server's
all-events stream, and a publisher on the server emits ``log`` events on an absolute schedule
(jobcast's ``ticker`` task; the references' ``/publish``). A fan-out may also spread its
subscribers over several jobcast API processes that share one event stream through Redis,
the ticker then running in a ``jobcast worker``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from .client import (
    TICK_RE,
    Countdown,
    CountingStream,
    Frame,
    HttpError,
    RecordingStream,
    StreamError,
    Tally,
    connect,
    request_json,
    stream_request,
)
from .servers import PROJECT_ROOT, Processes, Program, Server
from .stats import Histogram, median
from .subscribers import WorkerConfig

__all__ = [
    "FanoutPoint",
    "FanoutRun",
    "IdleResult",
    "SseTarget",
    "StormResult",
    "fanout_point",
    "idle_memory",
    "reconnect_storm",
]


class SseTarget:
    """A server under stream load: where its stream is, how to start and stop its publisher."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.jobcast = server.spec.app.startswith("bench.apps.jobcast_app")

    @property
    def name(self) -> str:
        return self.server.name

    @property
    def stream_path(self) -> str:
        return "/api/events" if self.jobcast else "/events"

    @property
    def ready_on_frame(self) -> bool:
        # jobcast's stream starts with a snapshot: once a client has it, its cursor is set.
        # The references register a client before answering, so the head is enough.
        return self.jobcast

    async def start_ticker(self, count: int, rate: float) -> str | None:
        """Start publishing ``count`` events at ``rate``; jobcast's job id, if any."""
        host, port = self.server.host, self.server.port
        if self.jobcast:
            body = {"count": count, "rate": rate}
            job = await request_json("POST", host, port, "/api/tasks/ticker/jobs", body)
            return str(job["id"])
        await request_json("POST", host, port, f"/publish?n={count}&rate={rate:g}")
        return None

    async def stop_ticker(self, job_id: str | None) -> None:
        if job_id is not None:
            path = f"/api/jobs/{job_id}/cancel"
            await request_json("POST", self.server.host, self.server.port, path, expect=(202, 409))

    async def wait_quiet(self, seconds: float = 60.0) -> None:
        """Wait until no publisher runs and the server has settled (under 5% of a core).

        After an overloaded run the server may still be tearing down a thousand streams;
        the next run must not pay for that.
        """
        host, port = self.server.host, self.server.port
        deadline = time.monotonic() + seconds
        while True:
            self.server.check_alive()
            if self.jobcast:
                running = await request_json("GET", host, port, "/api/jobs?state=running&limit=1")
                queued = await request_json("GET", host, port, "/api/jobs?state=queued&limit=1")
                busy = bool(running or queued)
            else:
                busy = (await request_json("GET", host, port, "/healthz"))["publishing"] > 0
            if not busy:
                before = self.server.cpu_seconds()
                await asyncio.sleep(0.2)
                if self.server.cpu_seconds() - before < 0.01:
                    return
            if time.monotonic() > deadline:
                if busy:
                    raise RuntimeError(f"{self.name}'s publisher still runs after {seconds:g} s")
                return  # idle but never quite still: measure anyway
            if busy:
                await asyncio.sleep(0.1)


# -- fan-out ----------------------------------------------------------------------------------


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
    # With ids checked (``None`` otherwise): ids skipped and seen twice, over every stream;
    # ``reset`` frames received.
    lost: int | None = None
    duplicated: int | None = None
    resets: int | None = None
    # CPU time of the other processes watched (a jobcast worker, Redis), by name.
    other_cpu_s: dict[str, float] = field(default_factory=dict)

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
    runs: list[FanoutRun] = field(default_factory=list)

    @property
    def p50_ms(self) -> float:
        return median(run.p50_ms for run in self.runs)

    @property
    def p99_ms(self) -> float:
        return median(run.p99_ms for run in self.runs)

    @property
    def max_ms(self) -> float:
        return max((run.max_ms for run in self.runs), default=math.nan)

    @property
    def delivered_all(self) -> bool:
        return bool(self.runs) and all(run.delivered_all for run in self.runs)

    @property
    def delivered_fraction(self) -> float:
        return min(
            (run.deliveries / (run.subscribers * run.expected_each) for run in self.runs),
            default=0.0,
        )

    @property
    def cpu_us_per_delivery(self) -> float:
        return median(run.server_cpu_s / max(1, run.deliveries) * 1e6 for run in self.runs)

    @property
    def server_cpu_share(self) -> float:
        """How busy the server kept its core (all its threads) from trigger to the end."""
        return median(run.server_cpu_s / max(1e-9, run.wall_s) for run in self.runs)

    @property
    def client_cpu_share(self) -> float:
        """The busiest run's subscriber CPU time over its wall time, per client process."""
        return max(
            (run.client_cpu_s / max(1e-9, run.wall_s) / self.clients for run in self.runs),
            default=0.0,
        )

    @property
    def checked(self) -> bool:
        """Whether the runs checked the ids (then ``lost`` and ``duplicated`` count)."""
        return bool(self.runs) and all(run.lost is not None for run in self.runs)

    @property
    def lost(self) -> int:
        """Ids skipped, summed over the runs (0 when not checked)."""
        return sum(run.lost or 0 for run in self.runs)

    @property
    def duplicated(self) -> int:
        """Ids seen twice or out of order, summed over the runs (0 when not checked)."""
        return sum(run.duplicated or 0 for run in self.runs)

    @property
    def resets(self) -> int:
        return sum(run.resets or 0 for run in self.runs)

    def other_cpu_share(self) -> dict[str, float]:
        """How busy each watched process kept its core, median over the runs."""
        names = dict.fromkeys(name for run in self.runs for name in run.other_cpu_s)
        return {
            name: median(run.other_cpu_s.get(name, math.nan) / max(1e-9, run.wall_s)
                         for run in self.runs)
            for name in names
        }  # fmt: skip

    def to_json(self) -> dict[str, Any]:
        extra: dict[str, Any] = {}
        if self.checked:
            extra.update(lost=self.lost, duplicated=self.duplicated, resets=self.resets)
        if any(run.other_cpu_s for run in self.runs):
            extra["other_cpu_share"] = self.other_cpu_share()
        return {
            "server": self.server,
            "rate": self.rate,
            "subscribers": self.subscribers,
            "clients": self.clients,
            "p50_ms": self.p50_ms,
            "p99_ms": self.p99_ms,
            "max_ms": self.max_ms,
            "delivered_all": self.delivered_all,
            "delivered_fraction": self.delivered_fraction,
            "server_cpu_us_per_delivery": self.cpu_us_per_delivery,
            "server_cpu_share": self.server_cpu_share,
            "client_cpu_share": self.client_cpu_share,
            **extra,
            "runs": [dataclasses.asdict(run) for run in self.runs],
        }


async def _read_message(proc: asyncio.subprocess.Process, seconds: float) -> dict[str, Any]:
    assert proc.stdout is not None
    async with asyncio.timeout(seconds):
        line = await proc.stdout.readline()
    if not line:
        raise RuntimeError(f"a subscriber process ended without an answer ({proc.returncode})")
    message: dict[str, Any] = json.loads(line)
    if "error" in message:
        raise StreamError(message["error"])
    return message


async def fanout_run(
    procs: Processes,
    targets: Sequence[SseTarget],
    *,
    subscribers: int,
    rate: float,
    seconds: float,
    slack: float,
    clients: int,
    watch: Sequence[Program] = (),
    check_ids: bool = False,
) -> FanoutRun:
    """Open ``subscribers`` streams, publish on the first target, measure lateness.

    The streams are split evenly over ``targets`` (servers that share one event stream), each
    read by ``clients`` subscriber processes. Server CPU is the targets' together; ``watch``
    names other processes whose CPU time is recorded too.
    """
    publisher = targets[0]
    count = max(2, round(rate * seconds))
    for target in targets:
        await target.wait_quiet()
    readers = [targets[i // clients] for i in range(len(targets) * clients)]
    shares = [
        subscribers // len(readers) + (i < subscribers % len(readers)) for i in range(len(readers))
    ]
    connect_budget = 30.0 + subscribers / 100
    workers: list[asyncio.subprocess.Process] = []
    job_id: str | None = None
    try:
        for target, share in zip(readers, shares, strict=True):
            config = WorkerConfig(
                host=target.server.host,
                port=target.server.port,
                path=target.stream_path,
                n=share,
                event="log",
                expect=count,
                ready_on_frame=target.ready_on_frame,
                connect_timeout=connect_budget,
                check_ids=check_ids,
            )
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "bench.subscribers",
                json.dumps(dataclasses.asdict(config)),
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                cwd=PROJECT_ROOT,
                start_new_session=True,  # Ctrl+C reaches the runner, which stops us
            )
            procs.adopt(proc)
            workers.append(proc)
        readies = await asyncio.gather(*(_read_message(w, connect_budget + 10) for w in workers))
        cpu_before = sum(target.server.cpu_seconds() for target in targets)
        others_before = [program.cpu_seconds() for program in watch]
        t0 = time.monotonic()
        job_id = await publisher.start_ticker(count, rate)
        deadline = t0 + count / rate + slack
        go = json.dumps({"t0": t0, "rate": rate, "deadline": deadline}).encode() + b"\n"
        for proc in workers:
            assert proc.stdin is not None
            proc.stdin.write(go)
            await proc.stdin.drain()
            proc.stdin.close()  # the one line it reads
        # Computing the histogram of a few million latencies takes the workers a moment.
        budget = deadline - time.monotonic() + 30 + subscribers * count / 1e6
        results = await asyncio.gather(*(_read_message(w, budget) for w in workers))
        cpu_after = sum(target.server.cpu_seconds() for target in targets)
        others = {
            program.name: program.cpu_seconds() - before
            for program, before in zip(watch, others_before, strict=True)
        }
    finally:
        for proc in workers:
            if proc.returncode is None:
                try:
                    proc.kill()
                except ProcessLookupError:
                    pass
            if proc.stdin is not None:
                proc.stdin.close()
            await proc.wait()
            procs.release(proc)
    lateness = Histogram()
    for result in results:
        lateness.merge(Histogram.from_json(result["lateness"]))
    run = FanoutRun(
        rate=rate,
        subscribers=subscribers,
        expected_each=count,
        complete=sum(result["complete"] for result in results),
        deliveries=sum(result["deliveries"] for result in results),
        p50_ms=lateness.percentile(50),
        p99_ms=lateness.percentile(99),
        max_ms=lateness.max_ms,
        timed_out=any(result["timed_out"] for result in results),
        server_cpu_s=cpu_after - cpu_before,
        client_cpu_s=sum(result["client_cpu_s"] for result in results),
        wall_s=max(result["wall_s"] for result in results),
        connect_s=max(ready["connect_s"] for ready in readies),
        other_cpu_s=others,
    )
    if check_ids:
        run.lost = sum(result["lost"] for result in results)
        run.duplicated = sum(result["duplicated"] for result in results)
        run.resets = sum(result["resets"] for result in results)
    if not run.delivered_all:
        await publisher.stop_ticker(job_id)
    return run


async def fanout_point(
    procs: Processes,
    target: SseTarget,
    *,
    subscribers: int,
    rate: float,
    seconds: float,
    slack: float,
    clients: int,
    repeat: int,
    peers: Sequence[SseTarget] = (),
    watch: Sequence[Program] = (),
    check_ids: bool = False,
    name: str | None = None,
) -> FanoutPoint:
    """Up to ``repeat`` runs; a run that lost events ends the repeats (the server is past it).

    ``target`` publishes; with ``peers`` (API processes sharing its event stream), the
    subscribers are split evenly over it and them, ``clients`` subscriber processes each.
    """
    targets = [target, *peers]
    point = FanoutPoint(name or target.name, rate, subscribers, clients * len(targets))
    for _ in range(repeat):
        run = await fanout_run(
            procs,
            targets,
            subscribers=subscribers,
            rate=rate,
            seconds=seconds,
            slack=slack,
            clients=clients,
            watch=watch,
            check_ids=check_ids,
        )
        point.runs.append(run)
        if not run.delivered_all:
            break
    return point


# -- idle memory ------------------------------------------------------------------------------


@dataclass(slots=True)
class IdleResult:
    server: str
    connections: int
    rss_before_kib: int
    rss_after_kib: int
    connect_s: float

    @property
    def kib_per_connection(self) -> float:
        return (self.rss_after_kib - self.rss_before_kib) / max(1, self.connections)

    def to_json(self) -> dict[str, Any]:
        return {
            "server": self.server,
            "connections": self.connections,
            "rss_before_kib": self.rss_before_kib,
            "rss_after_kib": self.rss_after_kib,
            "kib_per_connection": self.kib_per_connection,
            "connect_s": self.connect_s,
        }


async def _open_counting(target: SseTarget, n: int) -> tuple[list[CountingStream], float]:
    server = target.server
    request = stream_request(server.host, server.port, target.stream_path, None)
    tally = Tally(n)
    gate = asyncio.Semaphore(500)

    async def open_one() -> CountingStream:
        async with gate:
            stream = CountingStream(
                request, tally, event="log", expect=1, ready_on_frame=target.ready_on_frame
            )
            return await connect(server.host, server.port, stream, seconds=60)

    started = time.monotonic()
    streams = list(await asyncio.gather(*(open_one() for _ in range(n))))
    async with asyncio.timeout(60):
        await tally.all_ready
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


async def idle_memory(target: SseTarget, connections: int) -> IdleResult:
    """Server RSS growth per open, idle stream, with ``connections`` of them open."""
    warm, _ = await _open_counting(target, min(50, connections))  # first-use allocations
    for stream in warm:
        stream.abort()
    await target.wait_quiet()
    before = await _settled_rss(target.server)
    streams, connect_s = await _open_counting(target, connections)
    try:
        after = await _settled_rss(target.server)
    finally:
        for stream in streams:
            stream.abort()
    return IdleResult(target.name, connections, before, after, connect_s)


# -- reconnect storm --------------------------------------------------------------------------


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

    @property
    def settled(self) -> bool:
        return self.live == self.clients

    def to_json(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["settled"] = self.settled
        return data


class _StormClient:
    """One client across its two connections: every tick it saw, and when it was live again."""

    __slots__ = ("last_id", "live_at", "reconnected_at", "stream", "ticks")

    def __init__(self) -> None:
        self.ticks: list[int] = []
        self.last_id: int | None = None
        self.reconnected_at: float | None = None
        self.live_at: float | None = None
        self.stream: _StormStream | None = None


@dataclass(slots=True)
class _Storm:
    t0: float
    rate: float
    ticks: int
    drop_at: int
    armed: Countdown
    live: Countdown
    done: Countdown
    t_drop: float = math.inf


class _StormStream(RecordingStream):
    def __init__(
        self,
        request: bytes,
        tally: Tally | None,
        client: _StormClient,
        storm: _Storm,
        *,
        after: bool,
        ready_on_frame: bool,
    ) -> None:
        super().__init__(request, tally, ready_on_frame=ready_on_frame)
        self.client = client
        self.storm = storm
        self.after = after  # the connection made after the drop

    def on_frame(self, frame: Frame) -> None:
        client, storm = self.client, self.storm
        if frame.id is not None:
            client.last_id = frame.id
        if frame.event != "log":
            return
        match = TICK_RE.search(frame.data)
        if match is None:
            return
        tick = int(match.group(1))
        client.ticks.append(tick)
        if len(client.ticks) == storm.drop_at:
            storm.armed.hit()
        if tick == storm.ticks:
            storm.done.hit()
        due = storm.t0 + (tick - 1) / storm.rate
        if self.after and client.live_at is None and due > storm.t_drop:
            client.live_at = frame.at
            storm.live.hit()


async def reconnect_storm(
    target: SseTarget, *, clients: int, rate: float, seconds: float, drop_at: float, slack: float
) -> StormResult:
    """Every client drops at once mid-stream and resumes with ``Last-Event-ID``.

    Live again means: on its new connection, the client got an event that was due after the
    drop. Lost and duplicated count ticks, per client, over both connections.
    """
    server = target.server
    ticks = max(4, round(rate * seconds))
    storm = _Storm(
        t0=math.inf,
        rate=rate,
        ticks=ticks,
        drop_at=max(1, min(ticks - 2, int(ticks * drop_at))),
        armed=Countdown(clients),
        live=Countdown(clients),
        done=Countdown(clients),
    )
    people = [_StormClient() for _ in range(clients)]
    ready = Tally(clients)
    request = stream_request(server.host, server.port, target.stream_path, None)
    gate = asyncio.Semaphore(500)

    async def first(client: _StormClient) -> None:
        async with gate:
            stream = _StormStream(
                request, ready, client, storm, after=False, ready_on_frame=target.ready_on_frame
            )
            client.stream = await connect(server.host, server.port, stream, seconds=60)

    retries = 0

    async def again(client: _StormClient) -> None:
        nonlocal retries
        headers = {} if client.last_id is None else {"Last-Event-ID": str(client.last_id)}
        request = stream_request(server.host, server.port, target.stream_path, headers)
        while True:
            stream = _StormStream(request, None, client, storm, after=True, ready_on_frame=False)
            try:
                client.stream = await connect(server.host, server.port, stream, seconds=30)
                client.reconnected_at = stream.head_at
                return
            except StreamError:
                # A refused or reset connect: retry soon, as an EventSource would.
                retries += 1
                if time.monotonic() > storm.t_drop + slack:
                    raise
                await asyncio.sleep(0.1)

    job_id: str | None = None
    try:
        await target.wait_quiet()
        await asyncio.gather(*(first(client) for client in people))
        async with asyncio.timeout(60):
            await ready.all_ready
        storm.t0 = time.monotonic()
        job_id = await target.start_ticker(ticks, rate)
        async with asyncio.timeout(ticks / rate + slack):
            await storm.armed.reached
        storm.t_drop = time.monotonic()
        for client in people:
            assert client.stream is not None
            client.stream.abort()
        reconnects = await asyncio.gather(
            *(again(client) for client in people), return_exceptions=True
        )
        failed = [error for error in reconnects if isinstance(error, BaseException)]
        if failed and len(failed) == clients:
            raise failed[0]
        end = max(storm.t0 + ticks / rate, storm.t_drop) + slack
        try:
            async with asyncio.timeout(max(0.1, end - time.monotonic())):
                await asyncio.gather(storm.live.reached, storm.done.reached)
        except TimeoutError:
            pass
    finally:
        for client in people:
            if client.stream is not None:
                client.stream.abort()
    if storm.done.hits < clients:
        try:
            await target.stop_ticker(job_id)
        except HttpError:
            pass
    lost = duplicated = 0
    for client in people:
        unique = len(set(client.ticks))
        lost += ticks - unique
        duplicated += len(client.ticks) - unique
    reconnected = [c.reconnected_at for c in people if c.reconnected_at is not None]
    live = [c.live_at for c in people if c.live_at is not None]
    return StormResult(
        server=target.name,
        clients=clients,
        rate=rate,
        ticks=ticks,
        reconnected=len(reconnected),
        live=len(live),
        complete=storm.done.hits,
        reconnect_s=max(reconnected, default=math.nan) - storm.t_drop,
        settle_s=max(live, default=math.nan) - storm.t_drop if len(live) == clients else math.nan,
        lost=lost,
        duplicated=duplicated,
        retries=retries,
    )
