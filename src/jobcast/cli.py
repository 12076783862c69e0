"""``jobcast serve [module:attr]``: serve a JobCast (or a FastAPI app) with uvicorn;
``jobcast worker [module:attr]``: run a JobCast's jobs from Redis;
``jobcast start|watch|jobs|cancel``: start jobs on a server and follow them, over HTTP."""

from __future__ import annotations

import argparse
import importlib
import ipaddress
import logging
import os
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

# The server (uvicorn, the app) is imported only by serve and worker, inside them: the
# client commands (_terminal) start fast.
from . import __version__, _terminal
from .exceptions import BackendUnavailable, SettingsError, StoreError
from .settings import Settings

__all__ = ["load_app", "main"]

DEMO = "jobcast.demo:app"
DEMO_JOBS = "jobcast.demo:jobs"
_TARGET_VARIABLE = "JOBCAST_APP"


def load_app(target: str) -> Any:
    """Import ``module:attr`` and return an ASGI app; a :class:`JobCast` gets its app made."""
    from .app import JobCast

    obj = load_target(target)
    try:
        return obj.create_app() if isinstance(obj, JobCast) else obj
    except SettingsError as exc:
        _fail(str(exc))


def _fail(message: str) -> NoReturn:
    """Say what is wrong in one line on stderr, and exit with status 2."""
    print(f"jobcast: {message}", file=sys.stderr)
    raise SystemExit(2)


def load_target(target: str) -> Any:
    """Import ``module:attr`` and return what it names."""
    module_name, _, attr = target.partition(":")
    if not module_name or not attr:
        raise SystemExit(f"jobcast: {target!r} is not module:attr (for example myapp.jobs:jobs)")
    try:
        module = importlib.import_module(module_name)
    except SettingsError as exc:  # a JobCast(...) there was given a bad option
        _fail(str(exc))
    except ImportError as exc:
        raise SystemExit(
            f"jobcast: cannot import {module_name!r} ({exc}); check the name and that it is "
            "importable from the current directory"
        ) from exc
    try:
        return getattr(module, attr)
    except AttributeError:
        raise SystemExit(f"jobcast: module {module_name!r} has no attribute {attr!r}") from None


def _redis_url(obj: Any) -> str | None:
    from .app import JobCast

    if isinstance(obj, JobCast):
        return obj.settings.redis_url
    return os.environ.get("JOBCAST_REDIS_URL") or None


def _work(target: str) -> None:
    import anyio

    from .app import JobCast

    jobs = load_target(target)
    if not isinstance(jobs, JobCast):
        raise SystemExit(f"jobcast: {target!r} is not a JobCast; name the JobCast of your tasks")
    settings = jobs.settings
    if settings.redis_url is None:
        raise SystemExit(
            "jobcast: a worker takes its jobs from Redis; set JOBCAST_REDIS_URL (for example "
            "redis://localhost:6379/0) for the worker and for the API processes"
        )
    from .cluster import connect  # noqa: F401  (says what to install when redis is missing)
    from .cluster.worker import serve_worker

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    try:
        anyio.run(serve_worker, jobs.tasks, settings)
    except BackendUnavailable as exc:
        raise SystemExit(f"jobcast worker cannot start: {exc}") from None


class _StoreErrorWithoutTraceback(logging.Filter):
    """Shortens uvicorn's report of a failed startup to the message of a :class:`StoreError`.

    Starlette hands uvicorn a failed startup as a formatted traceback; when the store refused
    to open, its message already names the file and says what to do, and the traceback
    would only bury it.
    """

    _MARKERS = tuple(
        f"{error.__module__}.{error.__qualname__}: " for error in (StoreError, BackendUnavailable)
    )

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if not message.startswith("Traceback"):
            return True
        for marker in self._MARKERS:
            if marker in message:
                reason = message.rsplit(marker, 1)[1].strip()
                record.msg, record.args = f"jobcast cannot start: {reason}", ()
        return True


_LOOPBACK = frozenset({"127.0.0.1", "::1", "localhost"})


def _say_which_hosts(host: str, settings: Settings) -> None:
    """Off loopback, say which ``Host`` names requests may use, and how to add one; a name
    given as ``--host`` is one of them."""
    try:
        ipaddress.ip_address(host)
    except ValueError:  # a name: requests naming it are for this server
        names = [*settings.allowed_hosts, host]
        os.environ["JOBCAST_ALLOWED_HOSTS"] = ",".join(names)
        settings = Settings.from_env()
    if host in _LOOPBACK:
        return
    from .policy import AllowedHosts

    allowed = AllowedHosts(settings.allowed_hosts).describe()
    print(
        f"jobcast: listening on {host}; requests must name one of these hosts: {allowed}. "
        "Add a name with JOBCAST_ALLOWED_HOSTS=jobs.example.com (comma-separated; "
        "*.example.com for a domain)",
        file=sys.stderr,
    )


def app_from_environment() -> Any:
    """The uvicorn factory used with ``--reload``: the target travels in the environment."""
    return load_app(os.environ.get(_TARGET_VARIABLE, DEMO))


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="jobcast", description=__doc__)
    parser.add_argument("--version", action="version", version=f"jobcast {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="serve the API, the streams and the page")
    serve.add_argument("target", nargs="?", default=DEMO, help=f"module:attr (default {DEMO})")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--reload", action="store_true", help="restart when code changes")
    serve.add_argument("--log-level", default="info")
    serve.add_argument(
        "--workers",
        type=int,
        default=1,
        help="API processes to run (more than one needs Redis: JOBCAST_REDIS_URL)",
    )
    work = commands.add_parser("worker", help="run jobs taken from Redis (JOBCAST_REDIS_URL)")
    work.add_argument(
        "target", nargs="?", default=DEMO_JOBS, help=f"module:attr (default {DEMO_JOBS})"
    )
    _terminal.add_commands(commands)
    args = parser.parse_args(argv)
    if args.command in _terminal.COMMANDS:
        raise SystemExit(_terminal.run(args))

    sys.path.insert(0, os.getcwd())
    try:
        settings = Settings.from_env()  # a bad JOBCAST_* variable is one line, not a traceback
    except SettingsError as exc:
        _fail(str(exc))
    if args.command == "worker":
        _work(args.target)
        return
    if args.workers < 1:
        raise SystemExit("jobcast: --workers must be at least 1")
    if args.workers > 1 and args.reload:
        raise SystemExit("jobcast: --reload runs one process; drop --workers or --reload")
    if args.workers > 1 and _redis_url(load_target(args.target)) is None:
        raise SystemExit(
            f"jobcast: --workers {args.workers} would give each process its own jobs and "
            "streams; set JOBCAST_REDIS_URL so that they share them through Redis, and run "
            "jobcast worker for the jobs"
        )
    import uvicorn

    logging.getLogger("uvicorn.error").addFilter(_StoreErrorWithoutTraceback())
    _say_which_hosts(args.host, settings)
    # Streams hold connections open; past the grace period uvicorn stops waiting for them.
    grace = settings.grace_period
    options: dict[str, Any] = {
        "host": args.host,
        "port": args.port,
        "log_level": args.log_level,
        "timeout_graceful_shutdown": max(1, int(grace) + 1),
    }
    if args.reload or args.workers > 1:
        os.environ[_TARGET_VARIABLE] = args.target
        uvicorn.run(
            "jobcast.cli:app_from_environment",
            factory=True,
            reload=args.reload,
            workers=args.workers,
            **options,
        )
    else:
        uvicorn.run(load_app(args.target), **options)


if __name__ == "__main__":
    main()
