"""What the supervisor knows about a run, as one immutable snapshot for the page, /metrics and
/healthz (read from the HTTP server's threads) and for the live stats lines. Pure: the
supervisor passes the stages' reports and the time in; nothing here reads a clock.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from streamseg.accounting import total_dropped
from streamseg.serve.health import FrameClock, StreamHealth, problems, stream_state
from streamseg.serve.window import StreamTotals, Window, WindowFigures
from streamseg.wire.messages import Stats


@dataclass(frozen=True)
class StreamView:
    """One stream as the page shows it."""

    state: str
    """health.stream_state(): connected, reconnecting, lost, ended, starting."""
    detail: str
    """The source's own words ("up", "down, retrying in 2 s", "gone")."""
    frame_age_s: float | None
    totals: StreamTotals
    window: WindowFigures | None


@dataclass(frozen=True)
class Snapshot:
    t: float
    """When it was taken (the supervisor's monotonic clock), seconds."""
    live: bool = True
    stages: Mapping[str, str | None] = field(default_factory=dict)
    """Per stage process: None when alive, else what is wrong with it."""
    reports: Mapping[str, Stats] = field(default_factory=dict)
    """Per stage process: its report, counters added over its lives."""
    restarts: Mapping[str, int] = field(default_factory=dict)
    streams: Mapping[str, StreamView] = field(default_factory=dict)
    problems: tuple[str, ...] = ("starting",)
    """Why the run is not healthy (empty: it is)."""
    rtsp: Mapping[str, str] = field(default_factory=dict)
    """Per stream: where its annotated video plays over RTSP (--rtsp-out), if it does."""

    def to_json(self) -> dict[str, Any]:
        """The page's data: per stream its state and figures; the stages; health."""

        def num(x: float) -> float | None:
            return None if x is None or math.isnan(x) else round(x, 3)

        streams = {}
        for name, s in sorted(self.streams.items()):
            w = s.window
            streams[name] = {
                "state": s.state,
                "detail": s.detail,
                "frame_age_s": num(s.frame_age_s) if s.frame_age_s is not None else None,
                "frames_in": s.totals.frames_in,
                "frames_out": s.totals.frames_out,
                "dropped": s.totals.dropped,
                "reconnects": s.totals.reconnects,
                "fps_in": num(w.fps_in) if w else None,
                "fps_out": num(w.fps_out) if w else None,
                "latency_p50_ms": num(w.latency_p50_ms) if w else None,
                "latency_p99_ms": num(w.latency_p99_ms) if w else None,
                "window_s": num(w.span_s) if w else None,
                "rtsp": self.rtsp.get(name),
            }
        return {
            "healthy": not self.problems,
            "problems": list(self.problems),
            "stages": {k: v or "alive" for k, v in sorted(self.stages.items())},
            "restarts": dict(self.restarts),
            "streams": streams,
        }


def stream_totals(
    sources: Mapping[str, Mapping[str, Any]], reports: Mapping[str, Stats]
) -> dict[str, StreamTotals]:
    """Per stream: frames its source decoded, frames with results, drops over every stage,
    reconnects and the latency histogram; `sources`: its source's counters per stream."""
    post = reports.get("postprocess")
    streams = set(sources) | set(post.counters if post else {})
    out = {}
    for stream in streams:
        src = sources.get(stream, {})
        p = post.counters.get(stream, {}) if post else {}
        dropped = total_dropped(src) + sum(
            total_dropped(r.counters.get(stream, {}))
            for r in reports.values()
            if r.stage != "source"
        )
        hist = p.get("hist", {})
        out[stream] = StreamTotals(
            frames_in=int(src.get("in", 0)),
            frames_out=int(p.get("out", 0)),
            dropped=int(dropped),
            reconnects=int(src.get("reconnects", 0) or 0),
            latency=hist.get("latency_s") if isinstance(hist, dict) else None,
        )
    return out


class Board:
    """The latest Snapshot, safe to read from any thread; `update` from the supervisor's loop.

    stall_s: a stream's stall window (its source's `--stall-s`); span_s: the window of the
    rates and percentiles."""

    def __init__(self, *, live: bool, stall_s: float = 5.0, span_s: float = 5.0) -> None:
        self.live = live
        self.stall_s = stall_s
        self.window = Window(span_s)
        self.frames = FrameClock()
        self._lock = threading.Lock()
        self._snapshot = Snapshot(t=0.0, live=live)
        self._sampled = -math.inf
        self.rtsp: dict[str, str] = {}
        """Per stream: its --rtsp-out URL (set by the supervisor), shown on the page."""

    def update(
        self,
        now: float,
        *,
        stages: Mapping[str, str | None],
        reports: Mapping[str, Stats],
        sources: Mapping[str, Mapping[str, Any]],
        restarts: Mapping[str, int],
        sample_every_s: float = 0.5,
    ) -> Snapshot:
        """A new snapshot from the stages' liveness, their reports (per process name) and the
        sources' counters (per stream); the window takes a sample every `sample_every_s`."""
        totals = stream_totals(sources, reports)
        for stream, t in totals.items():
            self.frames.update(stream, t.frames_in, now)
        if now - self._sampled >= sample_every_s:
            self._sampled = now
            self.window.add(now, totals)
        figures = self.window.figures()
        views, health = {}, {}
        for stream, t in totals.items():
            src = sources.get(stream)
            state = stream_state(src)
            detail = str(src.get("state", "")) if src else ""
            age = self.frames.age(stream, now)
            health[stream] = StreamHealth(state, age, detail)
            views[stream] = StreamView(state, detail, age, t, figures.get(stream))
        snap = Snapshot(
            t=now,
            live=self.live,
            stages=dict(stages),
            reports=dict(reports),
            restarts=dict(restarts),
            streams=views,
            problems=tuple(problems(stages, health, stall_s=self.stall_s)),
            rtsp=dict(self.rtsp),
        )
        with self._lock:
            self._snapshot = snap
        return snap

    def latest(self) -> Snapshot:
        with self._lock:
            return self._snapshot
