"""What serving costs (docs/serve.md): pipeline fps without --serve, with --serve and nobody
watching, and with one live viewer; and how far the live view runs behind the results stream.

    python tests/serve_measure.py [--config shapes] [--seconds 20] [--rounds 3]

One looping RTSP camera (tests/rtsp_server.py, a 640x480 25 fps `streamseg synth` clip) is
watched by `streamseg watch`, first without --serve, then with it, alternating phases of
`--seconds` with no viewer and with one MJPEG viewer (a plain HTTP client reading every part).
fps is results received per second by a ZeroMQ subscriber; the view's delay is, per frame,
when its JPEG arrived at the viewer minus when its result arrived at the subscriber.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
from prometheus_client.parser import text_string_to_metric_families

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from harness import Collector  # noqa: E402
from rtspfixture import RtspServer, free_port  # noqa: E402

from streamseg.serve.http import BOUNDARY  # noqa: E402
from streamseg.tools import synth  # noqa: E402


def watch(
    url: str, config: str, publish: str, serve: int | None, log: Path, report: Path
) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "streamseg.cli", "watch", "-q", f"cam={url}"]
    cmd += ["--config", config, "--publish", publish, "--report", str(report)]
    cmd += ["--serve", str(serve)] if serve else []
    return subprocess.Popen(cmd, stderr=open(log, "w"), start_new_session=True)


def stop(proc: subprocess.Popen) -> None:
    os.killpg(proc.pid, signal.SIGINT)
    proc.wait(timeout=60)


def postprocess_busy(port: int) -> tuple[float, float]:
    """(seconds of postprocess work, frames it finished) so far, from /metrics."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read()
    busy = done = 0.0
    for family in text_string_to_metric_families(text.decode()):
        for s in family.samples:
            if s.labels.get("process") != "postprocess":
                continue
            if s.name == "streamseg_stage_busy_seconds_total":
                busy = s.value
            elif s.name == "streamseg_frames_out_total":
                done = s.value
    return busy, done


def ms_per_frame(a: tuple[float, float], b: tuple[float, float]) -> float:
    return 1000 * (b[0] - a[0]) / max(1.0, b[1] - a[1])


def results_in(collector: Collector, t0: float, t1: float) -> int:
    with collector.lock:
        return sum(1 for t, _ in collector.messages if t0 <= t < t1)


class Viewer:
    """Reads an MJPEG stream; notes when each frame's JPEG arrived."""

    def __init__(self, url: str) -> None:
        self.resp = urllib.request.urlopen(url, timeout=30)
        self.arrived: dict[int, float] = {}
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            while True:
                line = self.resp.readline()
                if not line:
                    return
                if line.strip() != f"--{BOUNDARY}".encode():
                    continue
                headers = {}
                while (line := self.resp.readline().strip()) != b"":
                    k, _, v = line.decode().partition(":")
                    headers[k.strip().lower()] = v.strip()
                self.resp.read(int(headers["content-length"]))
                self.arrived[int(headers["x-frame"])] = time.time()
        except (OSError, ValueError, KeyError):  # closed by close(), maybe mid-part
            return

    def close(self) -> None:
        self.resp.close()


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", default="shapes")
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--warmup", type=float, default=30.0)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="serve-measure-"))
    clip = tmp / "clip.mp4"
    synth.write_clip(clip, tmp / "clip.json", seed=2024, frames=250, size=(640, 480), fps=25)
    with RtspServer(clip, loop=True) as server:
        publish = f"tcp://127.0.0.1:{free_port()}"
        c = Collector(publish)
        p = watch(server.url, args.config, publish, None, tmp / "plain.log", tmp / "plain.json")
        time.sleep(args.warmup)
        t0 = time.time()
        time.sleep(args.seconds * args.rounds)
        plain = results_in(c, t0, time.time()) / (time.time() - t0)
        stop(p)
        c.close()
        r = json.loads((tmp / "plain.json").read_text())
        plain_ms = 1000 * r["busy_s"]["postprocess"] / max(1, r["postprocess"]["cam"]["out"])

        publish = f"tcp://127.0.0.1:{free_port()}"
        c = Collector(publish)
        port = free_port()
        p = watch(server.url, args.config, publish, port, tmp / "served.log", tmp / "s.json")
        time.sleep(args.warmup)
        idle, viewed, delays, idle_ms, viewed_ms = [], [], [], [], []
        for _ in range(args.rounds):
            t0, b0 = time.time(), postprocess_busy(port)
            time.sleep(args.seconds)
            idle.append(results_in(c, t0, time.time()) / (time.time() - t0))
            b1 = postprocess_busy(port)
            idle_ms.append(ms_per_frame(b0, b1))
            v = Viewer(f"http://127.0.0.1:{port}/view/cam")
            t0 = time.time()
            time.sleep(args.seconds)
            viewed.append(results_in(c, t0, time.time()) / (time.time() - t0))
            v.close()
            viewed_ms.append(ms_per_frame(b1, postprocess_busy(port)))
            published = {h["frame"]: t for t, h in _headers(c)}
            delays += [v.arrived[f] - published[f] for f in v.arrived if f in published]
        stop(p)
        c.close()
    d = np.array(delays) * 1000

    def rates(xs: list[float]) -> str:
        return f"{np.mean(xs):.2f} ({', '.join(f'{x:.2f}' for x in xs)})"

    print(f"fps without --serve:          {plain:.2f}; postprocess {plain_ms:.1f} ms/frame")
    print(f"fps with --serve, no viewer:  {rates(idle)}; postprocess {rates(idle_ms)} ms/frame")
    print(f"fps with --serve, one viewer: {rates(viewed)}; postprocess {rates(viewed_ms)} ms/frame")
    print(
        f"view behind results: median {np.median(d):.1f} ms, p95 {np.percentile(d, 95):.1f} ms, "
        f"max {d.max():.1f} ms over {len(d)} frames"
    )
    return 0


def _headers(c: Collector):
    with c.lock:
        msgs = list(c.messages)
    return [(t, json.loads(parts[1])) for t, parts in msgs]


if __name__ == "__main__":
    sys.exit(main())
