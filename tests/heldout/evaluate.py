"""Score a model on the held-out clips (tests.heldout.world) through the full pipeline.

    python -m tests.heldout.evaluate OUT_DIR [--config shapes] [--seeds 5101 5102 5103]
        [--sizes 640x480 1280x720] [--frames 150]

For each seed and size: writes the clip and its ground truth into OUT_DIR (unless there), runs
`streamseg annotate CLIP --results R.jsonl --config C`, then `streamseg eval R.jsonl --gt GT.json`,
and recomputes mask and box AP with pycocotools from the results file (the two must agree).
Prints a table (clip, size, background, frames, instances, mask AP / AP50 / AP75, box AP,
per-category mask AP, pipeline fps after start-up from annotate's --report) with the mean over
clips (per-category means over the clips that have the category), then where the model fails:
recall at mask IoU 0.5 over subsets of the ground truth (clean, small, medium, large, occluded,
truncated) and false positives per frame.
Writes everything to OUT_DIR/summary_{config}.json. `--reuse` keeps results files already there
(only re-scores). Run from the repository root.

Measured 2026-12-01 with the first `shapes` checkpoint (CPU), seeds 5101-5103 x {640x480,
1280x720}, 150 frames each: mean mask AP 0.571 (AP50 0.614, AP75 0.605), box AP 0.550; per clip
0.33 (blocky background, both sizes) to 0.74 (gradient, 720p). Recall at IoU 0.5: 0.81 of clean
instances, 0.86 of large ones, 0.41 of medium (150-1000 u^2), 0.00 of small (< 150 u^2), 0.01 of
those more than half occluded, 0.36 of those more than half outside the frame; triangles are the
weak class (mask AP 0.10-0.45); on blocky backgrounds the model takes background tiles for squares
(7-8 false positives a frame). The checkpoint shipped now (five fine-tuning steps on broader
worlds, the last two over several input sizes; README, "The shapes model") scores mean mask AP
0.773 (AP50 0.824) on the same clips: README has the per-clip figures.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pycocotools.mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from tests.heldout import world

ANNOTATE_TIMEOUT_S = 1800
EVAL_TIMEOUT_S = 300


def streamseg_exe() -> str:
    here = Path(sys.executable).parent / "streamseg"
    if here.is_file():
        return str(here)
    found = shutil.which("streamseg")
    if not found:
        raise SystemExit("streamseg is not installed next to this Python nor on PATH")
    return found


def parse_eval(text: str) -> dict[str, float]:
    """The figures of `streamseg eval`'s table: a header line starting 'mask AP' / 'bbox AP'
    followed by a line of numbers (AP AP50 AP75 AR ...)."""
    out: dict[str, float] = {}
    lines = text.splitlines()
    for i, line in enumerate(lines[:-1]):
        head = line.strip()
        for prefix, key in (("mask AP", ""), ("bbox AP", "bbox_")):
            if head.startswith(prefix):
                nums = [float(x) for x in re.findall(r"-?\d+(?:\.\d+)?", lines[i + 1])]
                if len(nums) >= 4:
                    out |= {
                        key + k: v
                        for k, v in zip(("AP", "AP50", "AP75", "AR"), nums[:4], strict=True)
                    }
    return out


def load_dets(results: Path, frame_to_image: dict[int, int]) -> list[dict]:
    dets = []
    with open(results, encoding="utf-8") as f:
        for line in f:
            if not line.strip():
                continue
            rec = json.loads(line)
            image_id = frame_to_image[int(rec["frame"])]
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


def coco_scores(gt_path: Path, results: Path) -> dict[str, float]:
    """Our own pycocotools figures: mask and box AP/AP50/AP75/AR@100, mask AP per category,
    and the frames the results cover."""
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(gt_path))
    frame_to_image = {int(img["frame"]): int(img["id"]) for img in gt.imgs.values()}
    dets = load_dets(results, frame_to_image)
    scores: dict[str, float] = {"detections": len(dets)}
    with open(results, encoding="utf-8") as f:
        scores["result_frames"] = sum(1 for line in f if line.strip())
    for prefix, iou_type in (("", "segm"), ("bbox_", "bbox")):
        if not dets:
            scores |= {prefix + k: 0.0 for k in ("AP", "AP50", "AP75", "AR")}
            continue
        with contextlib.redirect_stdout(io.StringIO()):
            dt = gt.loadRes([dict(d) for d in dets])
            ev = COCOeval(gt, dt, iouType=iou_type)
            ev.evaluate()
            ev.accumulate()
            ev.summarize()
        s = [max(0.0, float(ev.stats[i])) for i in (0, 1, 2, 8)]
        scores |= {prefix + k: v for k, v in zip(("AP", "AP50", "AP75", "AR"), s, strict=True)}
        if iou_type == "segm":
            # precision[T, R, K, A, M]: all areas (A=0), 100 detections (M=-1)
            prec = ev.eval["precision"][:, :, :, 0, -1]
            for k, cat in enumerate(ev.params.catIds):
                p = prec[:, :, k]
                p = p[p > -1]
                scores[f"AP_{gt.cats[cat]['name']}"] = float(p.mean()) if p.size else float("nan")
    return scores


SUBSETS = ("clean", "small", "medium", "large", "occluded", "truncated")


def breakdown(gt_path: Path, results: Path) -> dict[str, float]:
    """Where the model fails: recall at mask IoU >= 0.5 with the right class (any detection,
    no one-to-one matching) over subsets of the ground truth: clean (< 10% occluded and
    truncated), small / medium / large (< 150, < 1000, >= 1000 u^2 visible), occluded (> 50%
    hidden by other layers), truncated (> 50% outside the frame); and false positives per frame
    (detections with IoU < 0.5 with every ground-truth instance)."""
    gt = json.loads(gt_path.read_text())
    w, h = gt["images"][0]["width"], gt["images"][0]["height"]
    u2 = world.unit((w, h)) ** 2
    by_frame: dict[int, list[dict]] = {}
    frame_of = {img["id"]: img["frame"] for img in gt["images"]}
    for a in gt["annotations"]:
        by_frame.setdefault(frame_of[a["image_id"]], []).append(a)
    hit = dict.fromkeys(SUBSETS, 0)
    total = dict.fromkeys(SUBSETS, 0)
    false_pos = frames = 0
    with open(results, encoding="utf-8") as f:
        for line in f:
            if not line.strip():
                continue
            rec = json.loads(line)
            frames += 1
            anns, dets = by_frame.get(int(rec["frame"]), []), rec["instances"]
            if anns and dets:
                segs = [a["segmentation"] for a in anns]
                iou = mask_utils.iou([d["rle"] for d in dets], segs, [0] * len(anns))
                iou = np.asarray(iou).reshape(len(dets), len(anns))
            else:
                iou = np.zeros((len(dets), len(anns)))
            false_pos += int((iou.max(axis=1, initial=0.0) < 0.5).sum())
            for j, a in enumerate(anns):
                found = any(
                    iou[i, j] >= 0.5 and int(d["label"]) == a["category_id"]
                    for i, d in enumerate(dets)
                )
                area = a["area"] / u2
                subsets = ["small" if area < 150 else "medium" if area < 1000 else "large"]
                occ, trunc = a.get("occluded", 0.0), a.get("truncated", 0.0)
                if occ < 0.1 and trunc < 0.1:
                    subsets.append("clean")
                if occ > 0.5:
                    subsets.append("occluded")
                if trunc > 0.5:
                    subsets.append("truncated")
                for k in subsets:
                    total[k] += 1
                    hit[k] += found
    out = {f"R_{k}": hit[k] / total[k] if total[k] else float("nan") for k in SUBSETS}
    out |= {f"n_{k}": total[k] for k in SUBSETS}
    out["FP_per_frame"] = false_pos / max(1, frames)
    return out


def run_clip(
    exe: str, out: Path, seed: int, size: tuple[int, int], frames: int, config: str, args
) -> dict:
    video, gt_path = world.paths(out, seed, size)
    row: dict = {"clip": video.stem, "seed": seed, "size": f"{size[0]}x{size[1]}"}
    if not (video.is_file() and gt_path.is_file()):
        world.write_clip(video, gt_path, seed, size, frames)
    gt = json.loads(gt_path.read_text())
    row["frames"] = len(gt["images"])
    row["instances"] = len(gt["annotations"])
    row["background"] = gt.get("info", {}).get("background")
    tag = Path(config).stem
    results = out / f"{video.stem}.{tag}.jsonl"
    report = out / f"{video.stem}.{tag}.report.json"
    if not (args.reuse and results.is_file()):
        cmd = [exe, "annotate", str(video), "--results", str(results), "--config", config, "-q"]
        cmd += ["--report", str(report)]
        if args.device:
            cmd += ["--device", args.device]
        t0 = time.monotonic()
        try:
            p = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout)
        except subprocess.TimeoutExpired:
            row["error"] = f"annotate timed out after {args.timeout} s"
            return row
        row["annotate_s"] = round(time.monotonic() - t0, 1)
        if p.returncode != 0:
            row["error"] = f"annotate exit {p.returncode}: {p.stderr.strip()[-400:]}"
            return row
    try:  # the pipeline's own figures: fps after the model is loaded
        rep = json.loads(report.read_text())
        row["fps"] = round(row["frames"] / (rep["elapsed_s"] - rep["startup_s"]), 2)
        row["startup_s"] = round(rep["startup_s"], 1)
    except (OSError, ValueError, KeyError, ZeroDivisionError):
        pass
    try:
        p = subprocess.run(
            [exe, "eval", str(results), "--gt", str(gt_path)],
            capture_output=True,
            text=True,
            timeout=EVAL_TIMEOUT_S,
        )
    except subprocess.TimeoutExpired:
        row["error"] = "eval timed out"
        return row
    if p.returncode != 0:
        row["error"] = f"eval exit {p.returncode}: {p.stderr.strip()[-400:]}"
        return row
    row["streamseg_eval"] = parse_eval(p.stdout)
    ours = coco_scores(gt_path, results)
    row |= ours | breakdown(gt_path, results)
    diffs = {
        k: (v, ours[k])
        for k, v in row["streamseg_eval"].items()
        if k in ours and abs(v - ours[k]) > 1.5e-3  # eval prints 3 decimals
    }
    if diffs:
        row["mismatch"] = diffs
    return row


COLUMNS = (
    ("clip", "{:<24}", "{:<24}"),
    ("size", "{:>9}", "{:>9}"),
    ("background", "{:>10}", "{:>10}"),
    ("frames", "{:>6}", "{:>6}"),
    ("instances", "{:>9}", "{:>9}"),
    ("AP", "{:>7}", "{:7.3f}"),
    ("AP50", "{:>7}", "{:7.3f}"),
    ("AP75", "{:>7}", "{:7.3f}"),
    ("bbox_AP", "{:>7}", "{:7.3f}"),
    ("AP_circle", "{:>7}", "{:7.3f}"),
    ("AP_square", "{:>7}", "{:7.3f}"),
    ("AP_triangle", "{:>7}", "{:7.3f}"),
    ("fps", "{:>6}", "{:6.2f}"),
)
HEADS = {"AP": "mask AP", "bbox_AP": "box AP", "AP_circle": "circle", "AP_square": "square"}
HEADS |= {"AP_triangle": "triangl"}


def table(rows: list[dict], mean: dict) -> str:
    lines = [" ".join(h.format(HEADS.get(k, k)) for k, h, _ in COLUMNS)]
    for row in [*rows, mean]:
        cells = []
        for k, h, f in COLUMNS:
            v = row.get(k)
            cells.append(h.format("-") if v is None else f.format(v))
        line = " ".join(cells)
        if row.get("error"):
            line += f"  ERROR: {row['error']}"
        if row.get("mismatch"):
            line += f"  (streamseg eval differs: {row['mismatch']})"
        lines.append(line)
    return "\n".join(lines)


def breakdown_table(rows: list[dict]) -> str:
    ok = [r for r in rows if "error" not in r]
    pooled: dict = {"clip": f"all ({len(ok)} clips)"}
    for k in SUBSETS:
        n = sum(r[f"n_{k}"] for r in ok)
        hits = sum(r[f"R_{k}"] * r[f"n_{k}"] for r in ok if r[f"n_{k}"])
        pooled[f"n_{k}"], pooled[f"R_{k}"] = n, hits / n if n else float("nan")
    frames = sum(r["result_frames"] for r in ok)
    pooled["FP_per_frame"] = sum(r["FP_per_frame"] * r["result_frames"] for r in ok) / max(
        1, frames
    )
    lines = [
        "recall at mask IoU 0.5 with the right class, by ground-truth subset (instances)",
        f"{'clip':<24} " + " ".join(f"{k:>12}" for k in SUBSETS) + f" {'FP/frame':>8}",
    ]
    for r in [*ok, pooled]:
        cells = " ".join(
            f"{r[f'R_{k}']:.2f} ({r[f'n_{k}']})".rjust(12) if r[f"n_{k}"] else f"{'-':>12}"
            for k in SUBSETS
        )
        lines.append(f"{r['clip']:<24} {cells} {r['FP_per_frame']:8.2f}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tests.heldout.evaluate", description=__doc__)
    p.add_argument("out_dir")
    p.add_argument("--config", default="shapes", help="model config: shipped name or .toml")
    p.add_argument("--seeds", type=int, nargs="+", default=[5101, 5102, 5103])
    p.add_argument("--sizes", type=world.parse_size, nargs="+", default=[(640, 480), (1280, 720)])
    p.add_argument("--frames", type=int, default=150)
    p.add_argument("--device", default=None, help="passed to annotate (auto, cpu, cuda)")
    p.add_argument("--timeout", type=int, default=ANNOTATE_TIMEOUT_S, help="s per annotate")
    p.add_argument("--reuse", action="store_true", help="keep results files already there")
    args = p.parse_args(argv)
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    exe = streamseg_exe()
    rows = []
    for seed in args.seeds:
        for size in args.sizes:
            row = run_clip(exe, out, seed, size, args.frames, args.config, args)
            rows.append(row)
            print(f"done {row['clip']}: " + table([row], {"clip": ""}).splitlines()[1], flush=True)
    ok = [r for r in rows if "error" not in r]
    mean: dict = {"clip": f"mean ({len(ok)} clips)"}
    for k, _, f in COLUMNS:
        if f != "{:<24}" and k not in ("size", "background") and ok:
            vals = [r[k] for r in ok if isinstance(r.get(k), int | float) and r[k] == r[k]]
            if vals:  # (r[k] == r[k]: not NaN, a category absent from the clip)
                mean[k] = float(np.mean(vals)) if "." in f else int(sum(vals))
    print()
    print(f"config {args.config}")
    print(table(rows, mean))
    print()
    print(breakdown_table(rows))
    summary = {"config": args.config, "frames": args.frames, "clips": rows, "mean": mean}
    path = out / f"summary_{Path(args.config).stem}.json"
    path.write_text(json.dumps(summary, indent=1, default=float))
    print(f"\nwrote {path}")
    return 0 if len(ok) == len(rows) else 1


if __name__ == "__main__":
    sys.exit(main())
