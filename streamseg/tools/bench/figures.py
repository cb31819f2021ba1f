"""The benchmark's figures as numbers and text: ratios, run-level latency, JSON, the report.

Pure functions of plain numbers and dicts; nothing here imports torch, PyAV or ZeroMQ.
"""

from __future__ import annotations

import math
import statistics
from typing import Any

JSON_KEYS = (
    "model_only_fps",
    "naive_fps",
    "pipeline_fps",
    "latency_p50_ms",
    "latency_p99_ms",
    "batch",
    "device",
    "size",
    "streams",
    "frames",
    "instances",
    "paste_rle_ms_1080p",
    "zmq_1080p_fps",
    "config",
)
"""Keys every result of `streamseg bench` carries (docs/benchmarks.md lists the rest)."""


class BenchError(RuntimeError):
    """A benchmark part that could not run; the message is one line for the user."""


def ratio(a: float, b: float) -> float:
    """a / b, NaN when b is not a positive number."""
    return a / b if b > 0 else float("nan")


def combine_latency(per_stream: list[tuple[float, float]]) -> tuple[float, float]:
    """Run-level (p50, p99) in ms from each stream's (p50, p99): the median of the streams' p50s
    and the worst stream's p99. NaN entries (a stream with no frames) are ignored; all NaN -> NaN.
    """
    p50s = [p50 for p50, _ in per_stream if not math.isnan(p50)]
    p99s = [p99 for _, p99 in per_stream if not math.isnan(p99)]
    if not p50s or not p99s:
        return float("nan"), float("nan")
    return float(statistics.median(p50s)), float(max(p99s))


PHASES = ("startup_s", "busy_s", "wait_in_s", "wait_out_s", "other_s")


def stage_breakdown(
    extra: dict[str, dict[str, Any]],
    busy: dict[str, float],
    sources: dict[str, dict[str, Any]],
    wall_s: float,
) -> dict[str, dict[str, float]]:
    """Where each stage process's wall time went, from a run report's per-stage `extra` and
    `busy` and its per-stream `sources` figures.

    Per stage: startup_s (process start, imports and model load included, to ready), busy_s
    (its own work), wait_in_s (idle, waiting for input), wait_out_s (blocked on a slow next
    stage), other_s (the rest of `wall_s`: the time before it started, its loop's own
    overhead, draining at the end). Sources are one row, "source", their seconds averaged over
    the streams (they run side by side).
    """
    out: dict[str, dict[str, float]] = {}

    def row(startup: float, work: float, wait_in: float, wait_out: float) -> dict[str, float]:
        other = max(0.0, wall_s - startup - work - wait_in - wait_out)
        values = (startup, work, wait_in, wait_out, other)
        return dict(zip(PHASES, (round(float(v), 3) for v in values), strict=True))

    for stage in sorted(extra):
        e = extra[stage]
        if "startup_s" not in e:
            continue  # a stage of an older version, or one that never became ready
        work = busy.get(stage, e.get("busy_s", 0.0))  # (inference workers carry their own)
        out[stage] = row(e["startup_s"], work, e.get("wait_in_s", 0.0), e.get("wait_out_s", 0.0))
    if sources:
        n = len(sources)

        def mean(key: str) -> float:
            return sum(float(c.get(key, 0.0)) for c in sources.values()) / n

        out["source"] = row(mean("startup_s"), mean("busy_s"), 0.0, mean("wait_out_s"))
    return out


def format_breakdown(stages: dict[str, dict[str, float]]) -> list[str]:
    """The breakdown as table lines (seconds)."""
    if not stages:
        return []
    head = f"{'stage':14}{'start-up':>10}{'busy':>8}{'wait in':>9}{'wait out':>10}{'other':>8}"
    lines = [head]
    for stage, t in stages.items():
        lines.append(
            f"{stage:14}{t['startup_s']:10.1f}{t['busy_s']:8.1f}{t['wait_in_s']:9.1f}"
            f"{t['wait_out_s']:10.1f}{t['other_s']:8.1f}"
        )
    return lines


def json_safe(value: Any) -> Any:
    """NaN/inf -> None (strict JSON has no NaN), recursively; tuples become lists."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value


def format_report(r: dict[str, Any]) -> str:
    """The human-readable table of a `bench()` result (its JSON form reads the same)."""
    ipf = r["instances_per_frame"]
    busy = ", ".join(f"{k} {v:.1f} s" for k, v in sorted(r["busy_s"].items())) or "n/a"
    machine = (
        r["device_name"] if r["device_name"] == r["cpu"] else f"{r['device_name']}, {r['cpu']}"
    )
    load_note = f" (measured: {ipf['pipeline']:.1f} instances/frame)"
    rows = [
        (
            "model-only",
            r["model_only_fps"],
            r["model_only_s"],
            "bare model(list), frames on device",
        ),
        ("naive loop", r["naive_fps"], r["naive_wall_s"], "1 process, frame by frame, start-up in"),
        ("pipeline", r["pipeline_fps"], r["pipeline_wall_s"], "stage processes, start-up in"),
    ]
    lines = [
        f"streamseg bench: {r['config']} ({r['arch']}), {r['streams']} x {r['size']} x "
        f"{r['frames']} frames, device {r['device']}, batch {r['batch']}",
        f"machine: {machine}; torch {r['torch']}, torchvision {r['torchvision']}; {r['date']}; "
        f"load avg {r['load_avg_1m']}",
        r["load"] + load_note,
        "",
        f"{'':12}{'fps':>9}{'seconds':>10}  what",
    ]
    lines += [f"{name:12}{fps:9.2f}{sec:10.1f}  {what}" for name, fps, sec, what in rows]
    lines += [
        "",
        f"pipeline / model-only {r['pipeline_vs_model_only']:.2f}, "
        f"pipeline / naive {r['pipeline_vs_naive']:.2f}",
        f"latency capture -> results: p50 {r['latency_p50_ms']:.0f} ms, "
        f"p99 {r['latency_p99_ms']:.0f} ms",
        f"busy: {busy}",
        f"micro (CPU): paste+RLE of {r['instances']} instances at 1920x1080 "
        f"{r['paste_rle_ms_1080p']:.1f} ms; ZeroMQ ipc 1080p RGB {r['zmq_1080p_fps']:.0f} frames/s",
    ]
    if r.get("stages"):
        lines += [
            "",
            f"pipeline, seconds per stage process (wall {r['pipeline_wall_s']:.1f} s; "
            f"naive loop: load {r['naive_load_s']:.1f} s, loop "
            f"{r['naive_wall_s'] - r['naive_load_s']:.1f} s):",
            *format_breakdown(r["stages"]),
            f"threads: model {r['threads']['model']}, encoder {r['threads']['encoder']}, "
            f"decoder {r['threads']['decoder']} (of {r['threads']['cores']} cores; "
            f"config threads = {r['threads']['requested']!r})",
        ]
    return "\n".join(lines)
