"""The terminal commands that drive a jobcast server over HTTP: ``jobcast start``,
``watch``, ``jobs`` and ``cancel``.

Exit status: 0 the job succeeded (its result as JSON on stdout) or the command did what it
was asked; 1 the job failed (its error on stderr) or the server could not do it; 2 a usage
error (bad arguments, unknown task or job, invalid params, a refused token, no server at
the URL); 3 the job was cancelled or interrupted, or the watching was (Ctrl+C).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
from collections.abc import Callable, Sequence
from typing import Any

from ._console import describe, display_for, printable
from .client import (
    Client,
    ClientError,
    InvalidParams,
    JobCancelled,
    JobFailed,
    NotFound,
    ServerError,
    ServerUnreachable,
    Unauthorized,
)
from .client._protocol import check_base_url, outcome

__all__ = ["COMMANDS", "DEFAULT_URL", "add_commands", "as_json", "parse_params", "run"]

DEFAULT_URL = "http://127.0.0.1:8000"
OK, FAILED, USAGE, STOPPED = 0, 1, 2, 3


class UsageError(Exception):
    """Raised for arguments that make no request (a param that is not key=value)."""


def parse_params(pairs: Sequence[str]) -> dict[str, Any]:
    """``key=value`` pairs as params: each value as JSON when it is JSON, else as text."""
    params: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise UsageError(f"{pair!r} is not key=value (for example seconds=5 or name=in)")
        if key in params:
            raise UsageError(f"{key!r} is given twice; give each param once")
        params[key] = value = _value(raw)
        try:
            json.dumps({key: value}, ensure_ascii=False).encode()
        except UnicodeEncodeError:
            # Bytes of the command line that are not UTF-8 (a file name in another
            # encoding, say) reach Python as lone surrogates, which JSON cannot send.
            raise UsageError(
                f"{os.fsencode(pair)!r} is not UTF-8 text, and params travel as UTF-8 "
                "JSON; give the param in UTF-8"
            ) from None
    return params


def _not_json(text: str) -> Any:
    raise ValueError(text)


def _finite(text: str) -> float:
    number = float(text)
    if not math.isfinite(number):  # 1e999: JSON's syntax, but no number JSON can carry
        raise ValueError(text)
    return number


def _value(raw: str) -> Any:
    # What JSON cannot carry (NaN, Infinity, 1e999) is taken as text.
    try:
        return json.loads(raw, parse_constant=_not_json, parse_float=_finite)
    except ValueError:
        return raw


# -- the commands ------------------------------------------------------------------------------


def _start(client: Client, args: argparse.Namespace) -> int:
    params = parse_params(args.params)
    job = client.start(args.task, params, delay=args.delay, priority=args.priority)
    if args.follow:
        _say(f"started {job.task} job {job.id}")
        return _watch_job(client, job.id)
    print(printable(job.id))
    _say(f"started {job.task} job {job.id} ({job.state}); follow it with: jobcast watch {job.id}")
    return OK


def _watch(client: Client, args: argparse.Namespace) -> int:
    return _watch_job(client, args.job_id)


def _watch_job(client: Client, job_id: str) -> int:
    """Show the job's events until it ends: its outcome decides the exit status."""
    display = display_for(sys.stderr, job_id)
    try:
        for event in client.follow(job_id):
            display.show(event)
    except KeyboardInterrupt:
        display.close()
        _say(f"stopped watching; job {job_id} goes on. Cancel it with: jobcast cancel {job_id}")
        return STOPPED
    display.close()
    job = display.job
    if job is None or not job.finished:
        job = client.get(job_id)
    try:
        result = outcome(job)
    except JobFailed as exc:
        return _fail(str(exc), FAILED)
    except JobCancelled as exc:
        return _fail(str(exc), STOPPED)
    print(as_json(result))
    return OK


# The C1 controls and DEL, which json.dumps leaves as they are without ensure_ascii, and
# which some terminals obey.
_C1 = re.compile("[\x7f-\x9f]")


def as_json(value: Any) -> str:
    """``value`` as one line of JSON for stdout: text as it is (not as \\u escapes), but
    every control character escaped, so that a result cannot drive the terminal."""
    text = json.dumps(value, ensure_ascii=False)
    return _C1.sub(lambda found: f"\\u{ord(found.group()):04x}", text)


def _jobs(client: Client, args: argparse.Namespace) -> int:
    found = client.jobs(state=args.state, task=args.task, limit=args.limit)
    if not found:
        _say("no jobs")
        return OK
    width = max(len(job.task) for job in found)
    for job in found:
        created = "" if job.created_at is None else job.created_at.isoformat(timespec="seconds")
        shown = "" if job.progress is None else describe(job.progress)
        print(
            printable(
                f"{job.id}  {job.task:<{width}}  {job.state:<11}  {created}  {shown}"
            ).rstrip()
        )
    return OK


def _cancel(client: Client, args: argparse.Namespace) -> int:
    job = client.cancel(args.job_id)
    print(printable(f"{job.id} {'cancelling' if job.cancelling else job.state}"))
    return OK


COMMANDS: dict[str, Callable[[Client, argparse.Namespace], int]] = {
    "start": _start,
    "watch": _watch,
    "jobs": _jobs,
    "cancel": _cancel,
}


# -- the parser and the errors -----------------------------------------------------------------


def add_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the client commands to ``jobcast``'s parser."""
    server = argparse.ArgumentParser(add_help=False)
    server.add_argument(
        "--url",
        default=os.environ.get("JOBCAST_URL") or DEFAULT_URL,
        help=f"the server (default: JOBCAST_URL, else {DEFAULT_URL})",
    )
    server.add_argument(
        "--token",
        default=os.environ.get("JOBCAST_TOKEN") or None,
        help="the server's access token (default: JOBCAST_TOKEN)",
    )
    start = commands.add_parser(
        "start",
        parents=[server],
        help="start a job on a server",
        description="Start a job: jobcast start sleep seconds=5 steps=10. Each value is "
        "read as JSON when it is JSON (5, true, [1, 2]), else as text.",
    )
    start.add_argument("task", help="the task's name (GET /api/tasks lists them)")
    start.add_argument("params", nargs="*", metavar="key=value", help="the job's params")
    start.add_argument("--follow", action="store_true", help="watch it until it ends")
    start.add_argument("--delay", type=float, help="seconds before it may run")
    start.add_argument("--priority", type=int, help="higher runs first")
    watch = commands.add_parser(
        "watch", parents=[server], help="watch a job until it ends: bar, log, result"
    )
    watch.add_argument("job_id")
    jobs = commands.add_parser("jobs", parents=[server], help="list a server's jobs, newest first")
    jobs.add_argument("--state", help="only jobs in this state (running, failed, ...)")
    jobs.add_argument("--task", help="only jobs of this task")
    jobs.add_argument("--limit", type=int, help="at most this many (the server's default: 100)")
    cancel = commands.add_parser("cancel", parents=[server], help="cancel a queued or running job")
    cancel.add_argument("job_id")


def run(args: argparse.Namespace) -> int:
    """Carry out the client command ``args`` names; its exit status."""
    try:
        check_base_url(args.url)
    except ValueError:
        return _fail(
            f"--url {args.url!r} is not an http:// or https:// URL; give the server's, as "
            f"--url or JOBCAST_URL (for example {DEFAULT_URL})",
            USAGE,
        )
    try:
        client = Client(args.url, args.token)
    except ValueError as exc:
        return _fail(f"{exc}; check --token or JOBCAST_TOKEN", USAGE)
    try:
        with client:
            return COMMANDS[args.command](client, args)
    except (UsageError, ValueError) as exc:  # ValueError: an argument the client refused
        return _fail(str(exc), USAGE)
    except Unauthorized:
        if args.token:
            return _fail("the server refused the token; check --token or JOBCAST_TOKEN", USAGE)
        return _fail("the server needs a token: pass --token or set JOBCAST_TOKEN", USAGE)
    except (NotFound, InvalidParams) as exc:
        return _fail(exc.message, USAGE)
    except ServerUnreachable as exc:
        return _fail(str(exc), USAGE)
    except ServerError as exc:
        return _fail(exc.message, FAILED)
    except ClientError as exc:
        return _fail(str(exc), FAILED)
    except KeyboardInterrupt:
        return _fail("interrupted", STOPPED)
    except BrokenPipeError:
        return _reader_gone()


def _reader_gone() -> int:
    """What reads the output has stopped (``| head -1``): nothing more to say, and no
    traceback. Later writes (Python's flush at exit) go nowhere instead of failing again."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    for stream in (sys.stdout, sys.stderr):
        try:
            os.dup2(devnull, stream.fileno())
        except (AttributeError, ValueError, OSError):
            pass  # no such stream
    os.close(devnull)
    return FAILED


def _say(message: str) -> None:
    """Tell the user ``message`` on stderr; what it quotes of the server or of a job is shown,
    never obeyed by the terminal."""
    print(f"jobcast: {printable(message)}", file=sys.stderr)


def _fail(message: str, status: int) -> int:
    _say(message)
    return status
