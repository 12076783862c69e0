"""Smoke runs of every benchmark scenario at tiny sizes, so that ``make bench`` does not rot.

Each starts the real servers (uvicorn subprocesses on loopback ports) and the real subscriber
processes, as ``make bench`` does, with a handful of clients and events: the figures mean
nothing at this size, but every one must be there, and every count must add up.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from bench.config import CLUSTER_NAME, SINGLE_NAME, Sizes
from bench.report import COLUMNS, Results, rows, table, write_json
from bench.run import run_scenarios
from bench.servers import redis_server

pytestmark = [pytest.mark.anyio, pytest.mark.integration]  # child processes, servers

TINY = Sizes(
    fanout_subscribers=5,
    fanout_rates=(20, 50),
    fanout_seconds=0.4,
    big_subscribers=7,
    big_rate=10,
    big_seconds=0.5,
    fanout_slack=5.0,
    repeat=1,
    clients=2,  # the smallest split: checks that results merge across subscriber processes
    idle_connections=5,
    storm_clients=5,
    storm_rate=20,
    storm_seconds=1.5,
    storm_slack=5.0,
    cpu_idle_seconds=0.3,
    cpu_load_seconds=0.5,
    cpu_rps=20,
    progress_calls=2000,
    progress_repeat=1,
    push_trials=2,
    poll_interval=0.1,
    cluster_subscribers=6,
    cluster_rate=20,
    cluster_seconds=0.5,
)

STREAM_SERVERS = ["jobcast", "tutorial", "bare ASGI", "broadcaster"]


async def run(name: str) -> Results:
    results = await run_scenarios(TINY, [name])
    assert results.errors == {}, results.errors[name]
    return results


def finite(value: float) -> bool:
    return not math.isnan(value) and not math.isinf(value)


async def test_fanout_runs_the_ladder_and_the_big_point_on_every_server() -> None:
    results = await run("fanout")
    assert [(p.server, p.rate) for p in results.ladder] == [
        (server, rate) for rate in TINY.fanout_rates for server in STREAM_SERVERS
    ]
    assert [(p.server, p.subscribers) for p in results.big] == [
        (server, TINY.big_subscribers) for server in STREAM_SERVERS
    ]
    sized = [(p, TINY.fanout_seconds) for p in results.ladder]
    sized += [(p, TINY.big_seconds) for p in results.big]
    for point, seconds in sized:
        (only,) = point.runs
        # A handful of events to a handful of clients: every server delivers them all.
        assert point.delivered_all, point
        assert only.expected_each == round(point.rate * seconds)
        assert only.deliveries == point.subscribers * only.expected_each
        assert 0 < point.p50_ms <= point.p99_ms <= point.max_ms < 5000
    capacities = {name: results.capacity(name) for name in STREAM_SERVERS}
    assert all(capacity in (None, *TINY.fanout_rates) for capacity in capacities.values())
    assert any(row.measure.startswith("capacity") for row in rows(results))


async def test_idle_measures_memory_per_stream_on_every_server() -> None:
    results = await run("idle")
    assert [r.server for r in results.idle] == STREAM_SERVERS
    for result in results.idle:
        assert result.connections == TINY.idle_connections
        assert result.rss_before_kib > 0 and result.rss_after_kib > 0
        assert finite(result.kib_per_connection)


async def test_storm_counts_lost_and_duplicated_events() -> None:
    results = await run("storm")
    assert [r.server for r in results.storm] == STREAM_SERVERS
    for result in results.storm:
        assert result.reconnected == result.clients == TINY.storm_clients
        assert result.ticks == round(TINY.storm_rate * TINY.storm_seconds)
        assert result.complete == result.clients  # each got the last tick
    jobcast = results.storm[0]
    # jobcast resumes from Last-Event-ID: anything but 0 and 0 would be the count being wrong.
    assert (jobcast.lost, jobcast.duplicated) == (0, 0)
    assert jobcast.settled and 0 < jobcast.settle_s < TINY.storm_slack


async def test_cpu_measures_get_latency_idle_and_under_load() -> None:
    results = await run("cpu")
    assert [(r.server, r.mode) for r in results.cpu] == [
        ("recipe (cpu)", "thread (BackgroundTasks)"),
        ("jobcast", "process"),
        ("jobcast", "thread"),
    ]
    for result in results.cpu:
        for latency in (result.idle, result.load):
            assert latency.requests > 0 and latency.errors == 0
            assert 0 < latency.p50_ms <= latency.p99_ms <= latency.max_ms


async def test_progress_measures_jobcast_and_tqdm() -> None:
    results = await run("progress")
    cost = results.progress
    assert cost is not None and cost.calls == TINY.progress_calls
    for value in (cost.advance_ns, cost.tqdm_update_ns, cost.track_ns, cost.tqdm_iter_ns):
        assert 0 < value < 100_000


async def test_push_times_sse_against_polling() -> None:
    results = await run("push")
    pushed, polled = results.push
    assert (pushed.server, polled.server) == ("jobcast", "recipe (sleep)")
    assert pushed.changes == 2 * TINY.push_trials  # running and succeeded, each trial
    assert polled.changes + polled.missed >= TINY.push_trials
    for result in (pushed, polled):
        assert 0 <= result.p50_ms <= result.p99_ms <= result.max_ms


@pytest.mark.redis
async def test_cluster_fans_out_through_redis_with_every_id_checked(tmp_path: Path) -> None:
    if redis_server() is None:
        pytest.fail("the cluster bench needs redis-server; `make test` installs it")
    results = await run("cluster")
    cluster, single = results.cluster
    assert (cluster.server, single.server) == (CLUSTER_NAME, SINGLE_NAME)
    for point in (cluster, single):
        (only,) = point.runs
        assert point.subscribers == TINY.cluster_subscribers
        assert point.clients == 2 * TINY.clients  # the same subscriber processes in both
        assert point.delivered_all, point
        assert only.deliveries == point.subscribers * round(
            TINY.cluster_rate * TINY.cluster_seconds
        )
        # Every id checked per subscriber: anything but 0s would be the count being wrong.
        assert point.checked and (point.lost, point.duplicated, point.resets) == (0, 0, 0)
        assert 0 < point.p50_ms <= point.p99_ms <= point.max_ms < 5000
    assert set(cluster.other_cpu_share) == {"jobcast worker", "Redis"}
    lateness, loss = (row for row in rows(results) if row.target)
    assert lateness.verdict in ("met", "MISSED") and loss.verdict == "met"
    write_json(results, tmp_path / "bench.json")
    data = json.loads((tmp_path / "bench.json").read_text())
    assert [point["lost"] for point in data["cluster"]] == [0, 0]
    assert [row["scenario"] for row in data["table"]] == [lateness.scenario] * 6


async def test_report_is_one_table_and_json(tmp_path: Path) -> None:
    results = await run("progress")
    text = table(results)
    lines = text.splitlines()
    assert len({line.count("|") for line in lines}) == 1  # a well-formed Markdown table
    assert all(column in lines[0] for column in COLUMNS)
    assert "met" in text or "MISSED" in text
    write_json(results, tmp_path / "bench.json")
    data = json.loads((tmp_path / "bench.json").read_text())
    assert data["progress"]["calls"] == TINY.progress_calls
    assert data["table"] and data["errors"] == {}
