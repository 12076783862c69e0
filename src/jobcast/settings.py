"""Settings: keyword arguments first, then ``JOBCAST_*`` environment variables, then defaults.

The environment is read in one place, :meth:`Settings.from_env`, called at the edge (the app
factory and the CLI); everything inside takes plain values.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["Settings"]

# Field types as written (annotations are strings here) to the parser of an environment value.
_CONVERTERS: dict[str, Callable[[str], Any]] = {"int": int, "float": float, "str": str}


@dataclass(frozen=True, slots=True, kw_only=True)
class Settings:
    """Every knob of a jobcast service. Timing knobs are injectable so tests run fast."""

    max_workers: int = 4
    """Jobs running at once, across all tasks."""
    max_queue: int = 1000
    """Jobs waiting to run; past it, starting a job answers 429."""
    max_jobs: int = 10_000
    """Jobs kept in memory; the oldest finished ones are dropped past it."""
    progress_interval: float = 0.1
    """Seconds between two progress events of one job."""
    keepalive_interval: float = 15.0
    """Seconds between keepalive comments on idle streams."""
    retry_ms: int = 2000
    """Reconnection delay the streams advise to browsers (SSE ``retry:``)."""
    grace_period: float = 5.0
    """Seconds running jobs get to stop at shutdown before they are abandoned."""
    kill_grace: float = 3.0
    """Seconds a cancelled worker process or command gets between SIGTERM and SIGKILL."""
    event_buffer: int = 10_000
    """Events kept in memory for replay and for slow clients."""
    max_body_bytes: int = 1 << 20
    """Largest request body accepted; larger ones answer 413."""
    max_log_line: int = 4096
    """Characters kept of one log line; the rest is cut."""
    snapshot_jobs: int = 500
    """Finished jobs in a stream's first snapshot (active jobs are always all there)."""
    db: str = "jobcast.db"
    """The SQLite file jobs and events are kept in; ``:memory:`` keeps nothing across restarts."""
    retain_events: int = 100_000
    """Events kept in the database; older ones are pruned in the background."""
    retain_days: float = 7.0
    """Days a finished job is kept in the database."""

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if field.type == "str":
                if not value:
                    raise ValueError(
                        f"{field.name} must not be empty; give a file path or ':memory:'"
                    )
            elif not value > 0 or value == float("inf"):  # also refuses NaN
                raise ValueError(f"{field.name} must be positive and finite, got {value!r}")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, /, **overrides: Any) -> Settings:
        """Settings from ``overrides``, then ``JOBCAST_<NAME>`` variables, then defaults."""
        environ = os.environ if environ is None else environ
        names = {field.name: field for field in dataclasses.fields(cls)}
        unknown = set(overrides) - set(names)
        if unknown:
            raise TypeError(f"unknown settings: {', '.join(sorted(unknown))}")
        values: dict[str, Any] = {}
        for name, field in names.items():
            if name in overrides:
                values[name] = overrides[name]
                continue
            key = f"JOBCAST_{name.upper()}"
            if key in environ:
                convert = _CONVERTERS[str(field.type)]
                try:
                    values[name] = convert(environ[key])
                except ValueError:
                    raise ValueError(
                        f"{key}={environ[key]!r} is not a valid {field.type}; fix or unset it"
                    ) from None
        return cls(**values)
