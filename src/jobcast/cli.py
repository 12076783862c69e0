"""``jobcast serve [module:attr]``: serve a JobCast (or a FastAPI app) with uvicorn."""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Sequence
from typing import Any

import uvicorn

from . import __version__
from .app import JobCast
from .exceptions import StoreError

__all__ = ["load_app", "main"]

DEMO = "jobcast.demo:app"
_TARGET_VARIABLE = "JOBCAST_APP"


def load_app(target: str) -> Any:
    """Import ``module:attr`` and return an ASGI app; a :class:`JobCast` gets its app made."""
    module_name, _, attr = target.partition(":")
    if not module_name or not attr:
        raise SystemExit(f"jobcast: {target!r} is not module:attr (for example myapp.jobs:jobs)")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise SystemExit(
            f"jobcast: cannot import {module_name!r} ({exc}); check the name and that it is "
            "importable from the current directory"
        ) from exc
    try:
        obj = getattr(module, attr)
    except AttributeError:
        raise SystemExit(f"jobcast: module {module_name!r} has no attribute {attr!r}") from None
    return obj.create_app() if isinstance(obj, JobCast) else obj


class _StoreErrorWithoutTraceback(logging.Filter):
    """Shortens uvicorn's report of a failed startup to the message of a :class:`StoreError`.

    Starlette hands uvicorn a failed startup as a formatted traceback; when the store refused
    to open, its message already names the file and says what to do, and the traceback
    would only bury it.
    """

    _MARKER = f"{StoreError.__module__}.{StoreError.__qualname__}: "

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if message.startswith("Traceback") and self._MARKER in message:
            reason = message.rsplit(self._MARKER, 1)[1].strip()
            record.msg, record.args = f"jobcast cannot start: {reason}", ()
        return True


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
    args = parser.parse_args(argv)

    sys.path.insert(0, os.getcwd())
    logging.getLogger("uvicorn.error").addFilter(_StoreErrorWithoutTraceback())
    # Streams hold connections open; past the grace period uvicorn stops waiting for them.
    grace = float(os.environ.get("JOBCAST_GRACE_PERIOD", "5"))
    options: dict[str, Any] = {
        "host": args.host,
        "port": args.port,
        "log_level": args.log_level,
        "timeout_graceful_shutdown": max(1, int(grace) + 1),
    }
    if args.reload:
        os.environ[_TARGET_VARIABLE] = args.target
        uvicorn.run("jobcast.cli:app_from_environment", factory=True, reload=True, **options)
    else:
        uvicorn.run(load_app(args.target), **options)


if __name__ == "__main__":
    main()
