"""What a broker sink sends per frame: the full results record, or a slim one. Pure.

- "full": the frame's results record exactly as a line of the results file
  (docs/results-format.md: masks as COCO RLE).
- "slim": the same frame without masks: per instance its label, label name, score, box and
  track id; with `polygons`, each instance's mask outlines as well (exterior rings only).
  For brokers where masks are too big (an MQTT message of 50 instances' RLE is tens of KB).

Both are UTF-8 JSON, one object per frame (docs/results-format.md, "Sinks").
"""

from __future__ import annotations

import json
from typing import Any, Literal

import cv2
import numpy as np

from streamseg.postprocess.masks import LocalMasks
from streamseg.wire.results import Result

Payload = Literal["full", "slim"]
PAYLOADS: tuple[Payload, ...] = ("full", "slim")

_SLIM_KEYS = ("label", "label_name", "score", "box", "track_id")

TOLERANCE_PX = 1.0
"""A polygon's vertices may leave out boundary pixels up to this far from its edges."""


def record(result: Result, masks: LocalMasks | None, *, payload: Payload, polygons: bool) -> dict:
    """The frame's record for `payload`.

    Args:
        result: the frame's results record (its instances in the order of `masks`).
        masks: the same instances' masks (box-local crops); used only for slim + polygons.
        payload: "full" (the results-file record) or "slim" (no masks).
        polygons: slim only: add each instance's "polygons", [[[x, y], ...], ...] int frame
            pixels (column, row), one exterior ring per connected part of its mask (within
            TOLERANCE_PX of its boundary pixels).
    """
    full = result.to_json()
    if payload == "full":
        return full
    instances = [{k: inst.get(k) for k in _SLIM_KEYS} for inst in full["instances"]]
    if polygons and masks is not None:
        for i, inst in enumerate(instances):
            inst["polygons"] = outline(masks, i)
    return {**full, "instances": instances}


def encode(rec: dict[str, Any]) -> bytes:
    """A record as compact UTF-8 JSON (what the broker stores)."""
    return json.dumps(rec, separators=(",", ":")).encode()


def outline(masks: LocalMasks, i: int) -> list[list[list[int]]]:
    """Exterior rings of instance `i`'s mask, in frame pixels: [[[x, y], ...], ...] (int; the
    boundary pixels of each part, cv2.findContours RETR_EXTERNAL, simplified to within
    `TOLERANCE_PX` by cv2.approxPolyDP: a rectangle is its 4 corners, a circle a few dozen)."""
    h, w = int(masks.h[i]), int(masks.w[i])
    if h == 0 or w == 0:
        return []
    crop = np.ascontiguousarray(masks.masks[i, :h, :w], dtype=np.uint8)
    contours, _ = cv2.findContours(crop, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    offset = np.array([int(masks.x0[i]), int(masks.y0[i])], dtype=np.int64)
    simpler = (cv2.approxPolyDP(c, TOLERANCE_PX, True) for c in contours)
    rings = [a if len(a) >= 3 else c for a, c in zip(simpler, contours, strict=True)]  # tiny
    return [(r.reshape(-1, 2).astype(np.int64) + offset).tolist() for r in rings]
