"""How a job's events look in a terminal: a live bar with the log above it, or, without a
terminal, plain lines."""

from __future__ import annotations

import os
import re
import time
import unicodedata
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import TextIO

from .client import Event, Job, JobEvent, LogEvent, Progress, Reset, Snapshot

__all__ = ["Bar", "Display", "Lines", "columns", "describe", "display_for", "fit", "printable"]

#: Seconds between two plain progress lines: a log file gets a reading now and then.
PLAIN_INTERVAL = 2.0
_CLEAR = "\r\x1b[2K"

# What a job's text may hold that a terminal would obey rather than show: escape sequences
# (CSI, such as colours and cursor moves; OSC, such as a window title or a link; and the
# two-character ones), then any other C0 or C1 control character, and DEL.
_ESCAPE = re.compile(
    r"(?:\x1b\[|\x9b)[0-?]*[ -/]*[@-~]"  # CSI ... final byte
    r"|(?:\x1b[]PX^_]|[\x90\x98\x9d-\x9f])[^\x07\x1b\x9c]*(?:\x07|\x1b\\|\x9c)?"  # OSC, DCS...
    r"|\x1b[ -/]*[0-~]?"  # ESC and what it introduces
)
_SPACE = re.compile(r"[\t\n\v\f\r]+")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_REPLACEMENT = "\ufffd"


def printable(text: str) -> str:
    """``text`` as a terminal shows it without obeying it, on one line: escape sequences
    dropped, line breaks and tabs as a space, other control characters as U+FFFD.

    A job's log lines, its messages and its error are written by the job (or by a program it
    runs), so that none of them can recolour, move, retitle or clear the watcher's terminal.
    """
    if text.isprintable():
        return text
    text = _ESCAPE.sub("", text)
    text = _SPACE.sub(" ", text)
    return _CONTROL.sub(_REPLACEMENT, text)


def _width(char: str) -> int:
    if unicodedata.combining(char) or unicodedata.category(char) in ("Mn", "Me", "Cf"):
        return 0
    return 2 if unicodedata.east_asian_width(char) in ("W", "F") else 1


def fit(text: str, width: int) -> str:
    """``text`` cut to at most ``width`` columns of a terminal (a wide character, as CJK
    text and most emoji are, takes two)."""
    if len(text) <= width and text.isascii():
        return text
    used = 0
    for index, char in enumerate(text):
        used += _width(char)
        if used > width:
            return text[:index]
    return text


def columns(out: TextIO) -> int:
    """The width of the terminal ``out`` writes to: ``COLUMNS`` when set, else the
    terminal's own (not stdout's, which may be a pipe while ``out`` is stderr), else 80."""
    try:
        found = int(os.environ.get("COLUMNS", ""))
    except ValueError:
        found = 0
    if found <= 0:
        try:
            found = os.get_terminal_size(out.fileno()).columns
        except (AttributeError, ValueError, OSError):
            found = 0
    return found if found > 0 else 80


def _number(value: float) -> str:
    return f"{value:.0f}" if float(value).is_integer() else f"{value:.2f}"


def _clock(seconds: float) -> str:
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def describe(progress: Progress) -> str:
    """``30/120 25% 12.5/s ETA 0:07 img_030.png``: what a reading says, in one line."""
    parts = [_number(progress.current)]
    if progress.total:
        parts[0] += f"/{_number(progress.total)}"
    if progress.percent is not None:
        parts.append(f"{progress.percent:.0f}%")
    if progress.rate is not None:
        rate = progress.rate
        parts.append(f"{rate:,.0f}/s" if rate >= 100 else f"{rate:.3g}/s")
    if progress.eta_s is not None:
        parts.append(f"ETA {_clock(progress.eta_s)}")
    else:
        parts.append(f"{_clock(progress.elapsed_s)} elapsed")
    if progress.message:
        parts.append(progress.message)
    return " ".join(parts)


class Display(ABC):
    """Shows the events of one job, and keeps the job as last seen (``job``); call
    :meth:`close` once they are over."""

    def __init__(self, out: TextIO, job_id: str) -> None:
        self.out = out
        self.job_id = job_id
        self.job: Job | None = None

    def show(self, event: Event) -> None:
        """Show what ``event`` says of the job."""
        if isinstance(event, LogEvent):
            self.log(event.line)
        elif isinstance(event, Reset):
            self.log(f"jobcast: {event.reason}")
        elif isinstance(event, JobEvent) and event.job.id == self.job_id:
            self._change(event.name, event.job)
        elif isinstance(event, Snapshot):
            for job in event.jobs:
                if job.id == self.job_id:
                    self._change(job.state, job)

    def _change(self, name: str, job: Job) -> None:
        before, self.job = self.job, job
        self.change(name, job, before)

    @abstractmethod
    def log(self, line: str) -> None:
        """Show a line of the job's log."""

    @abstractmethod
    def change(self, name: str, job: Job, before: Job | None) -> None:
        """Show that the event ``name`` made the job ``job`` (it was ``before``)."""

    @abstractmethod
    def close(self) -> None:
        """The events are over (or no longer watched)."""


class Lines(Display):
    """Plain lines, for a pipe or a file: each log line, each change of state, and the
    progress every :data:`PLAIN_INTERVAL` seconds."""

    def __init__(
        self, out: TextIO, job_id: str, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        super().__init__(out, job_id)
        self._clock = clock
        self._shown_at: float | None = None

    def log(self, line: str) -> None:
        # One write per line: a Ctrl+C between the text and its newline would glue the
        # next message to it.
        self.out.write(f"{printable(line)}\n")
        self.out.flush()

    def close(self) -> None:
        self.out.flush()

    def change(self, name: str, job: Job, before: Job | None) -> None:
        if name == "progress" and job.progress is not None:
            now = self._clock()
            if self._shown_at is None or now - self._shown_at >= PLAIN_INTERVAL:
                self._shown_at = now
                self.log(f"progress {describe(job.progress)}")
        elif before is None or before.state != job.state or name == "retrying":
            self.log(f"job {job.id} {name}")


class Bar(Display):
    """A live bar on the terminal's last line, redrawn at each event; log lines scroll
    above it."""

    def __init__(self, out: TextIO, job_id: str) -> None:
        super().__init__(out, job_id)
        encoding = (getattr(out, "encoding", None) or "").lower().replace("-", "")
        self._blocks = ("█", "░") if encoding == "utf8" else ("#", "-")
        self._drawn = False

    def log(self, line: str) -> None:
        self.out.write(f"{_CLEAR}{printable(line)}\n")
        self._draw()

    def change(self, name: str, job: Job, before: Job | None) -> None:
        self._draw()

    def close(self) -> None:
        if self._drawn:
            self.out.write("\n")
            self.out.flush()
            self._drawn = False

    def line(self, width: int) -> str:
        """The bar as it stands, on one line of at most ``width`` columns."""
        return fit(printable(self._text()), width)

    def _text(self) -> str:
        job = self.job
        if job is None:
            return f"{self.job_id[:8]} waiting for its first event"
        head = f"{job.task} {job.state}"
        progress = job.progress
        if progress is None:
            return head
        bar = ""
        if progress.percent is not None:
            full, empty = self._blocks
            done = round(progress.percent / 5)
            bar = f" |{full * done}{empty * (20 - done)}|"
        return f"{head}{bar} {describe(progress)}"

    def _draw(self) -> None:
        # One column spare: a line that fills the last column wraps on some terminals.
        width = columns(self.out) - 1
        self.out.write(f"{_CLEAR}{self.line(width)}")
        self.out.flush()
        self._drawn = True


def display_for(out: TextIO, job_id: str) -> Display:
    """A live bar on a terminal that can redraw a line, plain lines elsewhere (a pipe, a
    file, ``TERM=dumb``: an editor's shell, a CI log)."""
    redraws = out.isatty() and os.environ.get("TERM") != "dumb"
    return Bar(out, job_id) if redraws else Lines(out, job_id)
