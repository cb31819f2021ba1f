"""Postprocess's steps on arrays (postprocess.frame): duplicates dropped, the fragments the
tracker finds joined, low scores dropped, on Detections that came through the wire; the results
record, built once from the survivors, carries the joined masks."""

from __future__ import annotations

import numpy as np
import pycocotools.mask as mask_utils

from streamseg.postprocess.frame import Rules, survivors
from streamseg.postprocess.instances import Instances, deduplicate, drop_low, with_tracks
from streamseg.postprocess.results import paste, to_result
from streamseg.postprocess.tracking import NO_TRACK, Tracker, Update
from streamseg.wire.codec import decode, encode
from streamseg.wire.messages import Detections

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


def pasted(det: Detections) -> tuple[Instances, np.ndarray]:
    """The frame's instances as postprocess pastes them, and their full masks."""
    inst = paste(det, mask_threshold=0.5)
    return inst, inst.masks.full()


def tracked(tracker: Tracker, det: Detections, inst: Instances) -> tuple[Instances, int]:
    """``inst`` with the ids and joins ``tracker`` decides."""
    update = tracker.update(
        det.frame, inst.masks, inst.boxes, inst.labels, inst.scores, inst.colors
    )
    return with_tracks(inst, update)


def test_fragments_are_joined_into_one_instance() -> None:
    tracker = Tracker(max_missed=60)
    for f in range(4):  # a 40 x 40 square, whole
        det = detections(f, [[40 + f, 30, 80 + f, 70]], [0.9])
        inst, joined = tracked(tracker, det, pasted(det)[0])
        assert inst.track_id_list() == [1] and joined == 0
    # then as two pieces, with a second object far away
    det = detections(4, [[44, 30, 70, 70], [70, 30, 84, 70], [120, 80, 150, 110]], [0.9, 0.6, 0.8])
    inst, full = pasted(det)
    inst, joined = tracked(tracker, det, inst)
    assert inst.track_id_list() == [1, 2] and joined == 1
    assert len(inst) == len(inst.masks) == len(inst.boxes) == len(inst.colors) == 2
    result = to_result(det, inst, label_names=NAMES)
    joined_record = result.instances[0]
    assert joined_record["box"] == [44.0, 30.0, 84.0, 70.0]
    assert np.array_equal(mask_utils.decode(joined_record["rle"]).astype(bool), full[0] | full[1])
    assert np.array_equal(inst.masks.full()[0], full[0] | full[1])
    assert np.array_equal(inst.masks.full()[1], full[2])
    assert result.instances[1]["score"] == 0.8
    assert [r["track_id"] for r in result.instances] == [1, 2]
    assert inst.boxes.dtype == np.float32
    assert inst.boxes.tolist() == [[44, 30, 84, 70], [120, 80, 150, 110]]


def test_duplicates_are_dropped_before_tracking() -> None:
    det = detections(0, [[40, 30, 80, 70], [42, 30, 82, 70], [100, 30, 140, 70]], [0.7, 0.9, 0.8])
    inst, full = pasted(det)
    same, dropped = deduplicate(inst, 0.0)
    assert dropped == 0 and same is inst
    inst, dropped = deduplicate(inst, 0.3)
    assert dropped == 1
    assert [i["score"] for i in to_result(det, inst, label_names=NAMES).instances] == [0.9, 0.8]
    assert np.array_equal(inst.masks.full(), full[[1, 2]])
    assert inst.labels.tolist() == [2, 2] and inst.colors.shape == (2, 3)
    assert tracked(Tracker(max_missed=60), det, inst)[0].track_id_list() == [1, 2]


def test_cross_label_duplicates_are_dropped_when_asked() -> None:
    det = detections(0, [[40, 30, 80, 70], [42, 30, 82, 70]], [0.7, 0.9], [1, 2])  # two names
    inst, full = pasted(det)
    assert deduplicate(inst, 0.3)[1] == 0
    inst, dropped = deduplicate(inst, 0.3, 0.6)
    assert dropped == 1
    assert inst.labels.tolist() == [2] and inst.scores.tolist() == [np.float32(0.9)]
    assert np.array_equal(inst.masks.full(), full[[1]])


def test_low_scores_stay_only_where_they_continue_a_track() -> None:
    """Postprocess's order with track_score_threshold: duplicates (counted from the score
    bar), the tracker (new_track_score = the bar), then low instances no track took leave."""
    rules = Rules(mask_threshold=0.5, mask_nms=0.3, score_threshold=0.5)
    tracker = Tracker(max_missed=60, new_track_score=0.5)
    for f in range(3):  # a square, confirmed
        det = detections(f, [[40 + f, 30, 80 + f, 70]], [0.9])
        inst, counted = survivors(det, rules, tracker)
        assert inst.track_id_list() == [1] and counted == {}
    # partly hidden (low), a low blob elsewhere, and a low copy of the square's pixels
    det = detections(3, [[43, 30, 70, 70], [120, 80, 150, 110], [43, 31, 70, 70]], [0.4, 0.35, 0.3])
    inst, full = pasted(det)
    deduped, counted = deduplicate(inst, 0.3, 0.0, counted_from=0.5)
    assert counted == 0 and len(deduped) == 2  # a copy below the bar: dropped, not counted
    inst, counted = survivors(det, rules, tracker)
    assert counted == {} and inst.track_id_list() == [1]
    result = to_result(det, inst, label_names=NAMES)
    assert [i["score"] for i in result.instances] == [0.4]
    assert np.array_equal(inst.masks.full(), full[[0]])
    # untracked (tracking off): every low instance leaves
    inst, counted = survivors(det, rules, None)
    assert (
        len(inst) == 0 and counted == {} and to_result(det, inst, label_names=NAMES).instances == []
    )


def test_each_step_on_a_frame_without_instances() -> None:
    det = detections(0, [], [])
    inst, full = pasted(det)
    assert len(inst) == 0 and full.shape == (0, H, W) and inst.track_id_list() == []
    assert deduplicate(inst, 0.3, 0.6) == (inst, 0)
    update = Update(np.zeros(0, np.int64), np.zeros(0, np.int64))
    assert with_tracks(inst, update)[1] == 0
    assert len(drop_low(inst, 0.5)) == 0
    inst, counted = survivors(det, Rules(mask_nms=0.3, score_threshold=0.5), Tracker())
    assert len(inst) == 0 and counted == {}
    result = to_result(det, inst, label_names=NAMES, seq=3)
    assert result.instances == [] and result.seq == 3
    assert result.to_json() == {
        "stream": "cam", "frame": 0, "pts": 0.0, "width": W, "height": H, "instances": []
    }  # fmt: skip


def test_drop_low_keeps_tracked_instances_only() -> None:
    det = detections(0, [[0, 0, 10, 10], [20, 0, 30, 10], [40, 0, 50, 10]], [0.9, 0.4, 0.3])
    inst, _ = pasted(det)
    assert drop_low(inst, 0.5).scores.tolist() == [np.float32(0.9)]
    ids = np.array([NO_TRACK, 7, NO_TRACK], np.int64)
    kept = drop_low(with_tracks(inst, Update(ids, np.full(3, -1, np.int64)))[0], 0.5)
    assert kept.track_id_list() == [None, 7]
    assert [r["track_id"] for r in to_result(det, kept, label_names=NAMES).instances] == [None, 7]
    assert drop_low(inst, 0.0) is inst
