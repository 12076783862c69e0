"""Progress cost: ns per ``ctx.advance()`` and per ``ctx.track()`` item, against tqdm.

``python -m bench.progress CALLS REPEAT`` prints one JSON line, in a process of its own so that
the other scenarios' heap and threads do not weigh on it. Each figure is a loop as a user
writes it, divided by its length (the empty loop is reported too); the loops take turns in
every round, so a drift of the machine hits them alike, and each is the median of its rounds.
"""

from __future__ import annotations

import io
import json
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

from tqdm import tqdm

from jobcast import JobContext


@dataclass(slots=True)
class ProgressCost:
    calls: int
    loop_ns: float
    advance_ns: float
    tqdm_update_ns: float
    track_ns: float
    tqdm_iter_ns: float
    advance_ratio: float  # ctx.advance() / tqdm.update()
    track_ratio: float  # ctx.track() / tqdm's iterator


class _Loop:
    """Stands in for the event loop: the loops below log nothing, so it is never called."""

    def call_soon_threadsafe(self, callback: Callable[[], object], /) -> None:
        callback()


def _context() -> JobContext:
    return JobContext("bench", "bench", {}, loop=_Loop(), on_lines=lambda lines: None)


def _empty(n: int) -> float:
    start = time.perf_counter_ns()
    for _ in range(n):
        pass
    return time.perf_counter_ns() - start


def _advance(n: int) -> float:
    ctx = _context()
    start = time.perf_counter_ns()
    for _ in range(n):
        ctx.advance()
    return time.perf_counter_ns() - start


def _tqdm_update(n: int) -> float:
    bar = tqdm(total=n, file=io.StringIO())
    start = time.perf_counter_ns()
    for _ in range(n):
        bar.update()
    elapsed = time.perf_counter_ns() - start
    bar.close()
    return elapsed


def _track(n: int) -> float:
    ctx = _context()
    start = time.perf_counter_ns()
    for _ in ctx.track(range(n)):
        pass
    return time.perf_counter_ns() - start


def _tqdm_iter(n: int) -> float:
    start = time.perf_counter_ns()
    for _ in tqdm(range(n), file=io.StringIO()):
        pass
    return time.perf_counter_ns() - start


def measure(calls: int, repeat: int) -> ProgressCost:
    loops = {
        "loop_ns": _empty,
        "advance_ns": _advance,
        "tqdm_update_ns": _tqdm_update,
        "track_ns": _track,
        "tqdm_iter_ns": _tqdm_iter,
    }
    rounds: dict[str, list[float]] = {name: [] for name in loops}
    for loop in loops.values():  # warm up: first calls pay for imports and caches
        loop(min(calls, 10_000))
    for _ in range(repeat):
        for name, loop in loops.items():
            rounds[name].append(loop(calls) / calls)
    figures = {name: statistics.median(values) for name, values in rounds.items()}
    advance_ratio = figures["advance_ns"] / figures["tqdm_update_ns"]
    track_ratio = figures["track_ns"] / figures["tqdm_iter_ns"]
    return ProgressCost(
        calls=calls, **figures, advance_ratio=advance_ratio, track_ratio=track_ratio
    )


if __name__ == "__main__":
    print(json.dumps(asdict(measure(int(sys.argv[1]), int(sys.argv[2])))))
