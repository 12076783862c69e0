"""The runner: ``python -m bench [--quick] [--only NAME[,NAME]] [--repeat N] [--clients N]``.

Starts the servers each scenario needs as subprocesses on loopback ports, runs the scenarios
against all of them, prints one table (figures, targets, verdicts), and writes
``docs/bench.json`` and ``docs/bench.png``. A run of some scenarios only (``--only``) keeps the
figures of the others from the ``bench.json`` it replaces, and leaves an existing chart alone.
It exits non-zero only when something crashed: a missed target is a finding, reported in the
table.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import platform
import signal
import sys
import tempfile
import time
import traceback
from collections.abc import Awaitable, Callable, Iterator, Sequence
from importlib import metadata
from pathlib import Path
from types import FrameType

from . import api, sse
from .cluster import redis_version, start_redis, start_worker
from .config import (
    CLUSTER_API_PROCESSES,
    CLUSTER_NAME,
    FULL,
    QUICK,
    SCENARIOS,
    SINGLE_NAME,
    Sizes,
    cluster_specs,
    recipe_spec,
    specs,
)
from .progress import ProgressCost
from .report import Results, table, write_chart, write_json
from .servers import PROJECT_ROOT, Processes, Program, Server, raise_open_files_limit

__all__ = ["main", "run_scenarios"]

Say = Callable[[str], None]


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


class _Run:
    """What every scenario needs: the processes, the sizes, where to report."""

    def __init__(self, procs: Processes, sizes: Sizes, results: Results, say: Say) -> None:
        self.procs = procs
        self.sizes = sizes
        self.results = results
        self.say = say
        self._starts: Iterator[int] = itertools.count()

    async def start_stream_servers(self) -> list[Server]:
        """jobcast, tutorial and bare ASGI, fresh (a new jobcast database each time)."""
        chosen = specs(self.procs.workdir, next(self._starts))
        return list(await asyncio.gather(*(self.procs.start(spec) for spec in chosen.values())))

    async def start_jobcast(self) -> Server:
        return await self.procs.start(specs(self.procs.workdir, next(self._starts))["jobcast"])

    async def stop(self, servers: Sequence[Program]) -> None:
        for server in servers:
            await self.procs.stop(server)


async def _fanout(run: _Run) -> None:
    sizes, results = run.sizes, run.results
    servers = await run.start_stream_servers()
    try:
        targets = [sse.SseTarget(server) for server in servers]
        # Rates outer, servers inner: any drift of the machine over the run hits all alike.
        for rate in sizes.fanout_rates:
            for target in targets:
                point = await sse.fanout_point(
                    run.procs,
                    target,
                    subscribers=sizes.fanout_subscribers,
                    rate=rate,
                    seconds=sizes.fanout_seconds,
                    slack=sizes.fanout_slack,
                    clients=sizes.clients,
                    repeat=sizes.repeat,
                )
                results.ladder.append(point)
                run.say(f"  fan-out {point.subscribers} subs @ {rate:g} ev/s: {_point(point)}")
        for target in targets:
            point = await sse.fanout_point(
                run.procs,
                target,
                subscribers=sizes.big_subscribers,
                rate=sizes.big_rate,
                seconds=sizes.big_seconds,
                slack=sizes.fanout_slack,
                clients=sizes.clients,
                repeat=sizes.repeat,
            )
            results.big.append(point)
            run.say(
                f"  fan-out {point.subscribers} subs @ {sizes.big_rate:g} ev/s: {_point(point)}"
            )
    finally:
        await run.stop(servers)
    busy = [p for p in [*results.ladder, *results.big] if p.client_cpu_share > 0.9]
    for point in busy:
        results.notes.append(
            f"fan-out {point.server} {point.subscribers} subs @ {point.rate:g} ev/s: the "
            f"subscriber process used {point.client_cpu_share:.0%} of its core; figures there "
            "are partly the client's"
        )


def _point(point: sse.FanoutPoint) -> str:
    delivered = (
        "all delivered" if point.delivered_all else f"{point.delivered_fraction:.0%} delivered"
    )
    return (
        f"{point.server}: p50 {point.p50_ms:.1f} ms, p99 {point.p99_ms:.1f} ms, {delivered}, "
        f"{point.cpu_us_per_delivery:.1f} µs server CPU per delivery, "
        f"client {point.client_cpu_share:.0%} busy ({len(point.runs)} runs)"
    )


async def _idle(run: _Run) -> None:
    servers = await run.start_stream_servers()
    try:
        for server in servers:
            result = await sse.idle_memory(sse.SseTarget(server), run.sizes.idle_connections)
            run.results.idle.append(result)
            run.say(f"  idle: {server.name} {result.kib_per_connection:.1f} KB per stream")
    finally:
        await run.stop(servers)


async def _storm(run: _Run) -> None:
    sizes = run.sizes
    servers = await run.start_stream_servers()
    try:
        for server in servers:
            result = await sse.reconnect_storm(
                sse.SseTarget(server),
                clients=sizes.storm_clients,
                rate=sizes.storm_rate,
                seconds=sizes.storm_seconds,
                drop_at=sizes.storm_drop_at,
                slack=sizes.storm_slack,
            )
            run.results.storm.append(result)
            run.say(
                f"  storm: {server.name} live again after {result.settle_s:.2f} s "
                f"({result.live}/{result.clients}), lost {result.lost}, "
                f"duplicated {result.duplicated}, retries {result.retries}"
            )
    finally:
        await run.stop(servers)


async def _cpu(run: _Run) -> None:
    sizes = run.sizes
    options = {"idle_s": sizes.cpu_idle_seconds, "load_s": sizes.cpu_load_seconds}
    recipe = await run.procs.start(recipe_spec("cpu", sizes.cpu_load_seconds + 10))
    try:
        result = await api.recipe_under_cpu(recipe, rps=sizes.cpu_rps, **options)
    finally:
        await run.stop([recipe])  # its heavy threads cannot be stopped otherwise
    run.results.cpu.append(result)
    jobcast = await run.start_jobcast()
    try:
        process, thread = await api.jobcast_under_cpu(jobcast, rps=sizes.cpu_rps, **options)
    finally:
        await run.stop([jobcast])
    run.results.cpu += [process, thread]
    for item in run.results.cpu:
        run.say(
            f"  cpu: {item.server} ({item.mode}) GET p99 idle {item.idle.p99_ms:.1f} ms, "
            f"loaded {item.load.p99_ms:.1f} ms"
        )


async def _progress(run: _Run) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bench.progress",
        str(run.sizes.progress_calls),
        str(run.sizes.progress_repeat),
        stdout=asyncio.subprocess.PIPE,
        cwd=PROJECT_ROOT,
        start_new_session=True,
    )
    run.procs.adopt(proc)
    try:
        out, _ = await proc.communicate()
    finally:
        run.procs.release(proc)
    if proc.returncode != 0:
        raise RuntimeError(f"bench.progress exited with {proc.returncode}")
    cost = ProgressCost(**json.loads(out))
    run.results.progress = cost
    run.say(
        f"  progress: ctx.advance {cost.advance_ns:.0f} ns vs tqdm.update "
        f"{cost.tqdm_update_ns:.0f} ns; ctx.track {cost.track_ns:.0f} ns vs tqdm iter "
        f"{cost.tqdm_iter_ns:.0f} ns"
    )


async def _push(run: _Run) -> None:
    sizes = run.sizes
    job_s = 1.5 * sizes.poll_interval  # long enough for a poller to see both changes
    recipe = await run.procs.start(recipe_spec("sleep", job_s))
    try:
        polled = await api.recipe_poll(
            recipe, trials=sizes.push_trials, interval=sizes.poll_interval, job_s=job_s
        )
    finally:
        await run.stop([recipe])
    jobcast = await run.start_jobcast()
    try:
        pushed = await api.jobcast_push(jobcast, trials=sizes.push_trials, job_s=job_s)
    finally:
        await run.stop([jobcast])
    run.results.push += [pushed, polled]
    for item in (pushed, polled):
        run.say(
            f"  push: {item.server} ({item.method}) p50 {item.p50_ms:.1f} ms, "
            f"p99 {item.p99_ms:.1f} ms, {item.changes} changes, {item.missed} missed"
        )


async def _cluster(run: _Run) -> None:
    """Fan-out through Redis: the subscribers split evenly over two API processes that share
    one event stream, the ticker in a ``jobcast worker``; then the same subscribers, checked
    the same way, on one jobcast process without Redis (its ticker in a thread of its own)."""
    sizes, procs = run.sizes, run.procs

    async def measure(
        target: sse.SseTarget,
        *,
        name: str,
        clients: int,
        peers: Sequence[sse.SseTarget] = (),
        watch: Sequence[Program] = (),
    ) -> sse.FanoutPoint:
        point = await sse.fanout_point(
            procs,
            target,
            subscribers=sizes.cluster_subscribers,
            rate=sizes.cluster_rate,
            seconds=sizes.cluster_seconds,
            slack=sizes.fanout_slack,
            clients=clients,
            repeat=sizes.repeat,
            peers=peers,
            watch=watch,
            check_ids=True,
            name=name,
        )
        run.results.cluster.append(point)
        run.say(f"  cluster {point.subscribers} subs @ {point.rate:g} ev/s: {_checked(point)}")
        return point

    run.results.machine["redis_server"] = await redis_version()
    started: list[Program] = []
    try:
        redis, url = await start_redis(procs)
        started.append(redis)
        worker = await start_worker(procs, url)
        started.append(worker)
        api_specs = cluster_specs(url, CLUSTER_API_PROCESSES)
        apis = await asyncio.gather(*(procs.start(spec) for spec in api_specs))
        started += apis
        first, *peers = [sse.SseTarget(api) for api in apis]
        await measure(
            first, name=CLUSTER_NAME, clients=sizes.clients, peers=peers, watch=[worker, redis]
        )
    finally:
        await run.stop(started[::-1])
    jobcast = await run.start_jobcast()
    try:
        # As many subscriber processes as above, on the one server.
        await measure(
            sse.SseTarget(jobcast), name=SINGLE_NAME, clients=sizes.clients * CLUSTER_API_PROCESSES
        )
    finally:
        await run.stop([jobcast])
    run.results.notes.append(
        f"cluster: {CLUSTER_API_PROCESSES} jobcast API processes (uvicorn, uvloop, httptools), "
        f"a jobcast worker running the ticker, Redis (no persistence), "
        f"{sizes.clients * CLUSTER_API_PROCESSES} subscriber processes and the runner share "
        "the same cores; the 1-process comparison has the same subscriber processes, its "
        "ticker in a thread of the server. Lost/duplicated count the SSE ids each subscriber "
        "skipped or saw again, from its first snapshot to its last tick."
    )
    for point in run.results.cluster:
        if point.client_cpu_share > 0.9:
            run.results.notes.append(
                f"cluster {point.server}: the subscriber processes used "
                f"{point.client_cpu_share:.0%} of a core each; figures there are partly theirs"
            )


def _checked(point: sse.FanoutPoint) -> str:
    others = ", ".join(f"{name} {share:.0%}" for name, share in point.other_cpu_share().items())
    return (
        f"{_point(point)}; lost {point.lost}, duplicated {point.duplicated}, resets "
        f"{point.resets}; API CPU (together) {point.server_cpu_share:.0%}"
        + (f", {others}" if others else "")
    )


SCENARIO_FUNCTIONS: dict[str, Callable[[_Run], Awaitable[None]]] = {
    "fanout": _fanout,
    "idle": _idle,
    "storm": _storm,
    "cpu": _cpu,
    "progress": _progress,
    "push": _push,
    "cluster": _cluster,
}


def machine() -> dict[str, object]:
    cpu = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as info:
            cpu = next(line.split(":", 1)[1].strip() for line in info if "model name" in line)
    except (OSError, StopIteration):
        pass
    versions: dict[str, str] = {}
    for package in (
        "jobcast",
        "uvicorn",
        "uvloop",
        "httptools",
        "fastapi",
        "sse-starlette",
        "redis",
    ):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = "absent"
    return {
        "cores": os.cpu_count(),
        "cpu": cpu,
        "python": platform.python_version(),
        "kernel": platform.release(),
        "packages": versions,
        # Anything else busy on the machine skews every figure: say so in the results.
        "load_average_at_start": os.getloadavg(),
    }


async def run_scenarios(
    sizes: Sizes, names: Sequence[str], *, say: Say = _say, workdir: Path | None = None
) -> Results:
    """Run ``names`` at ``sizes``; a scenario that crashes is recorded in ``errors``."""
    results = Results(sizes=sizes, machine=machine(), ran=list(names))
    cores = os.cpu_count() or 1
    results.notes.append(
        f"{cores} cores for everything: the server, {sizes.clients} subscriber "
        f"process{'es' if sizes.clients > 1 else ''} and the runner share them, so the "
        "client's CPU is taken from the server's."
    )
    results.notes.append(
        "lateness = arrival at the client - due time; event k (from 0) of a run at R ev/s "
        "is due at trigger + k/R."
    )
    results.notes.append(
        "jobcast runs the demo tasks with default settings and the SQLite store, except the "
        "per-client stream and job-start limits, lifted since every client is 127.0.0.1; "
        "the references are in bench/apps."
    )
    with tempfile.TemporaryDirectory(prefix="jobcast-bench-") as tmp:
        with Processes(workdir or Path(tmp)) as procs:
            run = _Run(procs, sizes, results, say)
            for name in names:
                say(f"{name}…")
                started = time.monotonic()
                try:
                    await SCENARIO_FUNCTIONS[name](run)
                except Exception as exc:  # one crashed scenario must not hide the others
                    results.errors[name] = "".join(traceback.format_exception(exc))
                    say(f"  {name} crashed: {exc!r}")
                say(f"  ({time.monotonic() - started:.0f} s)")
    results.machine["load_average_at_end"] = os.getloadavg()
    return results


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (about a minute)")
    parser.add_argument(
        "--only",
        action="append",
        default=[],
        metavar="SCENARIO",
        help=f"run only these ({', '.join(SCENARIOS)}); repeat or separate with commas",
    )
    parser.add_argument("--repeat", type=int, help="runs per fan-out point (default 3)")
    parser.add_argument("--clients", type=int, help="subscriber processes (default 1)")
    parser.add_argument(
        "--out", type=Path, default=PROJECT_ROOT / "docs", help="where bench.json/png go"
    )
    args = parser.parse_args(argv)
    chosen = [name.strip() for item in args.only for name in item.split(",") if name.strip()]
    unknown = sorted(set(chosen) - set(SCENARIOS))
    if unknown:
        parser.error(f"unknown scenario {', '.join(unknown)}; choose from {', '.join(SCENARIOS)}")
    args.only = [name for name in SCENARIOS if name in chosen] or list(SCENARIOS)
    return args


def _sizes(args: argparse.Namespace, results_notes: list[str]) -> Sizes:
    sizes = QUICK if args.quick else FULL
    if args.repeat is not None:
        sizes = sizes.replace(repeat=max(1, args.repeat))
    if args.clients is not None:
        sizes = sizes.replace(clients=max(1, args.clients))
    soft, hard = raise_open_files_limit()
    results_notes.append(f"RLIMIT_NOFILE raised to {soft} (hard limit {hard}).")
    most = max(
        sizes.idle_connections,
        sizes.big_subscribers,
        sizes.storm_clients,
        sizes.cluster_subscribers,
    )
    room = soft - 512  # what the process has besides the streams
    if most > room:
        results_notes.append(
            f"the open-files hard limit ({hard}) is too low for {most:,} streams: "
            f"connection counts were cut to {room:,}; raise it (ulimit -Hn) for full sizes."
        )
        sizes = sizes.replace(
            idle_connections=min(sizes.idle_connections, room),
            big_subscribers=min(sizes.big_subscribers, room),
            storm_clients=min(sizes.storm_clients, room),
            cluster_subscribers=min(sizes.cluster_subscribers, room),
        )
    return sizes


def _raise_keyboard_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt  # SIGTERM unwinds like Ctrl+C: every subprocess gets stopped


def main(argv: Sequence[str] | None = None) -> None:
    args = _parse(argv)
    notes: list[str] = []
    sizes = _sizes(args, notes)
    signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
    try:
        import uvloop

        runner: Callable[..., Results] = uvloop.run
    except ImportError:
        runner = asyncio.run
    try:
        results = runner(run_scenarios(sizes, args.only))
    except KeyboardInterrupt:
        _say("interrupted: every server and subscriber process was stopped")
        raise SystemExit(130) from None
    results.notes += notes
    print(table(results))
    print()
    for note in results.notes:
        print(f"- {note}")
    data, chart = args.out / "bench.json", args.out / "bench.png"
    kept = write_json(results, data)
    if kept:
        print(f"\n{data}: kept the figures of {', '.join(kept)} from the run it replaced")
    partial = set(args.only) != set(SCENARIOS)
    if partial and chart.exists():
        # The chart shows every scenario: a partial run would blank the panels of the others.
        print(f"\nwrote {data}; left {chart} as it was (a run of some scenarios only)")
    elif write_chart(results, chart):
        print(f"\nwrote {data} and {chart}")
    else:
        print(f"\nwrote {data}; no chart: matplotlib is missing (make bench)")
    for name, error in results.errors.items():
        print(f"\n{name} crashed:\n{error}", file=sys.stderr)
    if results.errors:
        raise SystemExit(1)
