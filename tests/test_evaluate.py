"""COCO mask AP on tiny hand-made cases whose answer is known."""

import json

import numpy as np
import pycocotools.mask as mask_utils
import pytest

from streamseg.tools.evaluate import EvalError, evaluate, load_results


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
