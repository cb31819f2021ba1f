"""COCO mask/box AP, refusals and MOT figures on tiny hand-made cases whose answer is known."""

import json

import numpy as np
import pycocotools.mask as mask_utils
import pytest

from streamseg.tools import mot
from streamseg.tools.evaluate import EvalError, evaluate, evaluate_tracks, load_results, main, table
from streamseg.tools.mot import MotAccumulator, MotSummary


def rle(mask: np.ndarray) -> dict:
    r = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": r["size"], "counts": r["counts"].decode()}


def box_mask(x: int, y: int, w: int, h: int) -> np.ndarray:
    m = np.zeros((40, 60), bool)
    m[y : y + h, x : x + w] = True
    return m


@pytest.fixture()
def gt(tmp_path):
    """One frame: a circle (category 1) and a square (category 2), each 10x10 px."""
    anns = []
    for i, (cat, m) in enumerate([(1, box_mask(5, 5, 10, 10)), (2, box_mask(30, 20, 10, 10))]):
        anns.append(
            {"id": i + 1, "image_id": 1, "category_id": cat, "segmentation": rle(m),
             "area": float(m.sum()), "bbox": list(mask_utils.toBbox(rle(m))), "iscrowd": 0}
        )  # fmt: skip
    data = {
        "images": [{"id": 1, "frame": 0, "width": 60, "height": 40, "file_name": "f#0"}],
        "annotations": anns,
        "categories": [{"id": c, "name": n} for c, n in [(1, "circle"), (2, "square"), (3, "t")]],
    }
    path = tmp_path / "gt.json"
    path.write_text(json.dumps(data))
    return path


def record(*instances) -> dict:
    return {"stream": "s", "frame": 0, "pts": 0.0, "width": 60, "height": 40,
            "instances": [{"label": c, "label_name": "", "score": s, "box": [0, 0, 1, 1],
                           "rle": rle(m)} for c, s, m in instances]}  # fmt: skip


def test_perfect_results_score_one(gt):
    r = record((1, 0.9, box_mask(5, 5, 10, 10)), (2, 0.8, box_mask(30, 20, 10, 10)))
    s = evaluate([r], gt)
    assert (s["AP"], s["AP50"], s["AP75"]) == pytest.approx((1.0, 1.0, 1.0))
    assert (s["images"], s["detections"]) == (1, 2)


def test_one_class_missed_halves_ap(gt):
    s = evaluate([record((1, 0.9, box_mask(5, 5, 10, 10)))], gt)
    assert (s["AP"], s["AP50"], s["AP75"]) == pytest.approx((0.5, 0.5, 0.5))


def test_iou_072_counts_at_five_of_ten_thresholds(gt):
    # 9x8 = 72 px inside the 100 px circle: IoU 0.72 passes thresholds .50 .. .70, fails .75 ..
    r = record((1, 0.9, box_mask(5, 5, 9, 8)), (2, 0.8, box_mask(30, 20, 10, 10)))
    s = evaluate([r], gt)
    assert s["AP50"] == pytest.approx(1.0)
    assert s["AP75"] == pytest.approx(0.5)  # square right, circle wrong at .75
    assert s["AP"] == pytest.approx((0.5 + 1.0) / 2)  # circle 5/10 thresholds, square all


def test_no_detections_scores_zero(gt):
    assert evaluate([record()], gt)["AP"] == 0.0


def test_bad_results_file(tmp_path, gt):
    p = tmp_path / "r.jsonl"
    p.write_text("not json\n")
    with pytest.raises(EvalError, match="not a JSON line"):
        load_results(p)
    p.write_text(json.dumps({**record(), "frame": 7}) + "\n")
    with pytest.raises(EvalError, match="frame 7"):
        evaluate(load_results(p), gt)


# --- bbox AP/AR and refusals -------------------------------------------------------------------


def boxed(cat: int, score: float, m: np.ndarray, track_id: int | None = None) -> dict:
    ys, xs = np.nonzero(m)
    box = [float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)]
    inst = {"label": cat, "label_name": "", "score": score, "rle": rle(m), "box": box}
    if track_id is not None:
        inst["track_id"] = track_id
    return inst


def frame_record(frame: int, *instances: dict, width: int = 60, height: int = 40) -> dict:
    return {"stream": "s", "frame": frame, "pts": 0.0, "width": width, "height": height,
            "instances": list(instances)}  # fmt: skip


def test_bbox_ap_and_ar(gt):
    r = frame_record(
        0, boxed(1, 0.9, box_mask(5, 5, 10, 10)), boxed(2, 0.8, box_mask(30, 20, 9, 8))
    )
    s = evaluate([r], gt)
    # The square's IoU is .72 for masks and boxes: 5 of 10 thresholds; the circle's is 1.
    assert (s["AP"], s["bbox_AP"]) == pytest.approx((0.75, 0.75))
    assert (s["AR"], s["bbox_AR"]) == pytest.approx((0.75, 0.75))
    assert (s["bbox_AP50"], s["bbox_AP75"]) == pytest.approx((1.0, 0.5))
    text = table(s)
    assert text.splitlines()[0].split()[:2] == ["mask", "AP"]
    assert text.splitlines()[1].split()[:2] == ["0.750", "1.000"]
    assert "bbox AP" in text


@pytest.mark.parametrize(
    ("records", "message"),
    [
        ([], "no frames"),
        ([frame_record(5)], r"results \(frame 5\) and ground truth \(frame 0\) share no frame"),
        ([frame_record(0, width=64, height=48)], "frame 0 is 64x48 but its ground-truth image is"),
        ([frame_record(0), frame_record(0)], "frame 0 appears twice"),
        ([frame_record(0), {**frame_record(1), "stream": "t"}], r"several streams \(s, t\)"),
    ],
)  # fmt: skip
def test_refuses_results_of_another_clip(gt, records, message):
    with pytest.raises(EvalError, match=message):
        evaluate(records, gt)


def test_main_one_line_errors(tmp_path, gt):
    with pytest.raises(EvalError, match="no such file"):
        main(str(tmp_path / "missing.jsonl"), str(gt))
    bad_gt = tmp_path / "bad.json"
    bad_gt.write_text("[1, 2]")
    results = tmp_path / "r.jsonl"
    results.write_text(json.dumps(frame_record(0)) + "\n")
    with pytest.raises(EvalError, match="not COCO ground truth"):
        main(str(results), str(bad_gt))
    results.write_text(json.dumps({"frame": "0", "instances": []}) + "\n")
    with pytest.raises(EvalError, match="r.jsonl:1: not a streamseg results record"):
        main(str(results), str(gt))


# --- MOT figures: hand-computed cases ----------------------------------------------------------


def run_mot(frames: list[tuple[list[int], list[int], list[list[float]]]]) -> MotSummary:
    acc = MotAccumulator(0.5)
    for gt_ids, pred_ids, iou in frames:
        acc.update(gt_ids, pred_ids, np.array(iou, float).reshape(len(gt_ids), len(pred_ids)))
    return acc.summary()


def test_mot_perfect_and_empty():
    s = run_mot([([1, 2], [7, 8], [[1, 0], [0, 1]])] * 3)
    assert (s.idf1, s.mota, s.motp, s.id_switches) == (1.0, 1.0, 1.0, 0)
    assert (s.frames, s.gt_tracks, s.pred_tracks, s.gt_instances, s.matches) == (3, 2, 2, 6, 6)
    empty = run_mot([])
    assert (empty.frames, empty.idf1, empty.mota, empty.id_switches) == (0, 0.0, 0.0, 0)
    nothing = run_mot([([], [], [])] * 2)
    assert (nothing.frames, nothing.gt_instances, nothing.misses) == (2, 0, 0)


def test_mot_one_switch():
    # One object, 4 frames; the tracker changes its id after frame 1.
    s = run_mot([([1], [10], [[0.8]])] * 2 + [([1], [11], [[0.8]])] * 2)
    assert (s.matches, s.id_switches, s.misses, s.false_positives) == (4, 1, 0, 0)
    assert s.mota == pytest.approx(1 - 1 / 4)
    assert s.motp == pytest.approx(0.8)
    assert s.idtp == 2 and s.idf1 == pytest.approx(2 * 2 / (4 + 4))


def test_mot_swap_counts_two_switches():
    # a, b crossing; the tracker swaps their ids at frame 2.
    straight, swapped = [[0.9, 0.0], [0.0, 0.9]], [[0.0, 0.9], [0.9, 0.0]]
    s = run_mot([([1, 2], [1, 2], straight)] * 2 + [([1, 2], [1, 2], swapped)] * 2)
    assert s.id_switches == 2
    assert s.mota == pytest.approx(1 - 2 / 8)
    assert s.idf1 == pytest.approx(0.5)


def test_mot_keeps_an_established_match():
    # Frame 1: a better-fitting prediction appears, but the earlier pair may still match.
    s = run_mot([([1], [1], [[0.6]]), ([1], [1, 2], [[0.6, 0.9]])])
    assert (s.matches, s.id_switches, s.false_positives) == (2, 0, 1)
    assert s.motp == pytest.approx(0.6)
    assert s.mota == pytest.approx(1 - 1 / 2)


def test_mot_miss_then_new_id_is_a_switch():
    s = run_mot([([1], [1], [[0.9]])] * 2 + [([1], [], [])] + [([1], [2], [[0.9]])])
    assert (s.matches, s.misses, s.id_switches) == (3, 1, 1)
    assert s.mota == pytest.approx(1 - 2 / 4)
    assert s.idf1 == pytest.approx(2 * 2 / (4 + 3))


def test_mot_iou_threshold_is_inclusive():
    s = run_mot([([1], [1], [[0.5]]), ([1], [1], [[0.49]])])
    assert (s.matches, s.misses, s.false_positives) == (1, 1, 1)


def test_idf1_takes_the_global_best_mapping():
    # Pair frames: a-1: 3, a-2: 2, b-1: 2. Greedy (a-1 first) gets 3; the best mapping
    # (a-2, b-1) gets 4.
    frames = [([1], [1], [[0.9]])] * 3 + [([1, 2], [1, 2], [[0.0, 0.9], [0.9, 0.0]])] * 2
    s = run_mot(frames)
    assert s.idtp == 4
    assert s.idf1 == pytest.approx(2 * 4 / (7 + 7))
    assert (s.idp, s.idr) == pytest.approx((4 / 7, 4 / 7))
    assert s.id_switches == 1  # a: 1 -> 2


def test_mot_matches_motmetrics_on_random_sequences():
    mm = pytest.importorskip("motmetrics")
    rng = np.random.default_rng(0)
    for _ in range(5):
        acc, ref = MotAccumulator(0.5), mm.MOTAccumulator(auto_id=True)
        for _ in range(40):
            gt_ids = rng.choice(6, rng.integers(0, 5), replace=False) + 1
            pred_ids = rng.choice(8, rng.integers(0, 5), replace=False) + 1
            iou = rng.uniform(0, 1, (len(gt_ids), len(pred_ids))) ** 2
            acc.update(gt_ids, pred_ids, iou)
            ref.update(gt_ids, pred_ids, np.where(iou >= 0.5, 1 - iou, np.nan))
        s = acc.summary()
        r = mm.metrics.create().compute(
            ref, metrics=["idf1", "mota", "motp", "num_switches", "num_misses"], name="x"
        )
        assert s.idf1 == pytest.approx(r["idf1"].iloc[0])
        assert s.mota == pytest.approx(r["mota"].iloc[0])
        assert s.motp == pytest.approx(1 - r["motp"].iloc[0])
        assert s.id_switches == r["num_switches"].iloc[0]
        assert s.misses == r["num_misses"].iloc[0]


# --- eval --tracks -----------------------------------------------------------------------------


@pytest.fixture()
def track_gt(tmp_path):
    """Three frames: object 1 (circle) moves right; object 2 (square) appears in frame 1."""
    anns, images = [], []
    for f in range(3):
        images.append({"id": f + 1, "frame": f, "width": 60, "height": 40, "file_name": f"c#{f}"})
        objs = [(1, 1, box_mask(5 + 5 * f, 5, 10, 10))]
        if f >= 1:
            objs.append((2, 2, box_mask(40, 20, 10, 10)))
        for tid, cat, m in objs:
            anns.append({"id": len(anns) + 1, "image_id": f + 1, "category_id": cat,
                         "segmentation": rle(m), "area": float(m.sum()), "iscrowd": 0,
                         "bbox": list(mask_utils.toBbox(rle(m))), "track_id": tid})  # fmt: skip
    data = {"images": images, "annotations": anns,
            "categories": [{"id": 1, "name": "circle"}, {"id": 2, "name": "square"}]}  # fmt: skip
    path = tmp_path / "track_gt.json"
    path.write_text(json.dumps(data))
    return path


def test_eval_tracks(track_gt):
    records = [
        frame_record(0, boxed(1, 0.9, box_mask(5, 5, 10, 10), 7)),
        frame_record(1, boxed(1, 0.9, box_mask(10, 5, 10, 10), 7),
                     boxed(2, 0.8, box_mask(40, 20, 10, 10), 8)),
        # Frame 2: the circle gets a new id; the square is labelled a circle (no match).
        frame_record(2, boxed(1, 0.9, box_mask(15, 5, 10, 10), 9),
                     boxed(1, 0.8, box_mask(40, 20, 10, 10), 8)),
    ]  # fmt: skip
    s = evaluate_tracks(records, track_gt)
    assert (s.frames, s.gt_tracks, s.gt_instances, s.pred_instances) == (3, 2, 5, 5)
    assert (s.matches, s.misses, s.false_positives, s.id_switches) == (4, 1, 1, 1)
    assert s.mota == pytest.approx(1 - 3 / 5)
    # Best mapping: object 1 -> 7 (2 frames), object 2 -> 8 (1 frame).
    assert s.idf1 == pytest.approx(2 * 3 / (5 + 5))
    assert "IDF1" in mot.table(s)


def test_eval_tracks_needs_ids(track_gt, gt):
    r = frame_record(0, boxed(1, 0.9, box_mask(5, 5, 10, 10)))
    with pytest.raises(EvalError, match="carry no track_id"):
        evaluate_tracks([r], track_gt)
    with pytest.raises(EvalError, match="without a track_id"):
        evaluate_tracks([r], gt)
    # Missing frames of the ground truth count as missed; an instance without id is its own.
    r = frame_record(
        0, boxed(1, 0.9, box_mask(5, 5, 10, 10), 3), boxed(1, 0.5, box_mask(40, 20, 10, 10))
    )
    s = evaluate_tracks([r], track_gt)
    assert (s.matches, s.misses, s.false_positives, s.pred_tracks) == (1, 4, 1, 2)
