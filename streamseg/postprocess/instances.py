"""What postprocess does to a frame's instances before they become results. Pure: no I/O.

A frame's instances travel as one frozen :class:`Instances` record of arrays, through steps
that each return a new record (never a patched results record):

    deduplicate -> with_tracks (the tracker's ids and joins) -> drop_low

and only the survivors are encoded (``results.to_result``).

Two model mistakes that a tracker turns into new ids (docs/tracking.md):

- a duplicate: two instances on the same pixels (visible masks of opaque objects do not
  overlap), which box NMS missed because their boxes differ, or which have two labels (box
  NMS is per label): :func:`duplicates`;
- a fragment: one object seen as two pieces of one label, which the tracker recognises
  against the object's last complete mask (``Update.joins``): :func:`join_masks` and
  :func:`join_boxes` make the two one instance.

Masks stay box-local crops (:class:`LocalMasks`) throughout.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from streamseg.postprocess.masks import LocalMasks
from streamseg.postprocess.tracking import NO_TRACK, Update


@dataclass(frozen=True, eq=False)
class Instances:
    """One frame's N instances, in one order across every array.

    Attributes:
        masks: the binary masks as box-local crops (:class:`LocalMasks`, frame pixels).
        boxes: float32[N, 4], xyxy, frame pixels.
        labels: int64[N], label ids.
        scores: float32[N], in [0, 1].
        colors: float[N, 3], each instance's colour (RGB, 0-255) as inference measured it;
            NaN where not measured.
        track_ids: int64[N], each instance's track id (>= 1), or ``NO_TRACK`` (-1): untracked.
    """

    masks: LocalMasks
    boxes: np.ndarray
    labels: np.ndarray
    scores: np.ndarray
    colors: np.ndarray
    track_ids: np.ndarray

    def __len__(self) -> int:
        return len(self.scores)

    def take(self, index: np.ndarray) -> Instances:
        """Only the instances in ``index`` (int[K]), in that order."""
        index = np.asarray(index, np.int64).reshape(-1)
        return Instances(
            masks=select(self.masks, index),
            boxes=self.boxes[index],
            labels=self.labels[index],
            scores=self.scores[index],
            colors=self.colors[index],
            track_ids=self.track_ids[index],
        )

    def track_id_list(self) -> list[int | None]:
        """Each instance's track id, None where untracked (as results records hold them)."""
        return [None if t == NO_TRACK else int(t) for t in self.track_ids.tolist()]


def deduplicate(
    inst: Instances, min_iou: float, cross_label_iou: float = 0.0, counted_from: float = 0.0
) -> tuple[Instances, int]:
    """``inst`` without its duplicates (:func:`duplicates`), and how many of those scored
    >= ``counted_from`` (the score bar of results: a copy below it would not have been a
    result anyway). Both IoUs 0: nothing is a duplicate."""
    if (min_iou <= 0.0 and cross_label_iou <= 0.0) or len(inst) < 2:
        return inst, 0
    dup = duplicates(inst.masks, inst.labels, inst.scores, min_iou, cross_label_iou)
    if not dup.any():
        return inst, 0
    counted = int((dup & (inst.scores >= counted_from)).sum())
    return inst.take(np.flatnonzero(~dup)), counted


def with_tracks(inst: Instances, update: Update) -> tuple[Instances, int]:
    """``inst`` as the tracker decided (``Tracker.update`` on these instances): each takes
    its track id, and each fragment is joined to the instance it is a piece of (mask and box
    grown, the fragment gone); and how many fragments were joined."""
    inst = replace(inst, track_ids=np.asarray(update.ids, np.int64).reshape(-1))
    fragment = update.joins >= 0
    if not fragment.any():
        return inst, 0
    joined = replace(
        inst,
        masks=join_masks(inst.masks, update.joins),
        boxes=join_boxes(inst.boxes, update.joins).astype(np.float32),
    )
    return joined.take(np.flatnonzero(~fragment)), int(fragment.sum())


def drop_low(inst: Instances, score_threshold: float) -> Instances:
    """``inst`` without those scoring below ``score_threshold``, except those that continue a
    track (a track id: the tracker let them, see ``Tracker.new_track_score``)."""
    low = (inst.scores < score_threshold) & (inst.track_ids == NO_TRACK)
    if not low.any():
        return inst
    return inst.take(np.flatnonzero(~low))


def _crop(local: LocalMasks, i: int) -> tuple[np.ndarray, int, int]:
    """Instance i's crop (bool[h, w]) and its top-left frame column and row."""
    return local.masks[i, : local.h[i], : local.w[i]], int(local.x0[i]), int(local.y0[i])


def _intersection(local: LocalMasks, i: int, j: int) -> int:
    """Pixels in the masks of both instances i and j."""
    a, ax, ay = _crop(local, i)
    b, bx, by = _crop(local, j)
    x0, x1 = max(ax, bx), min(ax + a.shape[1], bx + b.shape[1])
    y0, y1 = max(ay, by), min(ay + a.shape[0], by + b.shape[0])
    if x0 >= x1 or y0 >= y1:
        return 0
    sa = a[y0 - ay : y1 - ay, x0 - ax : x1 - ax]
    sb = b[y0 - by : y1 - by, x0 - bx : x1 - bx]
    return int(np.count_nonzero(sa & sb))


def duplicates(
    local: LocalMasks,
    labels: np.ndarray,
    scores: np.ndarray,
    min_iou: float,
    cross_label_iou: float = 0.0,
) -> np.ndarray:
    """Which instances duplicate a higher-scored one: same label and mask IoU >= ``min_iou``,
    or another label and mask IoU >= ``cross_label_iou`` (one object called by two names).

    Greedy in score order (ties: the earlier instance wins), as NMS is: an instance is a
    duplicate only of one that is kept.

    Args:
        local: the frame's N masks.
        labels: int[N].
        scores: float[N].
        min_iou: in [0, 1]; 0: instances of one label are never duplicates.
        cross_label_iou: in [0, 1]; 0: instances of different labels are never duplicates.

    Returns:
        bool[N], True for a duplicate (to drop).
    """
    n = len(local)
    labels = np.asarray(labels).reshape(-1)
    scores = np.asarray(scores, np.float64).reshape(-1)
    if not (len(labels) == len(scores) == n):
        raise ValueError(f"duplicates: {n} masks but {len(labels)} labels, {len(scores)} scores")
    for name, value in (("min_iou", min_iou), ("cross_label_iou", cross_label_iou)):
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"duplicates: {name} must be in [0, 1], got {value}")
    areas = local.areas()
    dropped = np.zeros(n, bool)
    kept: list[int] = []
    for i in np.argsort(-scores, kind="stable"):
        for j in kept:
            least = min_iou if labels[i] == labels[j] else cross_label_iou
            if least == 0.0:
                continue
            inter = _intersection(local, int(i), j)
            union = int(areas[i]) + int(areas[j]) - inter
            if union and inter >= least * union:
                dropped[i] = True
                break
        else:
            kept.append(int(i))
    return dropped


def select(local: LocalMasks, index: np.ndarray) -> LocalMasks:
    """The masks of the instances in ``index`` (int[K], in that order)."""
    index = np.asarray(index, np.int64).reshape(-1)
    h, w = local.h[index], local.w[index]
    crop_h, crop_w = int(h.max(initial=0)), int(w.max(initial=0))
    return LocalMasks(
        masks=np.ascontiguousarray(local.masks[index, :crop_h, :crop_w]),
        x0=local.x0[index],
        y0=local.y0[index],
        h=h,
        w=w,
        frame_size=local.frame_size,
    )


def _check_joins(joins: np.ndarray, n: int) -> np.ndarray:
    joins = np.asarray(joins, np.int64).reshape(-1)
    if len(joins) != n:
        raise ValueError(f"joins: {len(joins)} entries for {n} instances")
    targets = joins[joins >= 0]
    if (targets >= n).any() or (joins < -1).any() or (joins[targets] >= 0).any():
        raise ValueError("joins: each entry is -1 or the index of an instance that joins none")
    return joins


def join_masks(local: LocalMasks, joins: np.ndarray) -> LocalMasks:
    """Each instance's mask joined with its fragments' (``joins[f] = i``: f is a fragment of
    i; -1: none; as ``Tracker.update`` gives it in ``Update.joins``). Fragments keep their own
    masks: drop them after (:func:`select`).

    Returns:
        N masks; an instance with fragments covers the pixels of all of them.
    """
    n = len(local)
    joins = _check_joins(joins, n)
    if (joins < 0).all():
        return local
    x0, y0 = local.x0.astype(np.int64), local.y0.astype(np.int64)
    x1, y1 = x0 + local.w, y0 + local.h
    for f in np.flatnonzero(joins >= 0):
        if local.h[f] == 0 or local.w[f] == 0:
            continue
        i = joins[f]
        if local.h[i] == 0 or local.w[i] == 0:
            x0[i], y0[i], x1[i], y1[i] = x0[f], y0[f], x1[f], y1[f]
        else:
            x0[i], y0[i] = min(x0[i], x0[f]), min(y0[i], y0[f])
            x1[i], y1[i] = max(x1[i], x1[f]), max(y1[i], y1[f])
    h, w = y1 - y0, x1 - x0
    masks = np.zeros((n, int(h.max(initial=0)), int(w.max(initial=0))), bool)
    for i in range(n):
        if joins[i] >= 0:  # a fragment keeps its own crop (its place is unchanged above)
            crop = _crop(local, i)[0]
            masks[i, : crop.shape[0], : crop.shape[1]] = crop
            continue
        for j in (i, *np.flatnonzero(joins == i)):
            part, px, py = _crop(local, int(j))
            r, c = py - y0[i], px - x0[i]
            masks[i, r : r + part.shape[0], c : c + part.shape[1]] |= part
    return LocalMasks(
        masks=masks,
        x0=x0.astype(np.int32),
        y0=y0.astype(np.int32),
        h=h.astype(np.int32),
        w=w.astype(np.int32),
        frame_size=local.frame_size,
    )


def join_boxes(boxes: np.ndarray, joins: np.ndarray) -> np.ndarray:
    """float[N, 4], xyxy: each instance's box grown to cover its fragments' boxes."""
    boxes = np.array(boxes, np.float64).reshape(-1, 4)
    joins = _check_joins(joins, len(boxes))
    for f in np.flatnonzero(joins >= 0):
        i = joins[f]
        boxes[i, :2] = np.minimum(boxes[i, :2], boxes[f, :2])
        boxes[i, 2:] = np.maximum(boxes[i, 2:], boxes[f, 2:])
    return boxes
