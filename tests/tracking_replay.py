"""Try tracker settings on many clips in minutes: replay postprocess over cached model outputs.

    python -m tests.tracking_replay CLIP_DIR --seeds 6061 6062 ... [--config shapes]
        [--settings '{"recover_max_area": 2.0}' ...] [--mask-nms-cross-label 0.6]
        [--score-threshold 0.5] [--min-score 0.4] [--ap]

CLIP_DIR holds `streamseg synth` clips named cSEED.mp4 with their ground truth cSEED.json
(`streamseg synth CLIP_DIR/cSEED.mp4 --gt CLIP_DIR/cSEED.json --seed SEED --frames 300`).
The model runs once per clip, frame by frame as the inference stage runs it (its boxes,
scores, labels, 28 x 28 mask probabilities and colours are cached in CLIP_DIR/cSEED.CONFIG.npz);
then, for each `--settings` (the Tracker's keyword arguments, over the pipeline's
`max_missed = 60`), postprocess's own code runs over the cache: paste, `mask_nms` and
`mask_nms_cross_label` (the config's unless given), the tracker, fragment joins, and the
score bar (`--score-threshold`, the config's unless given: an instance below it stays only
where it continues a track). It prints the ID switches and mean IDF1 per setting (`streamseg
eval --tracks`'s figures; with --ap also mean mask AP and AP50), per clip with -v. The model
runs at the config's track_score_threshold where set (e.g. 0.2 in a copy of the config), so
one cache serves every higher bar: `--min-score X` replays as if the model kept only
instances from X on.

The replay gives the ids the pipeline gives (tests/test_tracking_replay.py checks it on a
clip), so figures found here hold through `streamseg annotate`; measure there before quoting.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import av
import numpy as np

from streamseg import shipped
from streamseg.config import ModelConfig, load_config
from streamseg.inference.colors import instance_colors
from streamseg.inference.executor import Executor
from streamseg.inference.model import load_model
from streamseg.postprocess.instances import Instances, deduplicate, drop_low, with_tracks
from streamseg.postprocess.results import paste, to_result
from streamseg.postprocess.tracking import Tracker
from streamseg.tools import evaluate
from streamseg.wire.messages import Detections

PIPELINE_TRACK = {"max_missed": 60}  # the pipeline files' track_max_missed
_KEYS = ("boxes", "scores", "labels", "masks", "colors")


def cache_clip(cfg: ModelConfig, executor: Executor, clip: Path, out: Path) -> int:
    """Run the model over every frame of ``clip`` and save its outputs to ``out`` (.npz);
    the number of frames."""
    per_frame: dict[str, list[np.ndarray]] = {k: [] for k in _KEYS}
    height = width = 0
    with av.open(str(clip)) as container:
        for frame in container.decode(video=0):
            image = frame.to_ndarray(format="rgb24")
            height, width = image.shape[:2]
            r = executor([image])[0]
            r["colors"] = instance_colors(image, r["boxes"], r["masks"], cfg.mask_threshold)
            for k in _KEYS:
                per_frame[k].append(r[k])
    counts = np.array([len(s) for s in per_frame["scores"]], np.int64)
    arrays = {k: np.concatenate(v) for k, v in per_frame.items()}
    arrays["masks"] = arrays["masks"].astype(np.float16)  # 28 x 28 probabilities: half the disk
    np.savez_compressed(out, counts=counts, size=np.array([height, width]), **arrays)
    return len(counts)


@dataclass(frozen=True)
class CachedFrame:
    det: Detections
    instances: Instances  # after paste and duplicates (each replay tracks them anew)
    label_names: Sequence[str]


def load_frames(
    path: Path,
    cfg: ModelConfig,
    mask_nms: float,
    mask_nms_cross_label: float,
    min_score: float = 0.0,
) -> list[CachedFrame]:
    """The cached clip's frames as postprocess has them just before tracking. ``min_score``:
    only the cached instances scoring at least this, as a model run at that threshold would
    have given (box NMS never lets a lower score remove a higher one)."""
    with np.load(path) as z:
        counts, (height, width) = z["counts"], z["size"].tolist()
        arrays = {k: z[k] for k in _KEYS}
    ends = np.cumsum(counts)
    out = []
    for i, end in enumerate(ends.tolist()):
        s = np.arange(end - int(counts[i]), end)
        s = s[arrays["scores"][s] >= min_score]
        det = Detections(
            "replay", i, 0.0, 0.0, width, height,
            arrays["boxes"][s], arrays["scores"][s], arrays["labels"][s],
            arrays["masks"][s].astype(np.float32), colors=arrays["colors"][s],
        )  # fmt: skip
        inst = paste(det, mask_threshold=cfg.mask_threshold)
        inst, _ = deduplicate(inst, mask_nms, mask_nms_cross_label)
        out.append(CachedFrame(det, inst, cfg.labels))
    return out


def replay(
    frames: Sequence[CachedFrame], settings: dict[str, Any], score_threshold: float
) -> list[dict[str, Any]]:
    """The results records (as results.jsonl holds them) of tracking ``frames`` anew;
    ``score_threshold``: the least score of a result (below it: only where an instance
    continues a track), as postprocess has it from the model config."""
    records = []
    tracker = Tracker(**{**PIPELINE_TRACK, **settings, "new_track_score": score_threshold})
    for cached in frames:
        det, inst = cached.det, cached.instances
        update = tracker.update(
            det.frame, inst.masks, inst.boxes, inst.labels, inst.scores, inst.colors
        )
        inst = drop_low(with_tracks(inst, update)[0], score_threshold)
        records.append(to_result(det, inst, label_names=cached.label_names).to_json())
    return records


def _model_config(name: str) -> ModelConfig:
    return load_config(shipped.find("config", name))


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("clips", type=Path, help="folder of cSEED.mp4 + cSEED.json (streamseg synth)")
    p.add_argument("--seeds", type=int, nargs="+", required=True)
    p.add_argument("--config", default="shapes", help="model config: shipped name or .toml")
    p.add_argument("--settings", nargs="*", default=["{}"], help="Tracker keyword args, JSON")
    p.add_argument("--mask-nms", type=float, default=None, help="default: the config's")
    p.add_argument("--mask-nms-cross-label", type=float, default=None, help="default: config's")
    p.add_argument(
        "--score-threshold", type=float, default=None, help="least score of a result; config's"
    )
    p.add_argument(
        "--min-score", type=float, default=0.0, help="drop cached instances below this first"
    )
    p.add_argument("--ap", action="store_true", help="also mean mask AP / AP50")
    p.add_argument("-v", "--verbose", action="store_true", help="figures per clip")
    args = p.parse_args(argv)
    cfg = _model_config(args.config)
    tag = Path(args.config).stem
    executor: Executor | None = None
    for seed in args.seeds:
        cache = args.clips / f"c{seed}.{tag}.npz"
        if not cache.is_file():
            executor = executor or Executor(load_model(cfg), fp16=cfg.fp16)
            t0 = time.perf_counter()
            n = cache_clip(cfg, executor, args.clips / f"c{seed}.mp4", cache)
            print(f"cached {n} frames of c{seed} in {time.perf_counter() - t0:.0f} s", flush=True)
    nms = cfg.mask_nms if args.mask_nms is None else args.mask_nms
    cross = cfg.mask_nms_cross_label
    if args.mask_nms_cross_label is not None:
        cross = args.mask_nms_cross_label
    bar = cfg.score_threshold if args.score_threshold is None else args.score_threshold
    clips = {
        s: load_frames(args.clips / f"c{s}.{tag}.npz", cfg, nms, cross, args.min_score)
        for s in args.seeds
    }
    for text in args.settings:
        settings = json.loads(text)
        per_clip, ap = {}, []
        for seed, frames in clips.items():
            gt = args.clips / f"c{seed}.json"
            records = replay(frames, settings, bar)
            per_clip[seed] = evaluate.evaluate_tracks(records, gt)
            if args.ap:
                scores = evaluate.evaluate(records, gt)
                ap.append((scores["AP"], scores["AP50"]))
            if args.verbose:
                s = per_clip[seed]
                print(f"  c{seed}: IDF1 {s.idf1:.3f} switches {s.id_switches}")
        switches = sum(s.id_switches for s in per_clip.values())
        idf1 = float(np.mean([s.idf1 for s in per_clip.values()]))
        aps = "  mask AP {:.4f} AP50 {:.4f}".format(*np.mean(ap, axis=0)) if ap else ""
        print(f"switches {switches:4d}  mean IDF1 {idf1:.4f}{aps}  {settings}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
