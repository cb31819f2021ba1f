"""One frame's way from the model's output to the instances that become its results. Pure.

    paste -> deduplicate -> track (ids, fragments joined) -> drop_low -> results.to_result

Each step takes and returns an `instances.Instances` record of arrays; the results record is
built once at the end, from the survivors only. The stage (`postprocess.main`) and the
tracker replay (`tests/tracking_replay.py`) both run frames through `survivors`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from streamseg.postprocess.instances import Instances, deduplicate, drop_low, with_tracks
from streamseg.postprocess.results import paste
from streamseg.postprocess.tracking import Tracker
from streamseg.wire.messages import Detections

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Rules:
    """What postprocess does to every frame's instances (from the model config)."""

    mask_threshold: float = 0.5
    """A pasted mask's pixels from this probability are the instance's."""
    mask_nms: float = 0.0
    """Drop an instance whose mask overlaps a higher-scored one of its label by this IoU or
    more (0: never; see instances.duplicates)."""
    mask_nms_cross_label: float = 0.0
    """The same for an instance of another label (one object called by two names)."""
    score_threshold: float = 0.0
    """The least score of a result; an instance below it is kept only where it continues a
    track (the tracker's new_track_score), never with tracking off."""


def survivors(
    det: Detections, rules: Rules, tracker: Tracker | None
) -> tuple[Instances, dict[str, int]]:
    """The frame's instances that become results, and what the steps counted on the way
    ({"duplicates": n, "fragments_joined": n}, each only when not 0).

    tracker: the stream's (it sees the frames of one stream in order); None: no track ids.
    Duplicates are counted from the score bar: a copy below it would not have been a result.
    """
    counted: dict[str, int] = {}
    inst = paste(det, mask_threshold=rules.mask_threshold)
    inst, duplicates = deduplicate(
        inst, rules.mask_nms, rules.mask_nms_cross_label, counted_from=rules.score_threshold
    )
    if duplicates:
        counted["duplicates"] = duplicates
    if tracker is not None:
        try:
            update = tracker.update(
                det.frame, inst.masks, inst.boxes, inst.labels, inst.scores, inst.colors
            )
        except ValueError as e:  # a frame out of order: its instances go untracked, once said
            log.warning("%s: frame %d not tracked (%s)", det.stream, det.frame, e)
        else:
            inst, joined = with_tracks(inst, update)
            if joined:
                counted["fragments_joined"] = joined
    return drop_low(inst, rules.score_threshold), counted
