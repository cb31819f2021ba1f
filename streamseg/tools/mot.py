"""Multi-object tracking figures (CLEAR MOT and identity metrics), exact and small.

Pure: per frame, ground-truth ids, predicted track ids and their IoU go in; the figures come
out. The same definitions as py-motmetrics (Bernardin & Stiefelhagen 2008 for CLEAR MOT,
Ristani et al. 2016 for IDF1), without its pandas dependency; `tests/test_evaluate.py` checks
them on hand-computed cases and against motmetrics where it is installed.

Per frame, a ground-truth object and a prediction may match when their IoU >= the threshold:

1. Pairs matched in an earlier frame (the object's last match) that may still match, match.
2. The rest are assigned by the Hungarian method: most matches, then the highest total IoU.
   A match of an object whose last match was another track id is an ID switch.
3. Unmatched objects are misses (FN), unmatched predictions false positives (FP).

MOTA = 1 - (FN + FP + ID switches) / ground-truth instances. MOTP here is the mean IoU of the
matches (motmetrics reports 1 - that). IDF1 = 2 IDTP / (ground-truth + predicted instances),
where IDTP counts the frames in which the pairs of one global one-to-one mapping of
ground-truth tracks to predicted tracks may match (the mapping that maximises IDTP).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.optimize import linear_sum_assignment

_FORBIDDEN = 1e6


@dataclass(frozen=True)
class MotSummary:
    """The figures of one sequence; rates are 0 when their denominator is."""

    frames: int
    gt_tracks: int  # distinct ground-truth ids
    pred_tracks: int  # distinct predicted ids
    gt_instances: int  # ground-truth objects over all frames
    pred_instances: int
    matches: int  # true positives (including ID switches)
    misses: int  # false negatives
    false_positives: int
    id_switches: int
    mota: float
    motp: float  # mean IoU of the matches
    idtp: int
    idf1: float
    idp: float  # IDTP / predicted instances
    idr: float  # IDTP / ground-truth instances


class MotAccumulator:
    """Frames in, figures out (:meth:`summary`). ``iou_threshold``: least IoU of a match."""

    def __init__(self, iou_threshold: float = 0.5) -> None:
        self.iou_threshold = iou_threshold
        self._last_match: dict[int, int] = {}  # gt id -> predicted id it last matched
        self._pair_frames: defaultdict[tuple[int, int], int] = defaultdict(int)
        self._gt_counts: defaultdict[int, int] = defaultdict(int)
        self._pred_counts: defaultdict[int, int] = defaultdict(int)
        self._frames = self._matches = self._misses = self._fps = self._switches = 0
        self._iou_sum = 0.0

    def update(self, gt_ids: Sequence[int], pred_ids: Sequence[int], iou: np.ndarray) -> None:
        """Add one frame.

        Args:
            gt_ids: the G ground-truth object ids present, distinct.
            pred_ids: the P predicted track ids present, distinct.
            iou: float[G, P], IoU of each pair (0 for pairs that may never match, e.g. of
                different classes).
        """
        gt = [int(v) for v in gt_ids]
        pred = [int(v) for v in pred_ids]
        iou = np.asarray(iou, np.float64).reshape(len(gt), len(pred))
        if len(set(gt)) != len(gt) or len(set(pred)) != len(pred):
            raise ValueError("MotAccumulator.update: ids of one frame must be distinct")
        self._frames += 1
        for g in gt:
            self._gt_counts[g] += 1
        for p in pred:
            self._pred_counts[p] += 1
        ok = iou >= self.iou_threshold
        for i, j in zip(*np.nonzero(ok), strict=True):
            self._pair_frames[gt[i], pred[j]] += 1

        gt_done = np.zeros(len(gt), bool)
        pred_done = np.zeros(len(pred), bool)
        column = {p: j for j, p in enumerate(pred)}
        for i, g in enumerate(gt):  # 1. continue earlier matches
            j = column.get(self._last_match.get(g, -1))
            if j is not None and ok[i, j] and not pred_done[j]:
                gt_done[i] = pred_done[j] = True
                self._match(iou[i, j])
        rows, cols = np.flatnonzero(~gt_done), np.flatnonzero(~pred_done)
        cost = np.where(ok, 1.0 - iou, _FORBIDDEN)[np.ix_(rows, cols)]
        if cost.size:  # 2. assign the rest
            r, c = linear_sum_assignment(cost)
            for i, j in zip(rows[r], cols[c], strict=True):
                if not ok[i, j]:
                    continue
                g, p = gt[i], pred[j]
                if self._last_match.get(g, p) != p:
                    self._switches += 1
                self._last_match[g] = p
                gt_done[i] = pred_done[j] = True
                self._match(iou[i, j])
        self._misses += int((~gt_done).sum())  # 3. the rest
        self._fps += int((~pred_done).sum())

    def _match(self, iou: float) -> None:
        self._matches += 1
        self._iou_sum += float(iou)

    def idtp(self) -> int:
        """The most frames one one-to-one mapping of gt ids to predicted ids gets right."""
        if not self._pair_frames:
            return 0
        gts = sorted({g for g, _ in self._pair_frames})
        preds = sorted({p for _, p in self._pair_frames})
        gi, pi = {g: i for i, g in enumerate(gts)}, {p: j for j, p in enumerate(preds)}
        overlap = np.zeros((len(gts), len(preds)), np.float64)
        for (g, p), n in self._pair_frames.items():
            overlap[gi[g], pi[p]] = n
        r, c = linear_sum_assignment(overlap, maximize=True)
        return int(overlap[r, c].sum())

    def summary(self) -> MotSummary:
        n_gt = sum(self._gt_counts.values())
        n_pred = sum(self._pred_counts.values())
        idtp = self.idtp()
        errors = self._misses + self._fps + self._switches
        return MotSummary(
            frames=self._frames,
            gt_tracks=len(self._gt_counts),
            pred_tracks=len(self._pred_counts),
            gt_instances=n_gt,
            pred_instances=n_pred,
            matches=self._matches,
            misses=self._misses,
            false_positives=self._fps,
            id_switches=self._switches,
            mota=1.0 - errors / n_gt if n_gt else 0.0,
            motp=self._iou_sum / self._matches if self._matches else 0.0,
            idtp=idtp,
            idf1=2 * idtp / (n_gt + n_pred) if n_gt + n_pred else 0.0,
            idp=idtp / n_pred if n_pred else 0.0,
            idr=idtp / n_gt if n_gt else 0.0,
        )


def table(s: MotSummary) -> str:
    """Two lines: the headline figures and the counts behind them."""
    return (
        f"{'IDF1':>8} {'MOTA':>7} {'MOTP':>7} {'IDsw':>6}   {'IDP':>6} {'IDR':>6}   "
        f"{'FN':>6} {'FP':>6}   gt tracks  frames\n"
        f"{s.idf1:8.3f} {s.mota:7.3f} {s.motp:7.3f} {s.id_switches:6d}   "
        f"{s.idp:6.3f} {s.idr:6.3f}   {s.misses:6d} {s.false_positives:6d}   "
        f"{s.gt_tracks:9d} {s.frames:7d}"
    )
