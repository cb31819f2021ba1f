"""streamseg.client: decoding published results, counting misses, the `subscribe` command."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import time

import numpy as np
import pycocotools.mask as mask_utils
import pytest
from harness import wait_until
from rtspfixture import free_port

from streamseg.client import FrameResult, GapCounter, Subscriber, parse
from streamseg.commands.subscribe import format_line
from streamseg.wire import sockets
from streamseg.wire.codec import encode_published
from streamseg.wire.fields import ProtocolError
from streamseg.wire.messages import PROTOCOL_VERSION
from streamseg.wire.results import Result


def rle_of(mask: np.ndarray) -> dict:
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": list(rle["size"]), "counts": rle["counts"].decode()}


def make_result(stream="cam1", frame=42, seq=0, wall_time=1000.0, instances=None) -> Result:
    return Result(stream, frame, 1.68, wall_time, 8, 6, instances or [], seq=seq)


def square_instance(label=2, name="square") -> tuple[dict, np.ndarray]:
    mask = np.zeros((6, 8), bool)
    mask[1:4, 2:6] = True
    inst = {
        "label": label,
        "label_name": name,
        "score": 0.9,
        "box": [2.0, 1.0, 6.0, 4.0],
        "rle": rle_of(mask),
    }
    return inst, mask


def test_parse_gives_typed_frozen_result_and_decodes_masks():
    inst, mask = square_instance()
    parts = encode_published(make_result(seq=7, instances=[inst]))
    r = parse(parts, received=1000.085)
    assert isinstance(r, FrameResult)
    assert (r.stream, r.frame, r.pts, r.width, r.height, r.seq) == ("cam1", 42, 1.68, 8, 6, 7)
    assert r.latency == pytest.approx(0.085)
    (got,) = r.instances
    assert (got.label, got.label_name, got.score, got.box) == (2, "square", 0.9, (2, 1, 6, 4))
    m = got.mask()
    assert m.dtype == bool and m.shape == (6, 8)
    np.testing.assert_array_equal(m, mask)
    with pytest.raises(dataclasses.FrozenInstanceError):
        r.frame = 1  # type: ignore[misc]


def test_parse_frame_without_instances():
    r = parse(encode_published(make_result()), received=1000.0)
    assert r.instances == () and r.counts() == {}


def test_format_line_counts_instances_by_label():
    square, _ = square_instance()
    circle, _ = square_instance(1, "circle")
    r = parse(encode_published(make_result(instances=[square, circle, square])), 1000.085)
    assert format_line(r) == "cam1 frame 42 latency 85 ms: 2 square, 1 circle"
    assert format_line(parse(encode_published(make_result()), 1000.0)).endswith(": nothing")


def _header(**changes) -> bytes:
    inst, _ = square_instance()
    header = {"v": PROTOCOL_VERSION, "version": PROTOCOL_VERSION, "type": "result"}
    header.update(make_result(instances=[inst]).__dict__)
    for key, value in changes.items():
        if key.startswith("inst_"):
            header["instances"][0][key[5:]] = value
        else:
            header[key] = value
    return json.dumps(header).encode()


@pytest.mark.parametrize(
    "parts",
    [
        [],
        [b"cam1"],
        [b"cam1", b"\xff not json"],
        [b"cam1", b"[]"],
        [b"other", _header()],  # topic is not the stream
        [b"cam1", _header(v=99)],
        [b"cam1", _header(type="eos")],
        [b"cam1", _header(frame="42")],
        [b"cam1", _header(seq=None)],
        [b"cam1", _header(unknown_field=1)],
        [b"cam1", _header(instances="none")],
        [b"cam1", _header(inst_box=[1, 2, 3])],
        [b"cam1", _header(inst_label=1.5)],
        [b"cam1", _header(inst_score="high")],
        [b"cam1", _header(inst_rle={"size": [1, 1], "counts": "0"})],  # not the frame's size
        [b"cam1", _header(inst_rle={"size": [6, 8], "counts": 5})],
        [b"cam1", _header(instances=[7])],
    ],
)
def test_malformed_messages_raise_protocol_error(parts):
    with pytest.raises(ProtocolError):
        parse(parts, received=0.0)


def test_gap_counter_counts_missed_per_stream_and_survives_restarts():
    g = GapCounter()
    assert [g.add("a", s) for s in (0, 1, 2, 5, 6)] == [0, 0, 0, 2, 0]
    assert g.add("b", 10) == 0  # the first seq seen is no gap
    assert g.add("b", 13) == 2
    assert g.add("a", 0) == 0  # publisher restarted: starts over
    assert g.add("a", 2) == 1
    assert g.missed == {"a": 3, "b": 2}


def _connected(pub, sub: Subscriber, stream: str) -> None:
    """Publish seq 0 until the subscriber gets it (ZeroMQ subscriptions take a moment)."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        sockets.publish(pub, make_result(stream, frame=0, seq=0, wall_time=time.time()))
        if sub.recv(0.05) is not None:
            while sub.recv(0.2) is not None:  # drain the extra copies
                pass
            return
    raise AssertionError("subscriber never connected")


def test_subscriber_filters_streams_counts_misses_and_rejects_malformed():
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    pub = sockets.publisher(endpoint)
    with Subscriber(endpoint, streams=["cam1"], timeout_s=0.5) as sub:
        _connected(pub, sub, "cam1")
        for seq in (1, 2, 5):
            sockets.publish(pub, make_result(frame=10 * seq, seq=seq, wall_time=time.time()))
            sockets.publish(pub, make_result("cam10", seq=seq))  # same prefix, other stream
        pub.send_multipart([b"cam1", b"garbage"])
        pub.send_multipart([b"cam1", _header(inst_box="x")])
        sockets.publish(pub, make_result(frame=60, seq=6, wall_time=time.time()))
        got = list(sub)  # ends after 0.5 s without results
        assert [r.frame for r in got] == [10, 20, 50, 60]
        assert all(r.stream == "cam1" and 0 <= r.latency < 5 for r in got)
        assert sub.missed == {"cam1": 2}
        assert sub.rejected == 2
    pub.close(0)


def test_dead_subscriber_misses_results_and_counts_them():
    """A subscriber that stops reading loses results at the publisher (which never waits);
    reading again, it counts exactly what it missed from the seq gaps."""
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    pub = sockets.publisher(endpoint)
    total = 20000
    with Subscriber(endpoint, timeout_s=0.5, hwm=10) as sub:
        _connected(pub, sub, "s")
        t0 = time.monotonic()
        for seq in range(1, total + 1):  # far more than the queues hold
            sockets.publish(pub, make_result("s", frame=seq, seq=seq))
        assert time.monotonic() - t0 < 10, "publishing must not wait for the subscriber"
        got = [r.seq for r in sub]
        assert got == sorted(got) and 0 < len(got) < total
        # seq 0 was seen: every number from 1 to the last one received is either here or missed
        assert sub.missed["s"] == got[-1] - len(got) > 0
    pub.close(0)


def test_subscribe_command_prints_one_line_per_frame():
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    pub = sockets.publisher(endpoint)
    square, _ = square_instance()
    cmd = [sys.executable, "-m", "streamseg.cli", "subscribe", endpoint, "--count", "3"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        seq = 0
        while proc.poll() is None and seq < 2000:  # until it has 3 and exits
            r = make_result(frame=seq, seq=seq, wall_time=time.time(), instances=[square] * 2)
            sockets.publish(pub, r)
            seq += 1
            time.sleep(0.02)
        out, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
        pub.close(0)
    assert proc.returncode == 0, err
    lines = out.splitlines()
    assert len(lines) == 3
    for line in lines:
        assert line.startswith("cam1 frame ") and line.endswith(" ms: 2 square"), line
    assert "received 3 results" in err


def test_track_ids_reach_the_client_and_supervision():
    sv = pytest.importorskip("supervision")
    from streamseg.client import to_supervision

    square, mask = square_instance()
    circle, _ = square_instance(label=1, name="circle")
    tracked = [{**square, "track_id": 7}, {**circle, "track_id": None}]
    r = parse(encode_published(make_result(instances=tracked)), received=1000.0)
    assert [i.track_id for i in r.instances] == [7, None]
    det = to_supervision(r)
    assert isinstance(det, sv.Detections) and len(det) == 2
    np.testing.assert_array_equal(det.mask[0], mask)
    assert det.mask.shape == (2, 6, 8)
    assert det.tracker_id.tolist() == [7, -1]
    assert det.class_id.tolist() == [2, 1]
    assert det.confidence.tolist() == pytest.approx([0.9, 0.9])
    assert det.xyxy.tolist() == [[2, 1, 6, 4], [2, 1, 6, 4]]
    assert det.data["class_name"].tolist() == ["square", "circle"]
    empty = to_supervision(parse(encode_published(make_result()), received=1000.0))
    assert len(empty) == 0 and empty.mask.shape == (0, 6, 8)


def test_an_old_record_without_track_id_still_reads():
    square, _ = square_instance()  # written before tracking: no "track_id" key
    (inst,) = parse(encode_published(make_result(instances=[square])), 1000.0).instances
    assert inst.track_id is None
    bad = {**square, "track_id": 0}
    with pytest.raises(ProtocolError, match="track_id"):
        parse(encode_published(make_result(instances=[bad])), 1000.0)


def test_subscriber_knows_whether_a_publisher_ever_answered():
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    with Subscriber(endpoint, timeout_s=0.2) as sub:
        assert list(sub) == [] and not sub.connected
        pub = sockets.publisher(endpoint)
        try:
            wait_until(lambda: sub.connected, 10.0, "the subscriber sees the publisher")
        finally:
            pub.close(0)


def test_subscribe_says_when_no_publisher_answers():
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    cmd = [sys.executable, "-m", "streamseg.cli", "subscribe", endpoint, "--timeout", "1"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert f"no publisher answered at {endpoint} within 1 s" in proc.stderr

    pub = sockets.publisher(endpoint)  # there, but silent: a timeout, not an error
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    finally:
        pub.close(0)
    assert proc.returncode == 0, proc.stderr
    assert "received 0 results" in proc.stderr and "no publisher" not in proc.stderr
