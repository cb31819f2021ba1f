"""--serve: the pure cores exactly (windowed figures, the health rule, metrics from reports), then
the HTTP server with real sockets: a real XPUB previewer, real HTTP clients (urllib, raw sockets).
The whole thing on a real watch run with a real browser is in test_serve_live.py."""

from __future__ import annotations

import json
import math
import re
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import cv2
import numpy as np
import pytest
from harness import wait_until
from prometheus_client.parser import text_string_to_metric_families

from streamseg.accounting import LATENCY_BOUNDS_S, Histogram
from streamseg.pipeline.watchdog import StageWatch
from streamseg.postprocess.preview import Previewer
from streamseg.postprocess.timeline import LiveTimeline
from streamseg.serve import metrics
from streamseg.serve.board import Board, Snapshot, stream_totals
from streamseg.serve.health import (
    CONNECTED,
    ENDED,
    LOST,
    RECONNECTING,
    STARTING,
    FrameClock,
    StreamHealth,
    problems,
    stream_state,
)
from streamseg.serve.http import BOUNDARY, ServeError, bind, parse_address
from streamseg.serve.views import PreviewHub
from streamseg.serve.window import (
    StreamTotals,
    Window,
    histogram_delta,
    quantile,
    window_lines,
)
from streamseg.wire.fields import ProtocolError
from streamseg.wire.messages import Stats
from streamseg.wire.previews import Preview, decode_preview, encode_preview

# --- histograms and windows ---------------------------------------------------------------------


def test_histogram_buckets_hold_values_up_to_their_bound():
    h = Histogram((1.0, 2.0))
    for v in (0.0, 1.0, 1.5, 2.0, 2.5):
        h.observe(v)
    assert h.to_json() == {"bounds": [1.0, 2.0], "counts": [2, 2, 1], "sum": 7.0}
    assert Histogram((1.0,)).to_json()["counts"] == [0, 0]  # empty
    with pytest.raises(ValueError):
        Histogram((2.0, 1.0))


def test_quantile_interpolates_inside_its_bucket():
    bounds = [0.1, 0.2, 0.4]
    assert quantile(bounds, [10, 10, 0, 0], 0.5) == pytest.approx(0.1)
    assert quantile(bounds, [10, 10, 0, 0], 0.75) == pytest.approx(0.15)
    assert quantile(bounds, [0, 0, 4, 0], 0.5) == pytest.approx(0.3)
    assert quantile(bounds, [4, 0, 0, 0], 0.5) == pytest.approx(0.05)  # first bucket from 0
    assert quantile(bounds, [0, 0, 0, 5], 0.5) == 0.4  # +Inf: the highest bound
    assert math.isnan(quantile(bounds, [0, 0, 0, 0], 0.5))  # empty


def test_histogram_delta_counts_from_zero_after_a_reset():
    old = {"bounds": [1.0], "counts": [5, 1], "sum": 6.0}
    new = {"bounds": [1.0], "counts": [7, 1], "sum": 8.0}
    assert histogram_delta(new, old) == ([1.0], [2, 0])
    assert histogram_delta(old, new) == ([1.0], [5, 1])  # went back: a restarted stage
    assert histogram_delta(new, None) == ([1.0], [7, 1])
    assert histogram_delta(None, old) == ([], [])


def _latency(values_s):
    h = Histogram(LATENCY_BOUNDS_S)
    for v in values_s:
        h.observe(v)
    return h.to_json()


def test_window_reports_the_last_span_not_the_run():
    w = Window(span_s=5.0)
    # start-up: 10 s without results, and 2-second latencies of the frames that waited
    w.add(0.0, {"a": StreamTotals(0, 0, 0, 0, _latency([]))})
    w.add(10.0, {"a": StreamTotals(250, 5, 200, 0, _latency([2.0] * 5))})
    # then 12.5 results a second, each 80 ms behind capture; 5 drops, a reconnect
    w.add(
        15.0,
        {"a": StreamTotals(375, 67, 205, 1, _latency([2.0] * 5 + [0.08] * 62))},
    )
    f = w.figures()["a"]
    assert (f.span_s, f.fps_in, f.fps_out, f.dropped, f.reconnects) == (5.0, 25.0, 12.4, 5, 1)
    assert f.latency_p50_ms == pytest.approx(70.0, abs=10)  # the bucket 60-80 ms
    assert f.latency_p99_ms == pytest.approx(80.0, abs=10)
    assert [s[0] for s in w.samples] == [10.0, 15.0]  # older samples are let go


def test_window_of_a_new_stream_and_of_one_sample():
    w = Window(span_s=5.0)
    w.add(0.0, {"a": StreamTotals(10)})
    only = w.figures()["a"]
    assert (only.span_s, only.fps_in) == (0.0, 0.0) and math.isnan(only.latency_p50_ms)
    w.add(2.0, {"a": StreamTotals(20), "b": StreamTotals(4, 2)})
    assert w.figures()["b"].fps_in == 2.0 and w.figures()["b"].fps_out == 1.0
    assert Window().figures() == {}
    with pytest.raises(ValueError):
        Window(0)


def test_window_lines_keep_the_stats_line_format():
    w = Window(span_s=5.0)
    w.add(0.0, {"a": StreamTotals(0, 0, 0, 0, _latency([]))})
    w.add(5.0, {"a": StreamTotals(125, 50, 3, 0, _latency([0.05] * 50))})
    lines = window_lines(w.figures(), {"a": "down, retrying in 2 s"})
    assert lines == [
        "a: in 25.0 fps, processed 10.0 fps, dropped 3, reconnects 0, latency p50 45 ms "
        "p99 50 ms (last 5 s) (down, retrying in 2 s)"
    ]
    # the same pattern tests/test_live.py reads the lines with
    assert re.match(
        r"^a: in [\d.]+ fps, processed [\d.]+ fps, dropped \d+, reconnects \d+", lines[0]
    )


# --- health ---------------------------------------------------------------------------------------


def test_stream_state_from_the_source_report():
    assert stream_state(None) == STARTING
    assert stream_state({"state": "up", "in": 0}) == STARTING
    assert stream_state({"state": "up", "in": 3}) == CONNECTED
    assert stream_state({"state": "connecting", "in": 3}) == RECONNECTING
    assert stream_state({"state": "down, retrying in 2 s"}) == RECONNECTING
    assert stream_state({"state": "source restarting", "in": 9}) == RECONNECTING
    assert stream_state({"state": "gone", "lost": True}) == LOST
    assert stream_state({"in": 50, "ended": True}) == ENDED  # a file that finished
    assert stream_state({"in": 5, "ended": True, "lost": True}) == LOST


def test_frame_clock_notes_when_the_count_last_grew():
    c = FrameClock()
    assert c.age("a", 5.0) is None
    c.update("a", 10, 1.0)
    c.update("a", 10, 3.0)  # no new frame
    assert c.age("a", 4.0) == 3.0
    c.update("a", 11, 4.0)
    assert c.age("a", 4.5) == 0.5


def test_health_rule():
    alive = {"inference": None, "postprocess": None, "source[a]": None}
    up = {"a": StreamHealth(CONNECTED, 0.4)}
    assert problems(alive, up, stall_s=2.0) == []
    assert problems({**alive, "inference": "starting"}, up, stall_s=2.0) == ["inference: starting"]
    assert problems(alive, {"a": StreamHealth(CONNECTED, 3.6)}, stall_s=2.0) == [
        "a: no new frame for 3.6 s (window 3.5 s)"
    ]
    assert problems(alive, {"a": StreamHealth(CONNECTED, 3.4)}, stall_s=2.0) == []
    assert problems(alive, {"a": StreamHealth(STARTING, None)}, stall_s=2.0) == ["a: no frame yet"]
    down = {"a": StreamHealth(RECONNECTING, 0.1, "down, retrying in 1 s")}
    assert problems(alive, down, stall_s=2.0) == ["a: reconnecting (down, retrying in 1 s)"]
    assert problems(alive, {"a": StreamHealth(LOST, 9.0, "gone")}, stall_s=2.0) == [
        "a: lost (gone)"
    ]
    assert problems(alive, {"a": StreamHealth(ENDED, 60.0)}, stall_s=2.0) == []
    assert problems({}, {}, stall_s=1.0) == []  # nothing to watch: nothing wrong


def test_stage_watch_says_what_is_wrong_with_a_stage():
    w = StageWatch(live=True, hang_s=1.0)
    w.started("inference", 0.0)
    assert w.problem("inference") == "starting"
    w.seen("inference", 0.5, ready=True)
    assert w.problem("inference") is None
    w.check(2.0)  # silent: hung, killed
    assert w.problem("inference").startswith("hung")
    w.exited("inference", -9, 2.1)
    assert w.problem("inference").endswith(", restarting")
    assert w.problem("nothing") == "not started"
    w.started("source[a]", 0.0)
    w.exited("source[a]", 0, 1.0)
    assert w.problem("source[a]") is None  # done


# --- metrics --------------------------------------------------------------------------------------


def _reports():
    post_hist = {
        "latency_s": {"bounds": [0.1, 0.2], "counts": [3, 1, 0], "sum": 0.35},
        "batch_size": {"bounds": [1, 2], "counts": [2, 2, 0], "sum": 6},
        "inference_s": {"bounds": [0.05], "counts": [4, 0], "sum": 0.12},
    }
    return {
        "source[a]": Stats(
            "source", {"a": {"in": 10, "out": 9, "dropped": {"queue_full": 1}, "reconnects": 2}}
        ),
        "inference": Stats(
            "inference", {"a": {"in": 9, "out": 5, "dropped": {"stale": 3}}}, busy_s=1.5
        ),
        "postprocess": Stats(
            "postprocess", {"a": {"in": 5, "out": 4, "dropped": {}, "hist": post_hist}}
        ),
    }


def _board_snapshot(reports=None, now=10.0) -> Snapshot:
    reports = reports or _reports()
    board = Board(live=True, stall_s=2.0)
    sources = {"a": {**reports["source[a]"].counters["a"], "state": "up"}}
    stages = {"inference": None, "postprocess": None, "source[a]": None}
    return board.update(
        now, stages=stages, reports=reports, sources=sources, restarts={"inference": 1}
    )


def _parse(text: str) -> dict[tuple[str, tuple], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_stream_totals_add_drops_of_every_stage():
    t = stream_totals({"a": _reports()["source[a]"].counters["a"]}, _reports())["a"]
    assert (t.frames_in, t.frames_out, t.dropped, t.reconnects) == (10, 4, 4, 2)
    assert t.latency["counts"] == [3, 1, 0]


def test_metrics_are_the_reports_in_prometheus_text():
    body, ctype = metrics.render(_board_snapshot())
    assert ctype.startswith("text/plain")
    m = _parse(body.decode())
    lab = lambda **kw: tuple(sorted(kw.items()))  # noqa: E731
    src = {"stage": "source", "process": "source[a]", "stream": "a"}
    inf = {"stage": "inference", "process": "inference", "stream": "a"}
    post = {"stage": "postprocess", "process": "postprocess", "stream": "a"}
    assert m["streamseg_frames_in_total", lab(**src)] == 10
    assert m["streamseg_frames_out_total", lab(**post)] == 4
    assert m["streamseg_frames_dropped_total", lab(**src, reason="queue_full")] == 1
    assert m["streamseg_frames_dropped_total", lab(**inf, reason="stale")] == 3
    assert m["streamseg_queue_depth", lab(**inf)] == 1  # 9 in, 5 out, 3 dropped
    assert m["streamseg_queue_depth", lab(**post)] == 1
    assert ("streamseg_queue_depth", lab(**src)) not in m  # a source holds no queue
    assert m["streamseg_reconnects_total", lab(stream="a")] == 2
    assert m["streamseg_stage_restarts_total", lab(process="inference")] == 1
    assert (
        m["streamseg_stage_busy_seconds_total", lab(stage="inference", process="inference")] == 1.5
    )
    assert m["streamseg_stream_connected", lab(stream="a")] == 1
    assert m["streamseg_stage_up", lab(process="postprocess")] == 1
    assert m["streamseg_healthy", ()] == 1
    assert m["streamseg_latency_seconds_bucket", lab(stream="a", le="0.1")] == 3
    assert m["streamseg_latency_seconds_bucket", lab(stream="a", le="0.2")] == 4
    assert m["streamseg_latency_seconds_bucket", lab(stream="a", le="+Inf")] == 4
    assert m["streamseg_latency_seconds_count", lab(stream="a")] == 4
    assert m["streamseg_latency_seconds_sum", lab(stream="a")] == pytest.approx(0.35)
    assert m["streamseg_batch_size_bucket", lab(stream="a", le="1.0")] == 2
    assert m["streamseg_inference_seconds_count", lab(stream="a")] == 4


def test_metrics_tell_the_dispatcher_and_its_workers_apart():
    """With workers, `sum by (stage)` counts each frame once per stage: the dispatcher is the
    inference stage, the worker that ran a frame counts it as inference_worker."""
    reports = _reports()
    reports["inference[0]"] = Stats("inference", {"a": {"in": 3, "out": 3}}, busy_s=1.0)
    reports["inference[1]"] = Stats("inference", {"a": {"in": 2, "out": 2}}, busy_s=0.5)
    m = _parse(metrics.render(_board_snapshot(reports))[0].decode())
    by_stage: dict[str, float] = {}
    for (name, labels), v in m.items():
        if name == "streamseg_frames_out_total":
            stage = dict(labels)["stage"]
            by_stage[stage] = by_stage.get(stage, 0) + v
    assert by_stage == {"source": 9, "inference": 5, "inference_worker": 5, "postprocess": 4}
    lab = {"stage": "inference_worker", "process": "inference[1]"}
    assert m["streamseg_stage_busy_seconds_total", tuple(sorted(lab.items()))] == 0.5


def test_metrics_skip_what_is_malformed_and_cover_the_empty_run():
    reports = _reports()
    bad = {"latency_s": {"bounds": [0.2, 0.1], "counts": [1, 1, 1], "sum": 1.0}, "x": 3}
    reports["postprocess"] = Stats("postprocess", {"a": {"in": "x", "out": 1, "hist": bad}})
    m = _parse(metrics.render(_board_snapshot(reports))[0].decode())
    assert not any(k[0].startswith("streamseg_latency_seconds") for k in m)
    empty = _parse(metrics.render(Snapshot(t=0.0))[0].decode())
    assert empty == {("streamseg_healthy", ()): 0.0}  # starting: not healthy yet


# --- previews on the wire -------------------------------------------------------------------------


def test_preview_round_trip_and_refusals():
    p = Preview("cam 1", 7, 1700000000.5, b"\xff\xd8jpegdata")
    parts = encode_preview(p, auth="tok")
    assert parts[0] == b"cam 1\0"
    assert decode_preview(parts) == (p, "tok")
    assert decode_preview(encode_preview(p))[1] == ""
    with pytest.raises(ProtocolError):
        decode_preview([b"other\0", *parts[1:]])  # a topic of another stream
    with pytest.raises(ProtocolError):
        decode_preview([*parts[:2], b"GIF89a"])  # not a JPEG
    with pytest.raises(ProtocolError):
        decode_preview(parts[:2])


def test_live_timeline_keeps_pts_steps_and_the_time_an_outage_took():
    t = LiveTimeline(resync_s=0.5)
    # capture jitters around the pts' even steps: the video keeps the even steps
    assert t(0.0, 1000.00) == 1000.0
    assert t(0.04, 1000.07) == pytest.approx(1000.04)
    assert t(0.08, 1000.09) == pytest.approx(1000.08)
    # a 30-second outage: the source joins the next connection one frame later in pts
    assert t(0.12, 1030.5) == pytest.approx(1030.5)
    assert t(0.16, 1030.55) == pytest.approx(1030.54)


# --- the HTTP server with real sockets ------------------------------------------------------------


def _jpeg(color) -> np.ndarray:
    img = np.zeros((48, 64, 3), np.uint8)
    img[:] = color
    return img


class FakeRun:
    """A real Previewer (the postprocess side) and hub and server (the supervisor side) on real
    sockets, without stage processes: frames are offered by the test, as postprocess would."""

    def __init__(self, tmp_path) -> None:
        endpoint = f"ipc://{tmp_path}/preview"
        self.previewer = Previewer(endpoint, auth="post-token")
        self.hub = PreviewHub(endpoint, expect_auth="post-token", poll_ms=20)
        self.board = Board(live=True, stall_s=2.0)
        self.board.update(
            1.0,
            stages={"postprocess": None},
            reports={"postprocess": Stats("postprocess", {"a": {"in": 1, "out": 1}})},
            sources={"a": {"in": 1, "state": "up"}, "b": {"in": 1, "state": "up"}},
            restarts={},
        )
        self.web = bind("127.0.0.1:0")
        self.port = self.web.server.server_address[1]
        self.hub.start()
        self.web.start(self.board, self.hub)
        self.stop = threading.Event()
        self.offered = {"a": 0, "b": 0}
        self.rounds = 0  # turns of the loop: chances it had to offer a frame
        self.thread = threading.Thread(target=self._offer, daemon=True)
        self.thread.start()

    def _offer(self) -> None:  # postprocess's loop: 50 frames a second per stream
        frame = 0
        while not self.stop.is_set():
            self.previewer.poll()
            for stream, color in (("a", (255, 0, 0)), ("b", (0, 0, 255))):
                if self.previewer.wanted(stream):
                    self.previewer.offer(stream, frame, time.time(), _jpeg(color))
                    self.offered[stream] += 1
            frame += 1
            self.rounds += 1
            time.sleep(0.02)  # (its pace, not a wait for anything)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=2)
        self.web.close()
        self.hub.close()
        self.previewer.sock.close(0)


@pytest.fixture
def fake_run(tmp_path):
    run = FakeRun(tmp_path)
    yield run
    run.close()


def _read_parts(resp, n: int) -> list[tuple[dict, bytes]]:
    """n parts of an MJPEG (multipart/x-mixed-replace) response: (headers, jpeg)."""
    parts = []
    while len(parts) < n:
        line = resp.readline()
        if not line:
            break
        if line.strip() != f"--{BOUNDARY}".encode():
            continue
        headers = {}
        while (line := resp.readline().strip()) != b"":
            k, _, v = line.decode().partition(":")
            headers[k.strip().lower()] = v.strip()
        parts.append((headers, resp.read(int(headers["content-length"]))))
    return parts


def test_parse_address_means_loopback_unless_told():
    assert parse_address("8080") == ("127.0.0.1", 8080)
    assert parse_address(":8080") == ("127.0.0.1", 8080)
    assert parse_address("0.0.0.0:9000") == ("0.0.0.0", 9000)
    assert parse_address("[::1]:9000") == ("::1", 9000)
    for bad in ("", "http", "1.2.3.4:", "70000"):
        with pytest.raises(ServeError):
            parse_address(bad)


def test_a_port_in_use_is_one_line():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        with pytest.raises(ServeError) as e:
            bind(f"127.0.0.1:{port}")
    assert f"127.0.0.1:{port}" in str(e.value) and "\n" not in str(e.value)


def test_a_port_in_use_stops_the_command_before_anything_starts(clip, tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        cmd = [sys.executable, "-m", "streamseg.cli", "annotate", str(clip[0])]
        cmd += ["--results", str(tmp_path / "r.jsonl"), "--serve", str(port)]
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    assert out.stderr.splitlines() == [
        f"streamseg: error: --serve {port}: cannot listen on 127.0.0.1:{port} (Address already "
        "in use); pick another port or stop what uses it"
    ]
    assert not (tmp_path / "r.jsonl").exists()  # no stage started


def test_endpoints_answer(fake_run):
    with urllib.request.urlopen(fake_run.url("/"), timeout=5) as r:
        assert r.status == 200 and b"<title>streamseg</title>" in r.read()
    with urllib.request.urlopen(fake_run.url("/api/state"), timeout=5) as r:
        state = json.load(r)
    assert set(state["streams"]) == {"a", "b"} and state["streams"]["a"]["state"] == CONNECTED
    with urllib.request.urlopen(fake_run.url("/healthz"), timeout=5) as r:
        assert (r.status, r.read()) == (200, b"ok\n")
    with urllib.request.urlopen(fake_run.url("/metrics"), timeout=5) as r:
        assert "streamseg_healthy" in r.read().decode()
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(fake_run.url("/view/nosuch"), timeout=5)
    assert e.value.code == 404
    # unhealthy: 503 and why
    fake_run.board.update(
        9.0, stages={"postprocess": "starting"}, reports={}, sources={}, restarts={}
    )
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(fake_run.url("/healthz"), timeout=5)
    assert e.value.code == 503 and e.value.read() == b"postprocess: starting\n"


def _rounds(run: FakeRun, n: int) -> None:
    """Wait until postprocess's loop has turned `n` more times (each a chance to offer)."""
    start = run.rounds
    wait_until(lambda: run.rounds >= start + n, 10, f"{n} turns of the offering loop")


def test_frames_are_made_only_while_watched_and_each_viewer_gets_its_stream(fake_run):
    _rounds(fake_run, 15)
    assert fake_run.offered == {"a": 0, "b": 0}  # nobody watches: nothing encoded
    with urllib.request.urlopen(fake_run.url("/view/a.jpg"), timeout=10) as r:
        img = cv2.imdecode(np.frombuffer(r.read(), np.uint8), cv2.IMREAD_COLOR)
    assert img.shape == (48, 64, 3) and img[..., 2].mean() > 200  # red (BGR)
    viewers = [urllib.request.urlopen(fake_run.url(f"/view/{s}"), timeout=10) for s in "aab"]
    try:
        for resp, stream in zip(viewers, "aab", strict=True):
            assert resp.headers["Content-Type"].startswith("multipart/x-mixed-replace")
            parts = _read_parts(resp, 3)
            frames = [int(h["x-frame"]) for h, _ in parts]
            assert len(parts) == 3 and frames == sorted(set(frames))
            img = cv2.imdecode(np.frombuffer(parts[-1][1], np.uint8), cv2.IMREAD_COLOR)
            channel = 2 if stream == "a" else 0
            assert img[..., channel].mean() > 200, stream
    finally:
        for resp in viewers:
            resp.close()  # viewers leave mid-stream
    run = fake_run
    wait_until(lambda: not run.hub.viewers and not run.previewer.watched, 5, "viewers to be gone")
    before = dict(fake_run.offered)
    _rounds(fake_run, 15)
    assert fake_run.offered == before  # encoding stopped with the last viewer


def test_a_viewer_that_reads_nothing_slows_no_one(fake_run):
    stalled = socket.create_connection(("127.0.0.1", fake_run.port), timeout=5)
    stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    stalled.sendall(b"GET /view/a HTTP/1.1\r\nHost: x\r\n\r\n")  # and never reads
    try:
        # its buffers fill up: 50 frames offered for it (a second of the loop's pace)
        wait_until(lambda: fake_run.offered["a"] >= 50, 10, "50 frames offered to it")
        start = fake_run.offered["a"]
        with urllib.request.urlopen(fake_run.url("/view/a"), timeout=10) as resp:
            t0 = time.monotonic()
            parts = _read_parts(resp, 20)
            took = time.monotonic() - t0
        assert len(parts) == 20 and took < 5.0
        # the producer never waited: the first part may be the frame that was waiting, and
        # the last may reach the viewer before the producer's thread has counted it
        assert fake_run.offered["a"] - start >= 18
    finally:
        stalled.close()


def test_viewers_beyond_the_limit_get_503_and_a_freed_place_is_taken(fake_run, monkeypatch):
    from streamseg.serve import http

    monkeypatch.setattr(http, "MAX_VIEWERS", 2)
    first = [urllib.request.urlopen(fake_run.url("/view/a"), timeout=10) for _ in range(2)]
    try:
        for resp in first:
            assert len(_read_parts(resp, 1)) == 1
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(fake_run.url("/view/b"), timeout=10)
        assert e.value.code == 503 and e.value.read() == b"too many viewers\n"
    finally:
        first[0].close()
    deadline = time.monotonic() + 5
    while True:  # the place frees once the server notices the viewer left (its next frame)
        try:
            with urllib.request.urlopen(fake_run.url("/view/b"), timeout=10) as resp:
                assert len(_read_parts(resp, 1)) == 1
            break
        except urllib.error.HTTPError:
            assert time.monotonic() < deadline
            time.sleep(0.1)
    first[1].close()


def test_the_supervisor_and_its_server_import_neither_torch_nor_pyav():
    code = (
        "import sys, streamseg.pipeline.supervisor, streamseg.serve.http; "
        "print(sorted({'torch', 'av', 'cv2'} & set(sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
