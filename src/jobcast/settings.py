"""Settings: keyword arguments first, then ``JOBCAST_*`` environment variables, then defaults.

The environment is read in one place, :meth:`Settings.from_env`, called at the edge (the app
factory and the CLI); everything inside takes plain values.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import logging
import math
import os
import re
import typing
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from .exceptions import SettingsError, without_password

__all__ = ["Settings", "SettingsError", "without_password"]

logger = logging.getLogger("jobcast")

#: RFC 6750's token68: what fits in ``Authorization: Bearer``, a cookie and a comma list.
_TOKEN = re.compile(r"[A-Za-z0-9._~+/-]+=*")
_MIN_TOKEN_LENGTH = 16
_ORIGIN = re.compile(r"https?://[^/?#\s]+")
_REDIS_URL = re.compile(r"(rediss?|unix)://")
_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})


def _parse_bool(raw: str) -> bool:
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ValueError(raw)


def _parse_list(raw: str) -> tuple[str, ...]:
    """A comma-separated list; blanks around items and empty items are dropped."""
    return tuple(item for item in (part.strip() for part in raw.split(",")) if item)


def _parse_optional_float(raw: str) -> float | None:
    return None if raw.strip().lower() in {"", "none", "off"} else float(raw)


def _parse_optional_str(raw: str) -> str | None:
    return raw.strip() or None


# Field types to the parser of an environment value.
_CONVERTERS: dict[Any, Callable[[str], Any]] = {
    int: int,
    float: float,
    str: str,
    bool: _parse_bool,
    tuple[str, ...]: _parse_list,
    float | None: _parse_optional_float,
    str | None: _parse_optional_str,
}

#: What to give for a text setting left empty.
_WHAT = {"db": "give a file path or ':memory:'", "redis_prefix": "give a name such as 'jobcast'"}

#: Fields whose value is a secret: never shown by ``repr`` nor echoed in an error.
_SECRET = frozenset({"token"})


@dataclass(frozen=True, slots=True, kw_only=True, repr=False)
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
    max_log_lines: int = 10_000
    """Log lines published per job; past it one line says so and the rest are dropped."""
    max_result_bytes: int = 1 << 20
    """Largest result a job may keep, as JSON; a larger one fails the job (return a path)."""
    snapshot_jobs: int = 500
    """Finished jobs in a stream's first snapshot (active jobs are always all there)."""
    db: str = "jobcast.db"
    """The SQLite file jobs and events are kept in; ``:memory:`` keeps nothing across restarts."""
    retain_events: int = 100_000
    """Events kept in the database; older ones are pruned in the background."""
    retain_days: float = 7.0
    """Days a finished job is kept in the database."""
    token: tuple[str, ...] = ()
    """Bearer tokens, any of which is accepted (``JOBCAST_TOKEN``: comma-separated). With one
    set, every request that changes something must send ``Authorization: Bearer <token>``."""
    protect_reads: bool = False
    """Require the token for reads and streams too (streams also take a cookie or ``?token=``)."""
    cors_origins: tuple[str, ...] = ()
    """Origins allowed to call the API from a browser (comma-separated); none: CORS is off.
    ``*`` allows any origin, without credentials."""
    allowed_hosts: tuple[str, ...] = ()
    """Host names requests may name besides ``localhost`` and IP addresses (comma-separated;
    ``*.example.com`` allows a domain, ``*`` any host). Others get 400: that stops a page
    that rebinds its name to this server (DNS rebinding) from reaching it."""
    max_param_depth: int = 32
    """Deepest nesting of lists and objects accepted in a job's params."""
    max_param_string: int = 10_000
    """Longest string (or object key) accepted in a job's params, in characters."""
    jobs_per_minute: int = 120
    """Jobs one client (IP address; an IPv6 /64) may start per minute; past it, 429."""
    max_streams_per_client: int = 100
    """Streams one client may hold open at once; past it, 429."""
    max_streams: int = 10_000
    """Streams open at once in total; past it, 503."""
    stream_send_timeout: float | None = 30.0
    """Seconds a stream write may wait on a client that stopped reading before that client is
    dropped (it can resume with its last id); ``None`` never drops one."""
    redis_url: str | None = None
    """Keep jobs and events in Redis (``redis://host:port/db``) instead of the SQLite file, so
    several API processes and ``jobcast worker`` processes on any machine share them."""
    redis_prefix: str = "jobcast"
    """The prefix of every Redis key, so several deployments can share one Redis."""
    heartbeat_timeout: float = 10.0
    """Seconds a worker may stay silent before it counts as dead and its jobs are taken back."""

    def __post_init__(self) -> None:
        for name, kind in _types().items():
            value = getattr(self, name)
            optional = type(None) in typing.get_args(kind)
            if value is None and optional:
                continue
            base = (
                next(arg for arg in typing.get_args(kind) if arg is not type(None))
                if optional
                else kind
            )
            if base == tuple[str, ...]:
                object.__setattr__(self, name, _as_tuple(name, value))
            elif base is bool:
                if not isinstance(value, bool):
                    raise SettingsError(f"{name} must be True or False, got {value!r}")
            elif base is str:
                if not value or not isinstance(value, str):
                    raise SettingsError(f"{name} must not be empty; {_WHAT[name]}")
            elif isinstance(value, bool) or not isinstance(
                value, int if base is int else int | float
            ):
                raise SettingsError(
                    f"{name} must be {'a whole' if base is int else 'a'} number, got {value!r}"
                )
            elif not value > 0 or value == math.inf:  # also refuses NaN
                raise SettingsError(f"{name} must be positive and finite, got {value!r}")
        if self.redis_url is not None and not _REDIS_URL.match(self.redis_url):
            raise SettingsError(
                "redis_url must be a Redis URL such as redis://localhost:6379/0 "
                f"(or rediss://, unix://), got {without_password(self.redis_url)!r}"
            )
        self._check_tokens()
        self._check_origins()

    def _check_tokens(self) -> None:
        for token in self.token:
            if not _TOKEN.fullmatch(token):
                raise SettingsError(
                    "token: a token may hold only letters, digits and - . _ ~ + / (then = "
                    "padding); generate one with: python -c 'import secrets; "
                    "print(secrets.token_urlsafe(32))'"
                )
            if len(token) < _MIN_TOKEN_LENGTH:
                raise SettingsError(
                    f"token: a token must be at least {_MIN_TOKEN_LENGTH} characters long; "
                    "generate one with: python -c 'import secrets; "
                    "print(secrets.token_urlsafe(32))'"
                )
        if self.protect_reads and not self.token:
            raise SettingsError(
                "protect_reads needs a token to check: set JOBCAST_TOKEN (or token=) too"
            )

    def _check_origins(self) -> None:
        if "*" in self.cors_origins and len(self.cors_origins) > 1:
            raise SettingsError(
                "cors_origins: '*' allows every origin and cannot be combined with others; "
                "give either '*' or a list of origins"
            )
        for origin in self.cors_origins:
            if origin != "*" and not _ORIGIN.fullmatch(origin):
                raise SettingsError(
                    f"cors_origins: {origin!r} is not an origin; write scheme://host[:port] "
                    "with no path or trailing slash, for example https://app.example.com"
                )

    def __repr__(self) -> str:
        parts = []
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if field.name in _SECRET and value:
                shown = f"<{len(value)} hidden>"
            elif field.name == "redis_url" and value:
                shown = repr(without_password(value))
            else:
                shown = repr(value)
            parts.append(f"{field.name}={shown}")
        return f"Settings({', '.join(parts)})"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, /, **overrides: Any) -> Settings:
        """Settings from ``overrides``, then ``JOBCAST_<NAME>`` variables, then defaults."""
        environ = os.environ if environ is None else environ
        names = [field.name for field in dataclasses.fields(cls)]
        unknown = set(overrides) - set(names)
        if unknown:
            raise TypeError(f"unknown settings: {', '.join(sorted(unknown))}")
        values: dict[str, Any] = {}
        for name in names:
            if name in overrides:
                values[name] = overrides[name]
                continue
            key = f"JOBCAST_{name.upper()}"
            if key in environ:
                kind = _types()[name]
                try:
                    values[name] = _CONVERTERS[kind](environ[key])
                except ValueError:
                    shown = "(hidden)" if name in _SECRET else repr(environ[key])
                    raise SettingsError(
                        f"{key}={shown} is not a valid {_type_name(kind)}; fix or unset it"
                    ) from None
        _warn_of_strangers(environ, names)
        return cls(**values)


@functools.cache
def _types() -> dict[str, Any]:
    """Each setting's type, resolved from its annotation."""
    return typing.get_type_hints(Settings)


def _type_name(kind: Any) -> str:
    return kind.__name__ if isinstance(kind, type) else str(kind)


#: ``JOBCAST_*`` variables that are not settings but are jobcast's all the same (the
#: target of ``--reload``; the server the client commands talk to).
_NOT_SETTINGS = frozenset({"JOBCAST_APP", "JOBCAST_URL"})
_warned: set[str] = set()


def _warn_of_strangers(environ: Mapping[str, str], names: Iterable[str]) -> None:
    """Name each ``JOBCAST_*`` variable that is no setting (a typo is otherwise ignored in
    silence), once per process, with the closest setting."""
    known = {f"JOBCAST_{name.upper()}" for name in names} | _NOT_SETTINGS
    for key in sorted(environ):
        if not key.startswith("JOBCAST_") or key in known or key in _warned:
            continue
        _warned.add(key)
        close = difflib.get_close_matches(key, sorted(known), n=1, cutoff=0.6)
        hint = f"; did you mean {close[0]}?" if close else "; the settings are in the README"
        logger.warning("%s is not a jobcast setting and is ignored%s", key, hint)


def _as_tuple(name: str, value: object) -> tuple[str, ...]:
    """A list setting given as a comma-separated string, or as any iterable of strings."""
    if isinstance(value, str):
        return _parse_list(value)
    if not isinstance(value, Iterable) or not all(isinstance(item, str) for item in value):
        raise SettingsError(f"{name} must be a comma-separated string or a list of strings")
    return tuple(item.strip() for item in value if item.strip())
