"""The sizes of every scenario: full (the issue's), ``--quick``, and the tests' tiny ones."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True, slots=True, kw_only=True)
class Sizes:
    """Every count and duration a run uses; each load is bounded by them."""

    # fan-out: a rate ladder at `fanout_subscribers`, then `big_subscribers` at `big_rate`
    fanout_subscribers: int = 1000
    fanout_rates: tuple[float, ...] = (50, 100, 200, 400, 800)
    fanout_seconds: float = 4.0  # events per run = rate x seconds
    big_subscribers: int = 5000
    big_rate: float = 10
    big_seconds: float = 10.0
    fanout_slack: float = 6.0  # how long past the schedule's end a run waits for stragglers
    repeat: int = 3  # runs per fan-out point; the figures are their medians
    clients: int = 1  # subscriber processes (the server needs the other core)
    # idle memory
    idle_connections: int = 5000
    # reconnect storm
    storm_clients: int = 2000
    storm_rate: float = 20
    storm_seconds: float = 8.0
    storm_drop_at: float = 0.3  # fraction of the ticks every client has before the drop
    storm_slack: float = 8.0
    # API under CPU load
    cpu_idle_seconds: float = 3.0
    cpu_load_seconds: float = 8.0
    cpu_rps: float = 50
    # progress cost
    progress_calls: int = 1_000_000
    progress_repeat: int = 7
    # push vs poll
    push_trials: int = 10
    poll_interval: float = 1.0
    # scale-out: `cluster_subscribers` split over two API processes sharing one Redis, the
    # ticker in a `jobcast worker`; then the same subscribers on one process without Redis
    cluster_subscribers: int = 2000
    cluster_rate: float = 20
    cluster_seconds: float = 10.0


@dataclass(frozen=True, slots=True)
class ServerSpec:
    """What to serve: a display name, ``module:attr`` of an ASGI app, extra environment."""

    name: str
    app: str
    ready_path: str = "/healthz"
    env: Mapping[str, str] = field(default_factory=dict)


FULL = Sizes()

QUICK = Sizes(
    fanout_subscribers=200,
    fanout_rates=(50, 200, 800),
    fanout_seconds=2.0,
    big_subscribers=1000,
    big_seconds=3.0,
    fanout_slack=3.0,
    repeat=1,
    idle_connections=1000,
    storm_clients=300,
    storm_seconds=4.0,
    storm_slack=4.0,
    cpu_idle_seconds=1.5,
    cpu_load_seconds=3.0,
    progress_calls=200_000,
    progress_repeat=3,
    push_trials=3,
    cluster_subscribers=400,
    cluster_seconds=3.0,
)


#: jobcast's per-client limits, lifted: every benchmark client comes from 127.0.0.1, where the
#: defaults (100 streams, 120 job starts a minute per address) would turn the load away with
#: 429s. Everything else keeps its default. Variables a jobcast version lacks are ignored.
JOBCAST_LIMITS = {
    "JOBCAST_MAX_STREAMS_PER_CLIENT": "20000",
    "JOBCAST_MAX_STREAMS": "20000",
    "JOBCAST_JOBS_PER_MINUTE": "100000",
}


def jobcast_spec(db: Path) -> ServerSpec:
    """jobcast on the SQLite store in ``db``, whatever the shell has set for Redis."""
    env = {"JOBCAST_DB": str(db), "JOBCAST_REDIS_URL": "", **JOBCAST_LIMITS}
    return ServerSpec("jobcast", "bench.apps.jobcast_app:app", env=env)


TUTORIAL = ServerSpec("tutorial", "bench.apps.tutorial:app")
BARE = ServerSpec("bare ASGI", "bench.apps.bare:app")
BROADCAST = ServerSpec("broadcaster", "bench.apps.broadcast:app")

#: The scale-out scenario: how many API processes share Redis, and its two setups' names.
CLUSTER_API_PROCESSES = 2
CLUSTER_NAME = f"jobcast, {CLUSTER_API_PROCESSES} API processes + Redis"
SINGLE_NAME = "jobcast, 1 process, no Redis"


def cluster_specs(redis_url: str) -> list[ServerSpec]:
    """jobcast API processes sharing the Redis at ``redis_url`` (jobs run in a worker)."""
    env = {"JOBCAST_REDIS_URL": redis_url, **JOBCAST_LIMITS}
    return [
        ServerSpec(f"jobcast API {i + 1} (Redis)", "bench.apps.jobcast_app:app", env=env)
        for i in range(CLUSTER_API_PROCESSES)
    ]


def recipe_spec(kind: str, seconds: float) -> ServerSpec:
    """The recipe with a CPU-bound (``cpu``) or sleeping (``sleep``) heavy task."""
    env = {"HEAVY_KIND": kind, "HEAVY_SECONDS": f"{seconds:g}"}
    return ServerSpec(f"recipe ({kind})", "bench.apps.recipe:app", "/api/background-task", env)
