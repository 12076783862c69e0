"""The runner: ``python -m bench [--quick] [--only NAME[,NAME]] [--repeat N] [--out DIR]``.

Starts the servers each scenario needs as subprocesses on loopback ports, runs the scenarios
against all of them, prints one table (figures, targets, verdicts), and writes ``bench.json``
and ``bench.png`` to ``--out`` (``docs/`` by default). It exits non-zero only when something
crashed: a missed target is a finding, reported in the table.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import functools
import itertools
import json
import os
import platform
import signal
import sys
import tempfile
import time
import traceback
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from importlib import metadata
from pathlib import Path

from . import api, config, servers, sse
from .client import run_loop
from .progress import ProgressCost
from .report import Results, table, write_chart, write_json


class _Run:
    """What every scenario needs: the processes, the sizes, where to report."""

    def __init__(self, procs: servers.Processes, sizes: config.Sizes, results: Results) -> None:
        self.procs = procs
        self.sizes = sizes
        self.results = results
        self._databases = itertools.count()

    def jobcast(self) -> config.ServerSpec:
        """jobcast with a database file of its own: each start begins empty."""
        return config.jobcast_spec(self.procs.workdir / f"jobcast-{next(self._databases)}.db")

    def streaming(self) -> contextlib.AbstractAsyncContextManager[list[servers.Server]]:
        """jobcast, tutorial, bare ASGI and the broadcaster."""
        return self.serving(self.jobcast(), config.TUTORIAL, config.BARE, config.BROADCAST)

    @contextlib.asynccontextmanager
    async def serving(self, *specs: config.ServerSpec) -> AsyncIterator[list[servers.Server]]:
        """``specs`` started together, and stopped on the way out (freeing CPU and memory)."""
        running = list(await asyncio.gather(*(self.procs.start(spec) for spec in specs)))
        try:
            yield running
        finally:
            for server in running:
                await self.procs.stop(server)


async def _fanout(run: _Run) -> None:
    sizes, procs = run.sizes, run.procs
    ladder = [(run.results.ladder, sizes.fanout_subscribers, rate, sizes.fanout_seconds)
              for rate in sizes.fanout_rates]  # fmt: skip
    big = (run.results.big, sizes.big_subscribers, sizes.big_rate, sizes.big_seconds)
    async with run.streaming() as targets:
        # Rates outer, servers inner: any drift of the machine over the run hits all alike.
        for points, subscribers, rate, seconds in [*ladder, big]:
            for target in targets:
                load = sse.Fanout(procs, [target], subscribers, rate, seconds, sizes.clients)
                points.append(await load.point(sizes))


async def _idle(run: _Run) -> None:
    async with run.streaming() as targets:
        for target in targets:
            run.results.idle.append(await sse.idle_memory(target, run.sizes.idle_connections))


async def _storm(run: _Run) -> None:
    async with run.streaming() as targets:
        for target in targets:
            run.results.storm.append(await sse.Storm(target, run.sizes).run())


async def _cpu(run: _Run) -> None:
    # Stopping the recipe is the only way to stop its heavy threads.
    async with run.serving(config.recipe_spec("cpu", run.sizes.cpu_load_seconds + 10)) as (recipe,):
        run.results.cpu.append(await api.recipe_under_cpu(recipe, run.sizes))
    async with run.serving(run.jobcast()) as (jobcast,):
        run.results.cpu += await api.jobcast_under_cpu(jobcast, run.sizes)


async def _progress(run: _Run) -> None:
    args = str(run.sizes.progress_calls), str(run.sizes.progress_repeat)
    async with run.procs.module("bench.progress", *args) as child:
        out, _ = await child.communicate()
    if child.returncode != 0:
        raise RuntimeError(f"bench.progress exited with {child.returncode}")
    run.results.progress = ProgressCost(**json.loads(out))


async def _push(run: _Run) -> None:
    sizes = run.sizes
    job_s = 1.5 * sizes.poll_interval  # long enough for a poller to see both changes
    async with run.serving(config.recipe_spec("sleep", job_s)) as (recipe,):
        polled = await api.recipe_poll(
            recipe, trials=sizes.push_trials, interval=sizes.poll_interval, job_s=job_s
        )
    async with run.serving(run.jobcast()) as (jobcast,):
        pushed = await api.jobcast_push(jobcast, trials=sizes.push_trials, job_s=job_s)
    run.results.push += [pushed, polled]


async def _cluster(run: _Run) -> None:
    """Fan-out through Redis: the subscribers split evenly over two API processes that share
    one event stream, the ticker in a ``jobcast worker``; then the same subscribers, checked
    the same way, on one jobcast process without Redis (its ticker in a thread of its own)."""
    sizes, procs, apis_n = run.sizes, run.procs, config.CLUSTER_API_PROCESSES
    fanout = functools.partial(
        sse.Fanout, procs, subscribers=sizes.cluster_subscribers, rate=sizes.cluster_rate,
        seconds=sizes.cluster_seconds, check_ids=True,
    )  # fmt: skip
    async with contextlib.AsyncExitStack() as stack:
        redis, url = await servers.start_redis(procs)
        stack.push_async_callback(procs.stop, redis)
        worker = await servers.start_worker(procs, url)
        stack.push_async_callback(procs.stop, worker)
        apis = await stack.enter_async_context(run.serving(*config.cluster_specs(url)))
        load = fanout(apis, clients=sizes.clients, watch=[worker, redis])
        run.results.cluster.append(await load.point(sizes, config.CLUSTER_NAME))
    async with run.serving(run.jobcast()) as single:
        # As many subscriber processes as above, on the one server.
        load = fanout(single, clients=sizes.clients * apis_n)
        run.results.cluster.append(await load.point(sizes, config.SINGLE_NAME))
    run.results.notes.append(
        f"cluster: {apis_n} jobcast API processes (uvicorn, uvloop, httptools), "
        f"a jobcast worker running the ticker, Redis (no persistence), "
        f"{sizes.clients * apis_n} subscriber processes and the runner share "
        "the same cores; the 1-process comparison has the same subscriber processes, its "
        "ticker in a thread of the server. Lost/duplicated count the SSE ids each subscriber "
        "skipped or saw again, from its first snapshot to its last tick."
    )


#: Every scenario by name, in the order they run.
SCENARIOS: dict[str, Callable[[_Run], Awaitable[None]]] = {
    scenario.__name__.removeprefix("_"): scenario
    for scenario in (_fanout, _idle, _storm, _cpu, _progress, _push, _cluster)
}


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "absent"


def machine() -> dict[str, object]:
    cpu = "unknown CPU"
    with contextlib.suppress(OSError, StopIteration), open("/proc/cpuinfo") as info:
        cpu = next(line.split(":", 1)[1].strip() for line in info if "model name" in line)
    packages = ("jobcast", "uvicorn", "uvloop", "httptools", "fastapi", "sse-starlette", "redis")
    return {
        "cores": os.cpu_count(),
        "cpu": cpu,
        "python": platform.python_version(),
        "kernel": platform.release(),
        "packages": {package: _version(package) for package in packages},
        "redis_server": servers.redis_version(),
        # Anything else busy on the machine skews every figure: say so in the results.
        "load_average_at_start": os.getloadavg(),
    }


def _busy_notes(results: Results) -> list[str]:
    """Where the subscriber processes were near a full core, the figures are partly theirs."""
    return [
        f"fan-out {point.server} {point.subscribers} subs @ {point.rate:g} ev/s: the "
        f"subscriber processes used {point.client_cpu_share:.0%} of a core each; figures "
        "there are partly theirs"
        for point in [*results.ladder, *results.big, *results.cluster]
        if point.client_cpu_share > 0.9
    ]


async def run_scenarios(sizes: config.Sizes, names: Sequence[str]) -> Results:
    """Run ``names`` at ``sizes``; a scenario that crashes is recorded in ``errors``."""
    results = Results(sizes, machine=machine())
    results.notes += [
        f"{os.cpu_count() or 1} cores for everything: the server, {sizes.clients} subscriber "
        f"process{'es' if sizes.clients > 1 else ''} and the runner share them, so the "
        "client's CPU is taken from the server's.",
        "lateness = arrival at the client - due time; event k (from 0) of a run at R ev/s "
        "is due at trigger + k/R.",
        "jobcast runs the demo tasks with default settings and the SQLite store, except the "
        "per-client stream and job-start limits, lifted since every client is 127.0.0.1; "
        "the references are in bench/apps.",
    ]
    with (
        tempfile.TemporaryDirectory(prefix="jobcast-bench-") as tmp,
        servers.Processes(Path(tmp)) as procs,
    ):
        run = _Run(procs, sizes, results)
        for name in names:
            print(f"{name}…", file=sys.stderr)
            started = time.monotonic()
            try:
                await SCENARIOS[name](run)
            except Exception as exc:  # one crashed scenario must not hide the others
                results.errors[name] = "".join(traceback.format_exception(exc))
                print(f"  {name} crashed: {exc!r}", file=sys.stderr)
            print(f"  ({time.monotonic() - started:.0f} s)", file=sys.stderr)
    results.notes += _busy_notes(results)
    results.machine["load_average_at_end"] = os.getloadavg()
    return results


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (about a minute)")
    parser.add_argument(
        "--only",
        type=lambda names: [name.strip() for name in names.split(",") if name.strip()],
        default=[],
        metavar="NAME[,NAME]",
        help=f"run only these: {', '.join(SCENARIOS)}",
    )
    parser.add_argument("--repeat", type=int, help="runs per fan-out point (default 3)")
    parser.add_argument(
        "--out", type=Path, default=servers.PROJECT_ROOT / "docs", help="where bench.json/png go"
    )
    args = parser.parse_args(argv)
    unknown = sorted(set(args.only) - set(SCENARIOS))
    if unknown:
        parser.error(f"unknown scenario {', '.join(unknown)}; choose from {', '.join(SCENARIOS)}")
    args.only = [name for name in SCENARIOS if name in args.only] or list(SCENARIOS)
    return args


#: The sizes that are a number of open streams.
_CONNECTIONS = ("idle_connections", "big_subscribers", "storm_clients", "cluster_subscribers")


def _sizes(args: argparse.Namespace) -> tuple[config.Sizes, list[str]]:
    """The sizes asked for, with connection counts the open-files limit allows; notes."""
    sizes = config.QUICK if args.quick else config.FULL
    if args.repeat is not None:
        sizes = dataclasses.replace(sizes, repeat=max(1, args.repeat))
    soft, hard = servers.raise_open_files_limit()
    notes = [f"RLIMIT_NOFILE raised to {soft} (hard limit {hard})."]
    most = max(getattr(sizes, name) for name in _CONNECTIONS)
    room = soft - 512  # what the process has besides the streams
    if most > room:
        notes.append(
            f"the open-files hard limit ({hard}) is too low for {most:,} streams: "
            f"connection counts were cut to {room:,}; raise it (ulimit -Hn) for full sizes."
        )
        cut = {name: min(getattr(sizes, name), room) for name in _CONNECTIONS}
        sizes = dataclasses.replace(sizes, **cut)
    return sizes, notes


def main(argv: Sequence[str] | None = None) -> None:
    args = _parse(argv)
    sizes, notes = _sizes(args)
    # SIGTERM unwinds like Ctrl+C, with every subprocess stopped.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        results = run_loop(run_scenarios(sizes, args.only))
    except KeyboardInterrupt:
        print("interrupted: every server and subscriber process was stopped", file=sys.stderr)
        raise SystemExit(130) from None
    results.notes += notes
    print(table(results), "", *(f"- {note}" for note in results.notes), sep="\n")
    data, chart = args.out / "bench.json", args.out / "bench.png"
    write_json(results, data)
    if write_chart(results, chart):
        print(f"\nwrote {data} and {chart}")
    else:
        print(f"\nwrote {data}; no chart: matplotlib is missing (make bench)")
    for name, error in results.errors.items():
        print(f"\n{name} crashed:\n{error}", file=sys.stderr)
    if results.errors:
        raise SystemExit(1)
