"""Track ids per stream: a pure tracker that links a frame's instance masks to the previous ones.

One :class:`Tracker` per stream. Each call to :meth:`Tracker.update` takes one frame's instances
(masks as box-local crops, as the postprocess stage has them) and returns a track id per
instance (and which instances are fragments of others: :class:`Update`). No sockets, no
clock, no randomness: the frame number is the only notion of time, so
the ids depend only on the sequence of frames given, never on how they were batched.

A new track is *tentative* until it has been matched in ``min_hits`` frames, then
*confirmed*. It shows its id from its first frame, but it yields to confirmed tracks and ends
soon when missed: a duplicate detection, a fragment or a one-frame false detection then cannot
take over an object's id.

Algorithm, per frame:

1. Confirmed tracks not matched for more than ``max_missed`` frames (by frame number) are
   ended; tentative ones after ``tentative_max_missed``.
2. Motion prediction: each track moves by its velocity (px / frame, measured between mask
   centroids) times the frame gap, so it also holds across frames skipped by a live stream.
3. Three passes, each one global assignment (Hungarian, ``scipy.optimize.linear_sum_assignment``,
   highest total similarity) over what the passes before left; in each, confirmed tracks
   choose first and tentative tracks take what is left:
   a. mask IoU of the track's last mask, moved as predicted, and the new mask >= ``min_iou``;
   b. share of the new mask inside the track's last complete (unoccluded) mask, moved as
      predicted, >= ``min_coverage``: objects coming out from behind others, whose visible
      part changes faster than IoU can follow;
   c. nearest centroid within a radius that grows with speed and time missed: objects missed
      or hidden for a while that come back elsewhere than predicted.
      It never takes an instance that lies over one a confirmed track has taken (by
      ``duplicate_overlap``): a duplicate of that object, often with another label.
   IoU and coverage are computed on the crops, only for pairs whose rectangles overlap: cost
   follows instance area, not frame area. Different labels never match unless
   ``cross_label_weight`` > 0. Where the caller gives each instance's colour (the
   inference stage measures it: ``streamseg.inference.colors``), a track never takes an
   instance whose colour is further than ``max_color_distance`` from the track's: two shapes
   of one label that cross, or a new object where a hidden one is expected, differ in colour
   where they do not in shape.
4. Fragments: an instance left over that has the label of a confirmed track's match, lies
   mostly inside the track's last complete mask, and joined to the match comes closer to that
   mask is a piece of the same object (the model saw it as two): it gets no id, and
   ``Update.joins`` tells the caller to join it to the match.
   Instances scoring below ``new_track_score`` take part only in pass a, offered after the
   others to the confirmed tracks matched in the previous frame (ByteTrack's second
   association): an object partly hidden scores lower, and its track should not lose it for
   that; a track already lost is not trusted with such an instance.
5. Matched tracks take the new mask (joined with its fragments); unmatched instances with
   score >= ``new_track_score`` start new tentative tracks (ids 1, 2, 3, ... per tracker,
   never reused: the id of a tentative track that ends is not given again); the rest get
   id -1.

Masks, not boxes, decide: the boxes of two overlapping objects overlap a lot, their masks do not.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.optimize import linear_sum_assignment

from streamseg.postprocess.masks import LocalMasks

NO_TRACK = -1  # id of an instance that neither continues a track nor may start one
# The last mask not moved is the fallback for a stale velocity (a turn, a bounce), trusted less
# than the prediction: a new object where a fast one was last seen must not take its id.
_STILL_WEIGHT = 0.5
_NEAR = 1e-9  # least nearness of a third-pass match (any distance within the radius)


@dataclass(frozen=True, eq=False)
class Update:
    """What :meth:`Tracker.update` decided for a frame's N instances.

    Attributes:
        ids: int64[N], each instance's track id (>= 1), or -1 (``NO_TRACK``) for an unmatched
            instance below ``new_track_score`` and for a fragment.
        joins: int64[N], for each fragment the index of the instance whose object it is a
            piece of (see ``fragment_coverage``), -1 for every other instance: the caller
            joins the two masks into one instance (``instances.with_tracks``).
    """

    ids: np.ndarray
    joins: np.ndarray


@dataclass(frozen=True)
class _Crop:
    """A binary mask as a tight crop: ``mask[r, c]`` is frame pixel (y0 + r, x0 + c).

    mask: bool[h, w], with at least one True pixel in its first/last row and column
        (0 x 0 for an empty mask).
    centroid: float64[2], (x, y) mean of the mask pixels in frame pixels (pixel centres at
        integer coordinates).
    """

    mask: np.ndarray
    x0: int
    y0: int
    area: int
    centroid: np.ndarray

    @property
    def x1(self) -> int:
        return self.x0 + self.mask.shape[1]

    @property
    def y1(self) -> int:
        return self.y0 + self.mask.shape[0]


def _tight(mask: np.ndarray, x0: int, y0: int) -> _Crop:
    """The tight crop of ``mask`` (bool[h, w]) whose top-left pixel is frame (y0, x0)."""
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    if rows.size == 0:
        return _Crop(np.zeros((0, 0), bool), x0, y0, 0, np.array([x0, y0], np.float64))
    r0, r1, c0, c1 = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
    sub = np.ascontiguousarray(mask[r0:r1, c0:c1])
    area = int(np.count_nonzero(sub))
    ys, xs = np.nonzero(sub)
    centroid = np.array([x0 + c0 + xs.mean(), y0 + r0 + ys.mean()], np.float64)
    return _Crop(sub, x0 + c0, y0 + r0, area, centroid)


def _intersection(a: _Crop, ax: int, ay: int, b: _Crop) -> int:
    """Pixels in both ``a`` moved by (ax, ay) and ``b``."""
    x0, x1 = max(a.x0 + ax, b.x0), min(a.x1 + ax, b.x1)
    y0, y1 = max(a.y0 + ay, b.y0), min(a.y1 + ay, b.y1)
    if x0 >= x1 or y0 >= y1:
        return 0
    sa = a.mask[y0 - a.y0 - ay : y1 - a.y0 - ay, x0 - a.x0 - ax : x1 - a.x0 - ax]
    sb = b.mask[y0 - b.y0 : y1 - b.y0, x0 - b.x0 : x1 - b.x0]
    return int(np.count_nonzero(sa & sb))


def _area_in_frame(a: _Crop, ax: int, ay: int, frame_size: tuple[int, int]) -> int:
    """Pixels of ``a`` moved by (ax, ay) that lie inside a frame of (H, W)."""
    frame_h, frame_w = frame_size
    x0, x1 = max(a.x0 + ax, 0), min(a.x1 + ax, frame_w)
    y0, y1 = max(a.y0 + ay, 0), min(a.y1 + ay, frame_h)
    if (x0, y0, x1, y1) == (a.x0 + ax, a.y0 + ay, a.x1 + ax, a.y1 + ay):
        return a.area
    if x0 >= x1 or y0 >= y1:
        return 0
    sub = a.mask[y0 - a.y0 - ay : y1 - a.y0 - ay, x0 - a.x0 - ax : x1 - a.x0 - ax]
    return int(np.count_nonzero(sub))


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every pair of boxes.

    Args:
        a: float[P, 4], xyxy, frame pixels.
        b: float[Q, 4], xyxy, frame pixels.

    Returns:
        float64[P, Q], in [0, 1]; 0 where a box has no area.
    """
    a = np.asarray(a, np.float64).reshape(-1, 4)
    b = np.asarray(b, np.float64).reshape(-1, 4)
    iw = np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0])
    ih = np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1])
    inter = np.clip(iw, 0, None) * np.clip(ih, 0, None)
    area_a = np.clip(a[:, 2] - a[:, 0], 0, None) * np.clip(a[:, 3] - a[:, 1], 0, None)
    area_b = np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


@dataclass
class _Track:
    """One object's state.

    crop: its last mask; template: its last complete mask (area >= ``complete_fraction`` of
    ``ref_area``, the decaying largest area seen), for when the object is partly hidden.
    box: float64[4], xyxy, of the last match. velocity: float64[2], (vx, vy) px / frame.
    """

    id: int
    label: int
    crop: _Crop
    last_frame: int
    template: _Crop
    template_frame: int
    ref_area: float
    box: np.ndarray
    velocity: np.ndarray
    moving: bool  # velocity has been measured
    hits: int  # frames matched to an instance that is not a duplicate (see Tracker)
    confirmed: bool  # hits reached min_hits once
    color: np.ndarray  # float64[3], running mean colour of its masks; NaN: none measured


class Tracker:
    """Track ids for one stream's instances, frame after frame (see the module docstring).

    Args:
        min_iou: least mask IoU of an instance and a track's last mask, moved by the
            predicted motion, to continue the track (first pass). The last mask not moved
            counts too, at half its IoU (for a velocity gone stale).
        min_coverage: second pass, for the instances and tracks the first left over: least
            share of an instance's pixels inside the track's last complete mask or last mask,
            both moved by the predicted motion. It links objects that come out from behind
            others, whose visible part changes faster than IoU can follow.
        recover_radius: third pass, for what the first two left over: a track takes the
            nearest instance of its label (see recover_max_area) whose centroid is
            within recover_radius * (object size + speed * frames since its last match) of
            where the centroid of its last mask is predicted (kept inside the frame; object
            size = sqrt(area), the area as for recover_max_area; before a track has a
            velocity, speed = size / 2). It recovers objects that were missed or hidden and
            come back elsewhere than predicted (a turn, a bounce off the frame edge). 0: no
            third pass.
        recover_max_area: the third pass gives a confirmed track no instance larger than this
            many times its object's area (the larger of its reference area and its last
            complete mask's): such an instance is another object, or the object merged with
            one. (A tentative track may not have seen its whole object yet: one that enters
            the frame or comes out from behind another grows.)
        duplicate_overlap: the third pass takes no instance whose mask and the mask of an
            instance a confirmed track has taken share at least this share of the smaller
            one: it is a duplicate of that object (a copy with another label, a fragment, the
            object merged with a neighbour), not a lost object coming back. Nor does a
            tentative track's match with such an instance count towards min_hits.
        fragment_coverage: an instance no track took is a fragment of a confirmed track's
            match (the model saw one object as two pieces) when both have the track's label,
            at least this share of its pixels lies inside the track's last complete mask
            moved as predicted (and within the colour gate), and joined to the match it makes
            a mask closer (IoU) to that complete mask. It gets no id; ``Update.joins`` names
            its match, whose pixels it should join (the track takes the joined mask). 0: never.
        cross_label_weight: similarities of a track and an instance of different labels are
            multiplied by this (the track takes the new label); 0 (default): never match.
        max_color_distance: where :meth:`update` is given colours, a track and an instance
            whose colours (RGB, 0-255 per channel) lie further apart than this never match,
            in any pass. 0: colours are not used.
        color_weight: weight of a new instance's colour in its track's running colour
            (lighting drifts).
        max_missed: frames (by frame number) a confirmed track survives without a match: an
            object hidden or missed in up to this many consecutive frames comes back with
            its id.
        min_hits: frames a new track must be matched in (its first included) to be
            confirmed. Until then it is tentative: it has its id, but in each pass confirmed
            tracks choose first, and it ends after tentative_max_missed frames without a
            match. 1: every track is confirmed at once (no tentative tracks).
        tentative_max_missed: frames a tentative track survives without a match (at most
            max_missed).
        new_track_score: least score for an instance to start a new track. An instance
            below it (a *low* one) can only continue a confirmed track that was matched in
            the previous update, in the first pass (IoU), after the instances at or above it
            have been matched: ByteTrack's second association (an object partly hidden or
            blurred scores lower; a track already lost is not trusted with one). Unmatched,
            it gets id -1 (``NO_TRACK``). 0 (default): every instance may start a track.
        velocity_weight: weight of a new velocity measurement in the running estimate
            (1: the last measurement only).
        complete_fraction: a mask with at least this share of the object's reference area
            (its largest recent area) shows the whole object: it becomes the template, and
            velocity is measured between such masks only (a partly hidden object's centroid
            moves for other reasons than motion).
        area_decay: per frame, the reference area shrinks by this factor (objects that move
            away get smaller).
    """

    def __init__(
        self,
        *,
        # association
        min_iou: float = 0.2,
        min_coverage: float = 0.5,
        cross_label_weight: float = 0.0,
        max_color_distance: float = 50.0,
        recover_radius: float = 1.5,
        recover_max_area: float = 2.0,
        duplicate_overlap: float = 0.8,
        fragment_coverage: float = 0.5,
        # track life
        max_missed: int = 30,
        min_hits: int = 3,
        tentative_max_missed: int = 10,
        new_track_score: float = 0.0,
        # motion and appearance
        velocity_weight: float = 0.5,
        complete_fraction: float = 0.8,
        area_decay: float = 0.98,
        color_weight: float = 0.3,
    ) -> None:
        for name, value in (
            ("min_iou", min_iou),
            ("min_coverage", min_coverage),
            ("velocity_weight", velocity_weight),
            ("complete_fraction", complete_fraction),
            ("area_decay", area_decay),
            ("duplicate_overlap", duplicate_overlap),
            ("color_weight", color_weight),
        ):
            if not 0.0 < value <= 1.0:
                raise ValueError(f"Tracker: {name} must be in (0, 1], got {value}")
        if not 0.0 <= cross_label_weight <= 1.0:
            raise ValueError(
                f"Tracker: cross_label_weight must be in [0, 1], got {cross_label_weight}"
            )
        for name, count in (
            ("max_missed", max_missed),
            ("tentative_max_missed", tentative_max_missed),
        ):
            if count < 0:
                raise ValueError(f"Tracker: {name} must be >= 0, got {count}")
        if min_hits < 1:
            raise ValueError(f"Tracker: min_hits must be >= 1, got {min_hits}")
        if not max_color_distance >= 0.0:
            raise ValueError(f"Tracker: max_color_distance must be >= 0, got {max_color_distance}")
        if not 0.0 <= fragment_coverage <= 1.0:
            raise ValueError(
                f"Tracker: fragment_coverage must be in [0, 1], got {fragment_coverage}"
            )
        if recover_max_area <= 0.0:
            raise ValueError(f"Tracker: recover_max_area must be > 0, got {recover_max_area}")
        self.min_iou = min_iou
        self.min_coverage = min_coverage
        self.cross_label_weight = cross_label_weight
        self.max_color_distance = max_color_distance
        self.color_weight = color_weight
        self.recover_radius = recover_radius
        self.recover_max_area = recover_max_area
        self.duplicate_overlap = duplicate_overlap
        self.fragment_coverage = fragment_coverage
        self.max_missed = max_missed
        self.min_hits = min_hits
        self.tentative_max_missed = min(tentative_max_missed, max_missed)
        self.new_track_score = new_track_score
        self.velocity_weight = velocity_weight
        self.complete_fraction = complete_fraction
        self.area_decay = area_decay
        self._tracks: list[_Track] = []  # in id order
        self._next_id = 1
        self._last_frame: int | None = None

    def __len__(self) -> int:
        """Tracks alive after the last update, tentative ones included."""
        return len(self._tracks)

    def update(
        self,
        frame: int,
        masks: LocalMasks,
        boxes: np.ndarray,
        labels: np.ndarray,
        scores: np.ndarray,
        colors: np.ndarray | None = None,
    ) -> Update:
        """Link one frame's instances to the tracks; return their track ids and fragments.

        Args:
            frame: the frame number, greater than the previous call's (gaps are skipped
                frames; the motion prediction spans them).
            masks: the frame's N binary masks as crops (:class:`LocalMasks`, from
                ``paste_masks``; :func:`local_masks` builds them from full-frame masks).
            boxes: float[N, 4], xyxy, frame pixels; stand in for an instance's empty mask.
            labels: int[N], label ids.
            scores: float[N], in [0, 1].
            colors: float[N, 3], each instance's colour (RGB, 0-255; NaN: unknown), as
                ``streamseg.inference.colors.instance_colors`` measures it, or None:
                association by shape and motion only.

        Returns:
            :class:`Update`: each instance's track id, and which instances are fragments of
            which (the caller joins them).
        """
        n = len(masks)
        boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
        labels = np.asarray(labels).reshape(-1)
        scores = np.asarray(scores).reshape(-1)
        colors = (
            np.full((n, 3), np.nan)
            if colors is None
            else np.asarray(colors, np.float64).reshape(-1, 3)
        )
        if not (len(boxes) == len(labels) == len(scores) == len(colors) == n):
            raise ValueError(
                f"Tracker.update: {n} masks but {len(boxes)} boxes, {len(labels)} labels, "
                f"{len(scores)} scores, {len(colors)} colours"
            )
        if self._last_frame is not None and frame <= self._last_frame:
            raise ValueError(
                f"Tracker.update: frame {frame} after frame {self._last_frame}; frames of a "
                "stream must come in increasing order"
            )
        previous, self._last_frame = self._last_frame, frame
        # Frames last_frame + 1 .. frame - 1 went by without a match.
        self._tracks = [
            t
            for t in self._tracks
            if frame - t.last_frame - 1
            <= (self.max_missed if t.confirmed else self.tentative_max_missed)
        ]

        dets = [
            _tight(masks.masks[i, : masks.h[i], : masks.w[i]], int(masks.x0[i]), int(masks.y0[i]))
            for i in range(n)
        ]
        iou, coverage = self._similarity(frame, dets, boxes, labels, masks.frame_size)
        nearness = self._nearness(frame, dets, labels, masks.frame_size)
        if self.max_color_distance > 0.0 and self._tracks:
            other = self._color_distance(colors) > self.max_color_distance  # NaN: False
            iou[other] = coverage[other] = nearness[other] = 0.0
        overlapping = _overlapping(dets, self.duplicate_overlap)
        confirmed = np.array([t.confirmed for t in self._tracks], bool)
        high = scores >= self.new_track_score
        # a confirmed track its object's instance continued last frame (ByteTrack's "tracked")
        followed = confirmed & np.array([t.last_frame == previous for t in self._tracks], bool)
        track_free = np.ones(len(self._tracks), bool)
        det_free = np.ones(n, bool)
        taken = np.zeros(n, bool)  # by a confirmed track
        pairs: list[tuple[int, int]] = []
        for similarity, least in (
            (iou, self.min_iou),
            (coverage, self.min_coverage),
            (nearness, _NEAR),
        ):
            groups = [(confirmed, high), (~confirmed, high)]
            if similarity is iou:  # low instances, after the others: followed tracks only
                groups.append((followed, ~high))
            if similarity is nearness:  # no duplicate of an object its track has found
                similarity = np.where(overlapping[:, taken].any(1)[None, :], 0.0, similarity)
            for tracks, instances in groups:
                free = (track_free & tracks)[:, None] & (det_free & instances)[None, :]
                rows, cols = _assign(np.where(free, similarity, 0.0), least)
                track_free[rows], det_free[cols] = False, False
                taken[cols[confirmed[rows]]] = True
                pairs += zip(rows.tolist(), cols.tolist(), strict=True)
        duplicate = overlapping[:, taken].any(1) & ~taken
        joins = self._fragments(frame, pairs, dets, labels, coverage, det_free, masks)
        ids = np.full(n, NO_TRACK, np.int64)
        for t, d in pairs:
            track = self._tracks[t]
            det, box = dets[d], boxes[d]
            for f in np.flatnonzero(joins == d):  # the track sees its whole object
                det, box = _union(det, dets[f]), _box_union(box, boxes[f])
            self._continue(track, frame, det, box, int(labels[d]), not duplicate[d])
            self._see_color(track, colors[d])
            ids[d] = track.id
        for d in range(n):
            if joins[d] >= 0:
                continue
            if ids[d] == NO_TRACK and scores[d] >= self.new_track_score:
                ids[d] = self._start(frame, dets[d], boxes[d], int(labels[d]), not duplicate[d])
                self._see_color(self._tracks[-1], colors[d])
        return Update(ids, joins)

    def _fragments(
        self,
        frame: int,
        pairs: list[tuple[int, int]],
        dets: list[_Crop],
        labels: np.ndarray,
        coverage: np.ndarray,
        det_free: np.ndarray,
        masks: LocalMasks,
    ) -> np.ndarray:
        """int64[N]: for each instance no track took, the instance it is a fragment of, or -1.

        A fragment has the label of a confirmed track and of the instance that track took
        (its match), at least ``fragment_coverage`` of its pixels inside the track's last
        complete mask (or last mask) moved as predicted, within the colour gate (coverage is
        0 outside it), and joined to the match it makes a mask closer (IoU) to that complete
        mask: the model saw one object as two pieces. Of several such matches, the closest.
        """
        joins = np.full(len(dets), -1, np.int64)
        if self.fragment_coverage == 0.0 or not pairs:
            return joins
        for f in np.flatnonzero(det_free):
            if dets[f].area == 0:
                continue
            best = 0.0
            for t, d in pairs:
                track = self._tracks[t]
                if not (
                    track.confirmed
                    and labels[d] == labels[f] == track.label
                    and coverage[t, f] >= self.fragment_coverage
                    and dets[d].area > 0
                ):
                    continue
                tx, ty = self._shift(track, frame - track.template_frame)
                area = _area_in_frame(track.template, tx, ty, masks.frame_size)
                joined = _union(dets[d], dets[f])
                before = _iou_moved(track.template, tx, ty, area, dets[d])
                after = _iou_moved(track.template, tx, ty, area, joined)
                if after > before and after > best:
                    best, joins[f] = after, d
        return joins

    # --- association -----------------------------------------------------------------------

    @staticmethod
    def _shift(track: _Track, frames: int) -> tuple[int, int]:
        """The predicted displacement (dx, dy) of ``track`` over ``frames``, whole pixels."""
        dx, dy = track.velocity * frames
        return round(float(dx)), round(float(dy))

    def _similarity(
        self,
        frame: int,
        dets: list[_Crop],
        boxes: np.ndarray,
        labels: np.ndarray,
        frame_size: tuple[int, int],
    ) -> tuple[np.ndarray, np.ndarray]:
        """(iou, coverage), float64[T, N] each, of each track with each instance, weighted by
        ``cross_label_weight`` across labels (see the constructor's min_iou, min_coverage).
        Where an instance's mask is empty, iou is the box IoU and coverage 0."""
        n_tracks, n = len(self._tracks), len(dets)
        iou = np.zeros((n_tracks, n), np.float64)
        coverage = np.zeros((n_tracks, n), np.float64)
        if n_tracks == 0 or n == 0:
            return iou, coverage
        # Per track, three placements: last mask moved, last mask still, template moved.
        moves = np.array(
            [
                (
                    *self._shift(t, frame - t.last_frame),
                    *self._shift(t, frame - t.template_frame),
                )
                for t in self._tracks
            ],
            np.int64,
        ).reshape(n_tracks, 4)
        last = np.array([(t.crop.x0, t.crop.y0, t.crop.x1, t.crop.y1) for t in self._tracks])
        tmpl = np.array(
            [(t.template.x0, t.template.y0, t.template.x1, t.template.y1) for t in self._tracks]
        )
        last = last.reshape(n_tracks, 4)
        tmpl = tmpl.reshape(n_tracks, 4)
        reach = np.stack(  # a rectangle around all three placements
            [
                np.minimum(last[:, :2] + np.minimum(moves[:, :2], 0), tmpl[:, :2] + moves[:, 2:]),
                np.maximum(last[:, 2:] + np.maximum(moves[:, :2], 0), tmpl[:, 2:] + moves[:, 2:]),
            ],
            axis=1,
        ).reshape(n_tracks, 4)
        det_rect = np.array([(d.x0, d.y0, d.x1, d.y1) for d in dets], np.int64).reshape(n, 4)
        near = (
            (reach[:, None, 0] < det_rect[None, :, 2])
            & (det_rect[None, :, 0] < reach[:, None, 2])
            & (reach[:, None, 1] < det_rect[None, :, 3])
            & (det_rect[None, :, 1] < reach[:, None, 3])
        )
        track_labels = np.array([t.label for t in self._tracks], np.int64)
        same_label = track_labels[:, None] == labels[None, :]
        if self.cross_label_weight == 0.0:
            near &= same_label
        moved_area: dict[int, int] = {}
        for t, d in zip(*np.nonzero(near), strict=True):
            track, det = self._tracks[t], dets[d]
            if det.area == 0:
                continue
            lx, ly, tx, ty = (int(v) for v in moves[t])
            if t not in moved_area:
                moved_area[t] = _area_in_frame(track.crop, lx, ly, frame_size)
            inter_moved = _intersection(track.crop, lx, ly, det)
            inter_still = _intersection(track.crop, 0, 0, det) if (lx, ly) != (0, 0) else 0
            iou[t, d] = max(
                inter_moved / (moved_area[t] + det.area - inter_moved),
                _STILL_WEIGHT * inter_still / (track.crop.area + det.area - inter_still),
            )
            inter_tmpl = _intersection(track.template, tx, ty, det)
            coverage[t, d] = max(inter_moved, inter_tmpl) / det.area
        empty = np.array([d.area == 0 for d in dets])
        if empty.any():  # no mask to compare: the predicted box stands in
            pred_boxes = np.array([t.box for t in self._tracks]) + np.tile(moves[:, :2], 2)
            iou[:, empty] = box_iou(pred_boxes, boxes[empty])
            if self.cross_label_weight == 0.0:
                iou[:, empty] *= same_label[:, empty]
        weight = np.where(same_label, 1.0, self.cross_label_weight)
        return iou * weight, coverage * weight

    def _nearness(
        self, frame: int, dets: list[_Crop], labels: np.ndarray, frame_size: tuple[int, int]
    ) -> np.ndarray:
        """float64[T, N], third pass: 1 - d / r for instances of the track's label whose
        centroid is at distance d < r of the track's predicted centroid (its last mask's,
        moved by the velocity, clamped into the frame: what is outside cannot be seen),
        r = recover_radius * (object size + speed * frames since the last match); 0 elsewhere,
        and for instances larger than recover_max_area times a confirmed track's object."""
        n_tracks, n = len(self._tracks), len(dets)
        near = np.zeros((n_tracks, n), np.float64)
        if n_tracks == 0 or n == 0 or self.recover_radius == 0.0:
            return near
        frame_h, frame_w = frame_size
        det_c = np.array([d.centroid for d in dets], np.float64).reshape(n, 2)
        det_area = np.array([d.area for d in dets], np.float64)
        for t, track in enumerate(self._tracks):
            # From the last mask, not the last complete one: the object was seen there, so
            # the time since then bounds how far it can be (a partial mask's centroid is off
            # by less than the object's size, which the radius allows for).
            gap = frame - track.last_frame
            cx, cy = track.crop.centroid + track.velocity * gap
            centre = np.array([min(max(cx, 0.0), frame_w - 1.0), min(max(cy, 0.0), frame_h - 1.0)])
            # The whole object: while it is partly hidden its masks shrink and the reference
            # area decays with them, but its last complete mask still shows its size.
            whole = max(track.ref_area, float(track.template.area))
            size = math.sqrt(whole)
            # Unknown motion (one sighting so far): allow half the object's size per frame.
            speed = float(np.hypot(*track.velocity)) if track.moving else size / 2
            radius = self.recover_radius * (size + speed * gap)
            dist = np.hypot(*(det_c - centre).T)
            ok = (labels == track.label) & (det_area > 0)
            if track.confirmed:  # a tentative track may not have seen its whole object yet
                ok &= det_area <= self.recover_max_area * whole
            near[t] = np.where(ok & (dist < radius), 1.0 - dist / max(radius, 1e-9), 0.0)
        return near

    def _color_distance(self, colors: np.ndarray) -> np.ndarray:
        """float64[T, N]: RGB distance of each track's colour to each instance's; NaN where
        either is unknown."""
        track_colors = np.array([t.color for t in self._tracks], np.float64).reshape(-1, 3)
        return np.linalg.norm(track_colors[:, None, :] - colors[None, :, :], axis=2)

    # --- track state -----------------------------------------------------------------------

    def _see_color(self, track: _Track, color: np.ndarray) -> None:
        """Fold an instance's colour (NaN: unknown) into its track's running colour."""
        if np.isnan(color).any():
            return
        if np.isnan(track.color).any():
            track.color = color.copy()
        else:
            track.color = (1.0 - self.color_weight) * track.color + self.color_weight * color

    def _continue(
        self, track: _Track, frame: int, det: _Crop, box: np.ndarray, label: int, hit: bool
    ) -> None:
        """Move ``track`` to its new mask; measure its velocity between complete masks.
        ``hit``: the match counts towards min_hits (the instance is no duplicate)."""
        if det.area == 0:  # keep the last shape, moved with the box centre
            shift = np.round((box[:2] + box[2:] - track.box[:2] - track.box[2:]) / 2)
            old, (dx, dy) = track.crop, shift.astype(int).tolist()
            det = _Crop(old.mask, old.x0 + dx, old.y0 + dy, old.area, old.centroid + shift)
        track.ref_area = max(
            float(det.area), track.ref_area * self.area_decay ** (frame - track.last_frame)
        )
        if det.area and det.area >= self.complete_fraction * track.ref_area:
            measured = (det.centroid - track.template.centroid) / (frame - track.template_frame)
            w = self.velocity_weight if track.moving else 1.0
            track.velocity = w * measured + (1.0 - w) * track.velocity
            track.moving = True
            track.template, track.template_frame = det, frame
        track.crop = det
        track.box = box.copy()
        track.label = label
        track.last_frame = frame
        track.hits += hit
        track.confirmed |= track.hits >= self.min_hits

    def _start(self, frame: int, det: _Crop, box: np.ndarray, label: int, hit: bool) -> int:
        """A new tentative track (confirmed at once when min_hits is 1); its id."""
        track = _Track(
            id=self._next_id,
            label=label,
            crop=det,
            last_frame=frame,
            template=det,
            template_frame=frame,
            ref_area=float(det.area),
            box=box.copy(),
            velocity=np.zeros(2, np.float64),
            moving=False,
            hits=int(hit),
            confirmed=self.min_hits == 1,
            color=np.full(3, np.nan),
        )
        self._next_id += 1
        self._tracks.append(track)
        return track.id


def _union(a: _Crop, b: _Crop) -> _Crop:
    """The tight crop of the pixels of ``a`` or ``b``."""
    if b.area == 0:
        return a
    if a.area == 0:
        return b
    x0, y0 = min(a.x0, b.x0), min(a.y0, b.y0)
    mask = np.zeros((max(a.y1, b.y1) - y0, max(a.x1, b.x1) - x0), bool)
    mask[a.y0 - y0 : a.y1 - y0, a.x0 - x0 : a.x1 - x0] |= a.mask
    mask[b.y0 - y0 : b.y1 - y0, b.x0 - x0 : b.x1 - x0] |= b.mask
    return _tight(mask, x0, y0)


def _box_union(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """float64[4], xyxy: the smallest box around boxes ``a`` and ``b``."""
    return np.concatenate([np.minimum(a[:2], b[:2]), np.maximum(a[2:], b[2:])])


def _iou_moved(a: _Crop, ax: int, ay: int, area_in_frame: int, b: _Crop) -> float:
    """Mask IoU of ``a`` moved by (ax, ay) (``area_in_frame`` of its pixels in the frame)
    and ``b``."""
    inter = _intersection(a, ax, ay, b)
    union = area_in_frame + b.area - inter
    return inter / union if union else 0.0


def _overlapping(dets: list[_Crop], least: float) -> np.ndarray:
    """bool[N, N]: pairs of distinct instances whose masks share at least ``least`` of the
    smaller mask's pixels (never for an empty mask)."""
    n = len(dets)
    out = np.zeros((n, n), bool)
    for i in range(n):
        for j in range(i + 1, n):
            smaller = min(dets[i].area, dets[j].area)
            if smaller and _intersection(dets[i], 0, 0, dets[j]) >= least * smaller:
                out[i, j] = out[j, i] = True
    return out


def _assign(similarity: np.ndarray, least: float) -> tuple[np.ndarray, np.ndarray]:
    """Matched (rows, columns) of a [T, N] similarity: the pairs with similarity >= least of
    the assignment with the highest total (Hungarian).

    Highest total, not most pairs: a stray track that overlaps an object a little must not
    push the object's own track onto a fragment so that both get a pair.
    """
    allowed = similarity >= least
    rows, cols = np.flatnonzero(allowed.any(1)), np.flatnonzero(allowed.any(0))
    if rows.size == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    sub = np.where(allowed[np.ix_(rows, cols)], similarity[np.ix_(rows, cols)], 0.0)
    r, c = linear_sum_assignment(sub, maximize=True)
    ok = sub[r, c] >= least
    return rows[r[ok]], cols[c[ok]]


def local_masks(full: np.ndarray) -> LocalMasks:
    """Full-frame masks as :class:`LocalMasks` tight crops (for tests, tools and ground truth).

    Args:
        full: bool[N, H, W].

    Returns:
        Crops of each mask's bounding box (0 x 0 at (0, 0) for an empty mask).
    """
    full = np.asarray(full, bool)
    n, frame_h, frame_w = full.shape
    crops = [_tight(m, 0, 0) for m in full]
    crop_h = max((c.mask.shape[0] for c in crops), default=0)
    crop_w = max((c.mask.shape[1] for c in crops), default=0)
    stacked = np.zeros((n, crop_h, crop_w), bool)
    for i, c in enumerate(crops):
        stacked[i, : c.mask.shape[0], : c.mask.shape[1]] = c.mask
    return LocalMasks(
        masks=stacked,
        x0=np.array([c.x0 for c in crops], np.int32),
        y0=np.array([c.y0 for c in crops], np.int32),
        h=np.array([c.mask.shape[0] for c in crops], np.int32),
        w=np.array([c.mask.shape[1] for c in crops], np.int32),
        frame_size=(frame_h, frame_w),
    )
