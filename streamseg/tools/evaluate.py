"""`streamseg eval`: COCO mask and box AP/AR of a results file against ground truth
(pycocotools), and with `--tracks` the MOT figures of its track ids (streamseg.tools.mot).

Results frames are matched to ground-truth images by their 0-based frame number: an image's
"frame" field, else its id - 1 (`streamseg synth` writes image id = frame + 1).
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pycocotools.mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from streamseg.tools import mot, untrusted

IOU_THRESHOLD = 0.5  # least mask IoU of a tracking match (per frame)


class EvalError(ValueError):
    """Results and ground truth that cannot be compared; one line for the user."""


def load_results(path: str | Path) -> list[dict[str, Any]]:
    """The records of a results (.jsonl) file, checking each line is a frame record."""
    records = []
    try:
        for n, rec in untrusted.json_lines(path):
            if (
                not isinstance(rec, dict)
                or not isinstance(rec.get("frame"), int)
                or not isinstance(rec.get("instances"), list)
            ):
                raise EvalError(f"{path}:{n}: not a streamseg results record")
            # sizes as the wire caps them, RLEs that add up, finite numbers
            problem = untrusted.results_record_problem(rec)
            if problem:
                raise EvalError(f"{path}:{n}: not a streamseg results record: {problem}")
            records.append(rec)
    except untrusted.UntrustedError as e:
        raise EvalError(str(e)) from None
    return records


def load_gt(path: str | Path) -> COCO:
    """COCO ground truth; EvalError for a missing or malformed file."""
    if not Path(path).is_file():
        raise EvalError(f"no such file: {path}")
    try:
        data = untrusted.read_json(path, what="ground truth")
    except untrusted.UntrustedError as e:
        raise EvalError(str(e)) from None
    problem = untrusted.ground_truth_problem(data)
    if problem:
        raise EvalError(f"{path}: not COCO ground truth: {problem}")
    for ann in data["annotations"]:  # what pycocotools would misread (untrusted.outlines)
        if isinstance(ann["segmentation"], list):
            ann["segmentation"] = untrusted.outlines(ann["segmentation"])
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
            coco = COCO()
            coco.dataset = data
            coco.createIndex()
            return coco
    except (ValueError, KeyError, TypeError, AssertionError):
        raise EvalError(
            f"{path}: not COCO ground truth (JSON with images and annotations)"
        ) from None


def image_ids(gt: COCO) -> dict[int, int]:
    """Ground-truth image id of each 0-based frame number ("frame", else image id - 1)."""
    return {int(img.get("frame", img["id"] - 1)): int(img["id"]) for img in gt.imgs.values()}


def _span(frames: Sequence[int]) -> str:
    lo, hi = min(frames), max(frames)
    return f"frame {lo}" if lo == hi else f"frames {lo}-{hi}"


def check_match(records: list[dict[str, Any]], gt: COCO) -> None:
    """EvalError unless the results are of the ground truth's clip: one stream, each frame
    once, every frame an image of the ground truth, of the same size."""
    if not records:
        raise EvalError("the results file has no frames")
    streams = sorted({str(r.get("stream")) for r in records})
    if len(streams) > 1:
        raise EvalError(f"results of several streams ({', '.join(streams)}); give one stream's")
    images = image_ids(gt)
    frames = [int(r["frame"]) for r in records]
    if not images:
        raise EvalError("the ground truth has no images")
    if not set(frames) & set(images):
        raise EvalError(
            f"results ({_span(frames)}) and ground truth ({_span(list(images))}) share no "
            "frame: is --gt the ground truth of this clip?"
        )
    seen: set[int] = set()
    for rec, frame in zip(records, frames, strict=True):
        if frame in seen:
            raise EvalError(f"frame {frame} appears twice in the results")
        seen.add(frame)
        if frame not in images:
            raise EvalError(f"frame {frame} has no image in the ground truth")
        img = gt.imgs[images[frame]]
        size, gt_size = (rec.get("width"), rec.get("height")), (img.get("width"), img.get("height"))
        if None not in size and None not in gt_size and size != gt_size:
            raise EvalError(
                f"frame {frame} is {size[0]}x{size[1]} but its ground-truth image is "
                f"{gt_size[0]}x{gt_size[1]}: results and ground truth are of different clips"
            )


def to_coco_detections(
    records: list[dict[str, Any]], frame_to_image: dict[int, int]
) -> list[dict[str, Any]]:
    """Results records -> pycocotools detection results (segm and bbox), matched to images
    by frame. Instances with a track id keep it ("track_id")."""
    dets = []
    for rec in records:
        image_id = frame_to_image.get(int(rec["frame"]))
        if image_id is None:
            raise EvalError(f"frame {rec['frame']} has no image in the ground truth")
        for inst in rec["instances"]:
            x1, y1, x2, y2 = inst["box"]
            det = {
                "image_id": image_id,
                "category_id": int(inst["label"]),
                "segmentation": inst["rle"],
                "bbox": [x1, y1, x2 - x1, y2 - y1],
                "score": float(inst["score"]),
            }
            if inst.get("track_id") is not None:
                det["track_id"] = int(inst["track_id"])
            dets.append(det)
    return dets


_AP_KEYS = ("AP", "AP50", "AP75", "AR")  # stats[0], [1], [2], [8]: AP .50:.95, AP50, AP75, AR@100


def _coco_stats(gt: COCO, dets: list[dict[str, Any]], iou_type: str) -> list[float]:
    """AP, AP50, AP75 and AR@100 of `dets` (pycocotools, all areas)."""
    with contextlib.redirect_stdout(io.StringIO()):
        # loadRes writes into the detections (area, id): give it copies.
        dt = gt.loadRes([dict(d) for d in dets])
        ev = COCOeval(gt, dt, iouType=iou_type)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return [max(0.0, float(ev.stats[i])) for i in (0, 1, 2, 8)]


def evaluate(records: list[dict[str, Any]], gt_path: str | Path) -> dict[str, float]:
    """Mask AP (IoU .50:.95), AP50, AP75, AR@100 ("AP", "AP50", "AP75", "AR") and the same for
    boxes ("bbox_AP", ...) over all frames of the ground truth."""
    gt = load_gt(gt_path)
    check_match(records, gt)
    dets = to_coco_detections(records, image_ids(gt))
    scores: dict[str, float] = {"images": len(gt.imgs), "detections": len(dets)}
    for prefix, iou_type in (("", "segm"), ("bbox_", "bbox")):
        stats = _coco_stats(gt, dets, iou_type) if dets else [0.0] * 4
        scores |= {prefix + k: v for k, v in zip(_AP_KEYS, stats, strict=True)}
    return scores


def evaluate_tracks(
    records: list[dict[str, Any]], gt_path: str | Path, iou_threshold: float = IOU_THRESHOLD
) -> mot.MotSummary:
    """MOT figures of the results' track ids against the ground truth's ("track_id" on each
    annotation, as `streamseg synth` writes). Per frame, a result and a ground-truth object
    may match when they have the same label and mask IoU >= iou_threshold; frames of the
    ground truth without results count as missed. Instances without a track id are each a
    track of their own."""
    gt = load_gt(gt_path)
    check_match(records, gt)
    anns = gt.dataset.get("annotations", [])
    if not anns or any(not isinstance(a.get("track_id"), int) for a in anns):
        raise EvalError(
            f"{gt_path}: ground truth without a track_id on every annotation; "
            "`streamseg synth --gt` writes one"
        )
    tracked = [
        i.get("track_id") for r in records for i in r["instances"] if i.get("track_id") is not None
    ]
    if not tracked and any(r["instances"] for r in records):
        raise EvalError("the results carry no track_id: run the pipeline with tracking on")
    by_frame = {int(r["frame"]): r for r in records}
    acc = mot.MotAccumulator(iou_threshold)
    untracked = 0  # stand-in ids for instances without one: -1, -2, ...
    for frame, image_id in sorted(image_ids(gt).items()):
        objs = gt.imgToAnns.get(image_id, [])
        insts = by_frame[frame]["instances"] if frame in by_frame else []
        pred_ids = []
        for inst in insts:
            tid = inst.get("track_id")
            if not isinstance(tid, int) or tid < 1:
                untracked += 1
                tid = -untracked
            pred_ids.append(tid)
        if len(set(pred_ids)) != len(pred_ids):
            raise EvalError(f"frame {frame}: the same track_id on two instances")
        iou = np.zeros((len(objs), len(insts)), np.float64)
        if objs and insts:
            iscrowd = [0] * len(objs)
            gt_rles = [o["segmentation"] for o in objs]
            iou = np.asarray(mask_utils.iou([i["rle"] for i in insts], gt_rles, iscrowd)).T
            same = np.array([o["category_id"] for o in objs])[:, None] == np.array(
                [int(i["label"]) for i in insts]
            )
            iou = np.where(same, iou, 0.0)
        acc.update([int(o["track_id"]) for o in objs], pred_ids, iou)
    return acc.summary()


def table(scores: dict[str, float]) -> str:
    """Mask and box figures, two lines each."""
    head = f"{'AP50':>7} {'AP75':>7} {'AR':>7}"
    rows = [
        f"{'mask AP':>8} {head}   images detections",
        f"{scores['AP']:8.3f} {scores['AP50']:7.3f} {scores['AP75']:7.3f} "
        f"{scores.get('AR', 0.0):7.3f}   {scores['images']:6d} {scores['detections']:10d}",
    ]
    if "bbox_AP" in scores:
        rows += [
            f"{'bbox AP':>8} {head}",
            f"{scores['bbox_AP']:8.3f} {scores['bbox_AP50']:7.3f} {scores['bbox_AP75']:7.3f} "
            f"{scores['bbox_AR']:7.3f}",
        ]
    return "\n".join(rows)


def main(results: str, gt: str, tracks: bool = False) -> int:
    """`streamseg eval RESULTS --gt GT [--tracks]`: print the figures; 0, or EvalError."""
    for p in (results, gt):
        if not Path(p).is_file():
            raise EvalError(f"no such file: {p}")
    records = load_results(results)
    print(table(evaluate(records, gt)))
    if tracks:
        print()
        print(mot.table(evaluate_tracks(records, gt)))
    return 0
