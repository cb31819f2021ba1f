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
    return "\n".join(lines)
