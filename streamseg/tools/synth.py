"""Synthetic moving-shapes video with exact ground-truth instance masks.

A `World` is one clip: a static background and 1-10 flat-coloured circles, squares and triangles
that move, spin, bounce off or leave through the frame edges (some mostly outside it), and
occlude each other (some are placed against another so that little of one shows). Shapes are
painted back to front without anti-aliasing into the image and into an id map with the same
rasterizer, so each instance's mask is exactly its visible pixels. Backgrounds are solid,
gradient, smooth noise, blocky noise, or one of these with clutter: small blobs, thin lines and
elongated blobs that are not shapes.

`random_sample` (training frames) draws from a broader world than clips do: some shapes with
only a modest contrast to the background, some big shapes put in front of smaller ones so that
little of those shows ("eclipses"), sometimes bars and strokes that are not shapes crossing in
front of them, and sometimes long lines on the background that cross into outlines of no shape.
It also degrades the picture the way cameras and codecs do: lighting gain and offset, blur,
sensor noise and JPEG compression with 4:2:0 chroma; the masks stay exact.

Lengths below are for a 640x480 frame and scale with min(width, height) / 480.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import cv2
import numpy as np
from pycocotools import mask as mask_utils

CLASSES: tuple[str, ...] = ("circle", "square", "triangle")
CIRCLE, SQUARE, TRIANGLE = 1, 2, 3  # category ids; 0 is background

BackgroundKind = Literal["solid", "gradient", "noise", "blocky", "clutter"]
BACKGROUNDS: tuple[BackgroundKind, ...] = ("solid", "gradient", "noise", "blocky", "clutter")

REF_SIDE = 480  # min(width, height) at which the lengths below hold
SIZE_RANGE = (15.0, 220.0)  # px, log-uniform: circle diameter, square side, triangle side
MAX_SHAPES = 10
SPEED_RANGE = (0.5, 8.0)  # px / frame
MAX_SPIN = 0.08  # rad / frame, squares and triangles
WRAP_PROB = 0.2  # share of shapes that leave at one edge and come back at the opposite one
MIN_AREA = 20  # px: an instance with fewer visible pixels is not an annotation
MIN_BG_CONTRAST = 80.0  # RGB distance of a shape's colour to every background cell mean
MIN_SHAPE_CONTRAST = 50.0  # RGB distance between the colours of two shapes
CLUSTER_PROB = 0.3  # share of shapes placed against an earlier one: deep occlusions
# Training frames only (random_sample), so that `streamseg synth` clips stay as they were:
TRAIN_LOW_CONTRAST = 0.3  # share of shapes LOW_CONTRAST_RANGE from the nearest background cell
LOW_CONTRAST_RANGE = (30.0, MIN_BG_CONTRAST)  # RGB distance
TRAIN_ECLIPSE = 0.3  # share of placed-against shapes made bigger and put over the other's centre
TRAIN_OCCLUDERS = 0.3  # share of frames with 1-4 bars or strokes in front of the shapes
TRAIN_LINES = 0.3  # share of backgrounds with 3-30 long lines, which cross into outlines
MAX_WARMUP = 16  # random_sample advances a fresh world 0..MAX_WARMUP-1 steps
_SHIFT = 4  # fractional bits of cv2 fixed-point coordinates: sub-pixel motion
_COLOR_TRIES = 32


@dataclass(frozen=True, eq=False)  # eq=False: arrays have no truth value, compare by identity
class Sample:
    """One rendered frame and its ground truth.

    image: uint8[H, W, 3], RGB.
    labels: int64[N], category ids 1..3 (index into CLASSES + 1).
    masks: bool[N, H, W], visible pixels of each instance (disjoint).
    boxes: float32[N, 4], xyxy, frame pixels, x2/y2 exclusive, tight around the mask.
    objects: int64[N], which shape each instance is: its index in the world's shapes.
    """

    image: np.ndarray
    labels: np.ndarray
    masks: np.ndarray
    boxes: np.ndarray
    objects: np.ndarray


@dataclass(frozen=True)
class Shape:
    """One moving shape; positions in frame pixels (sub-pixel), angles in radians."""

    label: int  # category id: 1 circle, 2 square, 3 triangle
    color: tuple[int, int, int]  # RGB
    radius: float  # px, of the circumscribed circle
    corners: tuple[float, ...]  # vertex angles on that circle before rotation; () for a circle
    x: float  # centre
    y: float
    vx: float = 0.0  # px / frame
    vy: float = 0.0
    angle: float = 0.0
    spin: float = 0.0  # rad / frame
    wrap: bool = False  # leave through an edge and re-enter at the opposite one; else bounce
    margin: float = 0.0  # bounce: px the centre may pass an edge; -radius keeps it all inside


def make_shape(
    label: int,
    size: float,
    color: tuple[int, int, int],
    x: float,
    y: float,
    *,
    vx: float = 0.0,
    vy: float = 0.0,
    angle: float = 0.0,
    spin: float = 0.0,
    wrap: bool = False,
    margin: float | None = None,
) -> Shape:
    """A regular shape of `size` px (circle diameter, square side, equilateral triangle side).

    `margin` defaults to -radius: the shape bounces before any part leaves the frame.
    """
    if label == CIRCLE:
        radius, corners = size / 2, ()
    elif label == SQUARE:
        radius, corners = (
            size / math.sqrt(2),
            tuple(math.pi / 4 + k * math.pi / 2 for k in range(4)),
        )
    elif label == TRIANGLE:
        radius, corners = size / math.sqrt(3), _TRIANGLE_CORNERS
    else:
        raise ValueError(
            f"shape label must be 1..{len(CLASSES)} ({', '.join(CLASSES)}), got {label}"
        )
    return Shape(
        label=label,
        color=color,
        radius=radius,
        corners=corners,
        x=x,
        y=y,
        vx=vx,
        vy=vy,
        angle=angle,
        spin=spin,
        wrap=wrap,
        margin=-radius if margin is None else margin,
    )


_TRIANGLE_CORNERS = tuple(-math.pi / 2 + k * 2 * math.pi / 3 for k in range(3))


def outline(shape: Shape) -> np.ndarray:
    """float64[K, 2] polygon vertices (x, y) in frame pixels; K = 0 for a circle."""
    a = np.asarray(shape.corners, np.float64) + shape.angle
    return np.stack([shape.x + shape.radius * np.cos(a), shape.y + shape.radius * np.sin(a)], 1)


def _move(pos: float, vel: float, extent: int, shape: Shape) -> tuple[float, float]:
    """New (position, velocity) along one axis of length `extent` px."""
    r = shape.radius
    if shape.wrap:
        return (pos + vel + r) % (extent + 2 * r) - r, vel
    # A shape too big for its margin is held at the middle instead of jittering.
    lo = min(-shape.margin, extent / 2)
    hi = max(extent + shape.margin, extent / 2)
    pos += vel
    for _ in range(8):  # several reflections only if |vel| exceeds the free range
        if pos < lo:
            pos, vel = 2 * lo - pos, abs(vel)
        elif pos > hi:
            pos, vel = 2 * hi - pos, -abs(vel)
        else:
            break
    return min(max(pos, lo), hi), vel


def step_shape(shape: Shape, width: int, height: int) -> Shape:
    """The shape one frame later on a `width` x `height` frame."""
    x, vx = _move(shape.x, shape.vx, width, shape)
    y, vy = _move(shape.y, shape.vy, height, shape)
    return replace(shape, x=x, y=y, vx=vx, vy=vy, angle=(shape.angle + shape.spin) % math.tau)


def _region(shape: Shape, width: int, height: int) -> tuple[int, int, int, int]:
    """The frame region (x0, y0, x1, y1), exclusive, clipped, possibly empty, that holds every
    pixel `shape` paints on a `width` x `height` frame."""
    if shape.label == CIRCLE:
        xmin, xmax = shape.x - shape.radius, shape.x + shape.radius
        ymin, ymax = shape.y - shape.radius, shape.y + shape.radius
    else:
        pts = outline(shape)
        (xmin, ymin), (xmax, ymax) = pts.min(0), pts.max(0)
    # One pixel of slack on each side for the rasterizer's rounding.
    x0, y0 = max(0, math.floor(xmin) - 1), max(0, math.floor(ymin) - 1)
    x1, y1 = min(width, math.ceil(xmax) + 2), min(height, math.ceil(ymax) + 2)
    return x0, y0, max(x0, x1), max(y0, y1)


def in_frame(shape: Shape, width: int, height: int) -> bool:
    """Whether any part of `shape` may be inside a `width` x `height` frame (its bounding
    region overlaps the frame; hidden behind other shapes still counts as in the frame)."""
    x0, y0, x1, y1 = _region(shape, width, height)
    return x0 < x1 and y0 < y1


def _paint(image: np.ndarray, idmap: np.ndarray, shape: Shape, value: int) -> tuple[int, ...]:
    """Paint `shape` into image (its colour) and idmap (`value`); return its clipped
    bounding region (x0, y0, x1, y1), exclusive, possibly empty."""
    k = 1 << _SHIFT
    if shape.label == CIRCLE:
        centre = (round(shape.x * k), round(shape.y * k))
        radius = round(shape.radius * k)
        cv2.circle(image, centre, radius, shape.color, -1, cv2.LINE_8, _SHIFT)
        cv2.circle(idmap, centre, radius, value, -1, cv2.LINE_8, _SHIFT)
    else:
        poly = [np.round(outline(shape) * k).astype(np.int32)]
        cv2.fillPoly(image, poly, shape.color, cv2.LINE_8, _SHIFT)
        cv2.fillPoly(idmap, poly, value, cv2.LINE_8, _SHIFT)
    h, w = idmap.shape
    return _region(shape, w, h)


def render_shapes(background: np.ndarray, shapes: Sequence[Shape], min_area: int) -> Sample:
    """Paint `shapes` back to front (first is lowest) over `background` (uint8[H, W, 3], RGB).

    Instances with fewer than `min_area` visible pixels are left out of the ground truth
    (their pixels stay in the image).
    """
    h, w = background.shape[:2]
    image = background.copy()
    idmap = np.zeros((h, w), np.int16)
    regions = [_paint(image, idmap, s, i + 1) for i, s in enumerate(shapes)]
    kept: list[tuple[int, tuple[int, ...], np.ndarray]] = []
    boxes, objects = [], []
    for i, (shape, (x0, y0, x1, y1)) in enumerate(zip(shapes, regions, strict=True)):
        sub = idmap[y0:y1, x0:x1] == i + 1
        if np.count_nonzero(sub) < min_area:
            continue
        cols, rows = np.flatnonzero(sub.any(0)), np.flatnonzero(sub.any(1))
        boxes.append((x0 + cols[0], y0 + rows[0], x0 + cols[-1] + 1, y0 + rows[-1] + 1))
        kept.append((shape.label, (x0, y0, x1, y1), sub))
        objects.append(i)
    masks = np.zeros((len(kept), h, w), bool)
    for j, (_, (x0, y0, x1, y1), sub) in enumerate(kept):
        masks[j, y0:y1, x0:x1] = sub
    return Sample(
        image=image,
        labels=np.array([label for label, _, _ in kept], np.int64),
        masks=masks,
        boxes=np.array(boxes, np.float32).reshape(-1, 4),
        objects=np.array(objects, np.int64),
    )


# --- backgrounds -------------------------------------------------------------------------------


def _upsample(small: np.ndarray, width: int, height: int) -> np.ndarray:
    """uint8[H, W, 3] from a float[h, w, 3] field, clipped to 0..255, bilinear."""
    small8 = np.clip(small, 0, 255).astype(np.uint8)
    return cv2.resize(small8, (width, height), interpolation=cv2.INTER_LINEAR)


def random_background(
    rng: np.random.Generator, width: int, height: int, kind: BackgroundKind | None = None
) -> np.ndarray:
    """uint8[height, width, 3] RGB background of `kind` (random if None).

    solid: one colour. gradient: linear blend of two colours in a random direction.
    noise: smooth multi-scale noise around a base colour. blocky: square cells of 4-40 px, each
    a colour near a base one (nearest-neighbour). clutter: one of the others plus small irregular
    blobs, thin lines and elongated blobs that are not shapes.
    """
    if kind is None:
        kind = BACKGROUNDS[rng.integers(len(BACKGROUNDS))]
    s = min(width, height) / REF_SIDE
    if kind == "solid":
        color = rng.integers(0, 256, 3)
        return cv2.merge([np.full((height, width), int(c), np.uint8) for c in color])
    if kind == "gradient":
        c0, c1 = rng.integers(0, 256, (2, 3)).astype(np.float32)
        theta = rng.uniform(0, math.tau)
        gh, gw = max(2, height // 16), max(2, width // 16)
        gy, gx = np.mgrid[0:gh, 0:gw].astype(np.float32)
        t = gx / (gw - 1) * math.cos(theta) * width + gy / (gh - 1) * math.sin(theta) * height
        t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
        return _upsample(c0 + t[..., None] * (c1 - c0), width, height)
    if kind == "noise":
        base = rng.uniform(30, 225, 3).astype(np.float32)
        gh, gw = max(2, height // 4), max(2, width // 4)
        cells = int(rng.integers(2, 9))  # coarse blobs across the short side
        ch, cw = cells * height // min(width, height) + 1, cells * width // min(width, height) + 1
        coarse = rng.standard_normal((ch, cw, 3)).astype(np.float32) * rng.uniform(10, 50)
        fine = rng.standard_normal((gh, gw, 3)).astype(np.float32) * rng.uniform(0, 12)
        field = cv2.resize(coarse, (gw, gh), interpolation=cv2.INTER_CUBIC) + fine
        return _upsample(base + field, width, height)
    if kind == "blocky":
        base = rng.uniform(30, 225, 3).astype(np.float32)
        cell = max(1, round(rng.uniform(4, 40) * s))
        cells = rng.standard_normal((height // cell + 1, width // cell + 1, 3)).astype(np.float32)
        field = base + cells * rng.uniform(8, 40)
        big = np.clip(field, 0, 255).astype(np.uint8)
        return cv2.resize(
            big, (big.shape[1] * cell, big.shape[0] * cell), interpolation=cv2.INTER_NEAREST
        )[:height, :width].copy()
    if kind == "clutter":
        plain = [k for k in BACKGROUNDS if k != "clutter"]
        image = random_background(rng, width, height, plain[rng.integers(len(plain))])
        _add_clutter(image, rng, s)
        return image
    raise ValueError(f"background kind must be one of {', '.join(BACKGROUNDS)}, got {kind!r}")


def _add_clutter(image: np.ndarray, rng: np.random.Generator, s: float) -> None:
    """Draw distractors into `image` in place: irregular blobs < 10 px, thin lines, and
    elongated blobs (ellipses 8-45 px long, 2-7 px wide) that no class describes."""
    h, w = image.shape[:2]
    n = int(rng.integers(15, 80) * max(w * h / (640 * 480), 0.1))
    for _ in range(n):
        color = tuple(int(c) for c in rng.integers(0, 256, 3))
        cx, cy = rng.uniform(0, w), rng.uniform(0, h)
        kind = rng.random()
        if kind < 0.25:
            axes = (round(rng.uniform(4, 22.5) * s) + 1, round(rng.uniform(1, 3.5) * s) + 1)
            angle = float(rng.uniform(0, 180))
            cv2.ellipse(image, (round(cx), round(cy)), axes, angle, 0, 360, color, -1, cv2.LINE_AA)
        elif kind < 0.65:
            k = int(rng.integers(4, 8))
            angles = np.sort(rng.uniform(0, math.tau, k))
            radii = rng.uniform(1.0, 4.5, k) * s + 0.5
            pts = np.stack([cx + radii * np.cos(angles), cy + radii * np.sin(angles)], 1)
            cv2.fillPoly(image, [np.round(pts).astype(np.int32)], color, cv2.LINE_AA)
        else:
            length, theta = rng.uniform(8, 60) * s, rng.uniform(0, math.pi)
            dx, dy = length * math.cos(theta) / 2, length * math.sin(theta) / 2
            p0, p1 = (round(cx - dx), round(cy - dy)), (round(cx + dx), round(cy + dy))
            cv2.line(image, p0, p1, color, int(rng.integers(1, 3)), cv2.LINE_AA)


# --- random worlds -----------------------------------------------------------------------------


def _pick_color(
    rng: np.random.Generator,
    background_cells: np.ndarray,
    others: Sequence[tuple[int, int, int]],
    contrast: tuple[float, float] | None = None,
) -> tuple[int, int, int]:
    """A random RGB colour at least MIN_BG_CONTRAST from every background cell mean
    (float32[P, 3]) and MIN_SHAPE_CONTRAST from the `others` colours; the best of the tries when
    none is. With `contrast` (lo, hi): a colour lo..hi from the nearest cell mean instead, a
    shape that barely stands out."""
    if contrast is None:
        cand = rng.integers(0, 256, (_COLOR_TRIES, 3)).astype(np.float32)
        lo, hi = MIN_BG_CONTRAST, math.inf
    else:
        lo, hi = contrast
        near = background_cells[rng.integers(len(background_cells), size=_COLOR_TRIES)]
        way = rng.standard_normal((_COLOR_TRIES, 3)).astype(np.float32)
        way /= np.maximum(np.linalg.norm(way, axis=1, keepdims=True), 1e-6)
        cand = near + way * rng.uniform(lo, hi, (_COLOR_TRIES, 1)).astype(np.float32)
        cand = np.clip(np.round(cand), 0, 255)
    d_bg = np.linalg.norm(cand[:, None] - background_cells[None], axis=2).min(1)
    score = np.minimum(d_bg / lo, hi / np.maximum(d_bg, 1e-6))
    if others:
        ref = np.asarray(others, np.float32)
        d_sh = np.linalg.norm(cand[:, None] - ref[None], axis=2).min(1)
        score = np.minimum(score, d_sh / MIN_SHAPE_CONTRAST)
    ok = np.flatnonzero(score >= 1)
    i = int(ok[0]) if ok.size else int(np.argmax(score))
    return int(cand[i, 0]), int(cand[i, 1]), int(cand[i, 2])


def random_shapes(
    rng: np.random.Generator,
    width: int,
    height: int,
    background: np.ndarray,
    *,
    low_contrast: float = 0.0,
    eclipse: float = 0.0,
) -> tuple[Shape, ...]:
    """1..MAX_SHAPES random shapes in random z-order (first is lowest), coloured to stand out
    from `background` (uint8[H, W, 3]) wherever they go.

    low_contrast: share of shapes whose colour is only LOW_CONTRAST_RANGE from the background.
    eclipse: share of the shapes placed against an earlier one that are made 1.3-2.5 times its
    size and put over its centre, so that a sliver to a half of it shows.
    Both 0 (clips) draw nothing extra from `rng`, so clips stay as they were.
    """
    s = min(width, height) / REF_SIDE
    # Means over an 8x6 grid stand for the local background anywhere in the frame.
    cells = cv2.resize(background, (8, 6), interpolation=cv2.INTER_AREA)
    cells = cells.reshape(-1, 3).astype(np.float32)
    shapes: list[Shape] = []
    for _ in range(int(rng.integers(1, MAX_SHAPES + 1))):
        label = int(rng.integers(1, len(CLASSES) + 1))
        size = max(3.0, math.exp(rng.uniform(*np.log(SIZE_RANGE))) * s)
        faint = bool(low_contrast) and rng.random() < low_contrast
        contrast = LOW_CONTRAST_RANGE if faint else None
        color = _pick_color(rng, cells, [sh.color for sh in shapes], contrast)
        speed, heading = rng.uniform(*SPEED_RANGE) * s, rng.uniform(0, math.tau)
        wrap = bool(rng.random() < WRAP_PROB)
        shape = make_shape(
            label,
            size,
            color,
            0.0,
            0.0,
            vx=speed * math.cos(heading),
            vy=speed * math.sin(heading),
            angle=rng.uniform(0, math.tau) if label != CIRCLE else 0.0,
            spin=rng.uniform(-MAX_SPIN, MAX_SPIN) if label != CIRCLE else 0.0,
            wrap=wrap,
        )
        r = shape.radius
        if label == TRIANGLE and rng.random() < 0.5:
            # Irregular triangle: every angle stays within 40..80 degrees.
            jitter = rng.uniform(-math.radians(20), math.radians(20), 3)
            shape = replace(shape, corners=tuple(float(c) for c in _TRIANGLE_CORNERS + jitter))
        # Half the bouncing shapes stay inside; the rest may drift up to 95% of r outside.
        margin = -r if rng.random() < 0.5 else rng.uniform(-r, 0.95 * r)
        if shapes and rng.random() < CLUSTER_PROB:
            # Against an earlier shape (drawn below it): only a part of that one shows.
            other = shapes[int(rng.integers(len(shapes)))]
            if eclipse and rng.random() < eclipse:
                # Bigger, over the other's centre, moving with it: a sliver to a half shows.
                grown = other.radius * rng.uniform(1.3, 2.5)
                margin, r = margin * grown / r, grown
                shape = replace(shape, radius=r, vx=other.vx, vy=other.vy)
                d = rng.uniform(0.3, 0.9) * r
            else:
                d = rng.uniform(0.2, 1.0) * (r + other.radius)
            theta = rng.uniform(0, math.tau)
            x = min(max(other.x + d * math.cos(theta), 0.0), float(width))
            y = min(max(other.y + d * math.sin(theta), 0.0), float(height))
            if not wrap:
                margin = max(margin, -min(x, width - x, y, height - y))
        elif wrap:
            x, y = rng.uniform(0, width), rng.uniform(0, height)
        else:
            x = rng.uniform(min(-margin, width / 2), max(width + margin, width / 2))
            y = rng.uniform(min(-margin, height / 2), max(height + margin, height / 2))
        shapes.append(replace(shape, x=x, y=y, margin=margin))
    return tuple(shapes)


class World:
    """A clip's state: a static background and moving shapes.

    `background` (uint8[height, width, 3], RGB) and `shapes` (back to front) default to random
    ones drawn from `rng` (`low_contrast` and `eclipse` as in `random_shapes`); `step` and
    `render` use no randomness.
    """

    def __init__(
        self,
        width: int,
        height: int,
        rng: np.random.Generator,
        *,
        background: np.ndarray | BackgroundKind | None = None,
        shapes: Sequence[Shape] | None = None,
        low_contrast: float = 0.0,
        eclipse: float = 0.0,
    ) -> None:
        if width < 1 or height < 1:
            raise ValueError(f"world size must be positive, got {width}x{height}")
        self.width, self.height = width, height
        s = min(width, height) / REF_SIDE
        # Floor of 4 px so tiny test frames do not annotate single-pixel slivers.
        self.min_area = max(4, round(MIN_AREA * s * s))
        if background is None or isinstance(background, str):
            background = random_background(rng, width, height, background)
        if background.shape != (height, width, 3) or background.dtype != np.uint8:
            raise ValueError(
                f"background must be uint8[{height}, {width}, 3], "
                f"got {background.dtype}{list(background.shape)}"
            )
        self.background = background
        if shapes is None:
            shapes = random_shapes(
                rng, width, height, background, low_contrast=low_contrast, eclipse=eclipse
            )
        self.shapes: tuple[Shape, ...] = tuple(shapes)
        self.frame = 0

    def step(self) -> None:
        """Advance one frame."""
        self.shapes = tuple(step_shape(s, self.width, self.height) for s in self.shapes)
        self.frame += 1

    def render(self) -> Sample:
        """The current frame and its ground truth."""
        return render_shapes(self.background, self.shapes, self.min_area)


def degrade(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """`image` (uint8[H, W, 3] RGB) as a camera and a codec might deliver it: a lighting gain and
    offset, sometimes blur, sensor noise, and usually JPEG compression (OpenCV's encoder halves
    the chroma resolution, as yuv420p video does). A new array; masks are unaffected."""
    out = image.astype(np.float32) * rng.uniform(0.7, 1.3) + rng.uniform(-30, 30)
    if rng.random() < 0.3:
        sigma = rng.uniform(0.3, 1.5)
        out = cv2.GaussianBlur(out, (0, 0), sigma)
    if rng.random() < 0.4:
        out += rng.standard_normal(out.shape).astype(np.float32) * rng.uniform(1, 8)
    out8 = np.clip(out, 0, 255).astype(np.uint8)
    if rng.random() < 0.7:
        quality = int(rng.integers(25, 96))
        bgr = cv2.cvtColor(out8, cv2.COLOR_RGB2BGR)  # so that luma and chroma are right
        ok, buf = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, quality])
        if ok:
            out8 = cv2.cvtColor(cv2.imdecode(buf, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    return out8


def occlude(sample: Sample, rng: np.random.Generator, min_area: int) -> Sample:
    """`sample` with 1-4 flat-coloured bars or strokes (2-12 px wide, not shapes) drawn in front
    of everything, as poles and wires cross what a camera sees. Their pixels leave the masks;
    instances left with fewer than `min_area` pixels leave the ground truth."""
    h, w = sample.image.shape[:2]
    s = min(w, h) / REF_SIDE
    image, cover = sample.image.copy(), np.zeros((h, w), bool)
    for _ in range(int(rng.integers(1, 5))):
        one = np.zeros((h, w), np.uint8)
        n = 2 if rng.random() < 0.5 else int(rng.integers(3, 6))  # a bar, or a bent stroke
        step, heading = rng.uniform(20, 150) * s, rng.uniform(0, math.tau)
        pts = [np.array([rng.uniform(0, w), rng.uniform(0, h)])]
        for _ in range(n - 1):
            heading += rng.uniform(-0.8, 0.8)
            pts.append(pts[-1] + step * np.array([math.cos(heading), math.sin(heading)]))
        poly = np.round(np.stack(pts)).astype(np.int32)
        thickness = max(1, round(rng.uniform(2, 12) * s))
        cv2.polylines(one, [poly], False, 1, thickness, cv2.LINE_8)
        drawn = one.astype(bool)
        image[drawn] = rng.integers(0, 256, 3).astype(np.uint8)
        cover |= drawn
    masks = sample.masks & ~cover
    keep = masks.sum((1, 2)) >= min_area
    masks = masks[keep]
    boxes = np.zeros((len(masks), 4), np.float32)
    for j, m in enumerate(masks):
        cols, rows = np.flatnonzero(m.any(0)), np.flatnonzero(m.any(1))
        boxes[j] = (cols[0], rows[0], cols[-1] + 1, rows[-1] + 1)
    return Sample(
        image=image,
        labels=sample.labels[keep],
        masks=masks,
        boxes=boxes,
        objects=sample.objects[keep],
    )


def _add_lines(image: np.ndarray, rng: np.random.Generator, s: float) -> None:
    """Draw 3-30 long straight lines (40-400 px, 1-6 px wide) into `image` in place: where they
    cross they outline triangles and quadrilaterals that are no shape."""
    h, w = image.shape[:2]
    base = image.reshape(-1, 3).mean(0)
    for _ in range(int(rng.integers(3, 31))):
        if rng.random() < 0.6:  # near the background's colour, as faint as real clutter
            color = np.clip(base + rng.normal(0, 35, 3), 0, 255)
        else:
            color = rng.integers(0, 256, 3)
        length, theta = rng.uniform(40, 400) * s, rng.uniform(0, math.pi)
        cx, cy = rng.uniform(0, w), rng.uniform(0, h)
        dx, dy = length * math.cos(theta) / 2, length * math.sin(theta) / 2
        p0, p1 = (round(cx - dx), round(cy - dy)), (round(cx + dx), round(cy + dy))
        width = max(1, round(rng.uniform(1, 6) * s))
        cv2.line(image, p0, p1, tuple(int(c) for c in color), width, cv2.LINE_AA)


def training_render(rng: np.random.Generator, width: int, height: int) -> Sample:
    """A training frame before `degrade`: a fresh World of the broader training kind (sometimes
    long lines on its background), advanced a random number of steps, sometimes with occluders
    in front (`occlude`)."""
    background = random_background(rng, width, height)
    if rng.random() < TRAIN_LINES:
        _add_lines(background, rng, min(width, height) / REF_SIDE)
    world = World(
        width,
        height,
        rng,
        background=background,
        low_contrast=TRAIN_LOW_CONTRAST,
        eclipse=TRAIN_ECLIPSE,
    )
    for _ in range(int(rng.integers(MAX_WARMUP))):
        world.step()
    sample = world.render()
    if rng.random() < TRAIN_OCCLUDERS:
        sample = occlude(sample, rng, world.min_area)
    return sample


def random_sample(rng: np.random.Generator, width: int = 640, height: int = 480) -> Sample:
    """One independent training frame: `training_render`, its picture degraded (`degrade`)."""
    sample = training_render(rng, width, height)
    return replace(sample, image=degrade(sample.image, rng))


# --- clip + COCO ground truth ------------------------------------------------------------------


def coco_annotations(
    sample: Sample,
    *,
    image_id: int,
    first_id: int,
    track_ids: Sequence[int] | None = None,
) -> list[dict[str, Any]]:
    """COCO annotations (compressed RLE, str counts) of `sample`, ids from `first_id` on; with
    `track_ids` (one per instance), each annotation also carries its "track_id"."""
    if len(sample.labels) == 0:
        return []
    stacked = np.asfortranarray(sample.masks.transpose(1, 2, 0).astype(np.uint8))
    rles = mask_utils.encode(stacked)
    anns = []
    for j, (rle, label, box) in enumerate(zip(rles, sample.labels, sample.boxes, strict=True)):
        x1, y1, x2, y2 = (float(v) for v in box)
        anns.append(
            {
                "id": first_id + j,
                "image_id": image_id,
                "category_id": int(label),
                "segmentation": {
                    "size": [int(v) for v in rle["size"]],
                    "counts": rle["counts"].decode("ascii"),
                },
                "area": float(np.count_nonzero(sample.masks[j])),
                "bbox": [x1, y1, x2 - x1, y2 - y1],
                "iscrowd": 0,
            }
        )
        if track_ids is not None:
            anns[-1]["track_id"] = int(track_ids[j])
    return anns


class Identities:
    """Ground-truth track ids of one clip's objects, frame after frame.

    An object keeps its id while it is in the frame, also while hidden behind other shapes or
    too small to annotate. One that leaves the frame (a wrapping shape, which jumps to the
    opposite edge, or one wholly outside) comes back as a new object with a new id, since
    nothing in the picture links the two. Ids count from 1 in order of first annotation.
    """

    def __init__(self) -> None:
        self._current: dict[int, int] = {}  # shape index -> its track id
        self._last: dict[int, tuple[float, float]] = {}  # shape index -> its last centre
        self.next_id = 1

    def update(self, world: World, sample: Sample) -> list[int]:
        """The track id of each instance of `sample`, the frame `world` is at; call once per
        frame, in order."""
        for i, shape in enumerate(world.shapes):
            px, py = self._last.get(i, (shape.x, shape.y))
            # Motion moves a centre a few px per frame (SPEED_RANGE); only a wrap jumps this far.
            wrapped = abs(shape.x - px) > world.width / 2 or abs(shape.y - py) > world.height / 2
            if wrapped or not in_frame(shape, world.width, world.height):
                self._current.pop(i, None)
            self._last[i] = (shape.x, shape.y)
        ids = []
        for obj in sample.objects.tolist():
            if obj not in self._current:
                self._current[obj] = self.next_id
                self.next_id += 1
            ids.append(self._current[obj])
        return ids


def _check_clip_args(frames: int, size: tuple[int, int], fps: int, crf: int) -> None:
    width, height = size
    if frames < 1:
        raise ValueError(f"frames must be >= 1, got {frames}")
    if fps < 1:
        raise ValueError(f"fps must be >= 1, got {fps}")
    if width < 2 or height < 2 or width % 2 or height % 2:
        raise ValueError(
            f"size must be even and >= 2 (libx264 yuv420p), got {width}x{height}; use e.g. 640x480"
        )
    if not 0 <= crf <= 51:
        raise ValueError(f"crf must be in 0..51 (libx264), got {crf}")


def write_clip(
    path: str | Path,
    gt_path: str | Path,
    *,
    seed: int = 0,
    frames: int = 150,
    size: tuple[int, int] = (640, 480),
    fps: int = 30,
    crf: int = 18,
) -> dict[str, Any]:
    """Write an H.264 MP4 (libx264, yuv420p, `frames` frames at `fps`) of one random World and
    its COCO ground truth JSON. Same seed, same output. Returns the COCO dict.

    `size` is (width, height). Image ids are frame + 1; "frame" is the 0-based decode index.
    Each annotation's "track_id" names its object across frames (see `Identities`); "tracks"
    lists them: id, category_id, first_frame, last_frame and frames (annotated frames).
    """
    _check_clip_args(frames, size, fps, crf)
    # here, not at the top: training workers need no codec library
    from streamseg.postprocess.sinks import VideoSink

    path, gt_path = Path(path), Path(gt_path)
    width, height = size
    world = World(width, height, np.random.default_rng(seed))
    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    identities = Identities()
    tracks: dict[int, dict[str, Any]] = {}
    video = VideoSink(path, width, height, fps, crf=crf, preset=None)
    try:
        for frame in range(frames):
            sample = world.render()
            video.write(sample.image)
            images.append(
                {
                    "id": frame + 1,
                    "frame": frame,
                    "file_name": f"{path.name}#{frame}",
                    "width": width,
                    "height": height,
                }
            )
            ids = identities.update(world, sample)
            annotations += coco_annotations(
                sample, image_id=frame + 1, first_id=len(annotations) + 1, track_ids=ids
            )
            for track_id, label in zip(ids, sample.labels.tolist(), strict=True):
                track = tracks.setdefault(
                    track_id,
                    {
                        "id": track_id,
                        "category_id": label,
                        "first_frame": frame,
                        "last_frame": frame,
                        "frames": 0,
                    },
                )
                track["last_frame"] = frame
                track["frames"] += 1
            world.step()
    finally:
        video.close()
    coco = {
        "info": {"generator": "streamseg.tools.synth", "seed": seed, "fps": fps, "frames": frames},
        "images": images,
        "annotations": annotations,
        "categories": [{"id": i + 1, "name": name} for i, name in enumerate(CLASSES)],
        "tracks": [tracks[k] for k in sorted(tracks)],
    }
    gt_path.write_text(json.dumps(coco))
    return coco
