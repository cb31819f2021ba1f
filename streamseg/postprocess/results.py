"""A frame's final results from the model's compact output: paste, threshold, RLE. No I/O."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import numpy as np
import torch

from streamseg.config import label_name
from streamseg.postprocess.instances import select
from streamseg.postprocess.masks import LocalMasks, paste_masks, rle_encode
from streamseg.wire.protocol import Detections, Instance, Result


def make_result(
    det: Detections, *, mask_threshold: float, label_names: Sequence[str]
) -> tuple[Result, LocalMasks]:
    """The frame's final instances (see Result) and its binary masks as crops."""
    local = paste_masks(
        torch.from_numpy(np.asarray(det.masks, dtype=np.float32))[:, None],
        torch.from_numpy(np.asarray(det.boxes, dtype=np.float32)),
        (det.height, det.width),
        threshold=mask_threshold,
    )
    instances = [
        Instance(
            label=int(det.labels[i]),
            label_name=label_name(label_names, int(det.labels[i])),
            score=float(det.scores[i]),
            box=tuple(float(v) for v in det.boxes[i]),
            rle=rle,
        ).to_json()
        for i, rle in enumerate(rle_encode(local))
    ]
    result = Result(det.stream, det.frame, det.pts, det.wall_time, det.width, det.height, instances)
    return result, local


def with_track_ids(result: Result, ids: Sequence[int | None]) -> Result:
    """`result` with each instance's "track_id" set (ids: one per instance, None: untracked)."""
    instances = [{**inst, "track_id": tid} for inst, tid in zip(result.instances, ids, strict=True)]
    return replace(result, instances=instances)


def select_instances(result: Result, index: Sequence[int]) -> Result:
    """`result` with only the instances in `index`, in that order."""
    return replace(result, instances=[result.instances[int(i)] for i in index])


def with_joined(result: Result, joined: LocalMasks, boxes: np.ndarray, joins: np.ndarray) -> Result:
    """`result` whose instances with fragments (``joins[f] = i``) take their joined mask and
    box (``joined``, ``boxes``: from instances.join_masks and join_boxes); the fragments are
    still there (drop them with select_instances)."""
    targets = np.unique(np.asarray(joins)[np.asarray(joins) >= 0])
    if targets.size == 0:
        return result
    rles = rle_encode(select(joined, targets))
    instances = list(result.instances)
    for i, rle in zip(targets.tolist(), rles, strict=True):
        instances[i] = {**instances[i], "box": [round(float(v), 2) for v in boxes[i]], "rle": rle}
    return replace(result, instances=instances)
