"""A frame's instances from the model's compact output, and its results record. No I/O.

`paste` turns a Detections message into arrays (:class:`Instances`); the steps of
`postprocess.instances` decide which survive; `to_result` then builds the record once, COCO
RLE-encoding only the survivors, through the results format (`streamseg.wire.results`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from streamseg.config import label_name
from streamseg.postprocess.instances import Instances
from streamseg.postprocess.masks import LocalMasks, paste_masks, rle_encode
from streamseg.postprocess.tracking import NO_TRACK
from streamseg.wire.messages import Detections
from streamseg.wire.results import Instance, Result


def paste(det: Detections, *, mask_threshold: float) -> Instances:
    """The frame's N instances with binary masks: each 28x28 mask pasted into its box and
    thresholded at ``mask_threshold`` (kept as box-local crops); untracked."""
    masks = paste_masks(
        torch.from_numpy(np.asarray(det.masks, dtype=np.float32))[:, None],
        torch.from_numpy(np.asarray(det.boxes, dtype=np.float32)),
        (det.height, det.width),
        threshold=mask_threshold,
    )
    n = len(det.scores)
    return Instances(
        masks=masks,
        boxes=det.boxes,
        labels=det.labels,
        scores=det.scores,
        colors=det.colors if det.colors is not None else np.full((n, 3), np.nan),
        track_ids=np.full(n, NO_TRACK, np.int64),
    )


def to_result(
    det: Detections, inst: Instances, *, label_names: Sequence[str], seq: int = 0
) -> Result:
    """The frame's results record (see Result): ``inst``, in order, each mask RLE-encoded.
    ``det`` gives the frame's stream, number, times and size; ``seq``: its publish number."""
    ids = inst.track_id_list()
    instances = [
        Instance(
            label=int(inst.labels[i]),
            label_name=label_name(label_names, int(inst.labels[i])),
            score=float(inst.scores[i]),
            box=tuple(float(v) for v in inst.boxes[i]),
            rle=rle,
            track_id=ids[i],
        ).to_json()
        for i, rle in enumerate(rle_encode(inst.masks))
    ]
    return Result(
        det.stream, det.frame, det.pts, det.wall_time, det.width, det.height, instances, seq=seq
    )


def make_result(
    det: Detections, *, mask_threshold: float, label_names: Sequence[str]
) -> tuple[Result, LocalMasks]:
    """Every instance of the frame as a result, none dropped or tracked, and its masks (the
    cost of paste + threshold + RLE, as `streamseg bench` measures it)."""
    inst = paste(det, mask_threshold=mask_threshold)
    return to_result(det, inst, label_names=label_names), inst.masks
