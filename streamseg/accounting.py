"""Per-stream frame accounting and latency summaries. Pure: no I/O.

Every stage counts, per stream, frames in, frames out, and frames dropped by reason, so that a run
can prove it lost nothing (file runs) or say exactly what it dropped and why (live runs).
"""

from __future__ import annotations

import bisect
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class StreamCount:
    frames_in: int = 0
    frames_out: int = 0
    dropped: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "in": self.frames_in,
            "out": self.frames_out,
            "dropped": dict(self.dropped),
            **self.extra,
        }


class Counters:
    """Counts per stream; `to_json()` is what a stage reports in its Stats message."""

    def __init__(self) -> None:
        self.streams: dict[str, StreamCount] = {}

    def __getitem__(self, stream: str) -> StreamCount:
        count = self.streams.get(stream)
        if count is None:
            count = self.streams[stream] = StreamCount()
        return count

    def count_in(self, stream: str, n: int = 1) -> None:
        self[stream].frames_in += n

    def count_out(self, stream: str, n: int = 1) -> None:
        self[stream].frames_out += n

    def drop(self, stream: str, reason: str, n: int = 1) -> None:
        self[stream].dropped[reason] += n

    def to_json(self) -> dict[str, Any]:
        return {name: c.to_json() for name, c in self.streams.items()}


def total_dropped(counts: dict[str, Any]) -> int:
    """Sum of all drop reasons in one stream's to_json() record."""
    return int(sum(counts.get("dropped", {}).values()))


class LatencyWindow:
    """Keeps the last `size` latencies (seconds) for p50/p99 without unbounded growth."""

    def __init__(self, size: int = 4096) -> None:
        self.values = np.zeros(size, dtype=np.float64)
        self.n = 0

    def add(self, seconds: float) -> None:
        self.values[self.n % len(self.values)] = seconds
        self.n += 1

    def percentiles(self, *qs: float) -> list[float]:
        """The requested percentiles in milliseconds (nan when empty)."""
        filled = self.values[: min(self.n, len(self.values))]
        if filled.size == 0:
            return [float("nan")] * len(qs)
        return [float(v) * 1000.0 for v in np.percentile(filled, qs)]


LATENCY_BOUNDS_S = (
    0.01, 0.02, 0.03, 0.04, 0.05, 0.06, 0.08, 0.1, 0.125, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5,
    0.6, 0.8, 1.0, 1.25, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 7.5, 10.0, 20.0, 30.0, 60.0,
)  # fmt: skip
"""Capture-to-result latency buckets, seconds: steps of at most 25% from 40 ms to 1.5 s, so a
percentile read from the buckets (the live stats line, Prometheus' histogram_quantile) is
within a few ms of the exact one where live runs live."""
INFERENCE_BOUNDS_S = (
    0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 2.0, 5.0
)  # fmt: skip
"""Model time of one batch, seconds."""
BATCH_BOUNDS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64)
"""Frames per batch."""


class Histogram:
    """Counts of observed values per bucket, Prometheus style: bucket i holds the values
    `bounds[i-1] < v <= bounds[i]`; the last bucket (+Inf) the values above every bound."""

    def __init__(self, bounds: tuple[float, ...]) -> None:
        if list(bounds) != sorted(set(bounds)):
            raise ValueError("histogram bounds must increase")
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value

    def to_json(self) -> dict[str, Any]:
        """{"bounds": [b...], "counts": [per bucket, +Inf last], "sum": s}: not cumulative."""
        return {"bounds": list(self.bounds), "counts": list(self.counts), "sum": self.sum}
