"""Postprocess gives the tracker each instance's colour from the forwarded frame."""

from __future__ import annotations

import numpy as np

from streamseg.postprocess.main import _track
from streamseg.postprocess.results import make_result
from streamseg.wire.protocol import Detections

H, W = 120, 160


def detections(frame: int, colour: tuple[int, int, int] | None) -> Detections:
    """One square at (40..80, 30..70); the frame shows it in `colour` (None: no frame)."""
    image = None
    if colour is not None:
        image = np.full((H, W, 3), 90, np.uint8)
        image[30:70, 40:80] = colour
    return Detections(
        stream="cam",
        frame=frame,
        pts=frame / 30,
        wall_time=0.0,
        width=W,
        height=H,
        boxes=np.array([[40, 30, 80, 70]], np.float32),
        scores=np.array([0.9], np.float32),
        labels=np.array([2], np.int64),
        masks=np.ones((1, 28, 28), np.float32),
        image=image,
    )


def ids(colours: list[tuple[int, int, int] | None]) -> list[int | None]:
    trackers: dict = {}
    out = []
    for frame, colour in enumerate(colours):
        det = detections(frame, colour)
        _, local = make_result(det, mask_threshold=0.5, label_names=["bg", "a", "b"])
        (track_id,) = _track(trackers, det, local, {"max_missed": 60})
        out.append(track_id)
    return out


def test_a_colour_change_in_place_is_a_new_object() -> None:
    red, blue = (220, 20, 20), (20, 20, 220)
    assert ids([red] * 4 + [blue] * 2) == [1, 1, 1, 1, 2, 2]
    # Without the frame, shape and motion alone: the same object.
    assert ids([None] * 6) == [1] * 6
