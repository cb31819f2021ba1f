"""`streamseg eval`: COCO mask AP of a results file against ground truth (pycocotools)."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path
from typing import Any

from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval


class EvalError(ValueError):
    """Results and ground truth that cannot be compared; one line for the user."""


def load_results(path: str | Path) -> list[dict[str, Any]]:
    """The records of a results (.jsonl) file, checking each line is a frame record."""
    records = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                raise EvalError(f"{path}:{n}: not a JSON line") from None
            if not isinstance(rec, dict) or "frame" not in rec or "instances" not in rec:
                raise EvalError(f"{path}:{n}: not a streamseg results record")
            records.append(rec)
    return records


def to_coco_detections(
    records: list[dict[str, Any]], frame_to_image: dict[int, int]
) -> list[dict[str, Any]]:
    """Results records -> pycocotools detection results (segm), matched to GT images by frame."""
    dets = []
    for rec in records:
        image_id = frame_to_image.get(int(rec["frame"]))
        if image_id is None:
            raise EvalError(f"frame {rec['frame']} has no image in the ground truth")
        for inst in rec["instances"]:
            x1, y1, x2, y2 = inst["box"]
            dets.append(
                {
                    "image_id": image_id,
                    "category_id": int(inst["label"]),
                    "segmentation": inst["rle"],
                    "bbox": [x1, y1, x2 - x1, y2 - y1],
                    "score": float(inst["score"]),
                }
            )
    return dets


def evaluate(records: list[dict[str, Any]], gt_path: str | Path) -> dict[str, float]:
    """Mask AP (IoU .50:.95), AP50, AP75 over all frames of the ground truth."""
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
        gt = COCO(str(gt_path))
    frame_to_image = {int(img.get("frame", img["id"] - 1)): img["id"] for img in gt.imgs.values()}
    dets = to_coco_detections(records, frame_to_image)
    if not dets:
        return {"AP": 0.0, "AP50": 0.0, "AP75": 0.0, "images": len(gt.imgs), "detections": 0}
    with contextlib.redirect_stdout(io.StringIO()):
        dt = gt.loadRes(dets)
        ev = COCOeval(gt, dt, iouType="segm")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    ap, ap50, ap75 = (max(0.0, float(v)) for v in ev.stats[:3])
    return {"AP": ap, "AP50": ap50, "AP75": ap75, "images": len(gt.imgs), "detections": len(dets)}


def table(scores: dict[str, float]) -> str:
    return (
        f"{'mask AP':>8} {'AP50':>7} {'AP75':>7}   images detections\n"
        f"{scores['AP']:8.3f} {scores['AP50']:7.3f} {scores['AP75']:7.3f}   "
        f"{scores['images']:6d} {scores['detections']:10d}"
    )


def main(results: str, gt: str) -> int:
    for p in (results, gt):
        if not Path(p).is_file():
            raise EvalError(f"no such file: {p}")
    print(table(evaluate(load_results(results), gt)))
    return 0
