"""The benchmark's inputs and output checks: its model config, decoded frames, synthetic
detections, and instance counts of results files.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from streamseg.config import ModelConfig, load_config, replace
from streamseg.wire.messages import Detections

DEFAULT_INSTANCES = 20
"""K: instances per frame of the micro paste+RLE figure and of a fixed detection load."""


def prepare_config(
    path: str,
    *,
    device: str | None,
    batch: int | None,
    random_weights: bool,
    instances: int | None,
) -> tuple[ModelConfig, str, bool]:
    """The benchmark's model config (every process gets exactly this one).

    Returns (config, load description, fixed load?). A fixed load (random weights, or
    --instances given) is score threshold 0 and detections_per_img = K: every frame carries
    K instances whatever the weights see, so runs on different machines compare.
    """
    cfg = load_config(path, device=device)
    k = instances if instances is not None else DEFAULT_INSTANCES
    fixed = random_weights or cfg.weights == "random" or instances is not None
    changes: dict[str, Any] = {"max_batch": batch}
    if random_weights:
        changes["weights"] = "random"
    if fixed:
        changes.update(score_threshold=0.0, detections_per_img=k)
    cfg = replace(cfg, **changes)
    weights = "random weights" if cfg.weights == "random" else f"weights {cfg.weights}"
    if fixed:
        load = f"load: {weights}, {k} instances/frame, score threshold 0"
    else:
        load = f"load: {weights}, real detections, score threshold {cfg.score_threshold:g}"
    return cfg, load, fixed


def decode_clip(path: str | Path, limit: int) -> list[np.ndarray]:
    """The first `limit` frames of a video, each uint8[H, W, 3] RGB."""
    import av  # here: the CLI imports this package for every command

    out: list[np.ndarray] = []
    with av.open(str(path)) as container:
        for frame in container.decode(container.streams.video[0]):
            out.append(frame.to_ndarray(format="rgb24"))
            if len(out) >= limit:
                break
    return out


def synthetic_detections(n: int, size: tuple[int, int], *, seed: int = 0) -> Detections:
    """Detections of `n` blob-shaped instances on a frame of `size` (width, height).

    boxes: float32[n, 4], xyxy, frame pixels, 40-400 px a side and inside the frame.
    masks: float32[n, 28, 28] in (0, 1): smooth ellipses with soft edges, like a mask head's
    output, so RLE run counts are realistic (noise would make them far longer).
    scores: float32[n], descending in [0.05, 1). labels: int64[n] in 1..3.
    """
    rng = np.random.default_rng(seed)
    width, height = size
    bw = rng.uniform(min(40, width / 2), min(400, width), n)
    bh = rng.uniform(min(40, height / 2), min(400, height), n)
    x0 = rng.uniform(0, width - bw)
    y0 = rng.uniform(0, height - bh)
    boxes = np.stack([x0, y0, x0 + bw, y0 + bh], axis=1).astype(np.float32)
    grid = (np.arange(28, dtype=np.float32) + 0.5) / 28 - 0.5
    yy, xx = np.meshgrid(grid, grid, indexing="ij")
    rx = rng.uniform(0.3, 0.48, n)[:, None, None]
    ry = rng.uniform(0.3, 0.48, n)[:, None, None]
    r = np.sqrt((xx / rx) ** 2 + (yy / ry) ** 2)
    masks = (1.0 / (1.0 + np.exp((r - 1.0) / 0.08))).astype(np.float32)
    scores = np.sort(rng.uniform(0.05, 1.0, n).astype(np.float32))[::-1].copy()
    labels = rng.integers(1, 4, n).astype(np.int64)
    return Detections("bench", 0, 0.0, 0.0, width, height, boxes, scores, labels, masks)


def count_instances(paths: list[Path]) -> tuple[int, int]:
    """(frames, instances) over results files (.jsonl, one frame a line)."""
    frames = instances = 0
    for path in paths:
        with open(path, encoding="utf-8") as f:
            for line in f:
                frames += 1
                instances += len(json.loads(line)["instances"])
    return frames, instances
