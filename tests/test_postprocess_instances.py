"""Postprocess drops duplicates and joins the fragments the tracker finds, on
Detections that came through the wire, and the results carry the joined masks."""

from __future__ import annotations

import numpy as np
import pycocotools.mask as mask_utils

from streamseg.postprocess.main import _Frame, _track
from streamseg.postprocess.results import make_result
from streamseg.wire.protocol import Detections, decode, encode

H, W = 120, 160
NAMES = ["bg", "a", "b"]


def detections(
    frame: int, boxes: list[list[float]], scores: list[float], labels: list[int] | None = None
) -> Detections:
    """Instances (label 2 unless given) whose masks fill their boxes, through the wire."""
    n = len(boxes)
    det = Detections(
        stream="cam",
        frame=frame,
        pts=frame / 30,
        wall_time=0.0,
        width=W,
        height=H,
        boxes=np.array(boxes, np.float32).reshape(n, 4),
        scores=np.array(scores, np.float32),
        labels=np.array(labels or [2] * n, np.int64).reshape(n),
        masks=np.ones((n, 28, 28), np.float32),
        colors=np.full((n, 3), 120.0, np.float32),
    )
    return decode([bytearray(memoryview(p)) for p in encode(det)])


def frame_of(det: Detections) -> tuple[_Frame, np.ndarray]:
    """The frame's _Frame and its instances' full masks, pasted as make_result does."""
    result, local = make_result(det, mask_threshold=0.5, label_names=NAMES)
    return _Frame(det, result, local), local.full()


def test_fragments_are_joined_into_one_instance() -> None:
    trackers: dict = {}
    for f in range(4):  # a 40 x 40 square, whole
        det = detections(f, [[40 + f, 30, 80 + f, 70]], [0.9])
        frame, _ = frame_of(det)
        assert _track(trackers, det, frame, {"max_missed": 60}) == [1]
    # then as two pieces, with a second object far away
    det = detections(4, [[44, 30, 70, 70], [70, 30, 84, 70], [120, 80, 150, 110]], [0.9, 0.6, 0.8])
    frame, full = frame_of(det)
    ids = _track(trackers, det, frame, {"max_missed": 60})
    assert ids == [1, 2]
    assert len(frame.result.instances) == len(frame.local) == len(frame.scores) == 2
    joined = frame.result.instances[0]
    assert joined["box"] == [44.0, 30.0, 84.0, 70.0]
    assert np.array_equal(mask_utils.decode(joined["rle"]).astype(bool), full[0] | full[1])
    assert np.array_equal(frame.local.full()[0], full[0] | full[1])
    assert np.array_equal(frame.local.full()[1], full[2])
    assert frame.result.instances[1]["score"] == 0.8
    assert frame.boxes.tolist() == [[44, 30, 84, 70], [120, 80, 150, 110]]


def test_duplicates_are_dropped_before_tracking() -> None:
    det = detections(0, [[40, 30, 80, 70], [42, 30, 82, 70], [100, 30, 140, 70]], [0.7, 0.9, 0.8])
    frame, full = frame_of(det)
    assert frame.drop_duplicates(0.0) == 0 and len(frame.local) == 3
    assert frame.drop_duplicates(0.3) == 1
    assert [i["score"] for i in frame.result.instances] == [0.9, 0.8]
    assert np.array_equal(frame.local.full(), full[[1, 2]])
    assert frame.labels.tolist() == [2, 2] and frame.colors.shape == (2, 3)
    assert _track({}, det, frame, {"max_missed": 60}) == [1, 2]


def test_cross_label_duplicates_are_dropped_when_asked() -> None:
    det = detections(0, [[40, 30, 80, 70], [42, 30, 82, 70]], [0.7, 0.9], [1, 2])  # two names
    frame, full = frame_of(det)
    assert frame.drop_duplicates(0.3) == 0 and len(frame.local) == 2
    assert frame.drop_duplicates(0.3, 0.6) == 1
    assert frame.labels.tolist() == [2] and [i["score"] for i in frame.result.instances] == [0.9]
    assert np.array_equal(frame.local.full(), full[[1]])


def test_low_scores_stay_only_where_they_continue_a_track() -> None:
    """Postprocess's order with track_score_threshold: duplicates (counted from the score
    bar), the tracker (new_track_score = the bar), then low instances no track took leave."""
    trackers: dict = {}
    settings = {"max_missed": 60, "new_track_score": 0.5}
    for f in range(3):  # a square, confirmed
        det = detections(f, [[40 + f, 30, 80 + f, 70]], [0.9])
        frame, _ = frame_of(det)
        ids = _track(trackers, det, frame, settings)
        assert frame.drop_low(0.5, ids) == [1]
    # partly hidden (low), a low blob elsewhere, and a low copy of the square's pixels
    det = detections(3, [[43, 30, 70, 70], [120, 80, 150, 110], [43, 31, 70, 70]], [0.4, 0.35, 0.3])
    frame, full = frame_of(det)
    assert frame.drop_duplicates(0.3, 0.0, counted_from=0.5) == 0  # a copy below the bar
    assert len(frame.scores) == 2
    ids = frame.drop_low(0.5, _track(trackers, det, frame, settings))
    assert ids == [1] and [i["score"] for i in frame.result.instances] == [0.4]
    assert np.array_equal(frame.local.full(), full[[0]])
    # untracked (tracking off): every low instance leaves
    frame, _ = frame_of(det)
    assert frame.drop_low(0.5, [None] * 3) == [] and len(frame.result.instances) == 0
