"""Duplicates dropped and fragments joined on box-local crops, checked against full masks."""

from __future__ import annotations

import numpy as np
import pycocotools.mask as mask_utils
import pytest

from streamseg.postprocess.instances import (
    Instances,
    duplicates,
    join_boxes,
    join_masks,
    select,
    with_tracks,
)
from streamseg.postprocess.results import to_result
from streamseg.postprocess.tracking import Update, local_masks
from streamseg.wire.messages import Detections

H, W = 40, 60


def rect(x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
    m = np.zeros((H, W), bool)
    m[y0:y1, x0:x1] = True
    return m


def test_duplicates_are_same_label_overlaps_of_a_kept_instance() -> None:
    a = rect(10, 10, 30, 30)  # 400 px
    b = rect(15, 10, 35, 30)  # IoU with a: 300 / 500 = 0.6
    c = rect(22, 10, 42, 30)  # IoU with b: 260 / 540 = 0.48; with a: 160 / 640 = 0.25
    local = local_masks(np.array([a, b, c]))
    # b is a's duplicate; c overlaps only b, which is dropped, so c is kept (greedy, as NMS).
    assert duplicates(local, [1, 1, 1], [0.9, 0.8, 0.7], 0.3).tolist() == [False, True, False]
    # Scores decide, not order; equal scores: the earlier one wins.
    assert duplicates(local, [1, 1, 1], [0.5, 0.8, 0.7], 0.3).tolist() == [True, False, True]
    assert duplicates(local, [1, 1, 1], [0.8, 0.8, 0.8], 0.3).tolist() == [False, True, False]
    # Another label is never a duplicate; the bar is IoU >= min_iou.
    assert duplicates(local, [1, 2, 1], [0.9, 0.8, 0.7], 0.3).tolist() == [False] * 3
    assert duplicates(local, [1, 1, 1], [0.9, 0.8, 0.7], 0.6).tolist() == [False, True, False]
    assert duplicates(local, [1, 1, 1], [0.9, 0.8, 0.7], 0.61).tolist() == [False] * 3
    empty = local_masks(np.zeros((0, H, W), bool))
    assert duplicates(empty, [], [], 0.3).tolist() == []
    nothing = local_masks(np.array([np.zeros((H, W), bool), np.zeros((H, W), bool)]))
    assert duplicates(nothing, [1, 1], [0.9, 0.8], 0.3).tolist() == [False, False]
    with pytest.raises(ValueError, match="3 masks but 2 labels"):
        duplicates(local, [1, 1], [0.9, 0.8, 0.7], 0.3)
    with pytest.raises(ValueError, match="min_iou must be in"):
        duplicates(local, [1, 1, 1], [0.9, 0.8, 0.7], 1.5)
    with pytest.raises(ValueError, match="cross_label_iou must be in"):
        duplicates(local, [1, 1, 1], [0.9, 0.8, 0.7], 0.3, -0.1)


def test_cross_label_duplicates_have_their_own_bar() -> None:
    """One object called by two names: the lower-scored name goes when the masks overlap by
    cross_label_iou; min_iou stays the bar within a label, and 0 turns either off."""
    a = rect(10, 10, 30, 30)
    b = rect(15, 10, 35, 30)  # IoU with a: 0.6
    c = rect(22, 10, 42, 30)  # IoU with b: 0.48, with a: 0.25
    local = local_masks(np.array([a, b, c]))
    labels, scores = [1, 2, 1], [0.9, 0.8, 0.7]
    assert duplicates(local, labels, scores, 0.3, 0.6).tolist() == [False, True, False]
    assert duplicates(local, labels, scores, 0.3, 0.61).tolist() == [False] * 3
    # b goes; c would be b's copy (0.48 >= 0.45) but b is not kept, and c is not a's (0.25).
    assert duplicates(local, labels, scores, 0.3, 0.45).tolist() == [False, True, False]
    assert duplicates(local, labels, scores, 0.2, 0.61).tolist() == [False, False, True]
    # Same-label duplicates off (0), cross-label on: only the other label's copy goes.
    assert duplicates(local, [1, 1, 2], scores, 0.0, 0.2).tolist() == [False, False, True]
    assert duplicates(local, [1, 1, 2], scores, 0.0, 0.0).tolist() == [False] * 3


def test_select_and_join_match_full_masks() -> None:
    big, piece, other, far = (
        rect(10, 5, 30, 25),
        rect(30, 5, 38, 25),
        rect(45, 30, 55, 38),
        rect(0, 0, 3, 3),
    )
    full = np.array([big, piece, other, far, np.zeros((H, W), bool)])
    local = local_masks(full)
    assert np.array_equal(select(local, np.array([2, 0])).full(), full[[2, 0]])
    assert len(select(local, np.array([], np.int64))) == 0
    # piece and far are fragments of big; the empty mask (4) is a fragment of other.
    joins = np.array([-1, 0, -1, 0, 2])
    joined = join_masks(local, joins)
    expect = full.copy()
    expect[0] = big | piece | far
    assert np.array_equal(joined.full(), expect)
    assert (joined.x0[0], joined.y0[0], joined.w[0], joined.h[0]) == (0, 0, 38, 25)
    # An instance with an empty mask takes its fragment's pixels.
    empty_first = local_masks(np.array([np.zeros((H, W), bool), piece]))
    assert np.array_equal(join_masks(empty_first, np.array([-1, 0])).full()[0], piece)
    assert join_masks(local, np.full(5, -1)) is local
    for bad in ([-1, 0, 1, -1, -1], [-1, 5, -1, -1, -1], [-2, -1, -1, -1, -1], [-1, 0]):
        with pytest.raises(ValueError, match="joins"):
            join_masks(local, np.array(bad))

    boxes = np.array(
        [[10, 5, 30, 25], [30, 5, 38, 25], [45, 30, 55, 38], [0, 0, 3, 3], [1, 1, 2, 2]]
    )
    grown = join_boxes(boxes, joins)
    assert grown[0].tolist() == [0, 0, 38, 25]
    assert grown[2].tolist() == [1, 1, 55, 38]
    assert np.array_equal(grown[[1, 3, 4]], boxes[[1, 3, 4]])


def test_joined_results_carry_the_joined_mask() -> None:
    """The instance a fragment joins gets the union's mask, RLE-encoded once (as pycocotools
    encodes it), and the grown box; the fragment is gone; the others are untouched."""
    left, right, other = rect(10, 5, 22, 25), rect(22, 5, 30, 25), rect(40, 10, 50, 20)
    boxes = np.array([[10, 5, 22, 25], [22, 5, 30, 25], [40, 10, 50, 20]], np.float32)
    inst = Instances(
        masks=local_masks(np.array([left, right, other])),
        boxes=boxes,
        labels=np.ones(3, np.int64),
        scores=np.array([0.9, 0.6, 0.8], np.float32),
        colors=np.full((3, 3), np.nan),
        track_ids=np.full(3, -1, np.int64),
    )
    update = Update(ids=np.array([4, -1, 5]), joins=np.array([-1, 0, -1]))
    out, joined = with_tracks(inst, update)
    assert joined == 1 and out.track_id_list() == [4, 5]
    det = Detections("cam", 7, 0.2, 0.0, W, H, boxes, inst.scores, inst.labels, np.ones((3, 1, 1)))
    records = to_result(det, out, label_names=["bg", "a"]).instances
    assert len(records) == 2
    assert records[0]["box"] == [10.0, 5.0, 30.0, 25.0]
    union = np.asfortranarray((left | right).astype(np.uint8))
    assert records[0]["rle"]["counts"] == mask_utils.encode(union)["counts"].decode()
    alone = mask_utils.encode(np.asfortranarray(other.astype(np.uint8)))["counts"].decode()
    assert records[1]["rle"]["counts"] == alone and records[1]["box"] == [40.0, 10.0, 50.0, 20.0]
    assert [r["track_id"] for r in records] == [4, 5] and records[1]["score"] == 0.8
    none = Update(ids=np.array([4, 6, 5]), joins=np.full(3, -1))
    assert with_tracks(inst, none)[0].masks is inst.masks
