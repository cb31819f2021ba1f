"""Overlay drawing for annotated video: translucent masks, boxes, label and score. Pure."""

from __future__ import annotations

import colorsys
from collections.abc import Sequence

import cv2
import numpy as np

from streamseg.config import label_name
from streamseg.postprocess.masks import LocalMasks


def class_color(label: int) -> tuple[int, int, int]:
    """A stable, saturated RGB colour per label id (golden-ratio hue steps)."""
    hue = (label * 0.618033988749895) % 1.0
    r, g, b = colorsys.hsv_to_rgb(hue, 0.85, 1.0)
    return int(r * 255), int(g * 255), int(b * 255)


def track_color(track_id: int) -> tuple[int, int, int]:
    """A stable RGB colour per track id, spread apart from one id to the next."""
    hue = (track_id * 0.381966011250105 + 0.1) % 1.0  # golden-angle steps: neighbours differ
    r, g, b = colorsys.hsv_to_rgb(hue, 0.75, 1.0)
    return int(r * 255), int(g * 255), int(b * 255)


def blend_table(color: tuple[int, int, int], alpha: float) -> np.ndarray:
    """uint8[256, 3]: row v, column c is channel c of a pixel of value v with `color` blended
    in at `alpha`, truncated: bit for bit what float arithmetic on each pixel would give
    (v * (1 - alpha) in float64 plus color * alpha in float32, as numpy promotes them)."""
    values = np.arange(256, dtype=np.uint8)[:, None]
    return (values * (1.0 - alpha) + np.array(color, np.float32) * alpha).astype(np.uint8)


def draw_instances(
    image: np.ndarray,
    masks: LocalMasks,
    boxes: np.ndarray,
    labels: np.ndarray,
    scores: np.ndarray,
    label_names: Sequence[str],
    *,
    track_ids: Sequence[int | None] | None = None,
    alpha: float = 0.45,
) -> np.ndarray:
    """A copy of `image` with every instance drawn.

    image: uint8[H, W, 3] RGB; boxes: float32[N, 4] xyxy frame px; labels: int[N]; scores: float[N];
    track_ids: per instance, its track id or None. A tracked instance is coloured by its track
    (an object keeps its colour, and two objects of a class differ) and labelled "#id".
    Masks are blended in only inside each instance's crop, so cost follows instance area.
    """
    out = np.array(image, copy=True)
    height, width = out.shape[:2]
    order = np.argsort(scores, kind="stable")  # low scores first: the best end up on top
    ids = list(track_ids) if track_ids is not None else [None] * len(scores)
    colors = [
        class_color(int(labels[i])) if ids[i] is None else track_color(int(ids[i]))
        for i in range(len(scores))
    ]
    for i in order:
        x0, y0, h, w = int(masks.x0[i]), int(masks.y0[i]), int(masks.h[i]), int(masks.w[i])
        if h > 0 and w > 0:
            region = out[y0 : y0 + h, x0 : x0 + w]
            m = masks.masks[i, :h, :w]
            # a uint8 table and a masked copy, not float64 arithmetic on boolean-indexed pixels:
            # the same pixels, about 20x faster (400x400 crop: 5.6 -> 0.25 ms)
            blended = cv2.LUT(region, blend_table(colors[i], alpha).reshape(1, 256, 3))
            cv2.copyTo(blended, m.view(np.uint8), region)  # writes into `out` (a view of it)
    thickness = max(1, round(min(height, width) / 400))
    scale = max(0.35, min(height, width) / 1000)
    for i in order:
        color = colors[i]
        x1, y1, x2, y2 = (int(round(float(v))) for v in boxes[i])
        cv2.rectangle(out, (x1, y1), (x2, y2), color, thickness, cv2.LINE_AA)
        text = f"{label_name(label_names, int(labels[i]))} {float(scores[i]):.2f}"
        if ids[i] is not None:
            text = f"#{ids[i]} {text}"
        (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
        ty = y1 - 2 if y1 - th - base - 2 >= 0 else min(height - base - 1, y1 + th + 2)
        tx = min(max(0, x1), max(0, width - tw - 2))
        cv2.rectangle(out, (tx, ty - th - 1), (tx + tw + 2, ty + base), color, -1)
        cv2.putText(
            out, text, (tx + 1, ty), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), 1, cv2.LINE_AA
        )
    return out
