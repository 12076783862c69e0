"""Command tasks: run an existing batch program as a job, its output as logs and progress.

A command is an argv list, never a shell string. Its template names params in ``{name}``
placeholders; :func:`build_argv` puts each param's value inside the one argv item that names
it, so a value can neither add an item nor reach a shell. :func:`run_command` runs the
program in its own process group and reads stdout and stderr in bounded chunks: completed
lines become log lines (cut at ``max_line``), and every line or carriage-return segment is
offered to :func:`parse_progress`, which knows tqdm bars, ``NN%`` and ``n/total``. tqdm
redraws its bar with ``\\r``, so a redraw updates progress without logging a line; the bar
left on the line when the newline comes is what gets logged, as a terminal would show it.

Cancel is SIGTERM to the group, then SIGKILL after a grace period; cancelling the awaiting
coroutine (a timeout, a shutdown that gives up) SIGKILLs the group at once and reaps the
program before the cancellation goes on. POSIX only: it relies on sessions and ``killpg``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import signal
import string
import subprocess
from collections import deque
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass

import anyio

from . import _undertaker
from .context import JobContext
from .exceptions import JobCancelled, TaskError

__all__ = [
    "ProgressReading",
    "build_argv",
    "check_template",
    "parse_progress",
    "placeholders",
    "run_command",
]

logger = logging.getLogger("jobcast")

_CHUNK = 64 * 1024  # bytes per read: the StreamReader's own flow-control limit
_REAP_TIMEOUT = 5.0  # seconds to wait for a SIGKILLed group; only a hung kernel call takes longer
_MIN_LINE = 80  # room for some text plus the cut marker
_MESSAGE_LIMIT = 120  # characters of a progress line kept as the job's message
_FORMATTER = string.Formatter()


# -- argv templates ------------------------------------------------------------------------


def placeholders(template: Sequence[str]) -> set[str]:
    """The param names that ``template``'s ``{name}`` placeholders refer to.

    Raises ``ValueError`` for a template that is a string rather than a list, and for any
    placeholder that is not a plain ``{name}``: positional ``{}``, attribute or index access
    (``{a.b}``, ``{a[0]}``), conversions (``{a!r}``) and format specs (``{a:>5}``) are all
    refused, since a value is substituted only with ``str()``. ``{{`` and ``}}`` are literal
    braces.
    """
    if isinstance(template, str):
        raise ValueError(
            f"argv must be a list of strings, not a shell string like {template!r}; "
            "split it into one item per argument"
        )
    names: set[str] = set()
    for index, item in enumerate(template):
        for _, name in _parse(item, index):
            if name is not None:
                names.add(name)
    return names


def check_template(template: Sequence[str], params: Collection[str]) -> None:
    """Check an argv template against the names of the params declared for it.

    Call it when a command task is declared, so a mistake fails at import rather than in a
    job. Raises ``ValueError`` when the template is empty, when its first item (the program)
    has a placeholder, or when a placeholder names no declared param.
    """
    names = placeholders(template)
    if not template:
        raise ValueError("argv must name a program to run, got an empty list")
    if placeholders(template[:1]):
        raise ValueError(
            f"the program {template[0]!r} cannot contain a placeholder: a param must never "
            "choose which program runs; name the program, and pass params as its arguments"
        )
    undeclared = sorted(names - set(params))
    if undeclared:
        raise ValueError(
            f"argv placeholders {undeclared} are not declared params; declare them in "
            f"params=, or write a literal brace as '{{{{' or '}}}}'"
        )


def build_argv(template: Sequence[str], params: Mapping[str, object]) -> list[str]:
    """Fill ``template``'s placeholders with ``params``; return the argv to run.

    Each value stays inside the argv item that names it, however it is spelled: spaces,
    quotes, ``;`` and ``{other}`` in a value are passed on as they are, and no shell sees
    them. Values are ``str``, ``int`` or ``float`` (``str()`` of them) or ``bool`` (``"true"``
    or ``"false"``). A string value that would start an item with ``-`` is refused, since the
    program would read it as an option, unless a ``--`` item comes before it. Raises
    ``ValueError`` for a placeholder without a value, and for the values above.
    """
    check_template(template, params)
    argv: list[str] = []
    after_options = False  # past a "--" item, the program reads nothing as an option
    for index, item in enumerate(template):
        parts: list[str] = []
        leader: str | None = None  # the param whose value starts the item, if one does
        for literal, name in _parse(item, index):
            parts.append(literal)
            if name is not None:
                value = _text(name, params[name])
                if leader is None and value and not any(parts):
                    leader = name
                parts.append(value)
        built = "".join(parts)
        if (
            leader is not None
            and built.startswith("-")
            and isinstance(params[leader], str)
            and not after_options
        ):
            raise ValueError(
                f"param {leader!r} is {params[leader]!r}, which {template[0]!r} would read as "
                f"an option; put a '--' item before {item!r} in the argv template, or refuse "
                "such values with a pattern on the param"
            )
        after_options = after_options or item == "--"
        argv.append(built)
    return argv


def _parse(item: str, index: int) -> list[tuple[str, str | None]]:
    """Split one template item into (literal text, placeholder name or None) pairs."""
    if not isinstance(item, str):
        raise ValueError(f"argv item {index} must be a string, got {item!r}")
    try:
        parsed = list(_FORMATTER.parse(item))
    except ValueError as exc:
        raise ValueError(
            f"argv item {index} ({item!r}) is not a valid template ({exc}); "
            "write a literal brace as '{{' or '}}'"
        ) from exc
    pairs: list[tuple[str, str | None]] = []
    for literal, name, spec, conversion in parsed:
        if name is not None and (not name.isidentifier() or spec or conversion):
            raise ValueError(
                f"argv item {index} ({item!r}) has placeholder {{{name}"
                f"{'!' + conversion if conversion else ''}{':' + spec if spec else ''}}}; "
                "a placeholder is a param name alone, like '{src}'"
            )
        pairs.append((literal, name))
    return pairs


def _text(name: str, value: object) -> str:
    if isinstance(value, bool):  # before int: bool is an int
        return "true" if value else "false"
    if isinstance(value, str | int | float):
        text = str(value)
        if "\0" in text:
            raise ValueError(f"param {name!r} contains a NUL character, which argv cannot carry")
        return text
    raise ValueError(
        f"param {name!r} is {type(value).__name__} {value!r}; an argv placeholder takes a "
        "string, number or boolean (give the param a default, or drop its placeholder)"
    )


# -- progress --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ProgressReading:
    """Progress read from one line of output: ``current`` out of ``total``.

    A percentage reads as ``current`` out of ``100``. ``total`` is ``None`` when the program
    counts without knowing the end (tqdm over an iterator without a length).
    """

    current: float
    total: float | None
    message: str | None = None


# tqdm: "{desc}: {pct:3.0f}%|{bar}| {n_fmt}/{total_fmt} [...]"; unit_scale adds SI suffixes.
_NUMBER = r"\d+(?:\.\d+)?[kMGTPEZY]?"
_TQDM = re.compile(rf"(\d{{1,3}})%\|[^|]*\|\s*({_NUMBER})/({_NUMBER}|\?)")
# tqdm without a total: "{desc}: {n_fmt}{unit} [{elapsed}, {rate}]".
_TQDM_COUNT = re.compile(rf"^(?:(.*?):\s)?({_NUMBER})[^\s\[\]/]* \[\d+:\d\d(?::\d\d)?, ")
# "45%", "45.5 %": not inside a word or number, not a signed change like "+5%".
_PERCENT = re.compile(r"(?<![\w.+\-])(\d{1,3}(?:\.\d+)?)\s?%(?![\w%])")
# "12/50", "12 / 50": whole numbers, not part of a path, a date, an address or a version.
_FRACTION = re.compile(r"(?<![\w./:\-\\])(0|[1-9]\d*) ?/ ?([1-9]\d*)(?![\w/:\-\\%]|\.\d)")
_SCALE = {suffix: 1000.0**power for power, suffix in enumerate("kMGTPEZY", start=1)}


def parse_progress(line: str) -> ProgressReading | None:
    """Read progress from one line (or carriage-return segment) of a program's output.

    Knows, in this order: tqdm bars (``45%|████▌ | 45/100 [...]`` reads as 45 of 100, the
    description as the message), ``NN%`` and ``NN.N%`` (out of 100), and whole-number
    ``n/total`` with ``n <= total``. The line itself becomes the message for the last two.
    Returns ``None`` for a line with none of them; paths (``/a/2024/05``), dates, network
    masks, versions and percentages above 100 are not progress.
    """
    if "%" not in line and "/" not in line:  # every form has one: most lines stop here
        return None
    text = line.strip()
    if match := _TQDM.search(text):
        description = text[: match.start()].strip().removesuffix(":").strip() or None
        total = match.group(3)
        if total != "?" and (count := _number(total)) > 0:
            return ProgressReading(_number(match.group(2)), count, description)
        return ProgressReading(int(match.group(1)), 100, description)
    if match := _TQDM_COUNT.search(text):
        return ProgressReading(_number(match.group(2)), None, match.group(1) or None)
    message = text[:_MESSAGE_LIMIT]
    if match := _PERCENT.search(text):
        percent = _number(match.group(1))
        if percent <= 100:
            return ProgressReading(percent, 100, message)
    for match in _FRACTION.finditer(text):
        current, total = int(match.group(1)), int(match.group(2))
        if current <= total:
            return ProgressReading(current, total, message)
    return None


def _number(text: str) -> float:
    """A number as tqdm prints it ("45", "45.5", "1.23k"); whole numbers come back as int."""
    if text[-1] in _SCALE:
        value = round(float(text[:-1]) * _SCALE[text[-1]], 6)  # 1.1 * 1000 is 1100.0000000001
    else:
        value = float(text)
    return int(value) if value.is_integer() else value


# -- running ---------------------------------------------------------------------------------


async def run_command(
    argv: Sequence[str],
    ctx: JobContext,
    *,
    kill_grace: float,
    cwd: str | None = None,
    env: Mapping[str, str] | None = None,
    success_codes: Collection[int] = frozenset({0}),
    stderr_tail: int = 20,
    max_line: int = 4096,
    stderr_prefix: str = "",
) -> dict[str, int]:
    """Run the program ``argv`` as the job ``ctx``; return ``{"exit_code": code}``.

    Its stdout and stderr lines go to ``ctx.log`` (stderr lines after ``stderr_prefix``),
    each cut to ``max_line`` characters with a marker saying so, and its progress to
    ``ctx.progress``. ``env`` replaces the environment, as in :mod:`subprocess` (pass
    ``{**os.environ, ...}`` to extend it); stdin is ``/dev/null``.

    Raises :class:`~jobcast.JobCancelled` when the job was cancelled (SIGTERM to the
    program's process group, SIGKILL ``kill_grace`` seconds later if it is still there), and
    :class:`~jobcast.TaskError` when the program cannot start (``CommandNotFound``,
    ``CommandNotExecutable``, ``CommandNotStarted``) or exits with a code not in
    ``success_codes`` (``CommandFailed``, with its last ``stderr_tail`` stderr lines). If the
    awaiting task is cancelled, the group is SIGKILLed and the program reaped first.
    """
    if isinstance(argv, str) or not argv:
        raise ValueError(f"argv must be a non-empty list of strings, got {argv!r}")
    if kill_grace < 0:
        raise ValueError(f"kill_grace must be zero or more seconds, got {kill_grace!r}")
    if stderr_tail < 0:
        raise ValueError(f"stderr_tail must be zero or more lines, got {stderr_tail!r}")
    if max_line < _MIN_LINE:
        raise ValueError(f"max_line must be at least {_MIN_LINE} characters, got {max_line!r}")
    ctx.raise_if_cancelled()  # no program started for a job already cancelled
    process = await _start(argv, cwd, env)
    _undertaker.watch(process.pid)  # its group dies with this process, however that dies
    group = _ProcessGroup(process, kill_grace)
    ctx.on_cancel(group.terminate)
    if ctx.cancelled:  # cancelled while it started, before there was a hook to call
        group.terminate()
    tail: deque[str] = deque(maxlen=stderr_tail)

    def on_stdout(line: str) -> None:
        _report(ctx, line)
        ctx.log(line)

    def on_stderr(line: str) -> None:
        _report(ctx, line)
        tail.append(line)
        ctx.log(stderr_prefix + line)

    def on_segment(segment: str) -> None:
        _report(ctx, segment)

    assert process.stdout is not None and process.stderr is not None
    try:
        async with anyio.create_task_group() as readers:
            readers.start_soon(_pump, process.stdout, _Lines(max_line, on_stdout, on_segment))
            readers.start_soon(_pump, process.stderr, _Lines(max_line, on_stderr, on_segment))
        code = await process.wait()
    except BaseException:
        with anyio.CancelScope(shield=True):
            await group.kill_and_reap()
        raise
    finally:
        group.close()
    if ctx.cancelled:
        raise JobCancelled(ctx.job_id)
    if code in success_codes:
        return {"exit_code": code}
    raise TaskError("CommandFailed", _failure(argv[0], code, tail))


async def _start(
    argv: Sequence[str], cwd: str | None, env: Mapping[str, str] | None
) -> asyncio.subprocess.Process:
    program = argv[0]
    try:
        return await asyncio.create_subprocess_exec(
            *argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=cwd,
            env=None if env is None else dict(env),
            start_new_session=True,  # its own process group: a signal reaches its children too
        )
    except OSError as exc:
        if cwd is not None and exc.filename == cwd:
            raise TaskError(
                "CommandNotStarted",
                f"cannot run {program!r} in {cwd!r}: {exc.strerror}; create that folder or "
                "fix the command's cwd",
            ) from exc
        if isinstance(exc, FileNotFoundError):
            raise TaskError(
                "CommandNotFound",
                f"program {program!r} was not found; install it, or give its full path "
                "(a bare name is looked up on PATH)",
            ) from exc
        if isinstance(exc, PermissionError):
            raise TaskError(
                "CommandNotExecutable",
                f"program {program!r} is not executable; make it so (chmod +x) or run it "
                "through its interpreter",
            ) from exc
        raise TaskError(
            "CommandNotStarted",
            f"program {program!r} could not be started: {exc.strerror or exc}; check that it "
            "is a program for this system",
        ) from exc


class _ProcessGroup:
    """Signals for a program started in its own session, and everything it started there."""

    def __init__(self, process: asyncio.subprocess.Process, kill_grace: float) -> None:
        self.process = process
        self.kill_grace = kill_grace
        self._loop = asyncio.get_running_loop()
        self._timer: asyncio.TimerHandle | None = None
        self._terminating = False
        self._closed = False

    def send(self, signum: signal.Signals) -> None:
        if self._closed:
            return  # the group id may belong to someone else by now
        try:
            os.killpg(self.process.pid, signum)
        except (ProcessLookupError, PermissionError):
            pass  # every process of the group has exited (and the id went to another user)

    def terminate(self) -> None:
        """On cancel (on the event loop): SIGTERM now, SIGKILL after the grace period."""
        if self._terminating or self._closed:
            return
        self._terminating = True
        self.send(signal.SIGTERM)
        self._timer = self._loop.call_later(self.kill_grace, self.send, signal.SIGKILL)

    async def kill_and_reap(self) -> None:
        """SIGKILL the group and wait, within a bound, until the program is reaped."""
        self.send(signal.SIGKILL)
        process = self.process
        with anyio.move_on_after(_REAP_TIMEOUT) as waiting:
            # Drain the pipes: asyncio's wait() returns only once both have closed.
            async with anyio.create_task_group() as drains:
                for stream in (process.stdout, process.stderr):
                    if stream is not None:
                        drains.start_soon(_drain, stream)
            await process.wait()
        if waiting.cancelled_caught:
            logger.warning(
                "command pid %s did not end within %g s of SIGKILL; its reaping is left to "
                "the event loop's child watcher",
                process.pid,
                _REAP_TIMEOUT,
            )

    def close(self) -> None:
        """After the program was reaped: kill what it left in its group, disarm the timer."""
        if self._timer is not None:
            self._timer.cancel()
        # Still-running members keep the group id from being reused, so this reaches only
        # the program's own leftovers (a background child that closed its output), which
        # would otherwise run on unwatched.
        self.send(signal.SIGKILL)
        self._closed = True
        _undertaker.forget(self.process.pid)


async def _pump(stream: asyncio.StreamReader, lines: _Lines) -> None:
    while chunk := await stream.read(_CHUNK):
        lines.feed(chunk)
    lines.close()


async def _drain(stream: asyncio.StreamReader) -> None:
    while await stream.read(_CHUNK):
        pass


class _Lines:
    """Cuts one output stream into ``\\n`` lines and ``\\r`` segments, in bounded memory.

    At most ``max_line`` bytes of the current line are held; the rest of a longer line is
    only counted, and the line is logged cut, with a marker. Bytes are decoded per line, so
    a UTF-8 character split across reads stays whole.
    """

    __slots__ = ("_cut", "_held", "_last", "_max", "_on_line", "_on_segment")

    def __init__(
        self, max_line: int, on_line: Callable[[str], None], on_segment: Callable[[str], None]
    ) -> None:
        self._max = max_line
        self._on_line = on_line
        self._on_segment = on_segment
        self._held = bytearray()
        self._cut = 0  # bytes of the current segment beyond max_line, dropped
        self._last = ""  # the last \r-ended segment of this line: what "abc\r\n" logs

    def feed(self, chunk: bytes) -> None:
        *ended, rest = chunk.split(b"\n")
        for piece in ended:
            self._add(piece)
            self._end_line()
        self._add(rest)

    def close(self) -> None:
        """At end of output: a last line without a newline is logged too."""
        if self._held or self._cut or self._last:
            self._end_line()

    def _add(self, data: bytes) -> None:
        if b"\r" in data:
            *segments, data = data.split(b"\r")
            for segment in segments:
                self._keep(segment)
                text = self._take()
                if text:
                    self._last = text
                    self._on_segment(text)
        self._keep(data)

    def _keep(self, data: bytes) -> None:
        room = self._max - len(self._held)
        if len(data) <= room:
            self._held += data
        else:
            self._held += data[: max(room, 0)]
            self._cut += len(data) - max(room, 0)

    def _take(self) -> str:
        text = self._held.decode("utf-8", "replace")
        if self._cut:
            marker = f" [… cut: {len(self._held) + self._cut:,} bytes in all]"
            text = text[: self._max - len(marker)] + marker
        self._held.clear()
        self._cut = 0
        return text

    def _end_line(self) -> None:
        line = self._take() or self._last
        self._last = ""
        self._on_line(line)


def _report(ctx: JobContext, text: str) -> None:
    reading = parse_progress(text)
    if reading is not None:
        ctx.progress(reading.current, reading.total, reading.message)


def _failure(program: str, code: int, tail: Collection[str]) -> str:
    if code < 0:
        try:
            how = f"was killed by signal {signal.Signals(-code).name}"
        except ValueError:
            how = f"was killed by signal {-code}"
    else:
        how = f"exited with code {code}"
    if not tail:
        return f"{program} {how} and wrote nothing to stderr; see the job's log for its output"
    lines = "\n".join(tail)
    return f"{program} {how}; see the job's log for all its output. Last stderr lines:\n{lines}"
