"""Percentiles, and a mergeable histogram of latencies for results that span processes."""

from __future__ import annotations

import math
import statistics
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any


def percentile(values: Sequence[float], p: float) -> float:
    """The nearest-rank ``p``-th percentile of ``values`` (NaN when empty)."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = min(len(ordered) - 1, max(0, math.ceil(p / 100 * len(ordered)) - 1))
    return ordered[rank]


def median(values: Iterable[float]) -> float:
    finite = [value for value in values if not math.isnan(value)]
    return statistics.median(finite) if finite else math.nan


class Histogram:
    """Latencies in logarithmic buckets 1% wide, from 10 µs up: a run's millions of latencies
    over several processes, each one bucket increment, shipped as a few hundred buckets."""

    _FLOOR_MS = 0.01
    _STEPS = 100  # buckets per factor e

    def __init__(self, buckets: Mapping[int, int] = {}, max_ms: float = 0.0) -> None:
        self.buckets: Counter[int] = Counter(buckets)
        self.max_ms = max_ms

    def add_ms(self, value: float) -> None:
        if value > self.max_ms:
            self.max_ms = value
        clamped = value if value > self._FLOOR_MS else self._FLOOR_MS
        self.buckets[round(math.log(clamped / self._FLOOR_MS) * self._STEPS)] += 1

    def merge(self, other: Histogram) -> None:
        self.buckets.update(other.buckets)
        self.max_ms = max(self.max_ms, other.max_ms)

    def percentile(self, p: float) -> float:
        total = self.buckets.total()
        if not total:
            return math.nan
        rank = max(1, math.ceil(p / 100 * total))
        seen = 0
        for key in sorted(self.buckets):
            seen += self.buckets[key]
            if seen >= rank:
                return min(self.max_ms, self._FLOOR_MS * math.exp(key / self._STEPS))
        return self.max_ms

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Histogram:
        """A histogram as ``vars()`` gives it, after a JSON round trip (keys as strings)."""
        return cls({int(key): count for key, count in data["buckets"].items()}, data["max_ms"])
