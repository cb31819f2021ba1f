"""Postprocess gives the tracker the colours that inference measured."""

from __future__ import annotations

import numpy as np

from streamseg.postprocess.frame import Rules, survivors
from streamseg.postprocess.tracking import Tracker
from streamseg.wire.codec import decode, encode
from streamseg.wire.messages import Detections

H, W = 120, 160


def detections(frame: int, colour: tuple[float, float, float] | None) -> Detections:
    """One square at (40..80, 30..70) of `colour` (None: not measured), through the wire."""
    det = Detections(
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
        colors=None if colour is None else np.array([colour], np.float32),
    )
    return decode([bytearray(memoryview(p)) for p in encode(det)])


def ids(colours: list[tuple[float, float, float] | None]) -> list[int | None]:
    tracker = Tracker(max_missed=60)
    out = []
    for frame, colour in enumerate(colours):
        inst, _ = survivors(detections(frame, colour), Rules(mask_threshold=0.5), tracker)
        (track_id,) = inst.track_id_list()
        out.append(track_id)
    return out


def test_a_colour_change_in_place_is_a_new_object() -> None:
    red, blue = (220.0, 20.0, 20.0), (20.0, 20.0, 220.0)
    assert ids([red] * 4 + [blue] * 2) == [1, 1, 1, 1, 2, 2]
    # Without colours, shape and motion alone: the same object.
    assert ids([None] * 6) == [1] * 6
