"""Per-camera figures of a cell, from the results it publishes: fps, latency, frames dropped.

A cell subscribes to its own publish endpoint (cells.Cell) and feeds every result here;
`figures` is what it sends with each lease renewal, so `streamseg fleet status` shows each
camera's rate and delay wherever its cell runs. Pure: the clock is passed in.

Dropped frames are gaps in the frame numbers of a stream: frames the live pipeline skipped to
stay real time (counted by the pipeline too, by reason, in its own report).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any


@dataclass
class _Stream:
    times: deque[float] = field(default_factory=deque)  # receive times within the window
    latencies: deque[float] = field(default_factory=deque)
    last_frame: int = -1
    dropped: int = 0
    results: int = 0
    first_seen: float = 0.0
    last_seen: float = 0.0


@dataclass
class Figures:
    """fps and latency over the last `window_s` seconds, per stream; drops and results since
    the cell's pipeline started."""

    window_s: float = 10.0
    streams: dict[str, _Stream] = field(default_factory=dict)

    def add(self, stream: str, frame: int, latency_s: float, now: float) -> None:
        """One result: its stream, frame number, capture-to-receive latency (s), receive time."""
        s = self.streams.setdefault(stream, _Stream())
        if s.last_frame >= 0 and frame > s.last_frame + 1:
            s.dropped += frame - s.last_frame - 1
        s.last_frame = max(s.last_frame, frame)
        if not s.results:
            s.first_seen = now
        s.results += 1
        s.last_seen = now
        s.times.append(now)
        s.latencies.append(latency_s)
        self._trim(s, now)

    def _trim(self, s: _Stream, now: float) -> None:
        while s.times and now - s.times[0] > self.window_s:
            s.times.popleft()
            s.latencies.popleft()

    def figures(self, now: float) -> dict[str, dict[str, Any]]:
        """Stream -> fps, latency_ms (mean), dropped, results, age_s (since its last result)."""
        out = {}
        for name, s in self.streams.items():
            self._trim(s, now)
            n = len(s.times)
            span = min(self.window_s, now - s.first_seen)  # a stream younger than the window
            out[name] = {
                "fps": round(n / span, 2) if span >= 1.0 else None,
                "latency_ms": round(1000 * sum(s.latencies) / n, 1) if n else None,
                "dropped": s.dropped,
                "results": s.results,
                "age_s": round(now - s.last_seen, 1),
            }
        return out
