"""What a valid message holds: the content checks of each message type, field by field.

`check_contents(cls, fields)` takes the decoded header fields and arrays of one message and
returns them checked (ProtocolError naming the first bad field otherwise). Nothing here parses
bytes (that is `wire.codec`): a message that reaches these checks has the right fields, and
these say whether their values are valid. The limits are in docs/protocol.md.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NoReturn

import numpy as np

from streamseg.wire.fields import (
    MAX_COORD,
    MAX_INT,
    MAX_SIDE,
    ProtocolError,
    any_float,
    boolean,
    check_name,
    fail,
    finite,
    integer,
    optional_int,
    side,
    text,
)
from streamseg.wire.messages import (
    Assign,
    Credit,
    Detections,
    EndOfStream,
    Frame,
    Stats,
    StreamStart,
)
from streamseg.wire.results import Instance, Result

_MIN_FPS, _MAX_FPS = 1e-3, 1e5
"""Nominal frame rate range. Some RTSP cameras report their 90 kHz clock as the rate."""


def _shaped(value: Any, what: str, dtype: str, shape: tuple[int | None, ...]) -> np.ndarray:
    """`value` if it is an array of `dtype` and `shape` (None: any length)."""
    if (
        not isinstance(value, np.ndarray)
        or value.dtype != np.dtype(dtype)
        or value.ndim != len(shape)
        or any(s is not None and s != d for s, d in zip(shape, value.shape, strict=True))
    ):
        dims = ", ".join("*" if s is None else str(s) for s in shape)
        fail(what, f"{dtype}[{dims}]", value)
    return value


def _in_range(arr: np.ndarray, what: str, lo: float, hi: float) -> None:
    """ProtocolError unless every element is finite and in [lo, hi]. Allocates nothing: min and
    max are one pass each, and NaN propagates through both."""
    if arr.size:
        low, high = float(arr.min()), float(arr.max())
        if not (math.isfinite(low) and math.isfinite(high) and lo <= low and high <= hi):
            raise ProtocolError(f"{what} must be finite and in [{lo:g}, {hi:g}]")


def _image(
    value: Any, what: str, height: int | None = None, width: int | None = None
) -> np.ndarray:
    img = _shaped(value, what, "uint8", (height, width, 3))
    if not (0 < img.shape[0] <= MAX_SIDE and 0 < img.shape[1] <= MAX_SIDE):
        fail(what, f"uint8[H, W, 3] with 1 <= H, W <= {MAX_SIDE}", img)
    return img


def _check_start(f: dict[str, Any]) -> dict[str, Any]:
    return {
        "stream": check_name(f["stream"], "stream"),
        "width": side(f["width"], "width"),
        "height": side(f["height"], "height"),
        "fps": finite(f["fps"], "fps", lo=_MIN_FPS, hi=_MAX_FPS),
        "frames": optional_int(f["frames"], "frames"),
        "source": text(f["source"], "source"),
        "live": boolean(f["live"], "live"),
        "reconnects": integer(f["reconnects"], "reconnects"),
    }


def _stamp(f: dict[str, Any]) -> dict[str, Any]:
    """A frame's stamp, as the source set it: stream, frame number, pts, capture time."""
    return {
        "stream": check_name(f["stream"], "stream"),
        "frame": integer(f["frame"], "frame"),
        "pts": finite(f["pts"], "pts"),
        "wall_time": finite(f["wall_time"], "wall_time"),
    }


def _check_frame(f: dict[str, Any]) -> dict[str, Any]:
    return {
        **_stamp(f),
        "image": _image(f["image"], "image"),
        "prev": integer(f["prev"], "prev", lo=-1),
    }


def _check_detections(f: dict[str, Any]) -> dict[str, Any]:
    width, height = side(f["width"], "width"), side(f["height"], "height")
    boxes = _shaped(f["boxes"], "boxes", "float32", (None, 4))
    n = boxes.shape[0]
    scores = _shaped(f["scores"], "scores", "float32", (n,))
    labels = _shaped(f["labels"], "labels", "int64", (n,))
    masks = _shaped(f["masks"], "masks", "float32", (n, None, None))
    if masks.shape[1] == 0 or masks.shape[1] != masks.shape[2]:
        fail("masks", f"float32[{n}, M, M] with M > 0", masks)
    _in_range(boxes, "boxes", -MAX_COORD, MAX_COORD)
    _in_range(scores, "scores", 0.0, 1.0)
    _in_range(labels, "labels", 0, MAX_INT)
    _in_range(masks, "masks", -math.inf, math.inf)
    image, colors = f["image"], f["colors"]
    if colors is not None:
        colors = _shaped(colors, "colors", "float32", (n, 3))
        known = colors[~np.isnan(colors)]  # NaN: unknown
        _in_range(known, "colors (NaN aside)", 0.0, 255.0)
    return {
        **_stamp(f),
        "width": width,
        "height": height,
        "boxes": boxes,
        "scores": scores,
        "labels": labels,
        "masks": masks,
        "image": None if image is None else _image(image, "image", height, width),
        "infer_ms": finite(f["infer_ms"], "infer_ms", lo=0.0),
        "batch": integer(f["batch"], "batch", lo=1),
        "prev": integer(f["prev"], "prev", lo=-1),
        "colors": colors,
    }


def _check_eos(f: dict[str, Any]) -> dict[str, Any]:
    return {
        "stream": check_name(f["stream"], "stream"),
        "frames": integer(f["frames"], "frames"),
        "error": text(f["error"], "error"),
        "lost": boolean(f["lost"], "lost"),
        "prev": integer(f["prev"], "prev", lo=-1),
    }


def _check_result(f: dict[str, Any]) -> dict[str, Any]:
    width, height = side(f["width"], "width"), side(f["height"], "height")
    instances = f["instances"]
    if not isinstance(instances, list):
        fail("instances", "a list", instances)
    for i, raw in enumerate(instances):
        try:
            Instance.from_json(raw, height, width)
        except ProtocolError as e:
            raise ProtocolError(f"instances[{i}]: {e}") from None
    return {
        **_stamp(f),
        "width": width,
        "height": height,
        "instances": instances,
        "seq": integer(f["seq"], "seq"),
    }


def _drops(value: Any, what: str) -> dict[str, int]:
    if not isinstance(value, dict):
        fail(what, "an object {reason: count}", value)
    for reason, n in value.items():
        integer(n, f"{what}[{check_name(reason, f'{what} reason')!r}]")
    return value


# The typed keys of a stream's counters and of a stage's extra (the runner does arithmetic and
# formatting on them); stages may add other keys, of any JSON value.
_StatCheck = Callable[[Any, str], Any]
_STREAM_STATS: dict[str, _StatCheck] = {
    "in": integer,
    "out": integer,
    "sent": integer,
    "reconnects": integer,
    "expected": optional_int,
    "dropped": _drops,
    "lost": boolean,
    "ended": boolean,
    "error": text,
    "state": text,
    "latency_p50_ms": any_float,
    "latency_p99_ms": any_float,
}


def _control(value: Any, what: str) -> NoReturn:
    """A control field in `extra`: refused, so that one report never says two things."""
    fail(what, "absent (name, ready, ended, heartbeat and busy are fields of Stats)", value)


_EXTRA_STATS: dict[str, _StatCheck] = {
    "name": _control,
    "ready": _control,
    "ended": _control,
    "heartbeat": _control,
    "busy": _control,
    "device": text,
    "batches": integer,
    "mean_batch": any_float,
    "rejected": integer,
    "frames_expected": optional_int,
    "error": text,
}


def _stat_record(value: Any, what: str, checks: dict[str, _StatCheck]) -> dict[str, Any]:
    if not isinstance(value, dict):
        fail(what, "an object", value)
    for key, item in value.items():
        check = checks.get(key)
        if check is not None:
            check(item, f"{what}[{key!r}]")
    return value


def _check_stats(f: dict[str, Any]) -> dict[str, Any]:
    counters = f["counters"]
    if not isinstance(counters, dict):
        fail("counters", "an object {stream: {counter: value}}", counters)
    for stream, record in counters.items():
        _stat_record(record, f"counters[{check_name(stream, 'counters stream')!r}]", _STREAM_STATS)
    return {
        "stage": check_name(f["stage"], "stage"),
        "counters": counters,
        "busy_s": finite(f["busy_s"], "busy_s", lo=0.0),
        "final": boolean(f["final"], "final"),
        "extra": _stat_record(f["extra"], "extra", _EXTRA_STATS),
        "name": text(f["name"], "name"),
        "ready": boolean(f["ready"], "ready"),
        "ended": boolean(f["ended"], "ended"),
        "heartbeat": boolean(f["heartbeat"], "heartbeat"),
        "busy": boolean(f["busy"], "busy"),
    }


def _check_credit(f: dict[str, Any]) -> dict[str, Any]:
    return {
        "worker": check_name(f["worker"], "worker"),
        "frames": integer(f["frames"], "frames"),
        "done": integer(f["done"], "done"),
    }


def _check_assign(f: dict[str, Any]) -> dict[str, Any]:
    return {
        "frames": integer(f["frames"], "frames", hi=4096),
        "batch": integer(f["batch"], "batch"),
    }


_CHECKS: dict[type, Callable[[dict[str, Any]], dict[str, Any]]] = {
    Credit: _check_credit,
    Assign: _check_assign,
    StreamStart: _check_start,
    Frame: _check_frame,
    Detections: _check_detections,
    EndOfStream: _check_eos,
    Result: _check_result,
    Stats: _check_stats,
}


def check_contents(cls: type, fields: dict[str, Any]) -> dict[str, Any]:
    """`fields` (header fields and arrays of one message of type `cls`), checked: each value
    as its type wants it; ProtocolError naming the first field that is not valid."""
    return _CHECKS[cls](fields)
