"""The wire protocol: every message that crosses a ZeroMQ socket is defined and encoded here.

A message is a list of frames (ZeroMQ multipart):

    [header, *buffers]

`header` is UTF-8 JSON: {"v": PROTOCOL_VERSION, "type": <kind>, ...fields, "arrays": [...]},
where "arrays" lists, in order, the name, dtype and shape of each raw buffer that follows.
Arrays travel as their raw bytes (C order), so the sender hands numpy's memory to ZeroMQ without a
copy and the receiver wraps the received frame with `np.frombuffer`, again without a copy.
Nothing is ever pickled. Published results (to subscribers) add a topic frame in front:

    [topic (stream id, UTF-8), header, *buffers]

`decode` checks everything it is given and raises ProtocolError for anything malformed or
foreign; stages count and log those and carry on. docs/protocol.md documents this for
subscribers written in other languages.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

PROTOCOL_VERSION = 1

# The dtypes a buffer may carry; anything else is refused (no object arrays, ever).
_DTYPES = {"uint8", "int32", "int64", "float16", "float32", "float64", "bool"}
_MAX_HEADER = 1 << 20


class ProtocolError(ValueError):
    """A message that is not a valid streamseg message of this protocol version."""


@dataclass(frozen=True)
class StreamStart:
    """A source opened a stream (again, after a reconnect: `reconnects` > 0)."""

    stream: str
    width: int
    height: int
    fps: float
    """Nominal frame rate of the source (frames per second)."""
    frames: int | None = None
    """Number of frames, when the container says (files)."""
    source: str = ""
    live: bool = False
    reconnects: int = 0


@dataclass(frozen=True)
class Frame:
    """A decoded frame.

    image: uint8[H, W, 3], RGB.
    """

    stream: str
    frame: int
    """0-based index in decode order (in live streams: counted since the stream first started)."""
    pts: float
    """Presentation time, seconds."""
    wall_time: float
    """Capture time (time.time() when the source had decoded it), seconds since the epoch."""
    image: np.ndarray


@dataclass(frozen=True)
class Detections:
    """A frame's compact model output (what inference sends to postprocess).

    boxes:  float32[N, 4], xyxy, frame pixels.
    scores: float32[N], in [0, 1], descending.
    labels: int64[N], label ids (0 is background, never present).
    masks:  float32[N, M, M], the mask head's probabilities (M = 28 for torchvision).
    image:  uint8[H, W, 3] RGB, only when a downstream stage renders; else None.
    """

    stream: str
    frame: int
    pts: float
    wall_time: float
    width: int
    height: int
    boxes: np.ndarray
    scores: np.ndarray
    labels: np.ndarray
    masks: np.ndarray
    image: np.ndarray | None = None
    infer_ms: float = 0.0
    """Model time of the batch this frame was in, milliseconds."""
    batch: int = 1


@dataclass(frozen=True)
class EndOfStream:
    """No more frames from `stream`: `frames` were sent in all; `error` says why it ended early."""

    stream: str
    frames: int
    error: str = ""
    lost: bool = False
    """True when the source knows frames were lost (truncated file, stream gone for good)."""


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

    def to_json(self) -> dict[str, Any]:
        """The record as it is written and sent (score to 5 decimals, box to 2)."""
        return {
            "label": self.label,
            "label_name": self.label_name,
            "score": round(self.score, 5),
            "box": [round(v, 2) for v in self.box],
            "rle": self.rle,
        }

    @classmethod
    def from_json(cls, raw: Any, height: int, width: int) -> Instance:
        """The instance in a decoded record of a `height` x `width` frame; ProtocolError for
        anything else."""
        if not isinstance(raw, dict):
            raise ProtocolError("instance is not an object")
        box = raw.get("box")
        if not isinstance(box, list) or len(box) != 4:
            raise ProtocolError("instance box is not [x1, y1, x2, y2]")
        rle = raw.get("rle")
        if (
            not isinstance(rle, dict)
            or rle.get("size") != [height, width]
            or not isinstance(rle.get("counts"), str)
        ):
            raise ProtocolError("instance rle is not {size: [height, width], counts: str}")
        label_name = raw.get("label_name")
        if not isinstance(label_name, str):
            raise ProtocolError("instance label_name is not a string")
        x1, y1, x2, y2 = (check_number(v, "box coordinate") for v in box)
        return cls(
            label=check_int(raw.get("label"), "label"),
            label_name=label_name,
            score=check_number(raw.get("score"), "score"),
            box=(x1, y1, x2, y2),
            rle={"size": [height, width], "counts": rle["counts"]},
        )

    def mask(self) -> np.ndarray:
        """The instance's mask: bool[H, W], True inside (decoded from the RLE now)."""
        import pycocotools.mask as mask_utils

        rle = {"size": list(self.rle["size"]), "counts": self.rle["counts"].encode()}
        return mask_utils.decode(rle).astype(bool)


def check_number(value: Any, what: str) -> float:
    """`value` as a float; ProtocolError naming `what` unless it is a JSON number."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ProtocolError(f"{what} is not a number")
    return float(value)


def check_int(value: Any, what: str) -> int:
    """`value` as an int; ProtocolError naming `what` unless it is a JSON integer."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ProtocolError(f"{what} is not an integer")
    return value


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


@dataclass(frozen=True)
class Stats:
    """A stage's counters, sent to the runner every few seconds and when the stage ends.

    counters: {stream: {"in": n, "out": n, "dropped": {reason: n}, ...}}; busy_s: seconds of work.
    """

    stage: str
    counters: dict[str, Any]
    busy_s: float = 0.0
    final: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


Message = StreamStart | Frame | Detections | EndOfStream | Result | Stats

_ARRAY_FIELDS: dict[type, tuple[str, ...]] = {
    Frame: ("image",),
    Detections: ("boxes", "scores", "labels", "masks", "image"),
}
_TYPES: dict[str, type] = {
    "start": StreamStart,
    "frame": Frame,
    "detections": Detections,
    "eos": EndOfStream,
    "result": Result,
    "stats": Stats,
}
_NAMES = {cls: name for name, cls in _TYPES.items()}


def encode(msg: Message) -> list[Any]:
    """Frames for `msg`: [header bytes, *array buffers]. Arrays are not copied when C-contiguous."""
    cls = type(msg)
    arrays_meta: list[dict[str, Any]] = []
    buffers: list[Any] = []
    header: dict[str, Any] = {"v": PROTOCOL_VERSION, "type": _NAMES[cls]}
    array_fields = _ARRAY_FIELDS.get(cls, ())
    for name, value in msg.__dict__.items():
        if name in array_fields:
            if value is None:
                continue
            arr = np.ascontiguousarray(value)
            arrays_meta.append({"name": name, "dtype": arr.dtype.name, "shape": list(arr.shape)})
            buffers.append(arr.data if arr.size else b"")
        else:
            header[name] = value
    if arrays_meta:
        header["arrays"] = arrays_meta
    return [json.dumps(header, separators=(",", ":")).encode(), *buffers]


def encode_published(result: Result) -> list[Any]:
    """A result for subscribers: [topic (stream id), header, *buffers]; see docs/protocol.md."""
    header = {"v": PROTOCOL_VERSION, "version": PROTOCOL_VERSION, "type": "result"}
    header.update(result.__dict__)
    return [result.stream.encode(), json.dumps(header, separators=(",", ":")).encode()]


def _header(raw: Any) -> dict[str, Any]:
    data = bytes(raw)
    if len(data) > _MAX_HEADER:
        raise ProtocolError(f"header of {len(data)} bytes is too large")
    try:
        header = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise ProtocolError("header is not UTF-8 JSON") from None
    if not isinstance(header, dict):
        raise ProtocolError("header is not a JSON object")
    if header.get("v") != PROTOCOL_VERSION:
        raise ProtocolError(f"protocol version {header.get('v')!r}, expected {PROTOCOL_VERSION}")
    return header


def decode(parts: Sequence[Any]) -> Message:
    """The message in `parts` (bytes, memoryviews or zmq.Frame objects).

    Arrays wrap the received buffers without copying (read-only). Raises ProtocolError for
    anything that is not a well-formed message of this version.
    """
    if not parts:
        raise ProtocolError("empty message")
    header = _header(_as_buffer(parts[0]))
    cls = _TYPES.get(header.pop("type", None))  # type: ignore[arg-type]
    header.pop("v", None)
    header.pop("version", None)
    if cls is None:
        raise ProtocolError("unknown message type")
    meta = header.pop("arrays", [])
    if not isinstance(meta, list) or len(meta) != len(parts) - 1:
        raise ProtocolError(f"header lists {len(meta)} arrays, message has {len(parts) - 1}")
    allowed = _ARRAY_FIELDS.get(cls, ())
    for spec, part in zip(meta, parts[1:], strict=True):
        header[_check_array_name(spec, allowed)] = _array(spec, _as_buffer(part))
    try:
        return cls(**header)
    except TypeError as e:
        raise ProtocolError(f"bad fields for {cls.__name__}: {e}") from None


def _check_array_name(spec: Any, allowed: tuple[str, ...]) -> str:
    if not isinstance(spec, dict) or spec.get("name") not in allowed:
        raise ProtocolError(f"unexpected array {spec!r}")
    return str(spec["name"])


def _array(spec: dict[str, Any], buf: memoryview) -> np.ndarray:
    dtype, shape = spec.get("dtype"), spec.get("shape")
    if dtype not in _DTYPES:
        raise ProtocolError(f"dtype {dtype!r} not allowed")
    if not isinstance(shape, list) or not all(isinstance(n, int) and n >= 0 for n in shape):
        raise ProtocolError(f"bad shape {shape!r}")
    dt = np.dtype(dtype)
    expected = int(np.prod(shape, dtype=np.int64)) * dt.itemsize
    if buf.nbytes != expected:
        raise ProtocolError(
            f"array of shape {shape} {dtype} needs {expected} bytes, got {buf.nbytes}"
        )
    if expected == 0:
        return np.zeros(shape, dtype=dt)
    return np.frombuffer(buf, dtype=dt).reshape(shape)


def _as_buffer(part: Any) -> memoryview:
    buf = getattr(part, "buffer", part)  # zmq.Frame exposes .buffer; bytes/memoryview as is
    return memoryview(buf).cast("B") if not isinstance(buf, bytes) else memoryview(buf)


def decode_published(parts: Sequence[Any]) -> Result:
    """A published result from [topic, header, *buffers]; the topic must match the stream."""
    if len(parts) < 2:
        raise ProtocolError("published message needs [topic, header, ...]")
    msg = decode(parts[1:])
    if not isinstance(msg, Result):
        raise ProtocolError(f"published message is a {type(msg).__name__}, not a Result")
    if bytes(_as_buffer(parts[0])).decode("utf-8", "replace") != msg.stream:
        raise ProtocolError("topic does not match the result's stream")
    return msg
