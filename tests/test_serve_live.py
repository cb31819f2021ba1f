"""`streamseg watch --serve` for real: a GStreamer RTSP camera, the stage processes, a headless
Chromium on the page, urllib on /metrics and /healthz, PyAV on the recorded video.

One watch run serves every test here, in order: the browser looks at the page, the camera
freezes and thaws (/healthz), then the camera goes away, the run is stopped, and what /metrics
said is checked against the run's --report, and the video's length against the clock.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import av
import cv2
import numpy as np
import pytest
from harness import Collector, Run
from prometheus_client.parser import text_string_to_metric_families
from rtspfixture import RtspServer, free_port

from streamseg.postprocess.render import track_color

# the one run serving every test starts within 180 s; chromium has 90 s
pytestmark = [pytest.mark.slow, pytest.mark.rtsp, pytest.mark.timeout(600)]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
STALL_S = 2.0


def get(url: str, timeout: float = 10.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()
    except urllib.error.URLError:  # not listening yet (the command is starting)
        return 0, b""


class ServedWatch(Run):
    """`streamseg watch cam=RTSP --serve PORT -o ... --report ...` on a live test pattern (a
    white ball on black: any colour in the live view was drawn by streamseg)."""

    def __init__(self, tmp: Path, config: Path) -> None:
        self.tmp = tmp
        self.server = RtspServer(None, fps=25, size=(320, 240)).start()
        self.port = free_port()
        self.endpoint = f"tcp://127.0.0.1:{free_port()}"
        self.video, self.report = tmp / "watch.mp4", tmp / "report.json"
        self.collector = Collector(self.endpoint)
        super().__init__(
            tmp, "watch", "-q", f"cam={self.server.url}", "--config", config,
            "--serve", f"127.0.0.1:{self.port}", "--publish", self.endpoint,
            "-o", self.video, "--report", self.report,
            "--stall-s", str(STALL_S), "--retry-max-s", "1",
        )  # fmt: skip
        self.returncode: int | None = None

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def health(self) -> tuple[int, str]:
        code, body = get(self.url("/healthz"))
        return code, body.decode()

    def stop(self) -> str:
        """Ctrl-C; then the camera goes too. Returns stderr."""
        if self.returncode is None:
            try:
                self.interrupt(timeout=60)  # (what is left is killed if it does not end)
            finally:
                self.returncode = self.proc.returncode
                self.collector.close()
                self.server.stop()
        return self.stderr()


@pytest.fixture(scope="module")
def served(tmp_path_factory, random_config):
    w = ServedWatch(tmp_path_factory.mktemp("served"), random_config)
    try:
        w.wait_for(lambda: w.health()[0] == 200, 180, "/healthz to say 200")
        yield w
    finally:
        w.stop()


def _annotation_pixels(rgb: np.ndarray) -> int:
    """Pixels of the colours streamseg draws tracks in (full, and blended into black at the
    renderer's alpha 0.45), within a JPEG's and a browser's rounding."""
    colors = np.array([track_color(i) for i in range(1, 400)], np.float32)
    colors = np.concatenate([colors, colors * 0.45])
    px = rgb.reshape(-1, 3).astype(np.float32)
    saturated = px[(px.max(1) - px.min(1)) > 40]
    if not len(saturated):
        return 0
    dist = np.abs(saturated[:, None, :] - colors[None, :, :]).max(2).min(1)
    return int((dist < 30).sum())


def test_the_page_shows_the_live_annotated_view(served, tmp_path):
    if CHROMIUM is None:
        pytest.skip("chromium missing: apt-get install chromium (in .ci/apt-packages.txt)")
    code, page = get(served.url("/"))
    assert code == 200 and b"/api/state" in page
    shot = tmp_path / "page.png"
    cmd = [CHROMIUM, "--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars"]
    cmd += [f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1000,700"]
    # virtual time runs the page's script for 8 s (live views start after load) then shoots
    cmd += ["--virtual-time-budget=8000", f"--screenshot={shot}", served.url("/")]
    subprocess.run(cmd, capture_output=True, timeout=90, check=False)
    image = cv2.imread(str(shot))
    assert image is not None, "chromium wrote no screenshot"
    rgb = image[..., ::-1]
    # the live view: the card's image, under its title (the page lays it out at 26..486 px)
    view = rgb[90:400, 30:480]
    assert view.std() > 10, "the live view is blank"
    found = _annotation_pixels(view)
    page_only = _annotation_pixels(rgb[:, 520:])  # right of the card: page background
    assert found > 200 and page_only == 0, (found, page_only)


def test_healthz_turns_503_when_the_camera_freezes_and_200_after(served):
    code, body = served.health()
    assert (code, body) == (200, "ok\n")
    served.server.freeze()
    frozen = time.monotonic()
    try:
        code, body = served.wait_for(
            lambda: (h := served.health())[0] == 503 and h, 30, "503 while frozen"
        )
        took = time.monotonic() - frozen
    finally:
        served.server.thaw()
    assert body.startswith("cam: "), body
    assert took < STALL_S + 6.0, took  # the stall window and a report's delay
    served.wait_for(lambda: served.health()[0] == 200, 60, "200 after the thaw")
    state = json.loads(get(served.url("/api/state"))[1])
    assert state["healthy"] and state["streams"]["cam"]["state"] == "connected"
    assert state["streams"]["cam"]["reconnects"] >= 1


def _counters(text: str) -> dict[tuple, float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_metrics_agree_with_the_final_accounting_and_the_video_keeps_true_time(served):
    served.server.stop()  # the camera goes away: nothing new enters, the pipeline drains
    served.wait_for(lambda: "reconnecting" in served.health()[1], 30, "the camera to be missed")
    last, since = None, time.monotonic()
    while time.monotonic() - since < 3.0:  # counters unchanged for 3 s: drained
        metrics = _counters(get(served.url("/metrics"))[1].decode())
        now = {k: v for k, v in metrics.items() if k[0].startswith("streamseg_frames_")}
        if now != last:
            last, since = now, time.monotonic()
        time.sleep(0.3)
    stderr = served.stop()
    assert served.returncode == 0, stderr
    report = json.loads(served.report.read_text())

    def m(name, stage, **labels):
        process = {"source": "source[cam]"}.get(stage, stage)
        key = {"stage": stage, "process": process, "stream": "cam", **labels}
        return metrics.get((name, tuple(sorted(key.items()))), 0.0)

    src, inf, post = (
        report["sources"]["cam"],
        report["inference"]["cam"],
        report["postprocess"]["cam"],
    )
    assert m("streamseg_frames_in_total", "source") == src["in"] > 0
    assert m("streamseg_frames_in_total", "inference") == inf["in"]
    assert m("streamseg_frames_out_total", "inference") == inf["out"]
    assert m("streamseg_frames_out_total", "postprocess") == post["out"] > 0
    for stage, rec in (("source", src), ("inference", inf), ("postprocess", post)):
        for reason, n in rec["dropped"].items():
            assert m("streamseg_frames_dropped_total", stage, reason=reason) == n, reason
    key = ("streamseg_reconnects_total", (("stream", "cam"),))
    assert metrics[key] == src["reconnects"] >= 1
    key = ("streamseg_latency_seconds_count", (("stream", "cam"),))
    assert metrics[key] == post["out"]

    # the video: every frame with results, at the time it was captured, the freeze included
    headers = served.collector.headers("cam")
    span = headers[-1]["wall_time"] - headers[0]["wall_time"]
    with av.open(str(served.video)) as c:
        stream = c.streams.video[0]
        times = [float(f.pts * f.time_base) for f in c.decode(stream)]
    duration = times[-1] - times[0]
    assert len(times) == post["out"]
    print(f"video {duration:.2f} s for {span:.2f} s of capture, {len(times)} frames")
    assert abs(duration - span) < 0.75, (duration, span)  # (the timeline resyncs at 0.5 s)
    gaps = np.diff(times)
    assert gaps.max() > STALL_S, "the freeze takes its time in the video"
