"""Score a model on the held-out clips (tests.heldout.world) through the full pipeline.

    python -m tests.heldout.evaluate OUT_DIR [--config shapes] [--seeds 5101 5102 5103]
        [--sizes 640x480 1280x720] [--frames 150]

For each seed and size: writes the clip and its ground truth into OUT_DIR (unless there), runs
`streamseg annotate CLIP --results R.jsonl --config C`, then `streamseg eval R.jsonl --gt GT.json`,
and recomputes mask and box AP with pycocotools from the results file (the two must agree).
Prints a table (clip, size, frames, instances, mask AP / AP50 / AP75, box AP, per-category mask
AP, annotate fps) with the mean, and writes OUT_DIR/summary_{config}.json.
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
        row["fps"] = round(row["frames"] / row["annotate_s"], 2)
        if p.returncode != 0:
            row["error"] = f"annotate exit {p.returncode}: {p.stderr.strip()[-400:]}"
            return row
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
    row |= ours
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
            vals = [r[k] for r in ok if isinstance(r.get(k), int | float)]
            if vals:
                mean[k] = float(np.nanmean(vals)) if "." in f else int(sum(vals))
    print()
    print(f"config {args.config}")
    print(table(rows, mean))
    summary = {"config": args.config, "frames": args.frames, "clips": rows, "mean": mean}
    path = out / f"summary_{Path(args.config).stem}.json"
    path.write_text(json.dumps(summary, indent=1, default=float))
    print(f"\nwrote {path}")
    return 0 if len(ok) == len(rows) else 1


if __name__ == "__main__":
    sys.exit(main())
