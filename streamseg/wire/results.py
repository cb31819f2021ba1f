"""The results format: a frame's instances as a results-file line and as a published result.

`Instance` is one detected instance, `Result` one frame's record (docs/results-format.md). Both
are built and validated here, nowhere else: postprocess writes them, client, export, eval and
train read them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from streamseg.wire.fields import (
    MAX_COORD,
    MAX_NAME,
    ProtocolError,
    exact_keys,
    finite,
    integer,
    text,
)

_INSTANCE_KEYS = frozenset({"label", "label_name", "score", "box", "rle", "track_id"})
_INSTANCE_KEYS_V1 = _INSTANCE_KEYS - {"track_id"}  # results files written before tracking


@dataclass(frozen=True)
class Instance:
    """One detected instance: a record of Result.instances, of a results-file line and of a
    published result (docs/results-format.md). Built here and validated here, nowhere else.

    box: (x1, y1, x2, y2), frame pixels. rle: COCO compressed RLE {"size": [h, w], "counts": str}
    of the full-frame mask.
    """

    label: int
    label_name: str
    score: float
    box: tuple[float, float, float, float]
    rle: dict[str, Any]
    track_id: int | None = None
    """The object's id in its stream (>= 1, kept while it stays in view); None: not tracked."""

    def to_json(self) -> dict[str, Any]:
        """The record as it is written and sent (score to 5 decimals, box to 2)."""
        return {
            "label": self.label,
            "label_name": self.label_name,
            "score": round(self.score, 5),
            "box": [round(v, 2) for v in self.box],
            "rle": self.rle,
            "track_id": self.track_id,
        }

    @classmethod
    def from_json(cls, raw: Any, height: int, width: int) -> Instance:
        """The instance in a decoded record of a `height` x `width` frame; ProtocolError for
        anything else (missing or unknown keys included)."""
        if not isinstance(raw, dict):
            raise ProtocolError("instance is not an object")
        exact_keys(raw, _INSTANCE_KEYS if "track_id" in raw else _INSTANCE_KEYS_V1, "instance")
        track_id = raw.get("track_id")
        if track_id is not None:
            track_id = integer(track_id, "instance track_id", lo=1)
        box = raw["box"]
        if not isinstance(box, list) or len(box) != 4:
            raise ProtocolError("instance box is not [x1, y1, x2, y2]")
        rle = raw["rle"]
        if (
            not isinstance(rle, dict)
            or rle.keys() != {"size", "counts"}
            or not _is_size(rle["size"], height, width)
            or not isinstance(rle["counts"], str)
            or not rle["counts"].isascii()
        ):
            raise ProtocolError("instance rle is not {size: [height, width], counts: str}")
        x1, y1, x2, y2 = (finite(v, "instance box", lo=-MAX_COORD, hi=MAX_COORD) for v in box)
        return cls(
            label=integer(raw["label"], "instance label"),
            label_name=text(raw["label_name"], "instance label_name", max_len=MAX_NAME),
            score=finite(raw["score"], "instance score", lo=0.0, hi=1.0),
            box=(x1, y1, x2, y2),
            rle={"size": [height, width], "counts": rle["counts"]},
            track_id=track_id,
        )

    def mask(self) -> np.ndarray:
        """The instance's mask: bool[H, W], True inside (decoded from the RLE now)."""
        import pycocotools.mask as mask_utils

        rle = {"size": list(self.rle["size"]), "counts": self.rle["counts"].encode()}
        return mask_utils.decode(rle).astype(bool)


def _is_size(size: Any, height: int, width: int) -> bool:
    return (
        isinstance(size, list)
        and len(size) == 2
        and all(type(n) is int for n in size)
        and size == [height, width]
    )


@dataclass(frozen=True)
class Result:
    """A frame's final instances, as in a results-file line (see docs/results-format.md).

    instances: [Instance.to_json() records]: {"label", "label_name", "score",
               "box": [x1, y1, x2, y2], "rle": {"size": [h, w], "counts": str}}
    """

    stream: str
    frame: int
    pts: float
    wall_time: float
    width: int
    height: int
    instances: list[dict[str, Any]] = field(default_factory=list)
    seq: int = 0
    """Publish sequence number per stream (0, 1, ...): a gap means a subscriber missed results."""

    def to_json(self) -> dict[str, Any]:
        """The results-file record for this frame."""
        return {
            "stream": self.stream,
            "frame": self.frame,
            "pts": self.pts,
            "width": self.width,
            "height": self.height,
            "instances": self.instances,
        }
