"""The Redis Streams sink against a real redis-server the tests start: one Redis Stream per
video stream, in order, equal to the results file, bounded by MAXLEN; a server outage in a
live run never holds the pipeline up, every result is counted, and delivery resumes."""

from __future__ import annotations

import gc
import json
import weakref
from functools import partial

import numpy as np
import pytest
from brokerfixture import Server, file_run, outage_run, redis_server
from harness import Run
from rtspfixture import free_port
from test_sink_interface import frame_out

from streamseg.pipeline.report import summary
from streamseg.postprocess.sinks import Rendered
from streamseg.postprocess.sinks.brokers import build
from streamseg.sink_urls import parse
from streamseg.wire.messages import StreamStart

redis = pytest.importorskip("redis", reason="redis-py missing: pip install .[redis]")

pytestmark = pytest.mark.redis


@pytest.fixture
def server(tmp_path):
    s = redis_server(tmp_path)
    yield s
    s.stop()


def entries(port: int, key: str) -> list[dict]:
    """The results in Redis Stream `key`, oldest first."""
    client = redis.Redis(port=port)
    try:
        return [json.loads(fields[b"result"]) for _, fields in client.xrange(key)]
    finally:
        client.close()


def test_one_stream_per_video_stream_in_order_and_bounded(server: Server):
    sink = build(
        parse(f"redis://127.0.0.1:{server.port}/0?maxlen=100&max_pending=2000"), live=False
    )
    for stream in ("a", "b"):
        sink.open(StreamStart(stream, 32, 24, 30.0))
    for n in range(1000):
        sink.write(frame_out(n, "a"))
    for n in range(50):
        sink.write(frame_out(n, "b"))
    sink.end("a")
    sink.close()
    counts = sink.counts()
    assert (counts.delivered, counts.dropped, counts.pending) == (1050, {}, 0)
    a = [r["frame"] for r in entries(server.port, "streamseg:a")]
    assert 100 <= len(a) < 1000 and a == list(range(1000 - len(a), 1000))  # MAXLEN ~ 100
    assert [r["frame"] for r in entries(server.port, "streamseg:b")] == list(range(50))


def test_a_server_that_is_not_up_is_waited_for(tmp_path):
    server = redis_server(tmp_path)
    server.stop()  # its port, nothing listening
    sink = build(parse(f"redis://127.0.0.1:{server.port}?key=k:{{stream}}&max_pending=5"),
                 live=True)  # fmt: skip
    sink.open(StreamStart("a", 32, 24, 30.0))
    for n in range(20):
        sink.write(frame_out(n, "a"))  # never blocks: the oldest beyond 5 are dropped
    counts = sink.counts()
    full = counts.dropped["queue_full"]
    # (a batch the sink's thread already holds, waiting for the server, is pending too)
    assert counts.delivered == 0 and full + counts.pending == 20 and full >= 20 - 5 - 64
    server.start()
    try:
        sink.close()
        counts = sink.counts()
        assert (counts.delivered, counts.dropped, counts.pending) == (
            20 - full,
            {"queue_full": full},
            0,
        )
        # the newest were kept, and delivered once the server came up
        frames = [r["frame"] for r in entries(server.port, "k:a")]
        assert len(frames) == 20 - full and frames[-5:] == list(range(15, 20))
    finally:
        server.stop()


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_file_run_delivers_every_frame_equal_to_the_results_file(
    server: Server, tmp_path, clip, random_config
):
    report, records = file_run(tmp_path, random_config, clip[0], f"redis://127.0.0.1:{server.port}")
    assert report.exit_code == 0, report.errors
    assert len(records) == 10
    assert entries(server.port, "streamseg:cam") == records
    counts = report.extra["postprocess"]["sinks"]["redis"]
    assert counts == {"delivered": 10, "dropped": {}, "pending": 0}


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_server_outage_in_a_live_run(server: Server, tmp_path, random_config):
    out = outage_run(
        tmp_path,
        random_config,
        server,
        f"redis://127.0.0.1:{server.port}?max_pending=20",
        down_s=4.0,
    )
    counts = out.report.extra["postprocess"]["sinks"]["redis"]
    produced = out.report.postprocess["cam"]["out"]
    dropped = sum(counts["dropped"].values())
    assert counts["delivered"] + dropped == produced and counts["pending"] == 0, counts
    assert counts["dropped"].get("queue_full", 0) > 0  # 4 s of results > max_pending
    assert out.during_fps >= 0.5 * out.before_fps, out  # the pipeline did not wait
    # the restarted server (nothing persisted) has what came after the outage began
    after = entries(server.port, "streamseg:cam")
    assert after and all(r["frame"] > out.last_before for r in after)


@pytest.mark.slow
def test_a_live_run_starts_without_its_server(tmp_path, clip, random_config):
    """A live run only warns: its sinks keep trying (--plan: checked, nothing started)."""
    port = free_port()
    with Run(tmp_path, "watch", clip[0], "--config", random_config, "--plan",
             "--sink", f"redis://:hunter2@127.0.0.1:{port}") as run:  # fmt: skip
        assert run.wait(120) == 0
        err = run.stderr()
    assert f"cannot reach 127.0.0.1:{port}" in err and "retried while the run goes on" in err
    assert "hunter2" not in err


def test_results_held_through_an_outage_do_not_hold_the_frames_pixels():
    """max_pending results cost their records, not a frame each (the annotated image, the
    instances' masks unless polygons are sent)."""
    sink = build(parse(f"redis://127.0.0.1:{free_port()}?max_pending=10"), live=True)
    pixels = np.zeros((480, 640, 3), np.uint8)
    gone = weakref.ref(pixels)
    sink.open(StreamStart("a", 32, 24, 30.0))
    sink.write(frame_out(0, "a", annotated=Rendered(partial(np.copy, pixels))))
    del pixels
    gc.collect()
    assert gone() is None  # the queued result no longer refers to the frame
    assert sink.counts().pending == 1
    sink.close()
    assert sink.counts().dropped == {"closed": 1}


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_file_run_does_not_wait_for_a_server_that_went_away(tmp_path, clip, random_config):
    """(The CLI refuses to start a file run whose server is down; one that goes away later
    costs the run its sink's drain time, and every result is counted.)"""
    server = redis_server(tmp_path)
    server.stop()
    report, records = file_run(
        tmp_path, random_config, clip[0], f"redis://127.0.0.1:{server.port}?drain_s=1"
    )
    assert report.exit_code == 0, report.errors  # the results file has every frame
    assert len(records) == 10
    counts = report.extra["postprocess"]["sinks"]["redis"]
    assert counts == {"delivered": 0, "dropped": {"closed": 10}, "pending": 0}
    assert "sinks: redis delivered 0, dropped 10 (closed 10), pending 0" in summary(report)
