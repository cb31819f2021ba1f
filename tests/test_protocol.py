import json

import numpy as np
import pytest

from streamseg.wire.codec import decode, decode_published, encode, encode_published
from streamseg.wire.fields import ProtocolError
from streamseg.wire.messages import (
    PROTOCOL_VERSION,
    Detections,
    EndOfStream,
    Frame,
    Stats,
    StreamStart,
)
from streamseg.wire.results import Result

INSTANCE = {
    "label": 1,
    "label_name": "circle",
    "score": 0.9,
    "box": [1.0, 2.0, 30.0, 40.0],
    "rle": {"size": [48, 64], "counts": "PPYo0"},
}


def _bytes(parts):
    return [bytes(p) for p in parts]


def test_frame_round_trip_is_zero_copy_on_send():
    image = np.arange(6 * 4 * 3, dtype=np.uint8).reshape(6, 4, 3)
    parts = encode(Frame("cam", 7, 0.25, 1000.5, image))
    assert isinstance(parts[1], memoryview) and parts[1].obj is image  # no copy made
    msg = decode(_bytes(parts))
    assert isinstance(msg, Frame)
    assert (msg.stream, msg.frame, msg.pts, msg.wall_time) == ("cam", 7, 0.25, 1000.5)
    np.testing.assert_array_equal(msg.image, image)


def test_detections_round_trip_with_and_without_image():
    n = 3
    det = Detections(
        "s", 1, 0.5, 2.0, 64, 48,
        boxes=np.ones((n, 4), np.float32), scores=np.full(n, 0.9, np.float32),
        labels=np.arange(1, n + 1), masks=np.random.rand(n, 28, 28).astype(np.float32),
        image=np.zeros((48, 64, 3), np.uint8), infer_ms=12.5, batch=2,
    )  # fmt: skip
    out = decode(_bytes(encode(det)))
    assert isinstance(out, Detections) and out.batch == 2 and out.infer_ms == 12.5
    for name in ("boxes", "scores", "labels", "masks", "image"):
        np.testing.assert_array_equal(getattr(out, name), getattr(det, name))
    no_image = decode(_bytes(encode(Detections(**{**det.__dict__, "image": None}))))
    assert no_image.image is None


def test_empty_detections():
    det = Detections(
        "s", 0, 0.0, 0.0, 10, 10, np.zeros((0, 4), np.float32), np.zeros(0, np.float32),
        np.zeros(0, np.int64), np.zeros((0, 28, 28), np.float32),
    )  # fmt: skip
    out = decode(_bytes(encode(det)))
    assert out.boxes.shape == (0, 4) and out.masks.shape == (0, 28, 28)


@pytest.mark.parametrize(
    "msg",
    [
        StreamStart("a", 640, 480, 29.97, 100, "x.mp4"),
        EndOfStream("a", 12, "truncated", True),
        Stats("inference", {"a": {"in": 1, "out": 1, "dropped": {}}}, 1.5, True),
        Result("a", 3, 0.1, 5.0, 64, 48, [INSTANCE]),
    ],
)
def test_control_messages_round_trip(msg):
    assert decode(encode(msg)) == msg


def test_published_result_has_topic_version_and_wall_time():
    r = Result("cam1", 3, 0.1, 5.0, 64, 48, [])
    parts = encode_published(r)
    assert parts[0] == b"cam1"
    header = json.loads(parts[1])
    assert header["version"] == PROTOCOL_VERSION and header["wall_time"] == 5.0
    assert decode_published(parts) == r


@pytest.mark.parametrize(
    "parts, why",
    [
        ([], "empty"),
        ([b"\xff\xfe"], "not UTF-8 JSON"),
        ([b"[1, 2]"], "not a JSON object"),
        ([json.dumps({"v": 99, "type": "eos"}).encode()], "protocol version 99"),
        ([json.dumps({"v": PROTOCOL_VERSION, "type": "pickle"}).encode()], "unknown"),
        (
            [json.dumps({"v": PROTOCOL_VERSION, "type": "eos", "stream": "a"}).encode()],
            "EndOfStream",
        ),
    ],
)
def test_malformed_messages_are_rejected(parts, why):
    with pytest.raises(ProtocolError, match=why):
        decode(parts)


def _with_header(parts, **changes):
    """`parts` with header fields changed (a value of None removes the field)."""
    header = json.loads(bytes(parts[0]))
    for key, value in changes.items():
        if value is None:
            header.pop(key, None)
        else:
            header[key] = value
    return [json.dumps(header).encode(), *map(bytes, parts[1:])]


@pytest.mark.parametrize(
    "version",
    [PROTOCOL_VERSION + 1, PROTOCOL_VERSION - 1, str(PROTOCOL_VERSION), None],
    ids=["next", "previous", "as-text", "missing"],
)
@pytest.mark.parametrize(
    "msg",
    [
        EndOfStream("a", 12, "truncated", True),
        Frame("c", 0, 0.0, 0.0, np.zeros((2, 2, 3), np.uint8)),
    ],
)
def test_other_protocol_versions_are_rejected(msg, version):
    parts = encode(msg)
    # The same message, re-serialised with the right version, decodes: only "v" is at fault.
    same = decode(_with_header(parts, v=PROTOCOL_VERSION))
    assert _bytes(encode(same)) == _bytes(parts)
    expected = rf"protocol version {version!r}, expected {PROTOCOL_VERSION}\b"
    with pytest.raises(ProtocolError, match=expected):
        decode(_with_header(parts, v=version))


@pytest.mark.parametrize("version", [PROTOCOL_VERSION + 1, None], ids=["next", "missing"])
def test_published_results_of_another_version_are_rejected(version):
    parts = encode_published(Result("cam1", 3, 0.1, 5.0, 64, 48, [INSTANCE]))
    assert decode_published([parts[0], *_with_header(parts[1:])]).frame == 3
    for key in ("v", "version"):
        with pytest.raises(ProtocolError, match=rf"protocol version {version!r}"):
            decode_published([parts[0], *_with_header(parts[1:], **{key: version})])


def test_array_size_and_dtype_are_checked():
    parts = _bytes(encode(Frame("c", 0, 0.0, 0.0, np.zeros((4, 4, 3), np.uint8))))
    with pytest.raises(ProtocolError, match="needs 48 bytes"):
        decode([parts[0], parts[1][:-1]])
    header = json.loads(parts[0])
    header["arrays"][0]["dtype"] = "object"
    with pytest.raises(ProtocolError, match="not allowed"):
        decode([json.dumps(header).encode(), parts[1]])
    with pytest.raises(ProtocolError, match="arrays"):
        decode([parts[0]])  # buffer missing
