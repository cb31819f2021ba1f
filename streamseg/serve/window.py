"""Figures over the last few seconds (the live stats line and the page), from the stages'
cumulative counters. Pure: the caller adds timed samples; nothing here reads a clock.

The stages report totals since they started (frames in and out, drops by reason, a latency
histogram); a rate since start-up hides the present behind the model's loading time. A window
keeps the samples of the last `span_s` seconds and gives the differences: frames per second,
drops and reconnects in the window, and latency percentiles of the frames finished in it, read
from the histogram's buckets as Prometheus' histogram_quantile does.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class StreamTotals:
    """One stream's totals since the run started, at one moment."""

    frames_in: int = 0
    """Frames its source decoded."""
    frames_out: int = 0
    """Frames with results (postprocess)."""
    dropped: int = 0
    """Frames dropped on purpose, every stage and reason."""
    reconnects: int = 0
    latency: Mapping[str, Any] | None = None
    """Capture-to-result histogram, as accounting.Histogram.to_json() (None: none yet)."""


@dataclass(frozen=True)
class WindowFigures:
    span_s: float
    """Seconds the figures cover (less than asked for while the run is younger)."""
    fps_in: float
    fps_out: float
    dropped: int
    reconnects: int
    latency_p50_ms: float
    latency_p99_ms: float
    """nan when no frame was finished in the window."""


def quantile(bounds: Sequence[float], counts: Sequence[float], q: float) -> float:
    """The q-quantile (0..1) of a histogram: counts per bucket (`bounds[i-1] < v <= bounds[i]`,
    +Inf last), interpolated linearly inside its bucket (the first bucket starts at 0). A
    quantile in the +Inf bucket is the highest bound; nan for an empty histogram."""
    total = float(sum(counts))
    if total <= 0:
        return math.nan
    rank = q * total
    below = 0.0
    for i, n in enumerate(counts):
        if n > 0 and below + n >= rank:
            if i >= len(bounds):
                return float(bounds[-1])
            lower = float(bounds[i - 1]) if i > 0 else 0.0
            return lower + (float(bounds[i]) - lower) * max(0.0, rank - below) / n
        below += n
    return float(bounds[-1]) if bounds else math.nan


def histogram_delta(
    new: Mapping[str, Any] | None, old: Mapping[str, Any] | None
) -> tuple[list[float], list[float]]:
    """(bounds, counts) observed between two reports of a histogram. A histogram that went
    back (a restarted stage counts from zero) or changed its buckets counts from zero too."""
    if not new:
        return [], []
    bounds, counts = list(new["bounds"]), list(new["counts"])
    if old and list(old["bounds"]) == bounds:
        delta = [a - b for a, b in zip(counts, old["counts"], strict=True)]
        if min(delta, default=0) >= 0:
            return bounds, delta
    return bounds, counts


class Window:
    """The last `span_s` seconds of totals, per stream."""

    def __init__(self, span_s: float = 5.0) -> None:
        if span_s <= 0:
            raise ValueError("span_s must be > 0")
        self.span_s = span_s
        self.samples: deque[tuple[float, Mapping[str, StreamTotals]]] = deque()

    def add(self, t: float, totals: Mapping[str, StreamTotals]) -> None:
        """Totals per stream at time `t` (seconds, increasing)."""
        self.samples.append((t, totals))
        # keep the newest sample at least span_s old as the window's start
        while len(self.samples) >= 2 and self.samples[1][0] <= t - self.span_s:
            self.samples.popleft()

    def figures(self) -> dict[str, WindowFigures]:
        """Per stream: rates, drops, reconnects and latency over the window (a stream that is
        new in the window counts from zero)."""
        if not self.samples:
            return {}
        (t0, first), (t1, last) = self.samples[0], self.samples[-1]
        span = t1 - t0
        out = {}
        for stream, now in last.items():
            then = first.get(stream, StreamTotals()) if span > 0 else now
            bounds, counts = histogram_delta(now.latency, then.latency)
            p50, p99 = (1000.0 * quantile(bounds, counts, q) for q in (0.5, 0.99))
            out[stream] = WindowFigures(
                span_s=span,
                fps_in=(now.frames_in - then.frames_in) / span if span > 0 else 0.0,
                fps_out=(now.frames_out - then.frames_out) / span if span > 0 else 0.0,
                dropped=max(0, now.dropped - then.dropped),
                reconnects=max(0, now.reconnects - then.reconnects),
                latency_p50_ms=p50,
                latency_p99_ms=p99,
            )
        return out


def window_lines(figures: Mapping[str, WindowFigures], states: Mapping[str, str]) -> list[str]:
    """The live stats line of each stream: the window's figures, then the stream's state when
    it is not "up" ("down, retrying in 2 s")."""
    lines = []
    for stream in sorted(figures):
        f = figures[stream]
        state = states.get(stream, "up")
        lines.append(
            f"{stream}: in {f.fps_in:.1f} fps, processed {f.fps_out:.1f} fps"
            f", dropped {f.dropped}, reconnects {f.reconnects}"
            f", latency p50 {f.latency_p50_ms:.0f} ms p99 {f.latency_p99_ms:.0f} ms"
            f" (last {f.span_s:.0f} s)" + (f" ({state})" if state != "up" else "")
        )
    return lines
