"""Runs a pipeline: starts every stage as its own process, watches them, reports, cleans up.

The supervisor never touches frames and imports no stage code (no PyAV, no torch): it binds the
stats endpoint, where stages report their counters, draws the progress bar and periodic stats
lines from them, and at the end hands the counters to `report` for the exit code and summary.
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
from dataclasses import dataclass
from typing import Any

from streamseg.config import ModelConfig, to_dict
from streamseg.pipeline.progress import Progress
from streamseg.pipeline.report import RunReport, exit_code, stream_lines
from streamseg.pipeline.spec import Pipeline
from streamseg.source.spec import SourceSpec
from streamseg.wire import transport
from streamseg.wire.protocol import Stats


@dataclass
class _Proc:
    name: str
    popen: subprocess.Popen
    code: int | None = None


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
    codes = {p.name: p.code for p in procs}
    report.exit_code = exit_code(codes, report, live=live, interrupted=interrupted)
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
