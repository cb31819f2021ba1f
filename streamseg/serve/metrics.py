"""/metrics: the run in Prometheus' text format, built from a Snapshot of the stages' reports.

Every figure is what the stages already count (docs/serve.md lists them): counters of frames in,
out and dropped by reason per stage and stream (added over a stage's lives, so a restart never
makes them go back), reconnects and restarts; gauges of what is happening now; and histograms
per stream of the capture-to-result latency and of the batch each frame was inferred in (its
size and model time), kept by the postprocess stage. `families(snapshot)` is pure; `render` is
prometheus_client's exposition of them.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import Collector, CollectorRegistry

from streamseg.serve.board import Snapshot
from streamseg.serve.health import CONNECTED

PREFIX = "streamseg"
HISTOGRAMS = {
    "latency_s": ("latency_seconds", "Capture to result (frame decoded to results written)"),
    "batch_size": ("batch_size", "Frames in the batch each frame was inferred in"),
    "inference_s": ("inference_seconds", "Model time of the batch each frame was inferred in"),
}
"""postprocess histogram key -> (metric name, help)."""


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def _buckets(hist: Any) -> tuple[list[tuple[str, float]], float] | None:
    """Prometheus' cumulative buckets and sum of an accounting.Histogram record; None when the
    record is not one (a report is data from another process: never trusted to be well-formed)."""
    if not isinstance(hist, Mapping):
        return None
    bounds, counts, total = hist.get("bounds"), hist.get("counts"), _number(hist.get("sum"))
    if not isinstance(bounds, Sequence) or not isinstance(counts, Sequence) or total is None:
        return None
    bs = [_number(b) for b in bounds]
    cs = [_number(c) for c in counts]
    if None in bs or None in cs or len(cs) != len(bs) + 1 or bs != sorted(set(bs)):
        return None
    out, cumulative = [], 0.0
    for bound, n in zip([*bs, math.inf], cs, strict=True):
        cumulative += n  # type: ignore[operator]
        out.append(("+Inf" if bound == math.inf else repr(float(bound)), cumulative))
    return out, total


WORKER_STAGE = "inference_worker"
"""The `stage` label of an inference worker's figures when a pipeline has several: the
dispatcher (process "inference") counts each frame as the inference stage, the worker that ran
it once more under this name, so `sum by (stage)` counts each frame once per stage."""


def stage_label(stage: str, process: str) -> str:
    """The `stage` label of a process's figures: its stage, WORKER_STAGE for the workers of
    a dispatcher (processes "inference[N]")."""
    return WORKER_STAGE if stage == "inference" and process != "inference" else stage


def families(snap: Snapshot) -> list[Metric]:
    """Every metric family of the run at `snap`."""
    m = {
        "in": CounterMetricFamily(
            f"{PREFIX}_frames_in", "Frames a stage took in", labels=["stage", "process", "stream"]
        ),
        "out": CounterMetricFamily(
            f"{PREFIX}_frames_out",
            "Frames a stage passed on (postprocess: frames with results)",
            labels=["stage", "process", "stream"],
        ),
        "dropped": CounterMetricFamily(
            f"{PREFIX}_frames_dropped",
            "Frames a stage dropped on purpose, by reason",
            labels=["stage", "process", "stream", "reason"],
        ),
        "depth": GaugeMetricFamily(
            f"{PREFIX}_queue_depth",
            "Frames a stage holds: taken in, not yet passed on or dropped (at its last report)",
            labels=["stage", "process", "stream"],
        ),
        "busy": CounterMetricFamily(
            f"{PREFIX}_stage_busy_seconds", "Seconds of work", labels=["stage", "process"]
        ),
        "rejected": CounterMetricFamily(
            f"{PREFIX}_messages_rejected",
            "Messages a stage refused (malformed, or not from the stage that owns them)",
            labels=["stage", "process"],
        ),
    }
    for name, report in sorted(snap.reports.items()):
        stage = stage_label(report.stage, name)
        for stream, rec in sorted(report.counters.items()):
            if not isinstance(rec, Mapping):
                continue
            labels = [stage, name, stream]
            n_in, n_out = _number(rec.get("in", 0)) or 0.0, _number(rec.get("out", 0)) or 0.0
            m["in"].add_metric(labels, n_in)
            m["out"].add_metric(labels, n_out)
            dropped = rec.get("dropped", {})
            drops = 0.0
            for reason, n in sorted(dropped.items() if isinstance(dropped, Mapping) else []):
                if (v := _number(n)) is not None:
                    m["dropped"].add_metric([*labels, str(reason)], v)
                    drops += v
            if stage != "source":
                m["depth"].add_metric(labels, max(0.0, n_in - n_out - drops))
        m["busy"].add_metric([stage, name], _number(report.busy_s) or 0.0)
        if (rejected := _number(report.extra.get("rejected"))) is not None:
            m["rejected"].add_metric([stage, name], rejected)

    reconnects = CounterMetricFamily(
        f"{PREFIX}_reconnects", "Times a stream's source reconnected", labels=["stream"]
    )
    connected = GaugeMetricFamily(
        f"{PREFIX}_stream_connected", "1 while the stream delivers frames", labels=["stream"]
    )
    age = GaugeMetricFamily(
        f"{PREFIX}_stream_frame_age_seconds",
        "Seconds since the stream's last new frame (as its source reported, about every second)",
        labels=["stream"],
    )
    for stream, view in sorted(snap.streams.items()):
        reconnects.add_metric([stream], view.totals.reconnects)
        connected.add_metric([stream], 1.0 if view.state == CONNECTED else 0.0)
        if view.frame_age_s is not None:
            age.add_metric([stream], view.frame_age_s)

    up = GaugeMetricFamily(
        f"{PREFIX}_stage_up", "1 while the stage process is alive", labels=["process"]
    )
    for name, problem in sorted(snap.stages.items()):
        up.add_metric([name], 0.0 if problem else 1.0)
    restarts = CounterMetricFamily(
        f"{PREFIX}_stage_restarts",
        "Times a stage process was restarted after it died or hung",
        labels=["process"],
    )
    for name in sorted(snap.stages):
        restarts.add_metric([name], snap.restarts.get(name, 0))
    healthy = GaugeMetricFamily(f"{PREFIX}_healthy", "1 when /healthz answers 200")
    healthy.add_metric([], 0.0 if snap.problems else 1.0)

    hists = []
    post = snap.reports.get("postprocess")
    for key, (metric, help_text) in HISTOGRAMS.items():
        family = HistogramMetricFamily(f"{PREFIX}_{metric}", help_text, labels=["stream"])
        for stream, rec in sorted(post.counters.items() if post else []):
            hist = rec.get("hist", {}) if isinstance(rec, Mapping) else {}
            parsed = _buckets(hist.get(key) if isinstance(hist, Mapping) else None)
            if parsed is not None:
                family.add_metric([stream], parsed[0], parsed[1])
        hists.append(family)
    sinks = sink_families(post.extra.get("sinks") if post else None)
    return [*m.values(), reconnects, restarts, connected, age, up, healthy, *hists, *sinks]


def sink_families(sinks: Any) -> list[Metric]:
    """Per output sink of the postprocess stage (its name: results, video, mqtt, redis-2, ...):
    results delivered, dropped by reason, pending (delivered + dropped + pending = given).
    These are the stage's current life's figures (a restarted stage counts from zero)."""
    delivered = CounterMetricFamily(
        f"{PREFIX}_sink_delivered", "Results a sink delivered", labels=["sink"]
    )
    dropped = CounterMetricFamily(
        f"{PREFIX}_sink_dropped", "Results a sink dropped, by reason", labels=["sink", "reason"]
    )
    pending = GaugeMetricFamily(
        f"{PREFIX}_sink_pending", "Results a sink holds, not yet delivered", labels=["sink"]
    )
    for name, c in sorted(sinks.items() if isinstance(sinks, Mapping) else []):
        if not isinstance(c, Mapping):
            continue
        delivered.add_metric([str(name)], _number(c.get("delivered")) or 0.0)
        pending.add_metric([str(name)], _number(c.get("pending")) or 0.0)
        by = c.get("dropped")
        for reason, n in sorted(by.items() if isinstance(by, Mapping) else []):
            if (v := _number(n)) is not None:
                dropped.add_metric([str(name), str(reason)], v)
    return [delivered, dropped, pending]


class _Collector(Collector):
    def __init__(self, snapshot: Any) -> None:
        self.snapshot = snapshot

    def collect(self) -> Iterator[Metric]:
        yield from families(self.snapshot())


def render(snap: Snapshot) -> tuple[bytes, str]:
    """(body, content type) of /metrics for `snap`."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Collector(lambda: snap))
    return generate_latest(registry), CONTENT_TYPE_LATEST
