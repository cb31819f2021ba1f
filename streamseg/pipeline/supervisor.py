"""Runs a pipeline file: starts every stage as its own process, watches them, reports, cleans up.

The runner is only a supervisor: frames never pass through it. It binds the stats endpoint,
where stages report their counters, draws the progress bar and periodic stats lines from them,
and at the end prints a summary and decides the exit code:
  0  every decoded frame has results (file runs), or a live run was stopped by the user
  2  bad input or settings (unreadable source, missing weights, bad config)
  3  frames were lost (truncated file, a stream that never came back)
  1  a stage failed unexpectedly
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from streamseg import shipped
from streamseg.accounting import total_dropped
from streamseg.config import ConfigError, ModelConfig, read_toml, to_dict
from streamseg.pipeline.progress import Progress
from streamseg.source.spec import SourceSpec
from streamseg.wire import transport
from streamseg.wire.protocol import Stats

ENDPOINTS = ("frames", "detections", "stats")


@dataclass(frozen=True)
class Pipeline:
    """A pipeline file (pipelines/*.toml): which stages, which endpoints, which policies."""

    endpoints: dict[str, str]
    live: bool = False
    realtime: bool = False
    depth: int = 1
    publish: str = ""
    hwdecode: str = "auto"
    path: str = ""


def load_pipeline(name_or_path: str | Path) -> Pipeline:
    """A pipeline file, given by path or by the name of a shipped one ("annotate", "watch")."""
    try:
        path = shipped.find("pipeline", name_or_path)
    except shipped.NotFound as e:
        raise ConfigError(str(e)) from None
    data = read_toml(path)
    endpoints = dict(data.get("endpoints", {}))
    missing = [k for k in ENDPOINTS if k not in endpoints]
    if missing:
        raise ConfigError(f"{path}: [endpoints] needs {', '.join(missing)}")
    src, inf, post = data.get("source", {}), data.get("inference", {}), data.get("postprocess", {})
    return Pipeline(
        endpoints=endpoints,
        live=bool(src.get("live", False)),
        realtime=bool(src.get("realtime", False)),
        depth=int(inf.get("depth", 1)),
        publish=str(post.get("publish", "")),
        hwdecode=str(src.get("hwdecode", "auto")),
        path=str(path),
    )


@dataclass
class _Proc:
    name: str
    popen: subprocess.Popen
    code: int | None = None


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

    def frames_done(self) -> int:
        return sum(c.get("out", 0) for c in self.postprocess.values())

    def processing_fps(self) -> float:
        """Frames with results per second once the stages were running."""
        running = self.elapsed_s - self.startup_s
        return self.frames_done() / running if running > 0 else 0.0


def _spawn(stage: str, kwargs: dict[str, Any], name: str) -> _Proc:
    cmd = [sys.executable, "-m", "streamseg.stage", stage, json.dumps(kwargs)]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return _Proc(name, subprocess.Popen(cmd, env=env))


def run(
    pipeline: Pipeline,
    sources: list[SourceSpec],
    model: ModelConfig,
    *,
    video: str | None = None,
    results: str | None = None,
    publish: str | None = None,
    live_options: dict[str, Any] | None = None,
    stats_every_s: float = 5.0,
    quiet: bool = False,
    verbose: bool = False,
) -> RunReport:
    """Run the pipeline over `sources` until every stream ended (or Ctrl-C); never leaves a
    stage process behind."""
    rundir = tempfile.mkdtemp(prefix="streamseg-")
    ep = {k: v.replace("{run}", rundir) for k, v in pipeline.endpoints.items()}
    publish = publish if publish is not None else (pipeline.publish or None)
    stats_sock = transport.pull(ep["stats"], bind=True, hwm=1000)
    receiver = transport.Receiver(stats_sock, name="runner")
    live = pipeline.live
    n = len(sources)
    common = {"stats_endpoint": ep["stats"], "verbose": verbose}
    procs = [
        _spawn(
            "postprocess",
            {
                **common,
                "detections_endpoint": ep["detections"],
                "streams": n,
                "mask_threshold": model.mask_threshold,
                "label_names": list(model.labels),
                "video": video,
                "results": results,
                "publish": publish,
                "n_outputs": n,
            },
            "postprocess",
        ),
        _spawn(
            "inference",
            {
                **common,
                "model": to_dict(model),
                "frames_endpoint": ep["frames"],
                "detections_endpoint": ep["detections"],
                "streams": n,
                "live": live,
                "depth": pipeline.depth,
                "forward_images": bool(video),
            },
            "inference",
        ),
    ]
    stats: dict[str, Stats] = {}
    source_stats: dict[str, dict[str, Any]] = {}
    t0 = time.monotonic()
    interrupted = False
    try:
        # Sources start once inference and postprocess are bound and loaded, so that no frame
        # (and no end-of-stream of a source that fails at once) waits on an absent peer.
        ready = _wait_ready(receiver, procs, stats)
    except KeyboardInterrupt:
        ready, interrupted = False, True
    t_ready = time.monotonic()
    if ready:
        for spec in sources:
            procs.append(
                _spawn(
                    "source",
                    {
                        **common,
                        "source": spec.url,
                        "stream": spec.stream,
                        "kind": spec.kind,
                        "frames_endpoint": ep["frames"],
                        "live": live,
                        "realtime": pipeline.realtime,
                        "hwdecode": pipeline.hwdecode,
                        **(live_options or {}),
                    },
                    f"source[{spec.stream}]",
                )
            )
    bar = Progress(None, unit="frames", enabled=None if not quiet else False)
    next_line = t0 + stats_every_s
    try:
        while ready and any(p.code is None for p in procs):
            _absorb(receiver.recv(200), stats, source_stats)
            for p in procs:
                if p.code is None:
                    p.code = p.popen.poll()
            if any(
                p.code not in (None, 0, 3) for p in procs if p.name in ("inference", "postprocess")
            ):
                break  # a core stage failed: nothing more can come through
            expected = [c.get("frames_expected") for c in source_stats.values()]
            if expected and all(expected) and len(expected) == n:
                bar.total = int(sum(expected))
            post = stats.get("postprocess")
            done = sum(c.get("out", 0) for c in post.counters.values()) if post else 0
            bar.update(done - bar.done)
            now = time.monotonic()
            if live and now >= next_line and not quiet:
                next_line = now + stats_every_s
                for line in stream_lines(source_stats, stats, now - t0):
                    bar.line(line)
    except KeyboardInterrupt:
        interrupted = True
    finally:
        _shutdown(procs, interrupted)
        # late final reports (stages send them on their way out)
        deadline = time.monotonic() + 0.5
        while time.monotonic() < deadline:
            _absorb(receiver.recv(50), stats, source_stats)
        bar.close()
        transport.close_all(abort=True)
        shutil.rmtree(rundir, ignore_errors=True)
    elapsed = time.monotonic() - t0
    report = RunReport(
        exit_code=0,
        elapsed_s=elapsed,
        startup_s=t_ready - t0,
        sources=source_stats,
        inference=stats["inference"].counters if "inference" in stats else {},
        postprocess=stats["postprocess"].counters if "postprocess" in stats else {},
        busy_s={
            **{k: v.busy_s for k, v in stats.items()},
            "source": sum(c.get("busy_s", 0.0) for c in source_stats.values()),
        },
        extra={k: v.extra for k, v in stats.items()},
    )
    report.exit_code = _exit_code(procs, report, live=live, interrupted=interrupted)
    if live:
        report.stream_lines = stream_lines(source_stats, stats, elapsed)
    return report


def _absorb(msg: object, stats: dict[str, Stats], source_stats: dict[str, dict[str, Any]]) -> None:
    """Keep the latest report of each stage (of each stream, for sources)."""
    if not isinstance(msg, Stats):
        return
    if msg.stage == "source":
        for stream, c in msg.counters.items():
            source_stats[stream] = {**c, **msg.extra, "busy_s": msg.busy_s}
    else:
        stats[msg.stage] = msg


def _wait_ready(receiver: transport.Receiver, procs: list[_Proc], stats: dict[str, Stats]) -> bool:
    """Wait until every started stage said it is ready; False when one exited first."""
    waiting = {p.name for p in procs}
    while waiting:
        msg = receiver.recv(200)
        if isinstance(msg, Stats):
            stats[msg.stage] = msg
            if msg.extra.get("ready"):
                waiting.discard(msg.stage)
        if any(p.popen.poll() is not None for p in procs):
            return False
    return True


def _shutdown(procs: list[_Proc], interrupted: bool) -> None:
    """Let stages finish (they close their files), then terminate, then kill: no orphans."""
    deadline = time.monotonic() + (10.0 if interrupted else 5.0)
    if not interrupted and any(p.popen.poll() not in (None, 0, 3) for p in procs):
        deadline = time.monotonic()  # a stage failed: the rest would wait forever
    for sig_deadline, sig in ((deadline, signal.SIGTERM), (deadline + 5.0, signal.SIGKILL)):
        while time.monotonic() < sig_deadline and any(p.popen.poll() is None for p in procs):
            time.sleep(0.05)
        for p in procs:
            if p.popen.poll() is None:
                p.popen.send_signal(sig)
    for p in procs:
        try:
            p.code = p.popen.wait(timeout=5.0)
        except subprocess.TimeoutExpired:
            p.popen.kill()
            p.code = p.popen.wait()


def _exit_code(procs: list[_Proc], report: RunReport, *, live: bool, interrupted: bool) -> int:
    codes = {p.name: p.code for p in procs}
    for name, code in codes.items():
        if code == 2:
            report.errors.append(f"{name} could not start (see its error above)")
    if any(c == 2 for c in codes.values()):
        return 2
    if interrupted:
        return 130 if not live else 0
    if any(c not in (0, 3) for c in codes.values()):
        bad = [f"{n} exited with {c}" for n, c in codes.items() if c not in (0, 3)]
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
    dropped = sum(total_dropped(c) for c in report.inference.values())
    dropped += sum(total_dropped(c) for c in report.sources.values())
    text = (
        f"done: {done}/{decoded} frames with results in {report.elapsed_s:.1f}s "
        f"({fps:.1f} fps); dropped {dropped}; busy: {busy or 'n/a'}"
    )
    return "\n".join([text, *report.stream_lines, *report.errors])
