"""Tests for streamseg.tools.synth: exact masks, occlusion, boxes, determinism, clip round trip."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import av
import numpy as np
import pytest
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from streamseg.tools.synth import (
    BACKGROUNDS,
    CIRCLE,
    CLASSES,
    LOW_CONTRAST_RANGE,
    MAX_SHAPES,
    MIN_BG_CONTRAST,
    SQUARE,
    TRIANGLE,
    Sample,
    Shape,
    World,
    degrade,
    make_shape,
    occlude,
    random_background,
    random_sample,
    random_shapes,
    render_shapes,
    training_render,
    write_clip,
)

BG = (40, 50, 60)


def solid(width: int, height: int, color: tuple[int, int, int] = BG) -> np.ndarray:
    return np.broadcast_to(np.array(color, np.uint8), (height, width, 3)).copy()


def check_sample(sample: Sample, width: int, height: int) -> None:
    """Shapes, dtypes and invariants every Sample must satisfy."""
    n = len(sample.labels)
    assert sample.image.shape == (height, width, 3) and sample.image.dtype == np.uint8
    assert sample.labels.shape == (n,) and sample.labels.dtype == np.int64
    assert sample.masks.shape == (n, height, width) and sample.masks.dtype == np.bool_
    assert sample.boxes.shape == (n, 4) and sample.boxes.dtype == np.float32
    assert np.all((sample.labels >= 1) & (sample.labels <= len(CLASSES)))
    assert sample.masks.sum(0).max(initial=0) <= 1  # disjoint
    for mask, box in zip(sample.masks, sample.boxes, strict=True):
        ys, xs = np.nonzero(mask)
        assert xs.size > 0
        assert box.tolist() == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]


def test_masks_match_drawn_pixels() -> None:
    rng = np.random.default_rng(0)
    shapes = [
        make_shape(CIRCLE, 40, (255, 0, 0), 30.5, 40.25),
        make_shape(SQUARE, 35, (0, 255, 0), 70.3, 50.7, angle=0.4),
        make_shape(TRIANGLE, 45, (0, 0, 255), 120.1, 60.9, angle=1.1),
        make_shape(SQUARE, 30, (255, 255, 0), 155.0, 10.0, angle=0.2, margin=10.0),  # cut by edge
    ]
    world = World(160, 120, rng, background=solid(160, 120), shapes=shapes)
    sample = world.render()
    check_sample(sample, 160, 120)
    assert sample.labels.tolist() == [CIRCLE, SQUARE, TRIANGLE, SQUARE]
    for mask, shape in zip(sample.masks, shapes, strict=True):
        assert np.all(sample.image[mask] == shape.color)
    outside = ~sample.masks.any(0)
    assert np.all(sample.image[outside] == BG)


def test_random_worlds_masks_match_pixels() -> None:
    """Any random world over a solid background: mask pixels carry their shape's colour."""
    for seed in range(20):
        rng = np.random.default_rng(seed)
        world = World(320, 240, rng, background=solid(320, 240, (0, 0, 0)))
        for _ in range(3):
            world.step()
        sample = world.render()
        check_sample(sample, 320, 240)
        colors = {s.color for s in world.shapes}
        for mask in sample.masks:
            values = {tuple(v) for v in np.unique(sample.image[mask], axis=0)}
            assert len(values) == 1 and values <= colors


def test_occlusion() -> None:
    lower = make_shape(SQUARE, 60, (200, 0, 0), 50, 50)
    upper = make_shape(CIRCLE, 40, (0, 200, 0), 75, 50)
    world = World(160, 120, np.random.default_rng(0), background=solid(160, 120))
    world.shapes = (lower, upper)
    sample = world.render()
    check_sample(sample, 160, 120)
    assert sample.labels.tolist() == [SQUARE, CIRCLE]
    low, up = sample.masks
    alone = World(160, 120, np.random.default_rng(0), background=solid(160, 120), shapes=[lower])
    full_low = alone.render().masks[0]
    assert not np.any(low & up)
    assert np.array_equal(low, full_low & ~up)
    assert np.any(full_low & up)  # they do overlap
    assert np.all(sample.image[up] == upper.color)


def test_hidden_and_tiny_instances_are_dropped() -> None:
    big = make_shape(SQUARE, 80, (200, 0, 0), 80, 60)
    hidden = make_shape(CIRCLE, 20, (0, 200, 0), 80, 60)
    world = World(160, 120, np.random.default_rng(0), background=solid(160, 120))
    world.shapes = (hidden, big)  # hidden is below big
    sample = world.render()
    assert sample.labels.tolist() == [SQUARE]
    # Almost entirely outside: a one-pixel sliver in the corner is not an annotation.
    sliver = make_shape(SQUARE, 6, (0, 200, 0), -2.6, -2.6)
    world.shapes = (sliver,)
    sample = world.render()
    check_sample(sample, 160, 120)
    assert len(sample.labels) == 0
    assert np.count_nonzero(np.any(sample.image != BG, axis=2)) == 1


def test_empty_frame() -> None:
    world = World(64, 48, np.random.default_rng(0), background=solid(64, 48), shapes=[])
    sample = world.render()
    check_sample(sample, 64, 48)
    assert len(sample.labels) == 0
    assert np.all(sample.image == BG)
    outside = make_shape(CIRCLE, 10, (255, 255, 255), -50, -50, wrap=True)
    world = World(64, 48, np.random.default_rng(0), background=solid(64, 48), shapes=[outside])
    check_sample(world.render(), 64, 48)
    assert len(world.render().labels) == 0


def test_motion_bounce_wrap_spin() -> None:
    bouncer = make_shape(SQUARE, 20, (255, 0, 0), 150, 60, vx=5, spin=0.1)
    wrapper = make_shape(CIRCLE, 20, (0, 255, 0), 150, 60, vx=5, wrap=True)
    world = World(160, 120, np.random.default_rng(0), background=solid(160, 120))
    world.shapes = (bouncer, wrapper)
    xs_b, xs_w = [], []
    for _ in range(10):
        world.step()
        xs_b.append(world.shapes[0].x)
        xs_w.append(world.shapes[1].x)
    r = bouncer.radius
    assert max(xs_b) <= 160 - r + 1e-9 and world.shapes[0].vx < 0  # bounced back
    assert world.shapes[0].angle == pytest.approx(1.0)
    assert min(xs_w) < 0  # wrapped round to the left edge
    assert world.shapes[1].vx == 5


@pytest.mark.parametrize("kind", BACKGROUNDS)
def test_backgrounds(kind: str) -> None:
    a = random_background(np.random.default_rng(1), 96, 64, kind)  # type: ignore[arg-type]
    b = random_background(np.random.default_rng(1), 96, 64, kind)  # type: ignore[arg-type]
    assert a.shape == (64, 96, 3) and a.dtype == np.uint8
    assert np.array_equal(a, b)
    assert (len(np.unique(a.reshape(-1, 3), axis=0)) == 1) == (kind == "solid")


def test_determinism() -> None:
    a = random_sample(np.random.default_rng(7), 320, 240)
    b = random_sample(np.random.default_rng(7), 320, 240)
    c = random_sample(np.random.default_rng(8), 320, 240)
    for name in ("image", "labels", "masks", "boxes"):
        assert np.array_equal(getattr(a, name), getattr(b, name))
    assert not np.array_equal(a.image, c.image)


def test_invalid_arguments(tmp_path: Path) -> None:
    out, gt = tmp_path / "x.mp4", tmp_path / "x.json"
    for kwargs in ({"frames": 0}, {"size": (161, 120)}, {"size": (160, 121)}, {"fps": 0}):
        with pytest.raises(ValueError, match=r"frames|size|fps"):
            write_clip(out, gt, **kwargs)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="background"):
        World(16, 16, np.random.default_rng(0), background=np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(ValueError, match="label"):
        make_shape(4, 10, (0, 0, 0), 0, 0)


def test_write_clip_round_trip(tmp_path: Path) -> None:
    out, gt = tmp_path / "clip.mp4", tmp_path / "clip.json"
    coco = write_clip(out, gt, seed=3, frames=12, size=(160, 120), fps=30)
    assert json.loads(gt.read_text()) == coco

    with av.open(str(out)) as container:
        stream = container.streams.video[0]
        assert stream.average_rate == 30
        decoded = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
    assert len(decoded) == 12
    assert decoded[0].shape == (120, 160, 3)
    first = World(160, 120, np.random.default_rng(3)).render().image
    assert np.abs(decoded[0].astype(int) - first).mean() < 8  # lossy, but the same picture

    api = COCO(str(gt))
    assert sorted(api.getImgIds()) == list(range(1, 13))
    assert [api.imgs[i]["frame"] for i in range(1, 13)] == list(range(12))
    assert api.imgs[1]["file_name"] == "clip.mp4#0"
    assert {c["name"] for c in api.loadCats(api.getCatIds())} == set(CLASSES)
    assert coco["info"] == {
        "generator": "streamseg.tools.synth",
        "seed": 3,
        "fps": 30,
        "frames": 12,
    }
    ids = [a["id"] for a in coco["annotations"]]
    assert ids == list(range(1, len(ids) + 1))
    for ann in coco["annotations"]:
        m = mask_utils.decode(ann["segmentation"])
        assert m.shape == (120, 160)
        assert m.sum() == ann["area"]
        ys, xs = np.nonzero(m)
        assert ann["bbox"] == [xs.min(), ys.min(), xs.max() + 1 - xs.min(), ys.max() + 1 - ys.min()]

    # Ground truth scored against itself is perfect: COCOeval runs on this format.
    dets = [dict(a, score=1.0) for a in coco["annotations"]]
    if dets:
        ev = COCOeval(api, api.loadRes(dets), "segm")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
        assert ev.stats[0] == pytest.approx(1.0)

    again = write_clip(tmp_path / "b.mp4", tmp_path / "b.json", seed=3, frames=12, size=(160, 120))
    assert again["annotations"] == coco["annotations"]
    # Same pictures; not byte-compared: libx264's threaded output differed once under load.
    with av.open(str(tmp_path / "b.mp4")) as c:
        again_frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    assert len(again_frames) == len(decoded)
    for a, b in zip(again_frames, decoded, strict=True):
        assert np.abs(a.astype(int) - b.astype(int)).mean() < 2


def test_variety() -> None:
    rng = np.random.default_rng(123)
    drawn, visible, labels, sizes = [], [], set(), []
    for _ in range(200):
        world = World(320, 240, rng)
        drawn.append(len(world.shapes))
        sizes += [s.radius for s in world.shapes if s.label == CIRCLE]
        sample = random_sample(rng, 320, 240)
        visible.append(len(sample.labels))
        labels |= set(sample.labels.tolist())
    assert set(drawn) == set(range(1, MAX_SHAPES + 1))
    assert min(visible) <= 1 and max(visible) >= 6
    assert labels == {1, 2, 3}
    # Circle diameters span ~15..220 px at 480 scale, i.e. half that at 240.
    diameters = 2 * np.array(sizes) * 480 / 240
    assert diameters.min() < 25 and diameters.max() > 150


def test_deep_occlusions_and_edge_cuts() -> None:
    """The world holds what unseen clips hold: shapes mostly hidden behind others (down to a
    sliver) and shapes mostly outside the frame, both still annotated."""
    rng = np.random.default_rng(5)
    hidden, cut = [], []
    for _ in range(150):
        world = World(320, 240, rng, background=solid(320, 240))
        sample = world.render()
        alone = [
            World(320, 240, rng, background=solid(320, 240), shapes=[s]).render()
            for s in world.shapes
        ]
        for mask, obj in zip(sample.masks, sample.objects.tolist(), strict=True):
            full = alone[obj].masks
            if len(full) == 1:  # its own full area inside the frame
                hidden.append(mask.sum() / full[0].sum())
        for shape in world.shapes:  # area inside the frame / whole area
            big = World(960, 720, rng, background=solid(960, 720))
            big.shapes = (make_shape_at(shape, 320, 240),)
            inner = big.render().masks
            if len(inner):
                frame_part = inner[0][240:480, 320:640].sum() / inner[0].sum()
                cut.append(frame_part)
    hidden, cut = np.array(hidden), np.array(cut)
    assert (hidden < 0.25).sum() >= 10  # at most a quarter shows
    assert ((cut > 0) & (cut < 0.3)).sum() >= 5  # most of it outside the frame


def make_shape_at(shape: Shape, dx: float, dy: float) -> Shape:
    return replace(shape, x=shape.x + dx, y=shape.y + dy)


def test_blocky_backgrounds_are_blocks() -> None:
    cells = random_background(np.random.default_rng(2), 320, 240, "blocky")
    # Nearest-neighbour cells: far fewer distinct colours than pixels, runs along rows.
    assert 4 < len(np.unique(cells.reshape(-1, 3), axis=0)) < 320 * 240 / 16
    assert (np.abs(np.diff(cells.astype(int), axis=1)).sum(2) == 0).mean() > 0.75


def test_degrade_changes_pixels_not_truth() -> None:
    rng = np.random.default_rng(11)
    image = random_background(np.random.default_rng(3), 320, 240, "gradient")
    out = [degrade(image, rng) for _ in range(20)]
    for o in out:
        assert o.shape == image.shape and o.dtype == np.uint8
    diffs = [np.abs(o.astype(int) - image.astype(int)).mean() for o in out]
    assert min(diffs) > 0 and max(diffs) > 10  # lighting changes
    # A degraded training frame keeps the exact truth of its clean render.
    sample = random_sample(np.random.default_rng(9), 320, 240)
    clean = training_render(np.random.default_rng(9), 320, 240)
    assert np.array_equal(sample.masks, clean.masks) and len(clean.labels) > 0
    assert np.array_equal(sample.labels, clean.labels)
    assert np.array_equal(sample.boxes, clean.boxes)
    assert not np.array_equal(sample.image, clean.image)


def visible_shares(worlds: list[World]) -> np.ndarray:
    """Per instance whose whole shape lies in the frame: visible pixels / the shape's pixels."""
    shares = []
    for world in worlds:
        sample = world.render()
        for mask, obj in zip(sample.masks, sample.objects.tolist(), strict=True):
            alone = render_shapes(world.background, [world.shapes[obj]], 0).masks
            if len(alone) == 1:
                shares.append(mask.sum() / alone[0].sum())
    return np.array(shares)


def test_training_world_has_faint_shapes() -> None:
    """Training shapes can barely stand out (LOW_CONTRAST_RANGE from the background); clip
    shapes keep MIN_BG_CONTRAST."""
    bg = solid(160, 120)
    ref = np.array(BG, np.float32)
    lo, hi = LOW_CONTRAST_RANGE
    for low_contrast, want in ((0.0, "strong"), (1.0, "faint")):
        rng = np.random.default_rng(4)
        dist = np.array(
            [
                np.linalg.norm(np.array(s.color, np.float32) - ref)
                for _ in range(40)
                for s in random_shapes(rng, 160, 120, bg, low_contrast=low_contrast)
            ]
        )
        if want == "strong":
            assert (dist >= MIN_BG_CONTRAST).mean() > 0.95
        else:  # rounding to integers moves a colour by < 1
            assert ((dist >= lo - 1) & (dist <= hi + 1)).mean() > 0.9
            assert dist.min() >= lo - 1 and np.median(dist) < MIN_BG_CONTRAST


def test_training_world_has_eclipses() -> None:
    """With eclipses, many more instances show a quarter of their shape or less."""
    counts = {}
    for eclipse in (0.0, 1.0):
        rng = np.random.default_rng(6)
        worlds = [
            World(320, 240, rng, background=solid(320, 240), eclipse=eclipse) for _ in range(80)
        ]
        shares = visible_shares(worlds)
        assert len(shares) > 100
        counts[eclipse] = int((shares <= 0.25).sum())
    assert counts[1.0] >= 2 * counts[0.0] + 10


def test_occlude_cuts_masks_exactly() -> None:
    big = make_shape(SQUARE, 100, (200, 30, 30), 80, 60)
    small = make_shape(CIRCLE, 8, (30, 200, 30), 140, 20)
    sample = render_shapes(solid(160, 120), [big, small], min_area=4)
    check_sample(sample, 160, 120)
    big_area = int(sample.masks[0].sum())
    cut = 0
    for seed in range(20):
        out = occlude(sample, np.random.default_rng(seed), min_area=4)
        check_sample(out, 160, 120)
        changed = np.any(out.image != sample.image, axis=2)
        assert changed.any()
        # Each kept instance is its old mask less the changed pixels (an occluder of exactly
        # the shape's colour would not show, hence "no changed pixel" rather than equality).
        for j, obj in enumerate(out.objects.tolist()):
            assert not np.any(out.masks[j] & ~sample.masks[obj])
            assert not np.any(out.masks[j] & changed)
            assert out.labels[j] == sample.labels[obj]
        cut += int(out.masks[out.objects == 0].sum()) < big_area
        # With min_area = the big square's area, it leaves the truth exactly when it is cut.
        strict = occlude(sample, np.random.default_rng(seed), min_area=big_area)
        assert (0 in strict.objects.tolist()) == (not np.any(sample.masks[0] & changed))
    assert cut >= 5


def test_training_frames_keep_exact_truth() -> None:
    """Faint shapes, eclipses, lines and occluders: every training mask is still exactly the
    flat-coloured pixels its shape shows (before degrade), disjoint, with tight boxes."""
    rng = np.random.default_rng(12)
    seen = 0
    for _ in range(40):
        sample = training_render(rng, 320, 240)
        check_sample(sample, 320, 240)
        for mask in sample.masks:
            assert len(np.unique(sample.image[mask], axis=0)) == 1
            seen += 1
    assert seen > 100


def test_occlude_empty() -> None:
    sample = render_shapes(solid(64, 48), [], min_area=4)
    out = occlude(sample, np.random.default_rng(0), min_area=4)
    check_sample(out, 64, 48)
    assert len(out.labels) == 0 and out.objects.shape == (0,)


def test_objects_and_identities() -> None:
    """Instances name their shape; ids hold through occlusion and change after leaving."""
    from streamseg.tools.synth import Identities

    lower = make_shape(SQUARE, 30, (200, 0, 0), 40, 60, vx=10)
    upper = make_shape(CIRCLE, 60, (0, 200, 0), 80, 60)  # lower passes behind it
    leaver = make_shape(TRIANGLE, 20, (0, 0, 200), 150, 20, vx=12, wrap=True)
    world = World(160, 120, np.random.default_rng(0), background=solid(160, 120))
    world.shapes = (lower, upper, leaver)
    identities = Identities()
    seen: list[dict[int, int]] = []  # per frame: shape index -> track id
    for _ in range(14):
        sample = world.render()
        check_sample(sample, 160, 120)
        ids = identities.update(world, sample)
        assert sample.objects.dtype == np.int64 and len(ids) == len(sample.labels)
        assert sample.labels.tolist() == [world.shapes[o].label for o in sample.objects]
        seen.append(dict(zip(sample.objects.tolist(), ids, strict=True)))
        world.step()
    assert any(0 not in frame for frame in seen)  # the square was hidden for a while
    assert {frame[0] for frame in seen if 0 in frame} == {1}  # ... and kept its id
    assert {frame[1] for frame in seen} == {2}
    leaver_ids = [frame[2] for frame in seen if 2 in frame]
    assert leaver_ids[0] == 3 and leaver_ids[-1] == 4  # wrapped round: a new object
    assert sorted(set(leaver_ids)) == [3, 4]


def test_clip_ground_truth_carries_track_ids(tmp_path: Path) -> None:
    coco = write_clip(tmp_path / "c.mp4", tmp_path / "c.json", seed=5, frames=20, size=(160, 120))
    anns = coco["annotations"]
    assert anns and all(isinstance(a["track_id"], int) and a["track_id"] >= 1 for a in anns)
    # One annotation per object and frame; each object keeps its category.
    pairs = [(a["image_id"], a["track_id"]) for a in anns]
    assert len(pairs) == len(set(pairs))
    tracks = {t["id"]: t for t in coco["tracks"]}
    assert sorted(tracks) == list(range(1, len(tracks) + 1))
    for a in anns:
        t = tracks[a["track_id"]]
        assert a["category_id"] == t["category_id"]
        assert t["first_frame"] <= a["image_id"] - 1 <= t["last_frame"]
    assert sum(t["frames"] for t in tracks.values()) == len(anns)
    COCO(str(tmp_path / "c.json"))  # still plain COCO
