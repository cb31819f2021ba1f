"""The held-out clip generator (tests/heldout/world.py): exact, disjoint ground truth of each
shape's visible pixels, valid COCO, deterministic, scale-aware, clutter never in the GT."""

from __future__ import annotations

import contextlib
import io
import json
import sys
from pathlib import Path

import numpy as np
import pycocotools.mask as mask_utils
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.heldout import world  # noqa: E402


def gt_masks(gt: dict, image_id: int) -> dict[int, np.ndarray]:
    return {
        a["track_id"]: mask_utils.decode(a["segmentation"]).astype(bool)
        for a in gt["annotations"]
        if a["image_id"] == image_id
    }


@pytest.fixture(scope="module")
def scene() -> world.Scene:
    return world.make_scene(5102, (640, 480), 12)


@pytest.fixture(scope="module")
def gt(scene) -> dict:
    return world.ground_truth(scene)


def test_masks_are_exactly_the_visible_pixels_of_each_shape():
    # no antialiasing, a flat background: every pixel shows exactly one layer's colour, so a
    # shape's visible pixels are the pixels of its colour (colours are distinct floats)
    scene = world.make_scene(5101, (640, 480), 8, background="flat", antialias=False)

    def key(c: np.ndarray) -> np.ndarray:
        c = np.rint(c).astype(np.int64)
        return (c[..., 0] << 16) | (c[..., 1] << 8) | c[..., 2]

    keys = {int(key(la.colour)): la.oid for la in scene.layers}
    keys[int(key(scene.background[0, 0]))] = 0
    assert len(keys) == len(scene.layers) + 1  # distinct colours
    lut_keys = np.array(sorted(keys))
    lut_oids = np.array([keys[k] for k in lut_keys])
    gt = world.ground_truth(scene)
    checked = 0
    for t in range(scene.frames):
        img, vis = world.render(scene, t)
        k = key(img.astype(np.int64))
        idx = np.searchsorted(lut_keys, k)
        assert np.array_equal(lut_keys[idx], k)  # every pixel is one layer's or the background
        owner = lut_oids[idx]  # the layer each pixel shows
        masks = gt_masks(gt, t + 1)
        covered = np.zeros(img.shape[:2], dtype=int)
        for la in scene.shapes:
            own = owner == la.oid
            if la.oid in masks:
                assert np.array_equal(masks[la.oid], own), (t, la.oid)
                covered += masks[la.oid]
                checked += 1
            else:  # left out: off screen, hidden, or under the least area
                assert own.sum() < scene.min_area, (t, la.oid)
        assert covered.max() <= 1  # disjoint
        for v in vis:  # the rasterizer's visible pixels of every layer agree with the colours
            x0, y0, x1, y1 = v.box
            assert np.array_equal(v.visible, owner[y0:y1, x0:x1] == v.layer.oid)
            assert v.area == (owner == v.layer.oid).sum()
    assert checked > 30


def test_antialiased_masks_are_disjoint_and_follow_the_outlines(scene, gt):
    sharp = world.make_scene(5102, (640, 480), 12, antialias=False)
    sharp_gt = world.ground_truth(sharp)
    for t in range(scene.frames):
        masks, hard = gt_masks(gt, t + 1), gt_masks(sharp_gt, t + 1)
        assert sum(m.astype(int) for m in masks.values()).max() <= 1
        for oid, m in masks.items():
            if m.sum() >= 300 and oid in hard:
                iou = (m & hard[oid]).sum() / (m | hard[oid]).sum()
                assert iou > 0.9, (t, oid, iou)


def test_gt_is_coco_and_scores_itself_ap_1(scene, gt, tmp_path):
    assert gt["categories"] == [
        {"id": 1, "name": "circle"},
        {"id": 2, "name": "square"},
        {"id": 3, "name": "triangle"},
    ]
    clip = world.clip_name(5102, (640, 480))
    for t, img in enumerate(gt["images"]):
        assert img == {
            "id": t + 1,
            "frame": t,
            "file_name": f"{clip}#{t}",
            "width": 640,
            "height": 480,
        }
    ids = [a["id"] for a in gt["annotations"]]
    assert len(set(ids)) == len(ids)
    for a in gt["annotations"]:
        assert a["segmentation"]["size"] == [480, 640]
        assert isinstance(a["segmentation"]["counts"], str)
        assert a["area"] == int(mask_utils.area(a["segmentation"])) >= scene.min_area
        assert a["iscrowd"] == 0 and a["category_id"] in (1, 2, 3)
    path = tmp_path / "gt.json"
    path.write_text(json.dumps(gt))
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(str(path))
        dets = [
            {k: a[k] for k in ("image_id", "category_id", "segmentation", "bbox")} | {"score": 1.0}
            for a in gt["annotations"]
        ]
        for iou_type in ("segm", "bbox"):
            ev = COCOeval(coco, coco.loadRes([dict(d) for d in dets]), iouType=iou_type)
            ev.evaluate()
            ev.accumulate()
            ev.summarize()
            assert ev.stats[0] == pytest.approx(1.0), iou_type


def test_deterministic_per_seed(gt):
    again = world.make_scene(5102, (640, 480), 12)
    assert json.dumps(world.ground_truth(again)) == json.dumps(gt)
    a, _ = world.render(again, 7)
    b, _ = world.render(world.make_scene(5102, (640, 480), 12), 7)
    assert np.array_equal(a, b)
    other = world.make_scene(5103, (640, 480), 12)
    assert not np.array_equal(world.render(other, 7)[0], a)


def test_sizes_scale():
    small = world.make_scene(5104, (640, 480), 20)
    big = world.make_scene(5104, (960, 720), 20)  # same aspect, u = 1.5
    assert len(small.layers) == len(big.layers)
    for s, b in zip(small.layers, big.layers, strict=True):
        assert (s.kind, s.role) == (b.kind, b.role)
        assert b.extent == pytest.approx(1.5 * s.extent)
        assert np.allclose(b.xs, 1.5 * s.xs) and np.allclose(b.ys, 1.5 * s.ys)
    assert (small.min_area, big.min_area) == (20, 45)
    for seed in (5101, 5102, 5103):
        for size, (lo, hi) in (((640, 480), (12, 100)), ((1280, 720), (18, 150))):
            sc = world.make_scene(seed, size, 2)
            for la in sc.shapes:
                circum = la.r if la.kind == "circle" else float(np.hypot(*la.verts.T).max())
                assert lo - 1e-6 <= circum <= hi + 1e-6, (seed, size, la.kind, circum)
    # the same unoccluded instance covers 2.25 times the pixels
    gs, gb = (world.ground_truth(world.make_scene(5104, sz, 1)) for sz in ((640, 480), (960, 720)))
    area_s = {a["track_id"]: a["area"] for a in gs["annotations"] if a["occluded"] == 0}
    area_b = {a["track_id"]: a["area"] for a in gb["annotations"] if a["occluded"] == 0}
    common = [k for k in area_s if k in area_b and area_s[k] > 500]
    assert common
    for k in common:
        assert area_b[k] / area_s[k] == pytest.approx(2.25, rel=0.03)


def test_clutter_is_drawn_but_never_in_the_gt(scene, gt):
    clutter = {la.oid for la in scene.layers if la.role == "clutter"}
    assert clutter and all(
        la.kind in world.CLUTTER_KINDS for la in scene.layers if la.oid in clutter
    )
    assert not clutter & {a["track_id"] for a in gt["annotations"]}
    seen = 0
    for t in range(scene.frames):
        _, vis = world.render(scene, t)
        masks = gt_masks(gt, t + 1)
        union = np.zeros((480, 640), dtype=bool)
        for m in masks.values():
            union |= m
        for v in vis:
            if v.layer.oid in clutter and v.area:
                seen += v.area
                assert not (v.full_mask(scene.size) & union).any()
    assert seen > 0
    only = world.make_scene(5102, (640, 480), 12)
    only.layers = [la for la in only.layers if la.role == "clutter"]
    assert world.ground_truth(only)["annotations"] == []


def test_sliver_occluded_instances_and_shapes_per_frame():
    scene = world.make_scene(5102, (640, 480), 40)
    gt = world.ground_truth(scene)
    backs = {la.oid for la in scene.layers if la.role == "eclipse-back"}
    slivers = [
        a
        for a in gt["annotations"]
        if a["track_id"] in backs and a["occluded"] >= 0.8 and a["area"] <= 80
    ]
    assert slivers  # a small shape hidden behind a big one down to a few dozen pixels
    per_frame = np.bincount([a["image_id"] for a in gt["annotations"]], minlength=41)[1:]
    assert per_frame.min() >= 1 and per_frame.max() <= world.MAX_ON_SCREEN
    assert any(a["truncated"] > 0.5 for a in gt["annotations"])  # mostly outside the frame


def test_written_clip_decodes_to_the_gt_frames(tmp_path):
    video, gt_path = world.paths(tmp_path, 5103, (320, 240))
    data = world.write_clip(video, gt_path, 5103, (320, 240), 6)
    assert json.loads(gt_path.read_text()) == data
    frames = list(world.decode(video))
    assert len(frames) == len(data["images"]) == 6
    scene = world.make_scene(5103, (320, 240), 6)
    for t, f in enumerate(frames):
        assert f.shape == (240, 320, 3)
        rendered, _ = world.render(scene, t)
        assert np.abs(f.astype(int) - rendered.astype(int)).mean() < 6
