"""What a run did, from the stages' final counters: the exit code, stats lines and summary. Pure.

Exit codes (the same every time, documented in the README):
  0    every decoded frame has results (file runs), or a live run was stopped by the user
  1    a stage failed unexpectedly
  2    bad input or settings (unreadable source, missing weights, bad config)
  3    frames were lost (truncated file, a stream that never came back)
  130  a file run was interrupted (Ctrl-C, SIGTERM)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from streamseg.accounting import total_dropped
from streamseg.pipeline.watchdog import describe_exit
from streamseg.wire.messages import Stats


def to_json(report: RunReport) -> dict[str, Any]:
    """The report as written by `--report FILE`: every figure, plus drops by reason."""
    return {**dataclasses.asdict(report), "dropped": drops_by_reason(report)}


def add_counts(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """One stream's counters of two lives of a stage (before and after a restart): frames in,
    out and dropped (by reason) add up; every other field is the newer one's."""
    out = {**a, **b}
    out["in"] = a.get("in", 0) + b.get("in", 0)
    out["out"] = a.get("out", 0) + b.get("out", 0)
    dropped = dict(a.get("dropped", {}))
    for reason, n in b.get("dropped", {}).items():
        dropped[reason] = dropped.get(reason, 0) + n
    out["dropped"] = dropped
    # instances postprocess merged away; results of a lost worker's frames that came twice
    for key in ("duplicates", "fragments_joined", "resent_copies"):
        if key in a or key in b:
            out[key] = a.get(key, 0) + b.get(key, 0)
    return out


def merge_shards(reports: Sequence[Stats]) -> Stats | None:
    """The postprocess stage's report from its shards' (streamseg.shards; each owns other
    streams, so their per-stream counters sit side by side): busy seconds, sinks' figures
    (by sink: delivered, dropped by reason, pending) and rejected messages add up; ready and
    final when every shard's is. None without any report; one report as it is."""
    if len(reports) <= 1:
        return reports[0] if reports else None
    counters: dict[str, Any] = {}
    sinks: dict[str, dict[str, Any]] = {}
    for r in reports:
        counters.update(r.counters)
        for name, c in (r.extra.get("sinks") or {}).items():
            have = sinks.setdefault(name, {"delivered": 0, "dropped": {}, "pending": 0})
            have["delivered"] += int(c.get("delivered", 0))
            have["pending"] += int(c.get("pending", 0))
            for reason, n in (c.get("dropped") or {}).items():
                have["dropped"][reason] = have["dropped"].get(reason, 0) + int(n)
    extra = {
        **reports[0].extra,
        "sinks": sinks,
        "rejected": sum(int(r.extra.get("rejected", 0)) for r in reports),
        "shards": len(reports),
    }
    return dataclasses.replace(
        reports[0],
        name="postprocess",
        counters=counters,
        busy_s=sum(r.busy_s for r in reports),
        extra=extra,
        ready=all(r.ready for r in reports),
        final=all(r.final for r in reports),
    )


class Tally:
    """The latest report of each stage process (by name: "inference", "source[cam1]"), with
    the counters of its earlier lives added when it was restarted."""

    def __init__(self) -> None:
        self.latest: dict[str, Stats] = {}
        self.carried: dict[str, Stats] = {}

    def update(self, name: str, msg: Stats) -> None:
        self.latest[name] = msg

    def restarted(self, name: str) -> None:
        """`name` starts a new life: what its last life reported is kept and added to."""
        merged = self.get(name)
        if merged is not None:
            self.carried[name] = merged
        self.latest.pop(name, None)

    def get(self, name: str) -> Stats | None:
        """The stage's report over all its lives; None before it reported."""
        old, new = self.carried.get(name), self.latest.get(name)
        if old is None or new is None:
            return new or old
        streams = set(old.counters) | set(new.counters)
        counters = {
            k: add_counts(old.counters.get(k, {}), new.counters.get(k, {})) for k in streams
        }
        return dataclasses.replace(new, counters=counters, busy_s=old.busy_s + new.busy_s)

    def names(self) -> list[str]:
        return sorted(set(self.latest) | set(self.carried))


@dataclass
class RunReport:
    """What the run did, from the stages' final counters."""

    exit_code: int
    elapsed_s: float
    """Wall time of the whole run, stage start-up included."""
    startup_s: float = 0.0
    """Of which: until inference and postprocess were loaded and ready."""
    sources: dict[str, Any] = field(default_factory=dict)
    inference: dict[str, Any] = field(default_factory=dict)
    postprocess: dict[str, Any] = field(default_factory=dict)
    busy_s: dict[str, float] = field(default_factory=dict)
    """Seconds of work per stage (sources summed)."""
    extra: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Each stage's own figures (inference: batches, mean_batch, device; ...)."""
    errors: list[str] = field(default_factory=list)
    stream_lines: list[str] = field(default_factory=list)
    """Live runs: the final per-stream line of each stream (see stream_lines)."""
    restarts: dict[str, int] = field(default_factory=dict)
    """Live runs: how often each stage process was restarted after it died or hung."""

    def frames_done(self) -> int:
        return sum(c.get("out", 0) for c in self.postprocess.values())

    def processing_fps(self) -> float:
        """Frames with results per second once the stages were running."""
        running = self.elapsed_s - self.startup_s
        return self.frames_done() / running if running > 0 else 0.0


def exit_code(
    codes: dict[str, int | None],
    report: RunReport,
    *,
    live: bool,
    interrupted: bool,
    failed: bool = False,
) -> int:
    """The run's exit code (see the module doc) from each stage process's exit code (by name)
    and the final counters; appends a line per problem to `report.errors`. `failed`: the
    supervisor ended the run because a stage died or hung (its line is in report.errors)."""
    if failed:
        return 1
    for name, code in codes.items():
        if code == 2:
            report.errors.append(f"{name} could not start (see its error above)")
    if any(c == 2 for c in codes.values()):
        return 2
    if interrupted:
        return 130 if not live else 0
    if any(c not in (0, 3) for c in codes.values()):
        bad = [f"{n} {describe_exit(c)}" for n, c in codes.items() if c not in (0, 3, None)]
        report.errors.extend(bad)
        return 1
    lost = False
    for stream, c in report.sources.items():
        decoded = c.get("in", 0)
        done = report.postprocess.get(stream, {}).get("out", 0)
        if not live and decoded != done:
            report.errors.append(f"{stream}: {decoded} frames decoded but {done} with results")
            lost = True
        if c.get("lost"):
            lost = True
    return 3 if lost or any(c == 3 for c in codes.values()) else 0


def stream_lines(
    sources: dict[str, dict[str, Any]], stats: dict[str, Stats], elapsed: float
) -> list[str]:
    """One line per stream: fps in and processed, drops, reconnects, latency p50/p99."""
    post = stats["postprocess"].counters if "postprocess" in stats else {}
    inf = stats["inference"].counters if "inference" in stats else {}
    lines = []
    for stream in sorted(set(sources) | set(post)):
        src, p, i = sources.get(stream, {}), post.get(stream, {}), inf.get(stream, {})
        t = max(elapsed, 1e-9)
        drops = total_dropped(src) + total_dropped(i) + total_dropped(p)
        lines.append(
            f"{stream}: in {src.get('in', 0) / t:.1f} fps, processed {p.get('out', 0) / t:.1f} fps"
            f", dropped {drops}, reconnects {src.get('reconnects', 0)}"
            f", latency p50 {p.get('latency_p50_ms', float('nan')):.0f} ms"
            f" p99 {p.get('latency_p99_ms', float('nan')):.0f} ms"
            + (f" ({src['state']})" if src.get("state", "up") != "up" else "")
        )
    return lines


def summary(report: RunReport) -> str:
    """The one-line end-of-run summary (plus a line per problem)."""
    decoded = sum(c.get("in", 0) for c in report.sources.values())
    done = report.frames_done()
    fps = done / report.elapsed_s if report.elapsed_s > 0 else 0.0
    busy = ", ".join(f"{k} {v:.1f}s" for k, v in sorted(report.busy_s.items()))
    reasons = drops_by_reason(report)
    dropped = sum(reasons.values())
    detail = ", ".join(f"{k} {v}" for k, v in sorted(reasons.items()) if v)
    text = (
        f"done: {done}/{decoded} frames with results in {report.elapsed_s:.1f}s "
        f"({fps:.1f} fps); dropped {dropped}{f' ({detail})' if detail else ''}; "
        f"busy: {busy or 'n/a'}"
    )
    lines = [text]
    corrupt = {
        k: c["corrupt_packets"] for k, c in report.sources.items() if c.get("corrupt_packets")
    }
    if corrupt:
        per = ", ".join(f"{k} {v}" for k, v in sorted(corrupt.items()))
        lines.append(f"skipped corrupt packets (the frames in them are lost): {per}")
    if report.restarts:
        restarts = ", ".join(f"{k} {v}" for k, v in sorted(report.restarts.items()))
        lines.append(f"restarted after dying or hanging: {restarts}")
    sinks = sinks_line(report.extra.get("postprocess", {}).get("sinks", {}))
    if sinks:
        lines.append(sinks)
    return "\n".join([*lines, *report.stream_lines, *report.errors])


BUILT_IN_SINKS = ("results", "video", "publish", "preview", "push")
"""The postprocess stage's own outputs: in `sinks_line` only when they dropped something."""


def sinks_line(sinks: Any) -> str:
    """The broker sinks' figures (postprocess's Stats.extra["sinks"]) in one line, e.g.
    "sinks: mqtt delivered 480, dropped 20 (queue_full 20), pending 0"; "" when none."""
    if not isinstance(sinks, dict):
        return ""
    parts = []
    for name, c in sorted(sinks.items()):
        if not isinstance(c, dict):
            continue
        dropped = c.get("dropped") if isinstance(c.get("dropped"), dict) else {}
        n_dropped = sum(int(v) for v in dropped.values() if isinstance(v, int))
        if name in BUILT_IN_SINKS and not (n_dropped or c.get("pending")):
            continue
        detail = ", ".join(f"{k} {v}" for k, v in sorted(dropped.items()) if v)
        parts.append(
            f"{name} delivered {c.get('delivered', 0)}, dropped {n_dropped}"
            f"{f' ({detail})' if detail else ''}, pending {c.get('pending', 0)}"
        )
    return f"sinks: {'; '.join(parts)}" if parts else ""


def drops_by_reason(report: RunReport) -> dict[str, int]:
    """Frames dropped on purpose, by reason, over every stage and stream, plus "in_transit":
    frames decoded but neither finished nor dropped on purpose (in the queues of a stage that
    died, or when a live run was stopped). A file run has none of those or it lost frames."""
    out: dict[str, int] = {}
    for group in (report.sources, report.inference, report.postprocess):
        for counts in group.values():
            for reason, n in counts.get("dropped", {}).items():
                out[reason] = out.get(reason, 0) + int(n)
    decoded = sum(c.get("in", 0) for c in report.sources.values())
    missing = decoded - report.frames_done() - sum(out.values())
    if missing > 0:
        out["in_transit"] = missing
    return out
