"""The tracker core on tiny hand-made scenes whose ids are known, and on synth ground truth."""

from __future__ import annotations

import numpy as np
import pytest

from streamseg.postprocess.tracking import NO_TRACK, Tracker, Update, box_iou, local_masks
from streamseg.tools import synth
from streamseg.tools.mot import MotAccumulator

H, W = 60, 100
CIRCLE, SQUARE = synth.CIRCLE, synth.SQUARE


def square(x: int, y: int, side: int = 10) -> np.ndarray:
    m = np.zeros((H, W), bool)
    m[max(y, 0) : y + side, max(x, 0) : x + side] = True
    return m


def step(
    tracker: Tracker,
    frame: int,
    masks: list[np.ndarray],
    labels: list[int] | None = None,
    scores: list[float] | None = None,
    colors: list[tuple[float, float, float]] | None = None,
) -> list[int]:
    """One update with full-frame masks; boxes are the masks' boxes. The track ids."""
    return decide(tracker, frame, masks, labels, scores, colors).ids.tolist()


def decide(
    tracker: Tracker,
    frame: int,
    masks: list[np.ndarray],
    labels: list[int] | None = None,
    scores: list[float] | None = None,
    colors: list[tuple[float, float, float]] | None = None,
) -> Update:
    """One update as `step`; what the tracker decided (ids and joins)."""
    full = np.array(masks, bool).reshape(-1, H, W)
    boxes = np.zeros((len(full), 4), np.float32)
    for i, m in enumerate(full):
        ys, xs = np.nonzero(m)
        if xs.size:
            boxes[i] = (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
    n = len(full)
    labels_a = np.array(labels if labels is not None else [SQUARE] * n, np.int64)
    scores_a = np.array(scores if scores is not None else [0.9] * n, np.float32)
    colors_a = None if colors is None else np.array(colors, np.float64).reshape(n, 3)
    update = tracker.update(frame, local_masks(full), boxes, labels_a, scores_a, colors_a)
    assert update.ids.dtype == update.joins.dtype == np.int64
    assert update.ids.shape == update.joins.shape == (n,)
    return update


def test_empty_frames() -> None:
    t = Tracker()
    assert step(t, 0, []) == []
    assert step(t, 1, [square(10, 10)]) == [1]
    assert step(t, 2, []) == []  # a miss: the track waits
    assert len(t) == 1
    assert step(t, 3, [square(10, 10)]) == [1]
    empty = local_masks(np.zeros((0, H, W), bool))
    assert len(empty) == 0 and empty.frame_size == (H, W)


def test_static_and_moving_objects_keep_ids() -> None:
    t = Tracker()
    for f in range(20):
        assert step(t, f, [square(5 + 3 * f, 10), square(50, 40)]) == [1, 2]
    # Order of the instances does not matter.
    assert step(t, 20, [square(50, 40), square(65, 10)]) == [2, 1]


def test_crossing_objects_keep_their_ids() -> None:
    """Two squares of one class cross; the front one hides the back one for a few frames."""
    back = synth.make_shape(SQUARE, 14, (200, 0, 0), 20, 30, vx=2)
    front = synth.make_shape(SQUARE, 24, (0, 200, 0), 80, 31, vx=-2)
    world = synth.World(W, H, np.random.default_rng(0), background="solid", shapes=[back, front])
    t, hidden = Tracker(), 0
    for f in range(25):
        sample = world.render()
        hidden += len(sample.labels) < 2
        ids = step(t, f, list(sample.masks), sample.labels.tolist())
        assert ids == [o + 1 for o in sample.objects.tolist()]  # track id = shape + 1
        world.step()
    assert hidden >= 2  # the back square was fully hidden for a while
    assert world.shapes[0].x > world.shapes[1].x + 20  # and they did cross


def test_hidden_object_comes_back_with_its_id() -> None:
    t = Tracker(max_missed=5)
    for f in range(4):
        assert step(t, f, [square(10 + 2 * f, 20)]) == [1]
    # Missed for frames 4..8 (5 frames), back at frame 9 where its motion took it.
    assert step(t, 9, [square(28, 20)]) == [1]
    # Missed for 6 frames (more than max_missed): a new object.
    assert step(t, 16, [square(42, 20)]) == [2]
    assert len(t) == 1


def test_leaving_and_entering_objects_get_new_ids() -> None:
    t = Tracker(max_missed=3)
    assert step(t, 0, [square(2, 10), square(60, 40)]) == [1, 2]
    assert step(t, 1, [square(60, 40)]) == [2]  # the first one left
    # A new one enters far away (another label: nothing links it to track 1).
    assert step(t, 2, [square(60, 40), square(85, 5)], [SQUARE, CIRCLE]) == [2, 3]
    for f in range(3, 8):
        assert step(t, f, [square(60, 40), square(85, 5)], [SQUARE, CIRCLE]) == [2, 3]
    assert step(t, 8, [square(2, 10), square(60, 40)]) == [4, 2]  # track 1 ended long ago


def test_skipped_frames_use_the_motion_prediction() -> None:
    """A fast square seen at frames 0-2, then at frame 6; a new square appears where it was."""
    t = Tracker()
    for f in range(3):
        assert step(t, f, [square(6 * f, 20)]) == [1]
    # Without motion, track 1 would match the new square at x=12 (IoU 1 unmoved).
    assert step(t, 6, [square(12, 20), square(36, 20)]) == [2, 1]
    assert step(t, 7, [square(12, 20), square(42, 20)]) == [2, 1]


def test_different_labels_never_swap() -> None:
    """A circle and a square trade places: class-aware, each id keeps its label."""
    a, b = square(10, 20, 12), square(22, 20, 12)
    labels = [CIRCLE, SQUARE]
    t = Tracker()
    assert step(t, 0, [a, b], labels) == [1, 2]
    assert step(t, 1, [b, a], labels) == [1, 2]  # circle now on the right
    # Class-agnostic matching (cross_label_weight 1) would follow the masks instead.
    t = Tracker(cross_label_weight=1.0, recover_radius=0.0)
    assert step(t, 0, [a, b], labels) == [1, 2]
    assert step(t, 1, [b, a], labels) == [2, 1]


def test_new_track_score_and_empty_masks() -> None:
    t = Tracker(new_track_score=0.5, min_hits=1)
    assert step(t, 0, [square(10, 10), square(60, 10)], scores=[0.9, 0.3]) == [1, NO_TRACK]
    # A low score continues a confirmed track.
    assert step(t, 1, [square(10, 10)], scores=[0.3]) == [1]
    # An empty mask (all below the mask threshold) is matched by its box.
    full = np.zeros((1, H, W), bool)
    box = np.array([[10, 10, 20, 20]], np.float32)
    update = t.update(2, local_masks(full), box, np.array([SQUARE]), np.array([0.9], np.float32))
    assert update.ids.tolist() == [1]
    assert step(t, 3, [square(10, 10)]) == [1]


def test_low_scores_only_continue_followed_tracks_after_the_others() -> None:
    """ByteTrack's second association: an instance below new_track_score never starts a
    track; it continues only a confirmed track matched in the previous update, by IoU, with
    what the others left."""
    t = Tracker(new_track_score=0.5, min_hits=2)
    assert step(t, 0, [square(10, 10)], scores=[0.9]) == [1]  # tentative
    assert step(t, 1, [square(11, 10)], scores=[0.3]) == [NO_TRACK]  # not for a tentative one
    assert step(t, 2, [square(12, 10)], scores=[0.9]) == [1]
    assert step(t, 3, [square(13, 10)], scores=[0.9]) == [1]  # confirmed now
    # A low copy that fits the prediction better loses to the high-scored instance.
    assert step(t, 4, [square(16, 10), square(14, 10)], scores=[0.9, 0.3]) == [1, NO_TRACK]
    # Partly hidden: low, and taken by its track (IoU).
    assert step(t, 5, [square(17, 10, side=8)], scores=[0.3]) == [1]
    # A sliver only the second pass (coverage) would link: not with a low score.
    assert step(t, 6, [square(26, 10, side=3)], scores=[0.2]) == [NO_TRACK]
    # Missed in frame 6, the track is lost: a low instance where it is predicted stays
    # untracked; a high one there continues it.
    assert step(t, 7, [square(20, 10)], scores=[0.3]) == [NO_TRACK]
    assert step(t, 8, [square(21, 10)], scores=[0.9]) == [1]
    assert step(t, 9, [square(22, 10)], scores=[0.3]) == [1]


def test_invalid_updates() -> None:
    t = Tracker()
    step(t, 5, [])
    with pytest.raises(ValueError, match="increasing"):
        step(t, 5, [])
    with pytest.raises(ValueError, match="1 masks but 0 boxes"):
        t.update(6, local_masks(square(0, 0)[None]), np.zeros((0, 4)), [], [])
    with pytest.raises(ValueError, match="min_iou"):
        Tracker(min_iou=0.0)
    with pytest.raises(ValueError, match="min_hits"):
        Tracker(min_hits=0)
    with pytest.raises(ValueError, match="duplicate_overlap"):
        Tracker(duplicate_overlap=1.5)


def test_local_masks_and_box_iou() -> None:
    full = np.array([square(3, 4, 7), np.zeros((H, W), bool), square(90, 55, 20)])
    local = local_masks(full)
    assert np.array_equal(local.full(), full)
    assert local.h.tolist() == [7, 0, 5] and local.x0.tolist() == [3, 0, 90]
    iou = box_iou(np.array([[0, 0, 10, 10]]), np.array([[5, 0, 15, 10], [20, 20, 20, 30]]))
    assert iou.tolist() == [[pytest.approx(50 / 150), 0.0]]


def random_scene(rng: np.random.Generator, n: int) -> tuple[list[np.ndarray], list[int]]:
    return [square(*rng.integers(0, 90, 2)) for _ in range(n)], rng.integers(1, 3, n).tolist()


def test_determinism() -> None:
    rng = np.random.default_rng(0)
    frames = [random_scene(rng, int(rng.integers(0, 6))) for _ in range(30)]
    runs = []
    for _ in range(2):
        t = Tracker()
        runs.append([step(t, f, masks, labels) for f, (masks, labels) in enumerate(frames)])
    assert runs[0] == runs[1]
    assert max(max(ids, default=0) for ids in runs[0]) > 1
    assert all(i >= 1 for ids in runs[0] for i in ids)  # every instance has an id


def track_synth_clip(
    seed: int, frames: int, size: tuple[int, int], min_area: int
) -> MotAccumulator:
    """Tracker over a synth clip's ground-truth masks, leaving out instances under
    `min_area` px (as a detector misses slivers); scored against the ground-truth ids."""
    w, h = size
    world = synth.World(w, h, np.random.default_rng(seed))
    identities, tracker, acc = synth.Identities(), Tracker(), MotAccumulator()
    for f in range(frames):
        sample = world.render()
        gt_ids = identities.update(world, sample)
        keep = sample.masks.sum((1, 2)) >= min_area
        ids = tracker.update(
            f,
            local_masks(sample.masks[keep]),
            sample.boxes[keep],
            sample.labels[keep],
            np.ones(int(keep.sum()), np.float32),
        ).ids
        iou = np.zeros((len(gt_ids), len(ids)))
        iou[np.flatnonzero(keep), np.arange(len(ids))] = 1.0
        acc.update(gt_ids, ids.tolist(), iou)
        world.step()
    return acc


def test_synth_ground_truth_is_tracked() -> None:
    """Exact masks, slivers under 40 px (320x240) left out: few id errors. (The world has
    deep occlusions: a shape may vanish behind another for longer than the tracker waits.)"""
    switches, idtp, instances = 0, 0, 0
    for seed in (100, 104, 111):
        s = track_synth_clip(seed, 100, (320, 240), min_area=40).summary()
        switches += s.id_switches
        idtp += s.idtp
        instances += s.gt_instances + s.pred_instances
    assert switches <= 2  # 1, 1 and 0 in 22 tracks
    assert 2 * idtp / instances >= 0.95


def test_takes_paste_masks_crops() -> None:
    """The postprocess stage's LocalMasks (box crops, padded to the largest) track the same as
    tight crops of the same full masks."""
    import torch

    from streamseg.postprocess.masks import paste_masks

    rng = np.random.default_rng(1)
    a, b = Tracker(), Tracker()
    for f in range(6):
        boxes = np.array([[5 + 4 * f, 10, 30 + 4 * f, 40], [60, 5, 90, 25]], np.float32)
        probs = rng.uniform(0.3, 1.0, (2, 1, 28, 28)).astype(np.float32)
        local = paste_masks(torch.from_numpy(probs), torch.from_numpy(boxes), (H, W))
        labels, scores = np.array([SQUARE, CIRCLE]), np.array([0.9, 0.8], np.float32)
        ids = a.update(f, local, boxes, labels, scores).ids
        again = b.update(f, local_masks(local.full()), boxes, labels, scores).ids
        assert ids.tolist() == again.tolist()
        assert ids.tolist() == [1, 2]


def test_best_total_not_most_pairs() -> None:
    """A stray track half over an object must not push the object's track onto a fragment."""
    whole = square(10, 10, 20)
    stray = np.zeros((H, W), bool)
    stray[10:30, 20:30] = True  # the right half of the object
    fragment = np.zeros((H, W), bool)
    fragment[12:28, 10:20] = True  # 160 px of the left half: IoU 0.4 with the object's track
    t = Tracker()
    assert step(t, 0, [whole, stray]) == [1, 2]
    # Most pairs would be (1, fragment) + (2, whole): 0.4 + 0.5; the best total is (1, whole): 1.
    assert step(t, 1, [whole, fragment])[0] == 1


def test_tentative_tracks_end_soon_and_ids_are_never_reused() -> None:
    t = Tracker(min_hits=3, tentative_max_missed=2, max_missed=10)
    assert step(t, 0, [square(10, 10)]) == [1]  # tentative, but it has its id at once
    for f in (1, 2, 3):
        assert step(t, f, []) == []
    assert len(t) == 1  # missed for 3 frames: ended at the next update
    assert step(t, 4, [square(10, 10)]) == [2]  # a new track; id 1 is not given again
    assert len(t) == 1
    assert step(t, 5, [square(10, 10)]) == [2]
    assert step(t, 6, [square(10, 10)]) == [2]  # third hit: confirmed
    # A confirmed track survives max_missed frames (7..16) without a match.
    assert step(t, 17, [square(10, 10)]) == [2]


def test_confirmed_tracks_choose_before_tentative_ones() -> None:
    """The model merges an object with its surroundings, then reports the object's own mask
    as well: the duplicate's new track must not take the object over."""

    def bloated(x: int) -> np.ndarray:  # 20 x 30: the object and more
        return square(x, 10, 20) | square(x, 20, 20)

    def run(t: Tracker) -> list[int]:
        for f in range(5):
            assert step(t, f, [square(10 + f, 10, 20)]) == [1]
        assert step(t, 5, [bloated(15)]) == [1]
        assert step(t, 6, [bloated(16), square(16, 10, 20)]) == [1, 2]
        return step(t, 7, [square(17, 10, 20)])

    # Track 2 fits the last mask best (IoU ~0.9 against ~0.6), but track 1 is confirmed and
    # keeps its object. Without tentative tracks (min_hits=1), 2 would take it.
    assert run(Tracker()) == [1]
    assert run(Tracker(min_hits=1)) == [2]


def test_recovery_skips_a_copy_of_a_found_object() -> None:
    """A circle is also reported as a square (same pixels, another label) while the square
    next to it is hidden: the hidden square's track must not take the copy."""
    t = Tracker()
    hidden, circle = square(10, 20), square(22, 20)
    for f in range(3):
        assert step(t, f, [hidden, circle], [SQUARE, CIRCLE]) == [1, 2]
    copy_ids = step(t, 3, [circle, circle], [CIRCLE, SQUARE], scores=[0.9, 0.6])
    assert copy_ids[0] == 2 and copy_ids[1] not in (1, 2)
    assert step(t, 4, [hidden, circle], [SQUARE, CIRCLE]) == [1, 2]
    # The same pixels as a square alone (the circle missed) are near enough to be recovered.
    t = Tracker()
    for f in range(3):
        step(t, f, [hidden, circle], [SQUARE, CIRCLE])
    assert step(t, 3, [circle], [SQUARE]) == [1]


def test_recovery_skips_much_larger_instances() -> None:
    t = Tracker(recover_max_area=1.5)
    for f in range(3):
        assert step(t, f, [square(10, 20, 10)]) == [1]
    # Missed for two frames, then a same-label instance 2.25 times its area shows up nearby.
    assert step(t, 5, [square(22, 18, 15)]) == [2]
    t = Tracker(recover_max_area=1.5)
    for f in range(3):
        step(t, f, [square(10, 20, 10)])
    assert step(t, 5, [square(22, 20, 12)]) == [1]  # 1.44 times: the object, moved
    # A tentative track (one sighting) may not have seen all of its object: no limit.
    t = Tracker()
    assert step(t, 0, [square(10, 20, 10)]) == [1]
    assert step(t, 2, [square(22, 18, 15)]) == [1]


def test_recovery_knows_the_size_of_an_object_hidden_for_long() -> None:
    """An object seen whole, then only its top rows for 30 frames (behind another: its
    reference area decays with its masks to about half), then missed, comes back whole
    elsewhere. Its last complete mask still gives its size: it gets its id back."""
    t = Tracker()
    whole = square(40, 20, 20)
    for f in range(5):
        assert step(t, f, [whole]) == [1]
    top = whole.copy()
    top[24:] = False  # 20 x 4 px of the 20 x 20 px object
    for f in range(5, 35):
        assert step(t, f, [top]) == [1]
    # Missed for 5 frames; back 25 px to the right and 8 px lower (by centroid ~26 px):
    # neither overlaps nor lies inside the last complete mask, so only recovery can link it.
    assert step(t, 40, [square(65, 20, 20)]) == [1]


RED, BLUE = (200.0, 30.0, 30.0), (30.0, 30.0, 200.0)


def test_colour_tells_a_new_object_from_a_hidden_one() -> None:
    """A red square is hidden; a blue square of the same label appears where the red one is
    expected. By shape and motion alone, the blue one takes the red one's id; by colour, it
    gets its own, and the red one gets its id back when it comes out."""

    def run(colors: bool) -> list[list[int]]:
        t, out = Tracker(), []
        for f in range(5):
            out.append(step(t, f, [square(10 + 2 * f, 20)], colors=[RED] if colors else None))
        for f in range(5, 8):  # hidden
            out.append(step(t, f, [], colors=[] if colors else None))
        blue, both = ([BLUE], [BLUE, RED]) if colors else (None, None)
        for f in range(8, 11):  # a blue square where the red one would be
            out.append(step(t, f, [square(26 + 2 * (f - 8), 20)], colors=blue))
        # the red square comes out, next to the blue one
        out.append(step(t, 11, [square(34, 20), square(52, 20)], colors=both))
        return out

    blind = run(colors=False)
    assert blind[8] == [1]  # the new square took the hidden one's id
    seen = run(colors=True)
    assert seen[:5] == [[1]] * 5
    assert seen[8:11] == [[2]] * 3
    assert seen[11] == [2, 1]


def test_colours_drift_slowly_and_can_be_unknown_or_ignored() -> None:
    """Lighting drift of 2 per channel a frame (170 over the run) keeps the id; an unknown
    colour (NaN) matches any; max_color_distance=0 ignores colours."""
    t = Tracker()
    for f in range(86):
        c = (200.0 - 2 * f, 30.0 + 2 * f, 30.0 + 2 * f)
        assert step(t, f, [square(10 + f // 3, 20)], colors=[c]) == [1]
    assert step(t, 86, [square(38, 20)], colors=[(np.nan, np.nan, np.nan)]) == [1]
    # A jump in colour is another object, even in the same place ...
    t = Tracker()
    step(t, 0, [square(10, 20)], colors=[RED])
    assert step(t, 1, [square(10, 20)], colors=[BLUE]) == [2]
    # ... unless colours are switched off.
    t = Tracker(max_color_distance=0.0)
    step(t, 0, [square(10, 20)], colors=[RED])
    assert step(t, 1, [square(10, 20)], colors=[BLUE]) == [1]


def test_colour_settings_and_shapes_are_checked() -> None:
    with pytest.raises(ValueError, match="max_color_distance must be >= 0"):
        Tracker(max_color_distance=-1.0)
    with pytest.raises(ValueError, match="color_weight must be in"):
        Tracker(color_weight=0.0)
    masks = local_masks(np.array([square(10, 20)]))
    box, label, score = np.array([[10, 20, 20, 30]]), np.array([SQUARE]), np.array([0.9])
    with pytest.raises(ValueError, match="1 masks but 1 boxes, 1 labels, 1 scores, 2 colours"):
        Tracker().update(0, masks, box, label, score, np.array([RED, BLUE]))


def rect(x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
    m = np.zeros((H, W), bool)
    m[y0:y1, x0:x1] = True
    return m


def test_an_object_seen_as_two_pieces_keeps_one_id() -> None:
    """A 20 x 20 square, tracked whole, is then seen as its left and right halves (one label):
    the left half continues the track, the right one is a fragment that joins it, and the
    track takes the joined mask, so the whole square next frame is still the same track."""
    t = Tracker()
    for f in range(4):
        update = decide(t, f, [rect(10 + f, 20, 30 + f, 40)])
        assert update.ids.tolist() == [1] and update.joins.tolist() == [-1]
    # frame 4: the square, at x 14..34, as two pieces (the larger one first)
    left, right = rect(14, 20, 26, 40), rect(26, 20, 34, 40)
    update = decide(t, 4, [left, right], scores=[0.9, 0.6])
    assert update.ids.tolist() == [1, NO_TRACK] and update.joins.tolist() == [-1, 0]
    assert np.array_equal(t._tracks[0].crop.mask, np.ones((20, 20), bool))  # the joined mask
    assert step(t, 5, [rect(15, 20, 35, 40)]) == [1]
    assert len(t) == 1  # no track was started for the piece
    # Off: the piece starts a track of its own.
    t = Tracker(fragment_coverage=0.0)
    for f in range(4):
        step(t, f, [rect(10 + f, 20, 30 + f, 40)])
    update = decide(t, 4, [left, right], scores=[0.9, 0.6])
    assert update.ids.tolist() == [1, 2] and update.joins.tolist() == [-1, -1]


def test_what_is_not_a_fragment() -> None:
    """Pieces that are another object, another label, another colour, or a tentative
    track's are never joined."""

    def track_whole(t: Tracker, frames: int = 4, colors: bool = False) -> None:
        for f in range(frames):
            step(t, f, [rect(10, 20, 30, 40)], colors=[RED] if colors else None)

    left, right = rect(10, 20, 22, 40), rect(22, 20, 30, 40)
    # Two objects side by side, each with its own track: the tracks take them, no joins.
    t = Tracker()
    for f in range(4):
        assert step(t, f, [rect(10, 20, 30, 40), rect(40, 20, 50, 40)]) == [1, 2]
    update = decide(t, 4, [rect(10, 20, 30, 40), rect(40, 20, 50, 40)])
    assert update.ids.tolist() == [1, 2] and update.joins.tolist() == [-1, -1]
    # A piece of another label.
    t = Tracker()
    track_whole(t)
    assert step(t, 4, [left, right], [SQUARE, CIRCLE]) == [1, 2]
    # A piece of another colour.
    t = Tracker()
    track_whole(t, colors=True)
    update = decide(t, 4, [left, right], colors=[RED, BLUE])
    assert update.ids.tolist() == [1, 2] and update.joins.tolist() == [-1, -1]
    # A piece mostly outside the object's last complete mask: a new object beside it.
    t = Tracker()
    track_whole(t)
    assert step(t, 4, [rect(10, 20, 30, 40), rect(28, 20, 40, 40)]) == [1, 2]
    # A piece that does not bring the match closer to the whole: a copy inside it.
    t = Tracker()
    track_whole(t)
    assert step(t, 4, [rect(10, 20, 30, 40), rect(12, 22, 20, 30)]) == [1, 2]
    # A tentative track (seen once) has no complete mask to go by yet.
    t = Tracker()
    track_whole(t, frames=1)
    assert step(t, 1, [left, right]) == [1, 2]
    with pytest.raises(ValueError, match="fragment_coverage must be in"):
        Tracker(fragment_coverage=1.5)
