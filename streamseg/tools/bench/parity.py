"""Half-precision parity: does the mixed-precision model (networks in fp16, geometry in fp32)
find what the float32 model finds?

Two copies of one model (same weights) run on the same frames through the inference stage's
Executor, one as built (float32) and one with streamseg.inference.precision.mixed_precision.
`compare` matches their instances frame by frame; only instances clearly inside the results
count (score at least `margin` above the lowest kept score of the frame and above the
threshold), because one whose score sits on the cut may fairly be in one list and not the
other. Such an instance must be found again with the same label, every box side within
`box_px` pixels, and a mask IoU of at least `mask_iou` over its confident pixels (probability
at least `pixel_margin` from the mask threshold in the float32 mask).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import numpy as np

BOX_PX = 1.0
MASK_IOU = 0.98


@dataclass(frozen=True)
class Parity:
    """Figures of one comparison. ok: every counted instance matched within the limits."""

    frames: int
    counted: int  # instances clearly inside the float32 results
    matched: int  # of those, found again within the limits
    max_box_px: float  # largest box side difference among matched instances
    min_mask_iou: float  # smallest mask IoU among matched instances (1.0 when none)
    extra: int  # instances clearly inside the half results with no float32 counterpart

    @property
    def ok(self) -> bool:
        return self.matched == self.counted and self.extra == 0

    def as_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "ok": self.ok}


def _clear(scores: np.ndarray, threshold: float, limit: int, margin: float) -> np.ndarray:
    """Indices of instances clearly inside a frame's results: above the score threshold, and
    above the lowest kept score when the list was cut at `limit` (detections_per_img)."""
    if len(scores) == 0:
        return np.zeros(0, np.int64)
    cut = max(threshold, float(scores.min())) if len(scores) >= limit else threshold
    return np.flatnonzero(scores >= cut + margin)


def _mask_iou(a: np.ndarray, b: np.ndarray, threshold: float, pixel_margin: float) -> float:
    """IoU of two float[28, 28] probability masks over `a`'s confident pixels."""
    confident = np.abs(a - threshold) >= pixel_margin
    ma, mb = (a > threshold) & confident, (b > threshold) & confident
    union = np.count_nonzero(ma | mb)
    return 1.0 if union == 0 else np.count_nonzero(ma & mb) / union


def _box_px(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """float[N] largest side difference between box a (float[4]) and each row of b."""
    return np.abs(b - a[None]).max(axis=1) if len(b) else np.zeros(0)


def compare(
    ref: list[dict[str, np.ndarray]],
    half: list[dict[str, np.ndarray]],
    *,
    score_threshold: float,
    limit: int,
    mask_threshold: float = 0.5,
    margin: float = 0.02,
    pixel_margin: float = 0.05,
    box_px: float = BOX_PX,
    mask_iou: float = MASK_IOU,
) -> Parity:
    """Match `half`'s per-frame results (Executor output) against `ref`'s, as described above.
    `limit`: the model's detections_per_img (a frame with that many was cut by rank)."""
    counted = matched = extra = 0
    worst_px, worst_iou = 0.0, 1.0
    for r, h in zip(ref, half, strict=True):
        for i in _clear(r["scores"], score_threshold, limit, margin):
            counted += 1
            same = np.flatnonzero(h["labels"] == r["labels"][i])
            if len(same) == 0:
                continue
            px = _box_px(r["boxes"][i], h["boxes"][same])
            j = same[int(np.argmin(px))]
            iou = float(_mask_iou(r["masks"][i], h["masks"][j], mask_threshold, pixel_margin))
            if px.min() <= box_px and iou >= mask_iou:
                matched += 1
                worst_px, worst_iou = max(worst_px, float(px.min())), min(worst_iou, iou)
        for j in _clear(
            h["scores"], score_threshold, limit, margin
        ):  # found only in half precision?
            same = np.flatnonzero(r["labels"] == h["labels"][j])
            if len(same) == 0 or _box_px(h["boxes"][j], r["boxes"][same]).min() > box_px:
                extra += 1
    return Parity(len(ref), counted, matched, worst_px, worst_iou, extra)


def run_parity(
    model: Any,
    frames: list[np.ndarray],
    *,
    half: Any,
    batch: int = 1,
    score_threshold: float,
    limit: int,
) -> Parity:
    """`model` (a loaded MaskRCNN) as float32 and, on a deep copy, in mixed precision to `half`
    (a torch dtype), both through the Executor in batches of `batch`; compared."""
    from streamseg.inference.executor import Executor
    from streamseg.inference.precision import mixed_precision

    mixed = mixed_precision(copy.deepcopy(model), half)
    outputs = []
    for m in (model, mixed):
        executor = Executor(m, fp16=False)  # precision is the model's own (mixed or not)
        out: list[dict[str, np.ndarray]] = []
        for i in range(0, len(frames), batch):
            out += executor(frames[i : i + batch])
        outputs.append(out)
    return compare(outputs[0], outputs[1], score_threshold=score_threshold, limit=limit)
