"""Held-out moving-shapes world: H.264 clips with exact COCO ground truth, written
independently of `streamseg synth` (the model's training generator), to check that the
shipped shapes model generalises to clips it was not made from.

README
------
A clip is a scene of layers drawn back to front over a static background: shapes (COCO
categories 1 circle, 2 square, 3 triangle; squares and triangles rotate, some triangles are
irregular) and elongated clutter (ellipses, sausages, irregular strokes) that is not a shape and
never in the ground truth. Lengths are in units u = min(width, height) / 480 px, so shapes have
12-100 u "radius" (circumradius): 12-100 px at 640x480, 18-150 px at 1280x720; all random draws
that shape the scene (kinds, sizes, speeds, positions as fractions of the frame) come from one
seeded stream and are the same at every frame size. Motion: "residents" bounce inside a box that
may reach past the frame edges (shapes then sit mostly outside), "passers" enter from an edge and
leave, some slow, some fast, some with a sideways wobble; "eclipses" put a big shape in front of
a small one so that the small one is hidden down to a sliver. 1-8 shapes are on screen a frame.
Backgrounds (by seed % 4): flat, gradient, blocky noise, cluttered (static bars, strokes,
ellipses). Shape colours are flat and picked for a modest (30%) or strong RGB contrast with the
background around their path, and apart from the other shapes' colours.

Rasterizer: each layer has a signed distance (a lower bound of the true one), so pixels farther
than 0.75 px from the outline are fully in or out; the others get their coverage from 4x4 samples.
The image composites each layer with its coverage as alpha; a layer's mask is its pixels with
coverage >= 0.5, and an instance's ground truth is its mask less the masks of every layer in
front of it (so ground-truth masks are disjoint). Instances with fewer than 20 u^2 visible pixels
are left out. The frames go to H.264 (PyAV, libx264, yuv420p, CRF 20, 15 fps).

    python -m tests.heldout.world OUT_DIR --seeds 5101 5102 --sizes 640x480 1280x720 --frames 150

writes OUT_DIR/heldout_{seed}_{W}x{H}.mp4 and OUT_DIR/heldout_{seed}_{W}x{H}_gt.json (images:
id = frame + 1, "frame", "file_name" = "{clip}#{frame}"; annotations with compressed RLE,
"track_id" = the object's id, plus "occluded" and "truncated" fractions for analysis).
`--preview 0 75` also writes PNGs of those frames (decoded from the clip) with ground-truth
contours. `python -m tests.heldout.evaluate` runs the shipped model over such clips.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pycocotools.mask as mask_utils

FPS = 15
CRF = 20
CATEGORIES = [
    {"id": 1, "name": "circle"},
    {"id": 2, "name": "square"},
    {"id": 3, "name": "triangle"},
]
CATEGORY_ID = {c["name"]: c["id"] for c in CATEGORIES}
SHAPE_KINDS = ("circle", "square", "triangle")
CLUTTER_KINDS = ("ellipse", "sausage", "stroke")
BACKGROUNDS = ("flat", "gradient", "blocky", "cluttered")
RADIUS_U = (12.0, 100.0)  # shape circumradius, in u = min(W, H) / 480 px
MIN_AREA_U2 = 20.0  # least visible pixels of a ground-truth instance, in u^2
MAX_ON_SCREEN = 8
SUPERSAMPLE = 4  # 4x4 coverage samples on outline pixels
EDGE = 0.75  # px; more than a pixel's half diagonal (0.7071)


def unit(size: tuple[int, int]) -> float:
    """Pixels per length unit u at this frame size."""
    return min(size) / 480.0


def clip_name(seed: int, size: tuple[int, int]) -> str:
    return f"heldout_{seed}_{size[0]}x{size[1]}"


# --- layers: geometry, signed distance, pose per frame ---------------------------------------


@dataclass
class Layer:
    """One drawable: a shape (in the ground truth) or clutter (never). Geometry in pixels, in
    the layer's own frame (centre at 0, before rotation); pose per frame in xs, ys, angles."""

    oid: int
    kind: str
    z: float
    colour: np.ndarray  # (3,) float32, 0-255
    xs: np.ndarray  # (frames,) centre x, px
    ys: np.ndarray
    angles: np.ndarray  # radians
    extent: float  # px: every covered point lies within this distance of the centre
    radius_u: float = 0.0  # nominal size in u (shapes: circumradius)
    r: float = 0.0  # circle radius; sausage/stroke half width
    verts: np.ndarray | None = None  # polygon vertices, counter-clockwise (k, 2)
    a: float = 0.0  # ellipse semi-axes
    b: float = 0.0
    half_len: float = 0.0  # sausage half length of its axis
    points: np.ndarray | None = None  # stroke polyline (k, 2)
    role: str = ""  # resident, passer, eclipse-back, eclipse-front, clutter, background
    _normals: np.ndarray | None = field(default=None, repr=False)
    _offsets: np.ndarray | None = field(default=None, repr=False)

    @property
    def is_shape(self) -> bool:
        return self.kind in SHAPE_KINDS

    @property
    def category_id(self) -> int | None:
        return CATEGORY_ID.get(self.kind)

    def __post_init__(self) -> None:
        if self.verts is not None:
            v = np.asarray(self.verts, dtype=np.float64)
            e = np.roll(v, -1, axis=0) - v
            n = np.stack([e[:, 1], -e[:, 0]], axis=1)  # outward for counter-clockwise order
            n /= np.linalg.norm(n, axis=1, keepdims=True)
            self._normals = n
            self._offsets = (n * v).sum(axis=1)

    def area(self) -> float:
        """Exact area in px^2 (strokes: approximate), for the truncation figure."""
        if self.kind == "circle":
            return math.pi * self.r**2
        if self.verts is not None:
            x, y = self.verts[:, 0], self.verts[:, 1]
            return 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))
        if self.kind == "ellipse":
            return math.pi * self.a * self.b
        if self.kind == "sausage":
            return 4 * self.half_len * self.r + math.pi * self.r**2
        seg = np.linalg.norm(np.diff(self.points, axis=0), axis=1).sum()
        return 2 * self.r * float(seg) + math.pi * self.r**2

    def pose(self, t: int) -> tuple[float, float, float]:
        i = min(t, len(self.xs) - 1)
        return float(self.xs[i]), float(self.ys[i]), float(self.angles[i])

    def dist(self, x: np.ndarray, y: np.ndarray, t: int) -> np.ndarray:
        """Signed distance bound at image points (x, y): <= 0 inside; |d| never exceeds the
        true distance to the outline (exact for circles, sausages, strokes)."""
        cx, cy, ang = self.pose(t)
        dx, dy = x - cx, y - cy
        c, s = math.cos(ang), math.sin(ang)
        lx, ly = c * dx + s * dy, -s * dx + c * dy
        if self.kind == "circle":
            return np.hypot(lx, ly) - self.r
        if self.verts is not None:
            n, o = self._normals, self._offsets
            d = n[0, 0] * lx + n[0, 1] * ly - o[0]
            for k in range(1, len(o)):
                d = np.maximum(d, n[k, 0] * lx + n[k, 1] * ly - o[k])
            return d
        if self.kind == "ellipse":
            # g is a norm with Lipschitz constant 1 / min(a, b): (g - 1) * min(a, b) is a bound
            g = np.hypot(lx / self.a, ly / self.b)
            return (g - 1.0) * min(self.a, self.b)
        if self.kind == "sausage":
            return np.hypot(np.maximum(np.abs(lx) - self.half_len, 0.0), ly) - self.r
        if self.kind == "stroke":
            best = None
            p = self.points
            for k in range(len(p) - 1):
                (px, py), (qx, qy) = p[k], p[k + 1]
                vx, vy = qx - px, qy - py
                h = np.clip(((lx - px) * vx + (ly - py) * vy) / (vx * vx + vy * vy), 0.0, 1.0)
                d = np.hypot(lx - px - h * vx, ly - py - h * vy)
                best = d if best is None else np.minimum(best, d)
            return best - self.r
        raise ValueError(self.kind)

    def box(self, t: int, size: tuple[int, int]) -> tuple[int, int, int, int] | None:
        """Pixel box (x0, y0, x1, y1), end exclusive, that holds every covered pixel, clipped
        to the frame; None when off screen."""
        w, h = size
        cx, cy, _ = self.pose(t)
        e = self.extent + 1.0
        x0, y0 = max(0, math.floor(cx - e)), max(0, math.floor(cy - e))
        x1, y1 = min(w, math.ceil(cx + e) + 1), min(h, math.ceil(cy + e) + 1)
        if x0 >= x1 or y0 >= y1:
            return None
        return x0, y0, x1, y1

    def on_screen(self, size: tuple[int, int]) -> np.ndarray:
        """Per frame: does the layer's bounding disc reach into the frame?"""
        w, h = size
        e = self.extent
        return (self.xs > -e) & (self.xs < w + e) & (self.ys > -e) & (self.ys < h + e)


def coverage(
    layer: Layer, t: int, size: tuple[int, int], antialias: bool = True
) -> tuple[tuple[int, int, int, int], np.ndarray] | None:
    """(box, coverage in [0, 1] of each pixel of the box) of a layer at frame t. Without
    antialiasing a pixel is covered (1) when its centre is inside."""
    box = layer.box(t, size)
    if box is None:
        return None
    x0, y0, x1, y1 = box
    ys, xs = np.mgrid[y0:y1, x0:x1].astype(np.float64)
    xs += 0.5
    ys += 0.5
    d = layer.dist(xs, ys, t)
    if not antialias:
        return box, (d <= 0).astype(np.float32)
    cov = (d < -EDGE).astype(np.float32)
    edge = np.abs(d) <= EDGE
    if edge.any():
        off = (np.arange(SUPERSAMPLE) + 0.5) / SUPERSAMPLE - 0.5
        ox, oy = np.meshgrid(off, off)
        sx = xs[edge][:, None] + ox.ravel()[None, :]
        sy = ys[edge][:, None] + oy.ravel()[None, :]
        cov[edge] = (layer.dist(sx, sy, t) <= 0).mean(axis=1)
    return box, cov


# --- scene ------------------------------------------------------------------------------------


@dataclass
class Scene:
    seed: int
    size: tuple[int, int]
    frames: int
    background_kind: str
    background: np.ndarray  # (H, W, 3) float32
    layers: list[Layer]  # shapes and clutter, any order; drawn by z
    antialias: bool = True

    @property
    def u(self) -> float:
        return unit(self.size)

    @property
    def min_area(self) -> int:
        return math.ceil(MIN_AREA_U2 * self.u * self.u)

    @property
    def shapes(self) -> list[Layer]:
        return [la for la in self.layers if la.is_shape]


def _speed(rng: np.random.Generator) -> float:
    """u per frame: slow, medium or fast."""
    p = rng.random()
    if p < 0.35:
        return rng.uniform(0.15, 1.2)
    if p < 0.75:
        return rng.uniform(1.2, 4.0)
    return rng.uniform(4.0, 11.0)


def _spin(rng: np.random.Generator) -> float:
    """Radians per frame for squares and triangles: none, slow or fast, either way."""
    p = rng.random()
    if p < 0.2:
        return 0.0
    deg = rng.uniform(0.3, 2.5) if p < 0.7 else rng.uniform(2.5, 8.0)
    return math.radians(deg) * rng.choice([-1.0, 1.0])


def _radius(rng: np.random.Generator, lo: float = RADIUS_U[0], hi: float = RADIUS_U[1]) -> float:
    return float(math.exp(rng.uniform(math.log(lo), math.log(hi))))


def _triangle(rng: np.random.Generator, irregular: bool) -> np.ndarray:
    """Unit-circumradius-ish triangle, counter-clockwise; irregular ones have jittered angles
    and radii but no angle under 25 degrees."""
    base = np.radians([90.0, 210.0, 330.0])
    if not irregular:
        return np.stack([np.cos(base), np.sin(base)], axis=1)
    while True:
        ang = np.sort(base + np.radians(rng.uniform(-28, 28, 3)))
        rad = rng.uniform(0.6, 1.0, 3)
        rad /= rad.max()
        v = np.stack([rad * np.cos(ang), rad * np.sin(ang)], axis=1)
        ok = True
        for k in range(3):
            a, b, c = v[k], v[(k + 1) % 3], v[(k + 2) % 3]
            e1, e2 = b - a, c - a
            cosang = e1 @ e2 / (np.linalg.norm(e1) * np.linalg.norm(e2))
            if math.degrees(math.acos(np.clip(cosang, -1, 1))) < 25:
                ok = False
        if ok:
            return v


def _shape_geometry(kind: str, radius_px: float, rng: np.random.Generator) -> dict:
    if kind == "circle":
        return {"r": radius_px, "extent": radius_px}
    if kind == "square":
        ang = np.radians([45.0, 135.0, 225.0, 315.0])
        v = radius_px * np.stack([np.cos(ang), np.sin(ang)], axis=1)
        return {"verts": v, "extent": radius_px}
    v = radius_px * _triangle(rng, irregular=rng.random() < 0.45)
    return {"verts": v, "extent": float(np.linalg.norm(v, axis=1).max())}


def _clutter_geometry(kind: str, u: float, rng: np.random.Generator) -> dict:
    """Small elongated blobs: length 3.5-8 times their width."""
    if kind == "ellipse":
        a = rng.uniform(5.0, 24.0)
        b = max(1.5, a / rng.uniform(3.0, 6.0))
        return {"a": a * u, "b": b * u, "extent": a * u}
    if kind == "sausage":
        w = rng.uniform(1.5, 5.0)
        half = w * rng.uniform(2.5, 6.0)
        return {"r": w * u, "half_len": half * u, "extent": (half + w) * u}
    w = rng.uniform(1.2, 3.0)
    n = int(rng.integers(3, 6))
    heading = rng.uniform(0, 2 * math.pi)
    pts = [np.zeros(2)]
    for _ in range(n):
        heading += math.radians(rng.uniform(-70, 70))
        step = rng.uniform(4.0, 11.0)
        pts.append(pts[-1] + step * np.array([math.cos(heading), math.sin(heading)]))
    p = np.array(pts)
    p -= p.mean(axis=0)
    ext = float(np.linalg.norm(p, axis=1).max()) + w
    return {"points": p * u, "r": w * u, "extent": ext * u}


def _bounce(
    p0: np.ndarray, v: np.ndarray, lo: np.ndarray, hi: np.ndarray, frames: int
) -> np.ndarray:
    """Positions (frames, 2) of linear motion reflected at the walls of [lo, hi]."""
    out = np.empty((frames, 2))
    p, v = np.clip(p0.astype(np.float64), lo, hi), v.astype(np.float64).copy()
    for t in range(frames):
        out[t] = p
        p = p + v
        for k in range(2):
            if p[k] < lo[k]:
                p[k], v[k] = 2 * lo[k] - p[k], -v[k]
            elif p[k] > hi[k]:
                p[k], v[k] = 2 * hi[k] - p[k], -v[k]
            p[k] = min(max(p[k], lo[k]), hi[k])
    return out


def _wobble(path: np.ndarray, rng: np.random.Generator, u: float) -> np.ndarray:
    """Add a sideways sine to a path (some objects only)."""
    if rng.random() < 0.7:
        return path
    amp = rng.uniform(4.0, 25.0) * u
    period = rng.uniform(20.0, 90.0)
    phase = rng.uniform(0, 2 * math.pi)
    theta = rng.uniform(0, 2 * math.pi)
    t = np.arange(len(path))
    s = amp * np.sin(2 * math.pi * t / period + phase)
    return path + s[:, None] * np.array([math.cos(theta), math.sin(theta)])[None, :]


def _direction(rng: np.random.Generator) -> np.ndarray:
    a = rng.uniform(0, 2 * math.pi)
    return np.array([math.cos(a), math.sin(a)])


# backgrounds


def _luma(c: np.ndarray) -> np.ndarray:
    return c @ np.array([0.299, 0.587, 0.114])


def _background(
    kind: str, size: tuple[int, int], rng: np.random.Generator, rng_px: np.random.Generator
) -> np.ndarray:
    w, h = size
    u = unit(size)
    base = rng.uniform(20, 235, 3)
    if kind == "flat":
        return np.broadcast_to(base.astype(np.float32), (h, w, 3)).copy()
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    if kind in ("gradient", "cluttered"):
        c1 = rng.uniform(20, 235, 3)
        while np.linalg.norm(c1 - base) < 60:
            c1 = rng.uniform(20, 235, 3)
        if kind == "cluttered" and rng.random() < 0.5:
            c1 = base + 0.3 * (c1 - base)  # a fainter gradient under the clutter
        th = rng.uniform(0, 2 * math.pi)
        proj = (xx - w / 2) * math.cos(th) + (yy - h / 2) * math.sin(th)
        s = (proj - proj.min()) / max(1e-9, proj.max() - proj.min())
        s = s ** rng.uniform(0.6, 1.6)
        img = base[None, None, :] * (1 - s[..., None]) + c1[None, None, :] * s[..., None]
    else:  # blocky noise: two scales of nearest-upscaled random blocks, mostly in luma
        img = np.broadcast_to(base, (h, w, 3)).astype(np.float64).copy()
        amp = rng.uniform(10.0, 40.0)
        for block_u in (rng.uniform(16.0, 48.0), rng.uniform(4.0, 14.0)):
            bpx = max(2, round(block_u * u))
            gh, gw = -(-h // bpx), -(-w // bpx)
            luma = rng_px.normal(0, amp, (gh, gw, 1))
            chroma = rng_px.normal(0, amp / 3, (gh, gw, 3))
            g = np.repeat(np.repeat(luma + chroma, bpx, axis=0), bpx, axis=1)[:h, :w]
            img += g
            amp *= 0.6
    img = img.astype(np.float32)
    if kind == "cluttered":
        n = int(rng.integers(25, 70))
        for i in range(n):
            k = rng.choice(["bar", "stroke", "ellipse"], p=[0.45, 0.3, 0.25])
            pos = np.array([rng.uniform(0, w), rng.uniform(0, h)])
            ang = rng.uniform(0, 2 * math.pi)
            if k == "bar":
                wid = rng.uniform(0.8, 5.0)
                half = rng.uniform(15.0, 160.0)
                geo = {"r": wid * u, "half_len": half * u, "extent": (half + wid) * u}
                kind_l = "sausage"
            elif k == "stroke":
                geo = _clutter_geometry("stroke", u * rng.uniform(1.0, 2.5), rng)
                kind_l = "stroke"
            else:
                geo = _clutter_geometry("ellipse", u * rng.uniform(1.0, 2.0), rng)
                kind_l = "ellipse"
            if rng.random() < 0.7:
                col = base + rng.normal(0, 35, 3)
            else:
                col = rng.uniform(0, 255, 3)
            la = Layer(
                oid=-1 - i,
                kind=kind_l,
                z=0.0,
                colour=np.clip(col, 0, 255).astype(np.float32),
                xs=np.array([pos[0]]),
                ys=np.array([pos[1]]),
                angles=np.array([ang]),
                role="background",
                **geo,
            )
            _composite(img, la, 0, size, True)
    return np.clip(img, 0, 255)


def _composite(img: np.ndarray, layer: Layer, t: int, size: tuple[int, int], aa: bool) -> None:
    got = coverage(layer, t, size, aa)
    if got is None:
        return
    (x0, y0, x1, y1), cov = got
    region = img[y0:y1, x0:x1]
    a = cov[..., None]
    region *= 1 - a
    region += a * layer.colour[None, None, :]


# colours


def _pick_colour(
    rng: np.random.Generator,
    bg: np.ndarray,
    layer: Layer,
    size: tuple[int, int],
    others: Sequence[np.ndarray],
) -> np.ndarray:
    """A flat colour with a modest (30% of shapes) or strong contrast (RGB distance) to the
    background just around the layer along its path, and apart from the other shapes' colours."""
    w, h = size
    vis = np.flatnonzero(layer.on_screen(size))
    if len(vis) == 0:
        vis = np.arange(len(layer.xs))
    ts = vis[np.linspace(0, len(vis) - 1, min(len(vis), 40)).astype(int)]
    phi = np.linspace(0, 2 * math.pi, 12, endpoint=False)
    pts = []
    for ring in (1.15, 0.6):
        rr = ring * layer.extent
        px = layer.xs[ts, None] + rr * np.cos(phi)[None, :]
        py = layer.ys[ts, None] + rr * np.sin(phi)[None, :]
        pts.append((px.ravel(), py.ravel()))
    px = np.concatenate([p[0] for p in pts])
    py = np.concatenate([p[1] for p in pts])
    keep = (px >= 0) & (px < w) & (py >= 0) & (py < h)
    if not keep.any():
        keep[:] = True
    samples = bg[
        np.clip(py[keep], 0, h - 1).astype(int), np.clip(px[keep], 0, w - 1).astype(int)
    ].astype(np.float64)
    modest = rng.random() < 0.3
    best, best_q = None, -1.0
    for _ in range(400):
        c = rng.uniform(0, 255, 3)
        d = np.linalg.norm(samples - c[None, :], axis=1)
        q20, med = float(np.percentile(d, 20)), float(np.median(d))
        apart = all(np.linalg.norm(c - o) >= 45 for o in others)
        if apart and (35 <= q20 and med <= 95 if modest else q20 >= 75):
            return c.astype(np.float32)
        score = q20 if apart else q20 - 100
        if score > best_q:
            best, best_q = c, score
    return best.astype(np.float32)


def make_scene(
    seed: int,
    size: tuple[int, int] = (640, 480),
    frames: int = 150,
    background: str | None = None,
    antialias: bool = True,
    clutter: bool = True,
) -> Scene:
    """The scene of a seed. Geometry and motion are the same (in u and fractions of the frame)
    at every size; `background` forces a background kind."""
    w, h = size
    if w % 2 or h % 2 or w < 64 or h < 64:
        raise ValueError(f"frame size must be even and at least 64x64: {w}x{h}")
    if frames < 1:
        raise ValueError("frames must be >= 1")
    u = unit(size)
    rng = np.random.default_rng([seed, 0])  # everything geometric: size-independent
    rng_col = np.random.default_rng([seed, 2])
    # the background kind cycles with the seed, so that any 4 consecutive seeds show all kinds
    bg_kind = BACKGROUNDS[seed % len(BACKGROUNDS)] if background is None else background
    bg = _background(
        bg_kind, size, np.random.default_rng([seed, 1]), np.random.default_rng([seed, 3, w, h])
    )
    layers: list[Layer] = []
    counts = np.zeros(frames, dtype=int)
    oid = 0

    def new_shape(kind: str, radius_u: float, path: np.ndarray, spin: float, role: str) -> Layer:
        nonlocal oid
        oid += 1
        geo = _shape_geometry(kind, radius_u * u, rng)
        a0 = rng.uniform(0, 2 * math.pi)
        return Layer(
            oid=oid,
            kind=kind,
            z=float(rng.uniform(0, 1)),
            colour=np.zeros(3, np.float32),
            xs=path[:, 0],
            ys=path[:, 1],
            angles=a0 + spin * np.arange(frames),
            radius_u=radius_u,
            role=role,
            **geo,
        )

    def admit(layer: Layer) -> bool:
        on = layer.on_screen(size)
        if (counts + on).max() > MAX_ON_SCREEN:
            return False
        counts[:] += on
        layers.append(layer)
        return True

    def resident(radius_u: float, inside: bool = False) -> np.ndarray:
        r = radius_u * u
        m = rng.uniform(-0.95, -0.2) if inside else rng.uniform(-0.95, 0.7)
        lo = np.array([-m * r, -m * r])
        hi = np.array([w + m * r, h + m * r])
        p0 = np.array([rng.uniform(0, 1) * w, rng.uniform(0, 1) * h])
        v = _direction(rng) * _speed(rng) * u
        return _wobble(_bounce(p0, v, lo, hi, frames), rng, u)

    # residents (the first always stays on screen)
    for i in range(int(rng.integers(1, 5))):
        kind = str(rng.choice(SHAPE_KINDS))
        rad = _radius(rng)
        admit(new_shape(kind, rad, resident(rad, inside=i == 0), _spin(rng), "resident"))
    # eclipses: a big circle or square passes in front of a small, slow shape, hiding it down
    # to a sliver at frame tc
    for _ in range(int(rng.integers(1, 3))):
        kind_b = str(rng.choice(SHAPE_KINDS))
        rb = _radius(rng, 12.0, 32.0) * u
        margin = rb + 40 * u
        p0 = np.array([rng.uniform(margin, w - margin), rng.uniform(margin, h - margin)])
        vb = _direction(rng) * rng.uniform(0.05, 0.6) * u
        back_path = _bounce(p0, vb, np.array([rb, rb]), np.array([w - rb, h - rb]), frames)
        back = new_shape(kind_b, rb / u, back_path, _spin(rng) * 0.5, "eclipse-back")
        kind_f = str(rng.choice(["circle", "square"]))
        rf_u = rng.uniform(50.0, 100.0)
        rf = rf_u * u
        r_in = rf if kind_f == "circle" else rf / math.sqrt(2)
        tc = int(rng.uniform(0.15, 0.85) * frames)
        tc = min(max(tc, 0), frames - 1)
        d = _direction(rng)
        off = d * (r_in - rb + rng.uniform(0.1, 0.6) * rb)
        perp = np.array([-d[1], d[0]]) * rng.choice([-1.0, 1.0])
        vrel = perp * rng.uniform(0.3, 3.0) * u
        vb_tc = back_path[min(tc + 1, frames - 1)] - back_path[tc] if frames > 1 else np.zeros(2)
        t = np.arange(frames)[:, None] - tc
        front_path = back_path[tc] + off + (vb_tc + vrel)[None, :] * t
        spin_f = 0.0 if kind_f == "circle" else _spin(rng) * 0.3
        front = new_shape(kind_f, rf_u, front_path, spin_f, "eclipse-front")
        front.z = back.z + (1 - back.z) * rng.uniform(0.2, 1.0) + 1e-3
        if admit(back):
            admit(front)  # when refused, the back shape stays as a plain slow resident
    # passers: enter at an edge, cross, leave
    for _ in range(int(rng.integers(2, 11))):
        kind = str(rng.choice(SHAPE_KINDS))
        rad = _radius(rng)
        r = rad * u
        t_in = rng.uniform(-0.3, 0.9) * frames
        edge = int(rng.integers(0, 4))
        along = rng.uniform(0.05, 0.95)
        start = {
            0: (along * w, -r - 2 * u),
            1: (w + r + 2 * u, along * h),
            2: (along * w, h + r + 2 * u),
            3: (-r - 2 * u, along * h),
        }[edge]
        inward = {0: math.pi / 2, 1: math.pi, 2: -math.pi / 2, 3: 0.0}[edge]
        heading = inward + math.radians(rng.uniform(-55, 55))
        v = np.array([math.cos(heading), math.sin(heading)]) * max(_speed(rng), 0.6) * u
        t = np.arange(frames)[:, None] - t_in
        path = _wobble(np.array(start)[None, :] + v[None, :] * t, rng, u)
        admit(new_shape(kind, rad, path, _spin(rng), "passer"))
    # clutter: small elongated blobs, some static, at any depth
    if clutter:
        for _ in range(int(rng.integers(2, 9))):
            kind = str(rng.choice(CLUTTER_KINDS))
            geo = _clutter_geometry(kind, u, rng)
            p0 = np.array([rng.uniform(0, w), rng.uniform(0, h)])
            ext = geo["extent"]
            speed = 0.0 if rng.random() < 0.3 else _speed(rng) * 0.7
            v = _direction(rng) * speed * u
            path = _bounce(
                p0, v, np.array([-ext / 2, -ext / 2]), np.array([w + ext / 2, h + ext / 2]), frames
            )
            oid += 1
            spin = math.radians(rng.uniform(-3, 3))
            layers.append(
                Layer(
                    oid=oid,
                    kind=kind,
                    z=float(rng.uniform(0, 1)),
                    colour=np.zeros(3, np.float32),
                    xs=path[:, 0],
                    ys=path[:, 1],
                    angles=rng.uniform(0, 2 * math.pi) + spin * np.arange(frames),
                    role="clutter",
                    **geo,
                )
            )
    # colours last (they depend on the background at this size)
    picked: list[np.ndarray] = []
    for la in layers:
        if la.is_shape:
            la.colour = _pick_colour(rng_col, bg, la, size, picked)
            picked.append(la.colour)
        elif rng_col.random() < 0.4 and picked:
            la.colour = np.clip(
                picked[int(rng_col.integers(len(picked)))] + rng_col.normal(0, 20, 3), 0, 255
            ).astype(np.float32)
        else:
            la.colour = rng_col.uniform(0, 255, 3).astype(np.float32)
    return Scene(seed, (w, h), frames, bg_kind, bg, layers, antialias)


# --- rendering and ground truth ---------------------------------------------------------------


@dataclass
class Visible:
    """A layer's part of one frame: its box, its visible pixels in the box (mask less the masks
    of every layer in front), and its whole in-frame mask area."""

    layer: Layer
    box: tuple[int, int, int, int]
    visible: np.ndarray  # bool (y1 - y0, x1 - x0)
    in_frame: int

    @property
    def area(self) -> int:
        return int(self.visible.sum())

    def full_mask(self, size: tuple[int, int]) -> np.ndarray:
        w, h = size
        m = np.zeros((h, w), dtype=bool)
        x0, y0, x1, y1 = self.box
        m[y0:y1, x0:x1] = self.visible
        return m


def render(scene: Scene, t: int) -> tuple[np.ndarray, list[Visible]]:
    """Frame t: (RGB uint8 image, Visible of every on-screen layer, front to back)."""
    size = scene.size
    order = sorted(scene.layers, key=lambda la: (la.z, la.oid))  # back to front
    covs = []
    for la in order:
        got = coverage(la, t, size, scene.antialias)
        if got is not None:
            covs.append((la, *got))
    img = scene.background.copy()
    for la, (x0, y0, x1, y1), cov in covs:
        a = cov[..., None]
        region = img[y0:y1, x0:x1]
        region *= 1 - a
        region += a * la.colour[None, None, :]
    w, h = size
    occupied = np.zeros((h, w), dtype=bool)
    vis = []
    for la, box, cov in reversed(covs):
        x0, y0, x1, y1 = box
        m = cov >= 0.5
        v = m & ~occupied[y0:y1, x0:x1]
        occupied[y0:y1, x0:x1] |= m
        vis.append(Visible(la, box, v, int(m.sum())))
    return np.clip(np.rint(img), 0, 255).astype(np.uint8), vis


def annotations(scene: Scene, t: int, vis: list[Visible], next_id: int) -> list[dict]:
    """COCO annotations of frame t's shapes with at least scene.min_area visible pixels."""
    out = []
    for v in sorted(vis, key=lambda v: v.layer.oid):
        if not v.layer.is_shape or v.area < scene.min_area:
            continue
        rle = mask_utils.encode(np.asfortranarray(v.full_mask(scene.size).astype(np.uint8)))
        rle["counts"] = rle["counts"].decode("ascii")
        out.append(
            {
                "id": next_id + len(out),
                "image_id": t + 1,
                "category_id": v.layer.category_id,
                "segmentation": rle,
                "area": int(mask_utils.area(rle)),
                "bbox": [float(x) for x in mask_utils.toBbox(rle)],
                "iscrowd": 0,
                "track_id": v.layer.oid,
                "occluded": round(1 - v.area / max(1, v.in_frame), 4),
                "truncated": round(max(0.0, 1 - v.in_frame / v.layer.area()), 4),
            }
        )
    return out


def frames_and_gt(scene: Scene, clip: str | None = None) -> Iterator[tuple[np.ndarray, dict]]:
    """(image, COCO image entry with its "annotations") of every frame, in order."""
    clip = clip or clip_name(scene.seed, scene.size)
    w, h = scene.size
    next_id = 1
    for t in range(scene.frames):
        img, vis = render(scene, t)
        anns = annotations(scene, t, vis, next_id)
        next_id += len(anns)
        entry = {"id": t + 1, "frame": t, "file_name": f"{clip}#{t}", "width": w, "height": h}
        yield img, entry | {"annotations": anns}


def coco(scene: Scene, images: list[dict], clip: str) -> dict:
    anns = [a for img in images for a in img["annotations"]]
    return {
        "info": {
            "description": "held-out moving shapes (tests.heldout.world)",
            "clip": clip,
            "seed": scene.seed,
            "width": scene.size[0],
            "height": scene.size[1],
            "frames": scene.frames,
            "fps": FPS,
            "background": scene.background_kind,
            "min_area": scene.min_area,
        },
        "images": [{k: v for k, v in img.items() if k != "annotations"} for img in images],
        "annotations": anns,
        "categories": [dict(c) for c in CATEGORIES],
    }


def ground_truth(scene: Scene, clip: str | None = None) -> dict:
    """The COCO ground truth of a scene (renders every frame; no video)."""
    clip = clip or clip_name(scene.seed, scene.size)
    return coco(scene, [e for _, e in frames_and_gt(scene, clip)], clip)


def write_clip(
    video: str | Path, gt: str | Path, seed: int, size: tuple[int, int], frames: int
) -> dict:
    """Render, encode (H.264) and write the ground truth of one clip; returns the GT dict.
    Both files appear only when complete."""
    import av

    video, gt = Path(video), Path(gt)
    scene = make_scene(seed, size, frames)
    clip = video.stem
    tmp = video.with_name(video.stem + ".part.mp4")
    images = []
    with av.open(str(tmp), "w") as out:
        st = out.add_stream("libx264", rate=FPS)
        st.width, st.height = size
        st.pix_fmt = "yuv420p"
        st.options = {"crf": str(CRF)}
        for img, entry in frames_and_gt(scene, clip):
            images.append(entry)
            for pkt in st.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                out.mux(pkt)
        for pkt in st.encode():
            out.mux(pkt)
    data = coco(scene, images, clip)
    tmp_gt = gt.with_name(gt.name + ".part")
    tmp_gt.write_text(json.dumps(data))
    os.replace(tmp, video)
    os.replace(tmp_gt, gt)
    return data


def paths(out_dir: str | Path, seed: int, size: tuple[int, int]) -> tuple[Path, Path]:
    name = clip_name(seed, size)
    return Path(out_dir) / f"{name}.mp4", Path(out_dir) / f"{name}_gt.json"


def decode(video: str | Path) -> Iterator[np.ndarray]:
    import av

    with av.open(str(video)) as c:
        for f in c.decode(video=0):
            yield f.to_ndarray(format="rgb24")


PALETTE = {1: (255, 60, 60), 2: (60, 255, 60), 3: (80, 200, 255)}


def preview(video: str | Path, gt: dict, frames: Sequence[int], out_dir: str | Path) -> list[Path]:
    """PNGs of the decoded frames with each ground-truth instance's contour (red circle,
    green square, blue triangle) and its track id; returns the paths."""
    import cv2

    want = set(frames)
    by_image: dict[int, list[dict]] = {}
    for a in gt["annotations"]:
        by_image.setdefault(a["image_id"], []).append(a)
    written = []
    for t, img in enumerate(decode(video)):
        if t not in want:
            continue
        canvas = cv2.cvtColor(img, cv2.COLOR_RGB2BGR)
        for a in by_image.get(t + 1, []):
            m = mask_utils.decode(a["segmentation"])
            contours, _ = cv2.findContours(m, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
            r, g, b = PALETTE[a["category_id"]]
            cv2.drawContours(canvas, contours, -1, (0, 0, 0), 3)
            cv2.drawContours(canvas, contours, -1, (b, g, r), 1)
            x, y, _, _ = a["bbox"]
            org = (int(x), max(10, int(y) - 2))
            label = f"{a['track_id']}:{a['area']}"
            for colour, thick in (((0, 0, 0), 3), ((b, g, r), 1)):
                cv2.putText(canvas, label, org, cv2.FONT_HERSHEY_SIMPLEX, 0.35, colour, thick)
        path = Path(out_dir) / f"{Path(video).stem}_f{t:03d}.png"
        cv2.imwrite(str(path), canvas)
        written.append(path)
    return written


def parse_size(s: str) -> tuple[int, int]:
    try:
        w, h = (int(x) for x in s.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must be WxH, e.g. 640x480: {s!r}") from None
    if w % 2 or h % 2 or w < 64 or h < 64:
        raise argparse.ArgumentTypeError(f"size must be even and at least 64x64: {s!r}")
    return w, h


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m tests.heldout.world",
        description="Write held-out moving-shapes clips (H.264) and their COCO ground truth.",
    )
    p.add_argument("out_dir")
    p.add_argument("--seeds", type=int, nargs="+", default=[5101, 5102, 5103])
    p.add_argument("--sizes", type=parse_size, nargs="+", default=[(640, 480), (1280, 720)])
    p.add_argument("--frames", type=int, default=150)
    p.add_argument(
        "--preview",
        type=int,
        nargs="*",
        default=[],
        metavar="FRAME",
        help="also write PNGs of these frames with ground-truth contours",
    )
    p.add_argument("--force", action="store_true", help="rewrite clips that exist")
    args = p.parse_args(argv)
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for seed in args.seeds:
        for size in args.sizes:
            video, gt = paths(out, seed, size)
            if args.force or not (video.is_file() and gt.is_file()):
                data = write_clip(video, gt, seed, size, args.frames)
            else:
                data = json.loads(gt.read_text())
            print(
                f"{video} ({data['info']['frames']} frames {size[0]}x{size[1]}, "
                f"{data['info']['background']} background, {len(data['annotations'])} instances)"
            )
            if args.preview:
                for png in preview(video, data, args.preview, out):
                    print(f"  {png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
