"""Live sources: the pure reconnect/watchdog core, then real pipelines on real RTSP servers.

The integration tests run `streamseg watch` (or the runner in-process) with real stage processes,
a real GStreamer RTSP server on loopback serving H.264 made by streamseg synth, and a plain pyzmq
SUB socket standing in for any subscriber.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pycocotools.mask as mask_utils
import pytest
import zmq
from harness import Collector, Run, stream_line
from rtspfixture import RtspServer, free_port

from streamseg.client import Subscriber
from streamseg.config import load_config, replace
from streamseg.pipeline.spec import load_pipeline
from streamseg.pipeline.supervisor import run
from streamseg.source.link import (
    CONNECT,
    DROP,
    GIVE_UP,
    NONE,
    LinkWatch,
    PtsMapper,
    Sample,
    backoff_s,
)
from streamseg.source.spec import SourceSpec
from streamseg.tools import synth
from streamseg.wire.messages import PROTOCOL_VERSION

ROOT = Path(__file__).resolve().parents[1]
WATCH = ROOT / "pipelines" / "watch.toml"

# --- the pure core ----------------------------------------------------------------------------


def watch(**kw) -> LinkWatch:
    return LinkWatch(**{"stall_s": 2.0, "retry_min_s": 0.5, "retry_max_s": 4.0, **kw})


def test_backoff_doubles_and_is_capped():
    delays = [backoff_s(n, retry_min_s=0.5, retry_max_s=4.0) for n in range(1, 7)]
    assert delays == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]


def test_first_sample_connects_and_frames_keep_the_link_up():
    w = watch()
    assert w.update(Sample(0.0)).action == CONNECT
    assert w.update(Sample(0.3, "opened")).action == NONE
    for t in np.arange(0.4, 10.0, 0.04):
        v = w.update(Sample(float(t), "frame"))
        assert v.action == NONE and v.wait_s == 2.0
    assert w.describe(10.0) == "up"
    v = w.update(Sample(w.last_frame + 1.5))  # quiet, but not yet for stall_s
    assert v.action == NONE and v.wait_s == pytest.approx(0.5)
    assert (w.attempts, w.reconnects) == (1, 0)


def test_stalled_stream_is_dropped_after_stall_s_and_retried():
    w = watch()
    w.update(Sample(0.0))
    w.update(Sample(0.5, "frame"))
    assert w.update(Sample(2.4)).action == NONE
    v = w.update(Sample(2.5))
    assert v.action == DROP and v.reason.startswith("stalled") and v.wait_s == 0.5
    assert w.describe(2.5) == "down, retrying in 0 s"
    assert w.update(Sample(2.9)).action == NONE
    assert w.update(Sample(3.0)).action == CONNECT
    assert w.describe(3.0) == "connecting"


def test_connection_that_never_delivers_a_frame_is_dropped():
    w = watch()
    w.update(Sample(0.0))
    w.update(Sample(0.1, "opened"))  # e.g. a frozen server that still accepts connections
    assert w.update(Sample(1.9)).action == NONE
    v = w.update(Sample(2.0))
    assert v.action == DROP and "after connecting" in v.reason


def test_failed_attempts_back_off_exponentially_and_a_frame_resets_it():
    w = watch()
    t, waits = 0.0, []
    v = w.update(Sample(t))
    for _ in range(5):
        assert v.action == CONNECT
        v = w.update(Sample(t, "lost", "connection refused"))
        assert v.action == DROP and v.reason == "connection refused"
        waits.append(v.wait_s)
        t += v.wait_s
        v = w.update(Sample(t))
    assert waits == [0.5, 1.0, 2.0, 4.0, 4.0]
    w.update(Sample(t, "opened"))
    w.update(Sample(t + 0.1, "frame"))
    assert w.update(Sample(t + 0.2, "lost")).wait_s == 0.5  # back to the shortest wait
    assert w.attempts == 6 and w.reconnects == 0  # the first successful open is no reconnect


def test_reconnects_count_successful_reopens():
    w = watch()
    t = 0.0
    assert w.update(Sample(t)).action == CONNECT
    for _ in range(3):
        w.update(Sample(t + 0.1, "opened"))
        w.update(Sample(t + 0.2, "frame"))
        v = w.update(Sample(t + 1.0, "lost", "stream ended"))
        assert v.action == DROP
        t += 1.5
        assert w.update(Sample(t)).action == CONNECT
    assert w.reconnects == 2 and w.attempts == 4


def test_events_of_a_dropped_connection_are_ignored():
    w = watch()
    w.update(Sample(0.0))
    w.update(Sample(0.1, "frame"))
    w.update(Sample(5.0))  # stalled -> waiting
    assert w.update(Sample(5.1, "lost")).action == NONE  # the abandoned reader gave up late
    assert w.update(Sample(5.2, "frame")).action == NONE
    assert w.phase == "waiting"


def test_give_up_after_being_down_for_give_up_s():
    w = watch(give_up_s=5.0)
    t, v = 0.0, w.update(Sample(0.0))
    actions = []
    while v.action != GIVE_UP and t < 60:
        if v.action == CONNECT:
            v = w.update(Sample(t, "lost", "connection refused"))
        else:
            assert v.wait_s <= 5.0 - t + 1e-9  # never sleeps past the give-up deadline
            t += v.wait_s
            v = w.update(Sample(t))
        actions.append(v.action)
    assert v.action == GIVE_UP and t == pytest.approx(5.0)
    assert v.reason == "connection refused" and w.describe(t) == "gone"
    assert w.update(Sample(t + 1)).action == GIVE_UP


def test_give_up_counts_from_the_last_frame_and_never_without_give_up_s():
    w = watch(give_up_s=5.0)
    w.update(Sample(0.0))
    w.update(Sample(100.0, "frame"))  # slow first frame: still connecting, but...
    assert w.phase == "streaming"
    v = w.update(Sample(101.0, "lost"))
    assert v.action == DROP
    t = 101.0
    while v.action != GIVE_UP:
        t += max(v.wait_s, 0.01)
        v = w.update(Sample(t, "lost" if v.action == CONNECT else "tick"))
    assert t == pytest.approx(105.0, abs=0.02)
    forever = watch()
    forever.update(Sample(0.0))
    for t in range(1, 1000):
        assert forever.update(Sample(float(t), "lost")).action != GIVE_UP


def test_bad_settings_are_refused():
    with pytest.raises(ValueError):
        LinkWatch(stall_s=0)
    with pytest.raises(ValueError):
        LinkWatch(retry_min_s=5, retry_max_s=1)


def test_pts_stay_monotonic_across_reconnects():
    m = PtsMapper()
    m.new_connection(25.0)
    first = [m(p) for p in (None, 0.04, 0.08, 0.12)]  # the first frame after open has no pts
    assert first == pytest.approx([0.0, 0.04, 0.08, 0.12])
    m.new_connection(25.0)  # reconnect: the server starts its clock again
    second = [m(p) for p in (None, 0.04, 0.08)]
    assert second == pytest.approx([0.16, 0.20, 0.24])
    m.new_connection(25.0)
    third = [m(p) for p in (500.0, 500.04)]  # a camera whose clock kept running
    assert third == pytest.approx([0.28, 0.32])
    before = m.last
    assert m(400.0) > before  # a clock jumping back never makes pts go back
    out = first + second + third
    assert all(b > a for a, b in zip(out, out[1:], strict=False))


def test_core_imports_neither_av_nor_zmq():
    code = (
        "import sys, streamseg.source.link; "
        "print(sorted({'av', 'zmq', 'torch'} & set(sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# --- real pipelines -----------------------------------------------------------------------------


def _clip(path: Path, *, fps: int, frames: int, size: tuple[int, int]) -> Path:
    """An H.264 clip; libx264 starts it with a keyframe, so a one-second clip served in a loop
    has a keyframe every second (what a client that (re)connects waits for)."""
    synth.write_clip(path, path.with_suffix(".json"), seed=3, frames=frames, size=size, fps=fps)
    return path


class Watch(Run):
    """`streamseg watch` as a user runs it (harness.Run), and a collector on its --publish."""

    def __init__(self, tmp: Path, sources: list[str], config: Path, *extra: str) -> None:
        self.endpoint = f"tcp://127.0.0.1:{free_port()}"
        self.collector = Collector(self.endpoint)
        args = ["watch", "-q", *sources, "--config", str(config), "--publish", self.endpoint]
        super().__init__(tmp, *args, *extra)
        self.returncode: int | None = None

    def stop(self) -> str:
        """Ctrl-C, as a user stops a live run; returns stderr."""
        if self.returncode is None:
            try:
                self.interrupt(timeout=60)  # (what is left is killed if it does not end)
            finally:
                self.returncode = self.proc.returncode
                self.collector.close()
        return self.stderr()


@pytest.fixture
def two_cameras(tmp_path, random_config):
    """Two looping RTSP cameras (25 fps, 160x120) watched by one pipeline, publishing results of
    both. Every test gets its own servers and pipeline: tests kill, freeze and stop them."""
    clip = _clip(tmp_path / "cam.mp4", fps=25, frames=25, size=(160, 120))
    servers: dict[str, RtspServer] = {}
    w = None
    try:
        for name in "ab":
            servers[name] = RtspServer(clip, loop=True, port=free_port()).start()
        sources = [f"{name}={s.url}" for name, s in servers.items()]
        w = Watch(tmp_path, sources, random_config, "--stall-s", "2", "--retry-max-s", "2")
        w.servers = servers
        for name in "ab":
            w.wait_for(lambda n=name: len(w.collector.headers(n)) >= 3, 120, f"results from {name}")
        yield w
    finally:
        if w is not None:
            w.stop()
        for s in servers.values():
            s.stop()


@pytest.mark.slow
@pytest.mark.timeout(600)  # a pipeline on two cameras: waits of 120 s
@pytest.mark.rtsp
def test_results_are_published_per_stream_in_order(two_cameras):
    w = two_cameras
    with w.collector.lock:
        messages = list(w.collector.messages)
    for stream in "ab":
        parts_list = [p for _, p in messages if p[0] == stream.encode()]
        assert len(parts_list) >= 3
        headers = [json.loads(p[1]) for p in parts_list]
        assert all(len(p) == 2 for p in parts_list)  # [topic, header]: masks travel as RLE
        frames = [h["frame"] for h in headers]
        assert frames == sorted(set(frames)), "frame numbers increase per stream"
        seqs = [h["seq"] for h in headers]
        assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), "a fast subscriber misses none"
        for h in headers:
            assert h["version"] == PROTOCOL_VERSION and h["stream"] == stream
            assert (h["width"], h["height"]) == (160, 120)
            assert 0 < time.time() - h["wall_time"] < 300
            assert len(h["instances"]) == 5  # random weights, score threshold 0
            for inst in h["instances"]:
                mask = mask_utils.decode(inst["rle"])
                assert mask.shape == (120, 160)
                assert inst["label_name"] in synth.CLASSES and len(inst["box"]) == 4
        pts = [h["pts"] for h in headers]
        assert all(b > a for a, b in zip(pts, pts[1:], strict=False))


@pytest.mark.slow
@pytest.mark.timeout(600)  # a pipeline on two cameras: waits of 120 s
@pytest.mark.rtsp
def test_restarted_server_resumes_its_stream_and_spares_the_other(two_cameras):
    w = two_cameras
    server = w.servers["a"]
    c = w.collector
    last_a = c.headers("a")[-1]["frame"]
    server.kill()  # a crashed camera
    killed = time.time()
    try:
        # b's frames captured a second after the kill have come through; a's would have too
        w.wait_for(lambda: len(c.captured_after("b", killed + 1.0)) >= 2, 30, "b while a is down")
        assert not c.captured_after("a", killed + 0.5)
    finally:
        started = time.time()
        server.start()  # same port: back online
    w.wait_for(lambda: len(c.captured_after("a", started)) >= 2, 60, "a to resume")
    resumed = [h["frame"] for h in c.captured_after("a", started)]
    assert min(resumed) > last_a, "frame numbers continue across the reconnect"
    log = w.stderr()
    assert "a: lost (" in log and re.search(r"a: connecting to .* \(attempt [2-9]", log)
    assert re.search(r"a: reconnected \(\d+\)", log)
    pts = [h["pts"] for h in w.collector.headers("a")]
    assert all(y > x for x, y in zip(pts, pts[1:], strict=False)), "pts monotonic across restarts"
    stderr = w.stop()
    assert w.returncode == 0, stderr
    assert stream_line(stderr, "a")["reconnects"] >= 1, stderr
    assert stream_line(stderr, "b")["fps_out"] > 0, stderr


@pytest.mark.slow
@pytest.mark.timeout(600)  # a pipeline on two cameras: waits of 120 s
@pytest.mark.rtsp
def test_frozen_server_is_caught_by_the_watchdog(two_cameras):
    w = two_cameras
    server = w.servers["b"]
    stalls = w.stderr().count("b: lost (stalled")
    server.freeze()  # the connection stays open, nothing arrives: a stalled network
    frozen_at = time.monotonic()
    try:
        w.wait_for(lambda: w.stderr().count("b: lost (stalled") > stalls, 15, "the watchdog")
        noticed = time.monotonic() - frozen_at
        time.sleep(1.0)  # the fault lasts a second more: a reconnect meets the frozen server
    finally:
        server.thaw()
        thawed = time.time()
    assert noticed < 2.0 + 3.0, f"watchdog took {noticed:.1f} s (stall_s 2)"
    c = w.collector
    w.wait_for(lambda: len(c.captured_after("b", thawed)) >= 2, 60, "b to resume after the thaw")
    stderr = w.stop()
    assert w.returncode == 0, stderr
    assert stream_line(stderr, "b")["reconnects"] >= 1, stderr


@pytest.mark.slow
@pytest.mark.timeout(600)  # a pipeline on two cameras: waits of 120 s
@pytest.mark.rtsp
def test_stopping_a_watch_prints_per_stream_lines(two_cameras):
    w = two_cameras
    for name in "ab":  # enough results that the processed rate shows in one decimal
        w.wait_for(lambda n=name: len(w.collector.headers(n)) >= 10, 120, f"results from {name}")
    stderr = w.stop()
    assert w.returncode == 0, stderr
    assert "Traceback" not in stderr
    for stream in "ab":
        line = stream_line(stderr, stream)
        assert line["fps_in"] > 0 and line["fps_out"] > 0, stderr


@pytest.mark.slow
@pytest.mark.timeout(600)  # a pipeline on two cameras: waits of 120 s
def test_live_files_are_batched_together_and_a_dead_stream_is_reported(tmp_path, random_config):
    """Files play in real time as cameras; both streams share batches; an RTSP stream that never
    comes up is given up on (--give-up-s) and reported, while the others run on."""
    clip = _clip(tmp_path / "f.mp4", fps=25, frames=50, size=(160, 120))
    model = replace(load_config(random_config), max_wait_ms=100.0)
    sources = [
        SourceSpec("f1", str(clip), "file"),
        SourceSpec("f2", str(clip), "file"),
        SourceSpec("dead", f"rtsp://127.0.0.1:{free_port()}/cam", "rtsp"),
    ]
    results = tmp_path / "{stream}.jsonl"
    t0 = time.monotonic()
    report = run(
        load_pipeline(WATCH),
        sources,
        model,
        results=str(results),
        publish=f"tcp://127.0.0.1:{free_port()}",
        live_options={"give_up_s": 2.0, "stall_s": 2.0},
        quiet=True,
    )
    elapsed = time.monotonic() - t0
    assert report.exit_code == 3  # the dead stream's frames are lost
    assert report.extra["inference"]["mean_batch"] > 1.2, report.extra["inference"]
    assert elapsed >= 2.0  # real time: 50 frames at 25 fps
    for stream in ("f1", "f2"):
        assert report.sources[stream]["in"] == 50
        assert not report.postprocess[stream]["lost"]
        records = [json.loads(x) for x in (tmp_path / f"{stream}.jsonl").read_text().splitlines()]
        frames = [r["frame"] for r in records]
        assert len(frames) >= 2 and frames == sorted(set(frames))
        assert all(0 <= f < 50 for f in frames)
    dead = report.sources["dead"]
    assert dead["lost"] and dead["state"] == "gone" and "Connection refused" in dead["error"]
    assert report.sources["dead"]["in"] == 0
    lines = report.stream_lines
    assert [ln.split(":")[0] for ln in lines] == ["dead", "f1", "f2"]
    assert lines[0].endswith("(gone)")


@pytest.mark.slow
@pytest.mark.timeout(600)  # a pipeline on two cameras: waits of 120 s
@pytest.mark.rtsp
def test_overload_and_dead_subscriber_keep_memory_and_latency_bounded(tmp_path, random_config):
    """Sources far faster than inference, a subscriber that never reads: drops are counted, the
    pipeline's memory stays flat, latency stays bounded, a live subscriber misses nothing.

    The drops need the cameras (2 x 60 fps) to outpace one CPU thread of the small model
    (measured on 2 busy cores: 12-21 fps a stream). Capping inference instead (a batch that 2
    streams at depth 1 never fill, formed every max_wait) is not possible yet: a replaced frame
    restarts the wait, so frames arriving faster than max_wait are never batched at all."""
    clip = _clip(tmp_path / "fast.mp4", fps=60, frames=60, size=(320, 240))
    with RtspServer(clip, loop=True) as server:
        w = Watch(tmp_path, [f"x={server.url}", f"y={server.url}"], random_config)
        dead_ctx = zmq.Context()
        dead = dead_ctx.socket(zmq.SUB)
        dead.setsockopt(zmq.RCVHWM, 1)
        dead.setsockopt(zmq.SUBSCRIBE, b"")
        dead.connect(w.endpoint)  # never reads
        sub = Subscriber(w.endpoint, streams=["x", "y"])
        got = []
        done = threading.Event()

        def read() -> None:
            while not done.is_set():
                r = sub.recv(0.2)
                if r is not None:
                    got.append(r)

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        try:
            # windows counted in results, not seconds: memory is measured over work done
            w.wait_for(lambda: len(w.collector.headers()) >= 24, 120, "steady state")
            rss_start = {pid: _rss_mb(pid) for pid in w.stages()}
            w.wait_for(lambda: len(w.collector.headers()) >= 124, 180, "100 more results")
            rss_end = {pid: _rss_mb(pid) for pid in w.stages()}
        finally:
            stderr = w.stop()
            done.set()
            reader.join(timeout=5)
            sub.close()
            dead.close(0)
            dead_ctx.term()
    assert w.returncode == 0, stderr
    growth = {pid: rss_end.get(pid, 0) - mb for pid, mb in rss_start.items()}
    print("RSS growth (MB) per stage:", growth)
    assert len(growth) >= 4 and max(growth.values()) < 40, growth  # 2 sources, post, inference+
    for stream in "xy":
        line = stream_line(stderr, stream)
        print(line)
        assert line["dropped"] > 0 and line["fps_in"] > line["fps_out"], line
        assert line["p99"] < 5000, line
        mine = [r for r in got if r.stream == stream]
        assert len(mine) >= 3
        assert max(r.latency for r in mine[-5:]) < 5.0
        frames = [r.frame for r in mine]
        assert frames == sorted(frames) and frames[-1] - frames[0] > len(frames)  # gaps: drops
    assert sum(sub.missed.values()) == 0 and sub.rejected == 0


def _rss_mb(pid: int) -> float:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0.0
    return int(re.search(r"VmRSS:\s+(\d+)", status).group(1)) / 1024
