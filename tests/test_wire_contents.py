"""streamseg.wire.validation (through the codec): what each message type may contain, case by case.

Valid messages are built the way the stages build them (same constructors, same dtypes, the same
pure cores where they exist); each invalid content is refused with a ProtocolError that names the
field. The property-based side (any input at all) is in test_wire_fuzz.py.
"""

from __future__ import annotations

import functools
import json
import math
from dataclasses import replace
from typing import Any

import numpy as np
import pytest
import torch

from streamseg.accounting import Counters
from streamseg.inference.colors import instance_colors
from streamseg.postprocess.render import draw_instances
from streamseg.postprocess.results import make_result
from streamseg.postprocess.streams import StreamBook
from streamseg.wire.codec import decode, decode_envelope, decode_published, encode, encode_published
from streamseg.wire.fields import ProtocolError, check_name
from streamseg.wire.messages import (
    PROTOCOL_VERSION,
    Detections,
    EndOfStream,
    Frame,
    Message,
    Stats,
    StreamStart,
)
from streamseg.wire.results import Result

# --- messages as the stages build them ------------------------------------------------------------


def _bytes(parts: list[Any]) -> list[bytes]:
    return [bytes(p) for p in parts]


def _round_trip(msg: Message) -> Message:
    return decode(_bytes(encode(msg)))


def start_file() -> StreamStart:
    """source.decode.stream_info of a file."""
    return StreamStart("clip", 640, 480, 29.97, 120, "/videos/clip.mp4", False, 0)


def start_live() -> StreamStart:
    """source.live after its second reconnect: no frame count, a camera's 90 kHz 'rate'."""
    info = StreamStart("cam 1", 1280, 720, 90000.0, None, "rtsp://10.0.0.7/s", True, 0)
    return StreamStart(**{**info.__dict__, "reconnects": 2})


def frame(pts: float = 0.0, h: int = 6, w: int = 8) -> Frame:
    """source.file: float(pts) (0.0 first; negative at the start of some files), time.time()."""
    image = np.arange(h * w * 3, dtype=np.uint8).reshape(h, w, 3)  # PyAV's rgb24 ndarray
    return Frame("clip", 0, float(pts), 1718000000.125, image)


def detections(n: int = 2, *, image: bool = True, m: int = 28, colors: bool = True) -> Detections:
    """inference.main from Executor's output (torch tensors .float().cpu().numpy())."""
    f = frame(h=48, w=64)
    boxes = torch.tensor([[4.0, 5.0, 30.5, 40.0], [10.0, 0.0, 64.0, 48.0]]).repeat(n, 1)[:n]
    r = {
        "boxes": boxes.float().cpu().numpy(),
        "scores": torch.linspace(0.99, 0.5, n).float().cpu().numpy(),
        "labels": torch.arange(1, n + 1).cpu().numpy(),
        "masks": torch.rand(n, 1, m, m)[:, 0].float().cpu().numpy(),
    }
    h, w = f.image.shape[:2]
    return Detections(
        f.stream, f.frame, f.pts, f.wall_time, w, h,
        r["boxes"], r["scores"], r["labels"], r["masks"],
        f.image if image else None, 12.5, 4,
        colors=instance_colors(f.image, r["boxes"], r["masks"]) if colors else None,
    )  # fmt: skip


def result(det: Detections | None = None) -> Result:
    """postprocess: make_result on a frame's Detections (by default, detections())."""
    if det is None:
        return _default_result()
    res, _ = make_result(det, mask_threshold=0.5, label_names=["bg", "circle"])
    return res


@functools.cache
def _default_result() -> Result:
    return result(detections())


def stats_postprocess() -> Stats:
    """postprocess's counters from its StreamBook, one stream done, one without frames (NaN
    latencies), ended and lost."""
    counters = Counters()
    book = StreamBook(counters, streams=2)
    for info in (start_file(), start_live()):
        book.start(info)
    det = detections()
    state = book.take(det)
    assert state is not None
    book.done(state, 0.085)
    book.end(EndOfStream("cam 1", 5, "gone: down for 30 s", lost=True))
    book.report_latency()
    extra = {"rejected": 0}
    return Stats("postprocess", counters.to_json(), 0.25, True, extra, "postprocess", ready=True)


def stats_source() -> Stats:
    """A live source: dropped frames by reason, link state, no frame count known."""
    counters = Counters()
    counters.count_in("cam 1", 10)
    counters.count_out("cam 1", 8)
    counters.drop("cam 1", "queue_full", 2)
    counters["cam 1"].extra.update(state="down, retrying in 4 s", reconnects=1)
    extra = {"frames_expected": None, "error": ""}
    return Stats("source", counters.to_json(), 1.5, False, extra, name="source[cam 1]", ended=True)


def stats_inference() -> Stats:
    counters = Counters()
    counters.count_in("clip", 3)
    counters.drop("clip", "stale")
    extra = {"device": "cpu", "batches": 2, "mean_batch": 1.5, "rejected": 1}
    return Stats("inference", counters.to_json(), 3.0, False, extra, name="inference")


def stats_heartbeat() -> Stats:
    """stage.shell's heartbeat thread."""
    return Stats("source", {}, name="source[cam 1]", heartbeat=True)


VALID_CONTROL = [
    start_file(),
    start_live(),
    EndOfStream("clip", 120, "", False),  # source.file, all sent
    EndOfStream("clip", 0, "no such file: x.mp4", True),  # source.main, unreadable
    EndOfStream("cam 1", 7, "gone: down for 30 s (stalled)", lost=True),  # source.live
    EndOfStream("clip", 3, prev=2),  # inference.dispatcher: frame 2 the last handed out
    stats_postprocess(),
    stats_source(),
    stats_inference(),
    stats_heartbeat(),
    Stats("postprocess", {}),
]


# --- valid messages round-trip --------------------------------------------------------------------


@pytest.mark.parametrize("msg", VALID_CONTROL, ids=lambda m: type(m).__name__)
def test_control_messages_the_stages_send_round_trip(msg: Message) -> None:
    out = _round_trip(msg)
    if isinstance(msg, Stats):  # NaN latencies are not equal to themselves
        assert json.dumps(out.__dict__) == json.dumps(msg.__dict__)
    else:
        assert out == msg


@pytest.mark.parametrize("pts", [0.0, 1.25, -0.033])
def test_frames_round_trip(pts: float) -> None:
    msg = frame(pts)
    out = _round_trip(msg)
    assert isinstance(out, Frame) and (out.stream, out.frame, out.pts) == ("clip", 0, pts)
    np.testing.assert_array_equal(out.image, msg.image)


@pytest.mark.parametrize(
    "det",
    [detections(), detections(image=False), detections(0), detections(0, image=False),
     detections(1, m=1), detections(colors=False)],
    ids=["with-image", "no-image", "empty", "empty-no-image", "1x1-mask", "no-colors"],
)  # fmt: skip
def test_detections_round_trip(det: Detections) -> None:
    out = _round_trip(det)
    assert isinstance(out, Detections)
    for name in ("boxes", "scores", "labels", "masks"):
        got, sent = getattr(out, name), getattr(det, name)
        assert got.dtype == sent.dtype and got.shape == sent.shape
        np.testing.assert_array_equal(got, sent)
    assert (out.image is None) == (det.image is None)
    assert (out.colors is None) == (det.colors is None)
    if det.colors is not None:
        np.testing.assert_array_equal(out.colors, det.colors)  # NaN (unknown) included
    assert (out.width, out.height, out.infer_ms, out.batch) == (64, 48, 12.5, 4)


def test_results_round_trip_internally_and_published() -> None:
    res = result()
    assert res.instances  # the test exercises instance records
    assert _round_trip(res) == res
    published = replace(res, seq=3)
    assert decode_published(encode_published(published)) == published
    empty = result(detections(0))
    assert decode_published(encode_published(empty)) == empty


def test_extreme_values_that_pass_do_not_break_postprocess() -> None:
    """What the checks let through, postprocess survives: boxes at the coordinate limit,
    inverted and empty boxes, scores 0 and 1, a huge label id, 1x1 masks."""
    c = float(1 << 20)
    boxes = np.array(
        [[-c, -c, c, c], [10, 10, 5, 5], [c, c, -c, -c], [3, 3, 3, 3], [0, 0, 1e-30, 1e-30]],
        np.float32,
    )
    n = len(boxes)
    det = Detections(
        "s", 0, 0.0, 0.0, 64, 48, boxes, np.array([0, 1, 0.5, 0.5, 1], np.float32),
        np.array([0, 2**62, 1, 2, 3], np.int64), np.ones((n, 1, 1), np.float32),
        np.zeros((48, 64, 3), np.uint8),
    )  # fmt: skip
    det = _round_trip(det)
    res, local = make_result(det, mask_threshold=0.5, label_names=["bg"])
    draw_instances(det.image, local, det.boxes, det.labels, det.scores, ["bg"])
    assert decode_published(encode_published(res)) == res


# --- the crash inputs seen on main ----------------------------------------------------------------


def _frame_header() -> tuple[dict[str, Any], bytes]:
    header, buf = _bytes(encode(frame()))
    return json.loads(header), buf


def test_shape_whose_size_overflows_int64_is_refused() -> None:
    header, buf = _frame_header()
    for shape in ([2**32, 2**32, 3], [2**31 - 1] * 4, [0, 2**63], [2**64], [2**21, 2**21, 2**21]):
        header["arrays"][0]["shape"] = shape  # more bytes than int64 counts (2**21 cubed: 2**63)
        with pytest.raises(ProtocolError, match="bad shape.*larger than any message"):
            decode([json.dumps(header).encode(), buf])
    for shape in ([2**21, 2**21, 2**21 - 1], [2**31 - 1, 2**31 - 1, 2]):  # within int64
        header["arrays"][0]["shape"] = shape
        with pytest.raises(ProtocolError, match=f"needs {math.prod(shape)} bytes, got 144"):
            decode([json.dumps(header).encode(), buf])


def test_zero_size_arrays_with_huge_other_dimensions() -> None:
    header, _ = _frame_header()
    header["arrays"][0]["shape"] = [0, 2**62]  # zero bytes, as the buffer: numpy can hold it
    with pytest.raises(ProtocolError, match="Frame: image"):  # refused for its content only
        decode([json.dumps(header).encode(), b""])
    header["arrays"][0]["shape"] = [0, 2**62, 4]  # numpy cannot
    with pytest.raises(ProtocolError, match="bad shape"):
        decode([json.dumps(header).encode(), b""])


def test_dtype_given_as_a_list_is_refused() -> None:
    header, buf = _frame_header()
    header["arrays"][0]["dtype"] = ["uint8"]
    with pytest.raises(ProtocolError, match="dtype"):
        decode([json.dumps(header).encode(), buf])


def test_100k_deep_json_header_is_refused() -> None:
    deep = b"[" * 100_000 + b"]" * 100_000
    for header in (deep, b'{"v": 1, "type": "eos", "stream": ' + deep + b"}", b"{" * 100_000):
        with pytest.raises(ProtocolError, match="nests"):
            decode([header])


# --- the envelope ---------------------------------------------------------------------------------


def _header_of(msg: Message) -> tuple[dict[str, Any], list[bytes]]:
    header, *buffers = _bytes(encode(msg))
    return json.loads(header), buffers


def _with(msg: Message, **changes: Any) -> list[bytes]:
    """`msg` encoded, with header fields changed (a value of `...` deletes the field)."""
    header, buffers = _header_of(msg)
    for key, value in changes.items():
        if value is ...:
            del header[key]
        else:
            header[key] = value
    return [json.dumps(header).encode(), *buffers]


@pytest.mark.parametrize(
    "changes, match",
    [
        ({"v": True}, "version"),
        ({"v": 1.0}, "version"),
        ({"v": ...}, "version"),
        ({"type": ["eos"]}, "type"),
        ({"type": None}, "type"),
        ({"frames": ...}, "misses field.*frames"),
        ({"extra_field": 1}, "unknown field.*extra_field"),
        ({"version": 1}, "unknown field.*version"),  # only published headers carry it
        ({"arrays": []}, "unknown field.*arrays"),  # an end-of-stream has no arrays
    ],
)
def test_envelope_fields_are_exact(changes: dict[str, Any], match: str) -> None:
    with pytest.raises(ProtocolError, match=match):
        decode(_with(EndOfStream("clip", 3), **changes))


@pytest.mark.parametrize(
    "mutate, match",
    [
        (lambda a: a[0].update(extra=1), "not {name, dtype, shape}"),
        (lambda a: a[0].pop("shape"), "not {name, dtype, shape}"),
        (lambda a: a[0].update(name="labels"), "unexpected array 'labels'"),
        (lambda a: a[0].update(name=None), "unexpected array"),
        (lambda a: a[0].update(dtype="object"), "not allowed"),
        (lambda a: a[0].update(shape=[6, 8, True]), "shape"),
        (lambda a: a[0].update(shape=[6, -8, 3]), "shape"),
        (lambda a: a[0].update(shape=[6, 8.0, 3]), "shape"),
        (lambda a: a[0].update(shape=[1, 1, 1, 1, 144]), "shape"),
        (lambda a: a[0].update(shape="6x8x3"), "shape"),
        (lambda a: a.append(dict(a[0])), "arrays"),
    ],
)
def test_array_entries_are_exact(mutate: Any, match: str) -> None:
    header, buf = _frame_header()
    mutate(header["arrays"])
    with pytest.raises(ProtocolError, match=match):
        decode([json.dumps(header).encode(), buf])


def test_an_array_twice_or_a_field_named_like_an_array_is_refused() -> None:
    det = detections()
    header, buffers = _header_of(det)
    header["arrays"][1] = dict(header["arrays"][0])  # boxes twice, no scores
    with pytest.raises(ProtocolError, match="unexpected array 'boxes'"):
        decode([json.dumps(header).encode(), buffers[0], buffers[0], *buffers[2:]])
    header, buffers = _header_of(frame())
    header["image"] = None
    with pytest.raises(ProtocolError, match="unknown field.*image"):
        decode([json.dumps(header).encode(), *buffers])
    header, _ = _header_of(frame())
    header["arrays"] = []
    with pytest.raises(ProtocolError, match="misses array.*image"):
        decode([json.dumps(header).encode()])


@pytest.mark.parametrize(
    "parts, match",
    [
        (b"not a list", "one buffer"),
        (None, "not a sequence"),
        ([7], "not a buffer"),
        (["text"], "not a buffer"),
        ([b"\xef\xbb\xbf{}"], "JSON"),  # a BOM is not JSON
        ('{"v": 1}'.encode("utf-16"), "one buffer"),
        (['{"v": 1}'.encode("utf-16")], "JSON"),
        ([b'{"v": 1, "type": "eos", "frames": 1' + b"0" * 5000 + b"}"], "JSON"),  # int too long
        ([b"{" + b'"a": 1, ' * 140_000 + b'"b": 2}'], "larger than"),
    ],
)
def test_envelope_garbage_is_refused(parts: Any, match: str) -> None:
    with pytest.raises(ProtocolError, match=match):
        decode(parts)


def test_zero_size_arrays_allocate_nothing_and_keep_their_shape() -> None:
    out = _round_trip(detections(0))
    assert isinstance(out, Detections)
    assert out.boxes.shape == (0, 4) and out.masks.shape == (0, 28, 28)


# --- auth -----------------------------------------------------------------------------------------


def test_auth_travels_in_the_header_and_decode_ignores_it() -> None:
    msg = EndOfStream("clip", 3)
    parts = encode(msg, auth="source:clip:9f2c")
    assert json.loads(parts[0])["auth"] == "source:clip:9f2c"
    assert decode_envelope(parts) == (msg, "source:clip:9f2c")
    assert decode(parts) == msg
    assert decode_envelope(encode(msg)) == (msg, "")
    assert "auth" not in json.loads(encode(msg)[0])
    det = detections()
    out, auth = decode_envelope(_bytes(encode(det, auth="inference")))
    assert auth == "inference" and isinstance(out, Detections)


@pytest.mark.parametrize("auth", [None, 7, ["x"], {"k": "v"}, "x" * 129])
def test_bad_auth_is_refused(auth: Any) -> None:
    with pytest.raises(ProtocolError, match="auth"):
        decode_envelope(_with(EndOfStream("clip", 3), auth=auth))


def test_auth_of_128_characters_is_the_limit() -> None:
    msg = EndOfStream("clip", 3)
    assert decode_envelope(encode(msg, auth="a" * 128)) == (msg, "a" * 128)
    with pytest.raises(ValueError, match="128"):
        encode(msg, auth="a" * 129)


def test_published_results_carry_no_auth() -> None:
    parts = encode_published(result())
    assert "auth" not in json.loads(parts[1])
    header = json.loads(parts[1])
    header["auth"] = "postprocess"
    with pytest.raises(ProtocolError, match="unknown field.*auth"):
        decode_published([parts[0], json.dumps(header).encode()])


def test_published_header_needs_version_and_matching_topic() -> None:
    topic, header = encode_published(result())
    without = {k: v for k, v in json.loads(header).items() if k != "version"}
    with pytest.raises(ProtocolError, match="version"):
        decode_published([topic, json.dumps(without).encode()])
    with pytest.raises(ProtocolError, match="topic"):
        decode_published([b"clip2", header])
    eos = {**json.loads(encode(EndOfStream("clip", 1))[0]), "version": PROTOCOL_VERSION}
    with pytest.raises(ProtocolError, match="not a Result"):
        decode_published([b"clip", json.dumps(eos).encode()])


# --- contents, per message type -------------------------------------------------------------------

NAN, INF = math.nan, math.inf
BAD_NAMES = ["", "a/b", "..", ".", "a\\b", "x" * 257, "line\nbreak", "\ud800", 5, None, ["a"]]


def _refused(parts: list[bytes], field: str) -> None:
    with pytest.raises(ProtocolError, match=field):
        decode(parts)


@pytest.mark.parametrize(
    "field, value",
    [("stream", v) for v in BAD_NAMES]
    + [(side, v) for side in ("width", "height") for v in (0, -1, 16385, 640.0, True, "640", None)]
    + [("fps", v) for v in (0, -30.0, NAN, INF, "30", None, 1e6, 1e-4)]
    + [("frames", v) for v in (-1, 1.5, "10", True)]
    + [("reconnects", v) for v in (-1, None, 0.0)]
    + [("live", v) for v in (1, "yes", None)]
    + [("source", v) for v in (None, 5, "\udcff")],
)
def test_stream_start_contents(field: str, value: Any) -> None:
    _refused(_with(start_file(), **{field: value}), f"StreamStart: {field}")


def test_stream_start_names_may_be_any_printable_text() -> None:
    for stream in ("my video (1)", "vidéo", "カメラ", "x" * 256, "cam-1_a.b"):
        msg = replace(start_file(), stream=stream)
        assert _round_trip(msg) == msg
        assert check_name(stream, "stream") == stream  # the same rule, for sources to use
    with pytest.raises(ProtocolError, match="stream id must be"):
        check_name("a/b", "stream id")


@pytest.mark.parametrize(
    "field, value",
    [("stream", v) for v in BAD_NAMES]
    + [("frame", v) for v in (-1, "1", 1.0, True, None, 2**63)]
    + [(t, v) for t in ("pts", "wall_time") for v in (NAN, INF, -INF, "0", None, True, 10**400)],
)
def test_frame_scalar_contents(field: str, value: Any) -> None:
    _refused(_with(frame(), **{field: value}), f"Frame: {field}")


@pytest.mark.parametrize(
    "image",
    [
        np.zeros((6, 8), np.uint8),  # 2-D
        np.zeros((6, 8, 4), np.uint8),  # RGBA
        np.zeros((6, 8, 1), np.uint8),
        np.zeros((6, 8, 3), np.float32),
        np.zeros((0, 8, 3), np.uint8),
        np.zeros((6, 0, 3), np.uint8),
        np.zeros((16385, 1, 3), np.uint8),
        np.zeros((1, 6, 8, 3), np.uint8),
    ],
    ids=lambda a: f"{a.dtype}{list(a.shape)}",
)
def test_frame_image_must_be_rgb_uint8(image: np.ndarray) -> None:
    _refused(_bytes(encode(replace(frame(), image=image))), "Frame: image")


def _det(**changes: Any) -> list[bytes]:
    return _bytes(encode(replace(detections(), **changes)))


@pytest.mark.parametrize(
    "changes, field",
    [
        ({"masks": np.zeros((3, 28, 28), np.float32)}, "masks"),  # 2 boxes, 3 masks
        ({"scores": np.zeros(3, np.float32)}, "scores"),
        ({"labels": np.ones(1, np.int64)}, "labels"),
        ({"boxes": np.zeros((2, 5), np.float32)}, "boxes"),
        ({"boxes": np.zeros(8, np.float32)}, "boxes"),
        ({"boxes": np.zeros((2, 4), np.float64)}, "boxes"),  # not what the model sends
        ({"scores": np.ones(2, np.float16)}, "scores"),
        ({"labels": np.ones(2, np.int32)}, "labels"),
        ({"masks": np.zeros((2, 28, 14), np.float32)}, "masks"),
        ({"masks": np.zeros((2, 0, 0), np.float32)}, "masks"),
        ({"masks": np.zeros((2, 28), np.float32)}, "masks"),
        ({"masks": np.zeros((2, 28, 28), np.uint8)}, "masks"),
        ({"image": np.zeros((48, 64), np.uint8)}, "image"),
        ({"image": np.zeros((64, 48, 3), np.uint8)}, "image"),  # not [height, width, 3]
        ({"image": np.zeros((48, 64, 3), np.float32)}, "image"),
        ({"colors": np.zeros((1, 3), np.float32)}, "colors"),
        ({"colors": np.zeros((2, 4), np.float32)}, "colors"),
        ({"colors": np.zeros((2, 3), np.uint8)}, "colors"),
    ],
)
def test_detections_arrays_are_consistent(changes: dict[str, Any], field: str) -> None:
    _refused(_det(**changes), f"Detections: {field}")


def _poisoned(name: str, index: tuple[int, ...], value: float) -> list[bytes]:
    arr = getattr(detections(), name).copy()
    arr[index] = value
    return _det(**{name: arr})


@pytest.mark.parametrize(
    "name, index, value",
    [("boxes", (0, 1), v) for v in (NAN, INF, -INF, 2e6, -2e6)]
    + [("scores", (1,), v) for v in (NAN, 1.5, -0.1, INF)]
    + [("masks", (1, 3, 4), v) for v in (NAN, INF, -INF)]
    + [("labels", (0,), -1)]
    + [("colors", (1, 2), v) for v in (INF, -INF, 255.5, -1.0)],  # NaN: unknown, allowed
)
def test_detections_values_are_in_range(name: str, index: tuple[int, ...], value: float) -> None:
    _refused(_poisoned(name, index, value), f"Detections: {name}")


@pytest.mark.parametrize(
    "field, value",
    [("stream", v) for v in BAD_NAMES]
    + [(side, v) for side in ("width", "height") for v in (0, -5, 10**9, "64", 64.0)]
    + [("frame", v) for v in (-1, "0")]
    + [("pts", v) for v in (NAN, INF, "0")]
    + [("wall_time", v) for v in (NAN, None)]
    + [("infer_ms", v) for v in (-1.0, NAN, INF, "12")]
    + [("batch", v) for v in (0, -1, 1.5, False)],
)
def test_detections_scalar_contents(field: str, value: Any) -> None:
    header, buffers = _header_of(detections(image=False))
    header[field] = value
    _refused([json.dumps(header).encode(), *buffers], f"Detections: {field}")


@pytest.mark.parametrize(
    "field, value",
    [("stream", v) for v in BAD_NAMES]
    + [("frames", v) for v in (-1, "3", None, 3.0, True)]
    + [("error", v) for v in (None, 5, ["x"])]
    + [("lost", v) for v in ("no", 0, None)]
    + [("prev", v) for v in (-2, "2", None, 2.0, True)],
)
def test_end_of_stream_contents(field: str, value: Any) -> None:
    _refused(_with(EndOfStream("clip", 3, "", False), **{field: value}), f"EndOfStream: {field}")


def test_end_of_stream_prev_is_optional_on_the_wire() -> None:
    """A sender from before the dispatcher named its last frame: absent reads as -1."""
    msg = decode(_with(EndOfStream("clip", 3, prev=2), prev=...))
    assert msg == EndOfStream("clip", 3) and msg.prev == -1


def _instance(**changes: Any) -> dict[str, Any]:
    inst = dict(result().instances[0])
    for key, value in changes.items():
        if value is ...:
            del inst[key]
        else:
            inst[key] = value
    return inst


@pytest.mark.parametrize(
    "changes, match",
    [
        ({"box": ...}, "misses field.*box"),
        ({"extra": 1}, "unknown field.*extra"),
        ({"label": -1}, "label"),
        ({"label": True}, "label"),
        ({"label": 1.0}, "label"),
        ({"label_name": 5}, "label_name"),
        ({"label_name": "x" * 257}, "label_name"),
        ({"score": 1.5}, "score"),
        ({"score": NAN}, "score"),
        ({"score": "0.9"}, "score"),
        ({"box": [1, 2, 3]}, "box"),
        ({"box": [1, 2, 3, "4"]}, "box"),
        ({"box": [1, 2, 3, INF]}, "box"),
        ({"box": [1, 2, 3, 2e6]}, "box"),
        ({"rle": {"size": [6, 8], "counts": "x"}}, "rle"),  # not this frame's size
        ({"rle": {"size": [48, 64], "counts": 5}}, "rle"),
        ({"rle": {"size": [48, 64], "counts": "x", "extra": 1}}, "rle"),
        ({"rle": {"size": [True, 64], "counts": "x"}}, "rle"),
        ({"rle": "x"}, "rle"),
    ],
)
def test_result_instances_are_valid_instance_records(changes: dict[str, Any], match: str) -> None:
    res = result()
    instances = [res.instances[0], _instance(**changes)]
    _refused(_with(res, instances=instances), rf"Result: instances\[1\]: .*{match}")
    topic, header = encode_published(res)
    published = json.loads(header)
    published["instances"] = instances
    with pytest.raises(ProtocolError, match=rf"Result: instances\[1\]: .*{match}"):
        decode_published([topic, json.dumps(published).encode()])


@pytest.mark.parametrize(
    "field, value",
    [("stream", v) for v in BAD_NAMES]
    + [("instances", v) for v in (None, {"0": {}}, "[]", [7])]
    + [(side, v) for side in ("width", "height") for v in (0, 16385, "48")]
    + [("seq", v) for v in (-1, None, 1.0)]
    + [("pts", v) for v in (NAN, "0")],
)
def test_result_contents(field: str, value: Any) -> None:
    _refused(_with(result(), **{field: value}), f"Result: {field}")


@pytest.mark.parametrize(
    "field, value, match",
    [("stage", v, "stage") for v in ("", 5, None, "a/b")]
    + [("counters", v, "counters") for v in ([], None, "x", {"clip": 5}, {"clip": []})]
    + [("counters", {"a/b": {}}, "counters stream")]
    + [("counters", {"clip": {"in": v}}, r"counters\['clip'\]\['in'\]") for v in ("1", -1, 1.5)]
    + [("counters", {"clip": {"out": None}}, r"\['out'\]")]
    + [("counters", {"clip": {"dropped": v}}, "dropped") for v in ([], 3, {"stale": "1"})]
    + [("counters", {"clip": {"dropped": {"stale": -1}}}, "dropped")]
    + [("counters", {"clip": {"lost": "yes"}}, "lost")]
    + [("counters", {"clip": {"expected": "120"}}, "expected")]
    + [("counters", {"clip": {"latency_p50_ms": "85"}}, "latency_p50_ms")]
    + [("busy_s", v, "busy_s") for v in (-1.0, NAN, INF, "1", None)]
    + [("final", v, "final") for v in ("yes", 1, None)]
    + [("extra", v, "extra") for v in ([], None, "x")]
    + [("extra", {"frames_expected": "x"}, "frames_exp"), ("extra", {"rejected": -1}, "rejected")]
    + [("name", v, "name") for v in (5, None, "\ud800")]
    + [(f, v, f) for f in ("ready", "ended", "heartbeat", "busy") for v in ("yes", 1, None)]
    # a control field in extra too would say two things: refused, whatever its value
    + [
        ("extra", {f: v}, rf"extra\[{f!r}\] must be absent")
        for f in ("name", "ready", "ended", "heartbeat", "busy")
        for v in (True, "source[a]")
    ],
)
def test_stats_contents(field: str, value: Any, match: str) -> None:
    _refused(_with(stats_source(), **{field: value}), f"Stats: .*{match}")


def test_stats_accept_counters_they_do_not_know() -> None:
    """Stages may report more than the runner reads (any JSON value, within the nesting limit)."""
    counters = {"clip": {"in": 1, "gpu": {"mem_mb": [1, 2.5, None]}, "note": "warm"}}
    msg = Stats("inference", counters, extra={"model": {"name": "shapes", "fp16": False}})
    assert _round_trip(msg) == msg


def test_detections_colours_may_be_unknown() -> None:
    det = detections()
    unknown = Detections(**{**det.__dict__, "colors": np.full((2, 3), NAN, np.float32)})
    out = _round_trip(unknown)
    assert isinstance(out, Detections) and np.isnan(out.colors).all()


def test_stats_control_fields_are_typed_and_optional_on_the_wire() -> None:
    """name, ready, ended and heartbeat are Stats fields; a header without them (a sender from
    before they were typed, same protocol version) reads as their defaults."""
    header, buffers = _header_of(stats_source())
    assert (header["name"], header["ended"], header["ready"]) == ("source[cam 1]", True, False)
    for key in ("name", "ready", "ended", "heartbeat", "busy"):
        del header[key]
    msg = decode([json.dumps(header).encode(), *buffers])
    assert isinstance(msg, Stats)
    assert (msg.name, msg.ready, msg.ended, msg.heartbeat, msg.busy) == (
        "",
        False,
        False,
        False,
        False,
    )
    assert msg.sender == "source"  # no name: the stage reported for itself
    assert stats_heartbeat().sender == "source[cam 1]"


def test_stats_figures_show_the_control_fields_a_report_shows() -> None:
    """A run report's per-stage figures keep name, ready and ended beside the other figures."""
    assert stats_source().figures() == {
        "name": "source[cam 1]",
        "frames_expected": None,
        "error": "",
        "ended": True,
    }
    assert stats_postprocess().figures() == {"name": "postprocess", "ready": True, "rejected": 0}
    assert Stats("inference", {}).figures() == {"name": "inference"}
