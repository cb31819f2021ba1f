"""The wire protocol: every message that crosses a ZeroMQ socket is defined and encoded here.

A message is a list of frames (ZeroMQ multipart):

    [header, *buffers]

`header` is UTF-8 JSON: {"v": PROTOCOL_VERSION, "type": <kind>, ...fields, "arrays": [...]},
where "arrays" lists, in order, the name, dtype and shape of each raw buffer that follows.
Arrays travel as their raw bytes (C order), so the sender hands numpy's memory to ZeroMQ without a
copy and the receiver wraps the received frame with `np.frombuffer`, again without a copy.
Nothing is ever pickled. Between stages the header may carry "auth", a string by which the sender
says which stage it is (`encode(msg, auth=...)`, `decode_envelope`). Published results (to
subscribers) carry no auth and add a topic frame in front:

    [topic (stream id, UTF-8), header, *buffers]

Every decoder trusts nothing it is given: for any input it returns a message whose envelope and
contents are valid (the per-type checks below) or raises ProtocolError, and it never allocates
more than a small multiple of the message's own size. Stages count and log rejected messages and
carry on. docs/protocol.md documents this for subscribers written in other languages.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from streamseg.wire.fields import MAX_AUTH as _MAX_AUTH
from streamseg.wire.fields import MAX_COORD as _MAX_COORD
from streamseg.wire.fields import MAX_INT as _MAX_INT
from streamseg.wire.fields import MAX_SIDE as _MAX_SIDE
from streamseg.wire.fields import (
    ProtocolError,
    check_int,
    check_name,
    check_number,
)
from streamseg.wire.fields import any_float as _any_float
from streamseg.wire.fields import boolean as _bool
from streamseg.wire.fields import exact_keys as _exact_keys
from streamseg.wire.fields import fail as _fail
from streamseg.wire.fields import finite as _float
from streamseg.wire.fields import integer as _int
from streamseg.wire.fields import optional_int as _optional_int
from streamseg.wire.fields import show as _show
from streamseg.wire.fields import side as _side
from streamseg.wire.fields import text as _text
from streamseg.wire.results import Instance, Result

__all__ = ["Instance", "ProtocolError", "Result", "check_int", "check_name", "check_number"]

PROTOCOL_VERSION = 2
"""2: instances carry "track_id" (docs/protocol.md says what readers of version 1 see)."""

# The dtypes a buffer may carry; anything else is refused (no object arrays, ever).
_DTYPES = frozenset({"uint8", "int32", "int64", "float16", "float32", "float64", "bool"})
_MAX_HEADER = 1 << 20
"""Header bytes. The largest real headers are Results with many instances (tens of KiB)."""
_MAX_DEPTH = 16
"""JSON nesting of a header. Real ones nest 4 deep (Stats counters, Result instances)."""
_MAX_CONTAINERS = 1 << 15
"""JSON arrays and objects in a header (a Result has 4 per instance): bounds parsing memory."""
_MAX_RANK = 4
_MIN_FPS, _MAX_FPS = 1e-3, 1e5
"""Nominal frame rate range. Some RTSP cameras report their 90 kHz clock as the rate."""


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
    prev: int = -1
    """The frame of the same stream that the dispatcher handed out just before this one (-1:
    none, or not from a dispatcher). Postprocess restores order by it (postprocess.reorder).
    Optional on the wire: absent means -1."""


@dataclass(frozen=True)
class Detections:
    """A frame's compact model output (what inference sends to postprocess).

    boxes:  float32[N, 4], xyxy, frame pixels.
    scores: float32[N], in [0, 1], descending.
    labels: int64[N], label ids (0 is background, never present).
    masks:  float32[N, M, M], the mask head's probabilities (M = 28 for torchvision).
    image:  uint8[H, W, 3] RGB, only when a downstream stage renders; else None.
    colors: float32[N, 3], each instance's colour (inference.colors; NaN: unknown), for the
            tracker; None: not measured.
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
    prev: int = -1
    """The frame's `Frame.prev` (optional on the wire: absent means -1)."""
    colors: np.ndarray | None = None


@dataclass(frozen=True)
class EndOfStream:
    """No more frames from `stream`: `frames` were sent in all; `error` says why it ended early."""

    stream: str
    frames: int
    error: str = ""
    lost: bool = False
    """True when the source knows frames were lost (truncated file, stream gone for good)."""


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


@dataclass(frozen=True)
class Credit:
    """An inference worker to the dispatcher: ready for a batch of up to `frames` frames (the
    results of its last batch are sent); 0: a heartbeat, it is alive and busy."""

    worker: str
    frames: int
    done: int = 0
    """The last batch it finished (Assign.batch; 0: none yet): a credit sent again while an
    Assign was on its way (an idle worker repeats its credit, for a restarted dispatcher) is
    told from one that says the batch is done."""


@dataclass(frozen=True)
class Assign:
    """The dispatcher to an inference worker: the next `frames` messages are the Frames of its
    next batch, `batch` its id; frames 0: there is no more work, exit."""

    frames: int
    batch: int = 0


Message = StreamStart | Frame | Detections | EndOfStream | Result | Stats | Credit | Assign

_ARRAY_FIELDS: dict[type, tuple[str, ...]] = {
    Frame: ("image",),
    Detections: ("boxes", "scores", "labels", "masks", "image", "colors"),
}
_OPTIONAL_ARRAYS: dict[type, tuple[str, ...]] = {Detections: ("image", "colors")}
_OPTIONAL_PREV = (Frame, Detections)
_TYPES: dict[str, type] = {
    "start": StreamStart,
    "frame": Frame,
    "detections": Detections,
    "eos": EndOfStream,
    "result": Result,
    "stats": Stats,
    "credit": Credit,
    "assign": Assign,
}
_NAMES = {cls: name for name, cls in _TYPES.items()}
_SCALAR_FIELDS: dict[type, frozenset[str]] = {
    cls: frozenset(f.name for f in dataclasses.fields(cls)) - set(_ARRAY_FIELDS.get(cls, ()))
    for cls in _TYPES.values()
}


# --- encoding -------------------------------------------------------------------------------------


def encode(msg: Message, *, auth: str = "") -> list[Any]:
    """Frames for `msg`: [header bytes, *array buffers]. Arrays are not copied when C-contiguous.

    auth: the sending stage's credential, carried in the header when not empty (at most 128
    characters); the receiver reads it with `decode_envelope`.
    """
    if len(auth) > _MAX_AUTH:
        raise ValueError(f"auth of {len(auth)} characters: at most {_MAX_AUTH}")
    cls = type(msg)
    arrays_meta: list[dict[str, Any]] = []
    buffers: list[Any] = []
    header: dict[str, Any] = {"v": PROTOCOL_VERSION, "type": _NAMES[cls]}
    if auth:
        header["auth"] = auth
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


# --- decoding: the envelope -----------------------------------------------------------------------


def decode(parts: Sequence[Any]) -> Message:
    """The message in `parts` (bytes, memoryviews or zmq.Frame objects).

    Arrays wrap the received buffers without copying. Raises ProtocolError, and nothing else, for
    anything that is not a valid message of this version, in envelope or in content.
    """
    return _decode(parts, published=False)[0]


def decode_envelope(parts: Sequence[Any]) -> tuple[Message, str]:
    """The message in `parts` and the sender's auth string ("" when it sent none); as `decode`."""
    return _decode(parts, published=False)


def decode_published(parts: Sequence[Any]) -> Result:
    """A published result from [topic, header, *buffers]; the topic must match the stream."""
    parts = _frames(parts)
    if len(parts) < 2:
        raise ProtocolError("published message needs [topic, header, ...]")
    msg, _ = _decode(parts[1:], published=True)
    assert isinstance(msg, Result)  # _decode checked the type
    if _as_buffer(parts[0]) != msg.stream.encode():
        raise ProtocolError("topic does not match the result's stream")
    return msg


def _frames(parts: Any) -> list[Any]:
    """`parts` as a list of frames; ProtocolError for a single buffer or a non-sequence."""
    if isinstance(parts, bytes | bytearray | memoryview | str):
        raise ProtocolError("message is one buffer, not a list of frames")
    try:
        return list(parts)
    except TypeError:
        raise ProtocolError("message is not a sequence of frames") from None


def _decode(parts: Sequence[Any], *, published: bool) -> tuple[Message, str]:
    parts = _frames(parts)
    n = len(parts)
    if n == 0:
        raise ProtocolError("empty message")
    header = _header(_as_buffer(parts[0]))
    _check_version(header, "v")
    if published:
        _check_version(header, "version")
    auth = "" if published else header.pop("auth", "")
    if not isinstance(auth, str) or len(auth) > _MAX_AUTH:
        raise ProtocolError(f"auth must be a string of at most {_MAX_AUTH} characters")
    kind = header.pop("type", None)
    if not isinstance(kind, str) or kind not in _TYPES:
        raise ProtocolError(f"unknown message type {_show(kind)}")
    cls = _TYPES[kind]
    if published and cls is not Result:
        raise ProtocolError(f"published message is a {cls.__name__}, not a Result")
    meta = header.pop("arrays", []) if cls in _ARRAY_FIELDS else []
    if not isinstance(meta, list) or len(meta) != n - 1:
        count = len(meta) if isinstance(meta, list) else _show(meta)
        raise ProtocolError(f"header lists {count} arrays, message has {n - 1}")
    if cls in _OPTIONAL_PREV:
        header.setdefault("prev", -1)  # senders of before several workers: same version
    _exact_keys(header, _SCALAR_FIELDS[cls], cls.__name__)
    arrays = {name: None for name in _OPTIONAL_ARRAYS.get(cls, ())}
    for i, spec in enumerate(meta):
        name, arr = _array(spec, _as_buffer(parts[i + 1]), _ARRAY_FIELDS[cls], arrays)
        arrays[name] = arr
    missing = [a for a in _ARRAY_FIELDS.get(cls, ()) if a not in arrays]
    if missing:
        raise ProtocolError(f"{cls.__name__} misses array(s) {', '.join(missing)}")
    try:
        fields = _CHECKS[cls]({**header, **arrays})
    except ProtocolError as e:
        raise ProtocolError(f"{cls.__name__}: {e}") from None
    return cls(**fields), auth


def _check_version(header: dict[str, Any], key: str) -> None:
    v = header.pop(key, None)
    if type(v) is not int or v != PROTOCOL_VERSION:
        raise ProtocolError(f"protocol version {_show(v)}, expected {PROTOCOL_VERSION}")


def _as_buffer(part: Any) -> memoryview:
    """The bytes of one frame, without a copy."""
    buf = getattr(part, "buffer", part)  # zmq.Frame exposes .buffer; bytes/memoryview as is
    try:
        view = memoryview(buf)
        return view if view.format == "B" and view.ndim == 1 else view.cast("B")
    except (TypeError, ValueError):
        raise ProtocolError(f"message frame is a {type(part).__name__}, not a buffer") from None


def _header(buf: memoryview) -> dict[str, Any]:
    if buf.nbytes > _MAX_HEADER:
        raise ProtocolError(f"header of {buf.nbytes} bytes is larger than {_MAX_HEADER}")
    data = bytes(buf)
    depth, containers = _json_shape(data)
    if depth > _MAX_DEPTH:
        raise ProtocolError(f"header nests {depth} deep, more than {_MAX_DEPTH}")
    if containers > _MAX_CONTAINERS:
        raise ProtocolError(
            f"header holds {containers} arrays and objects, more than {_MAX_CONTAINERS}"
        )
    try:
        header = json.loads(data.decode("utf-8"))
    except (ValueError, RecursionError):  # ValueError: bad UTF-8, bad JSON, a 5000-digit int
        raise ProtocolError("header is not UTF-8 JSON") from None
    if not isinstance(header, dict):
        raise ProtocolError("header is not a JSON object")
    return header


def _json_shape(data: bytes) -> tuple[int, int]:
    """(deepest nesting, number) of the JSON arrays and objects in `data`, brackets inside
    strings not counted; found without parsing, so a hostile header never makes the parser
    recurse deeply or build millions of containers.

    Costs one vectorised pass, and only when `data` holds more brackets than _MAX_DEPTH at all.
    """
    openers = data.count(b"[") + data.count(b"{")
    if openers <= _MAX_DEPTH:
        return openers, openers
    # Backslashes occur only inside strings, each escaping the next character: dropping escaped
    # backslashes, then escaped quotes, leaves exactly the quotes that open or close strings.
    plain = np.frombuffer(data.replace(b"\\\\", b"").replace(b'\\"', b""), np.uint8)
    inside = np.logical_xor.accumulate(plain == ord('"'))
    step = ((plain == ord("[")) | (plain == ord("{"))).astype(np.int8)
    step -= (plain == ord("]")) | (plain == ord("}"))
    step[inside] = 0
    return int(np.cumsum(step, dtype=np.int32).max()), int(np.count_nonzero(step == 1))


def _array(
    spec: Any, buf: memoryview, allowed: tuple[str, ...], seen: dict[str, Any]
) -> tuple[str, np.ndarray]:
    """(field name, array) for one buffer and its header entry; sizes are checked before any
    allocation, in Python integers (no overflow)."""
    if not isinstance(spec, dict) or spec.keys() != {"name", "dtype", "shape"}:
        raise ProtocolError(f"array entry {_show(spec)} is not {{name, dtype, shape}}")
    name, dtype, shape = spec["name"], spec["dtype"], spec["shape"]
    if not isinstance(name, str) or name not in allowed or seen.get(name) is not None:
        raise ProtocolError(f"unexpected array {_show(name)}")
    if not isinstance(dtype, str) or dtype not in _DTYPES:
        raise ProtocolError(f"array {name}: dtype {_show(dtype)} not allowed")
    if (
        not isinstance(shape, list)
        or len(shape) > _MAX_RANK
        or not all(type(d) is int and d >= 0 for d in shape)
    ):
        raise ProtocolError(f"array {name}: bad shape {_show(shape)}")
    dt = np.dtype(dtype)
    # numpy refuses shapes whose non-zero dimensions span more than it can address, even for
    # zero-size arrays; Python integers here, so nothing overflows on the way.
    if math.prod(max(d, 1) for d in shape) * dt.itemsize > _MAX_INT:
        raise ProtocolError(f"array {name}: bad shape {_show(shape)}, larger than any message")
    expected = math.prod(shape) * dt.itemsize
    if buf.nbytes != expected:
        raise ProtocolError(
            f"array {name} of shape {shape} {dtype} needs {expected} bytes, got {buf.nbytes}"
        )
    if expected == 0:
        return name, np.empty(shape, dtype=dt)
    return name, np.frombuffer(buf, dtype=dt).reshape(shape)


# --- decoding: the contents of each message type --------------------------------------------------


def _shaped(value: Any, what: str, dtype: str, shape: tuple[int | None, ...]) -> np.ndarray:
    """`value` if it is an array of `dtype` and `shape` (None: any length)."""
    if (
        not isinstance(value, np.ndarray)
        or value.dtype != np.dtype(dtype)
        or value.ndim != len(shape)
        or any(s is not None and s != d for s, d in zip(shape, value.shape, strict=True))
    ):
        dims = ", ".join("*" if s is None else str(s) for s in shape)
        _fail(what, f"{dtype}[{dims}]", value)
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
    if not (0 < img.shape[0] <= _MAX_SIDE and 0 < img.shape[1] <= _MAX_SIDE):
        _fail(what, f"uint8[H, W, 3] with 1 <= H, W <= {_MAX_SIDE}", img)
    return img


def _check_start(f: dict[str, Any]) -> dict[str, Any]:
    return {
        "stream": check_name(f["stream"], "stream"),
        "width": _side(f["width"], "width"),
        "height": _side(f["height"], "height"),
        "fps": _float(f["fps"], "fps", lo=_MIN_FPS, hi=_MAX_FPS),
        "frames": _optional_int(f["frames"], "frames"),
        "source": _text(f["source"], "source"),
        "live": _bool(f["live"], "live"),
        "reconnects": _int(f["reconnects"], "reconnects"),
    }


def _check_frame(f: dict[str, Any]) -> dict[str, Any]:
    return {
        "stream": check_name(f["stream"], "stream"),
        "frame": _int(f["frame"], "frame"),
        "pts": _float(f["pts"], "pts"),
        "wall_time": _float(f["wall_time"], "wall_time"),
        "image": _image(f["image"], "image"),
        "prev": _int(f["prev"], "prev", lo=-1),
    }


def _check_detections(f: dict[str, Any]) -> dict[str, Any]:
    width, height = _side(f["width"], "width"), _side(f["height"], "height")
    boxes = _shaped(f["boxes"], "boxes", "float32", (None, 4))
    n = boxes.shape[0]
    scores = _shaped(f["scores"], "scores", "float32", (n,))
    labels = _shaped(f["labels"], "labels", "int64", (n,))
    masks = _shaped(f["masks"], "masks", "float32", (n, None, None))
    if masks.shape[1] == 0 or masks.shape[1] != masks.shape[2]:
        _fail("masks", f"float32[{n}, M, M] with M > 0", masks)
    _in_range(boxes, "boxes", -_MAX_COORD, _MAX_COORD)
    _in_range(scores, "scores", 0.0, 1.0)
    _in_range(labels, "labels", 0, _MAX_INT)
    _in_range(masks, "masks", -math.inf, math.inf)
    image, colors = f["image"], f["colors"]
    if colors is not None:
        colors = _shaped(colors, "colors", "float32", (n, 3))
        known = colors[~np.isnan(colors)]  # NaN: unknown
        _in_range(known, "colors (NaN aside)", 0.0, 255.0)
    return {
        "stream": check_name(f["stream"], "stream"),
        "frame": _int(f["frame"], "frame"),
        "pts": _float(f["pts"], "pts"),
        "wall_time": _float(f["wall_time"], "wall_time"),
        "width": width,
        "height": height,
        "boxes": boxes,
        "scores": scores,
        "labels": labels,
        "masks": masks,
        "image": None if image is None else _image(image, "image", height, width),
        "infer_ms": _float(f["infer_ms"], "infer_ms", lo=0.0),
        "batch": _int(f["batch"], "batch", lo=1),
        "prev": _int(f["prev"], "prev", lo=-1),
        "colors": colors,
    }


def _check_eos(f: dict[str, Any]) -> dict[str, Any]:
    return {
        "stream": check_name(f["stream"], "stream"),
        "frames": _int(f["frames"], "frames"),
        "error": _text(f["error"], "error"),
        "lost": _bool(f["lost"], "lost"),
    }


def _check_result(f: dict[str, Any]) -> dict[str, Any]:
    width, height = _side(f["width"], "width"), _side(f["height"], "height")
    instances = f["instances"]
    if not isinstance(instances, list):
        _fail("instances", "a list", instances)
    for i, raw in enumerate(instances):
        try:
            Instance.from_json(raw, height, width)
        except ProtocolError as e:
            raise ProtocolError(f"instances[{i}]: {e}") from None
    return {
        "stream": check_name(f["stream"], "stream"),
        "frame": _int(f["frame"], "frame"),
        "pts": _float(f["pts"], "pts"),
        "wall_time": _float(f["wall_time"], "wall_time"),
        "width": width,
        "height": height,
        "instances": instances,
        "seq": _int(f["seq"], "seq"),
    }


def _drops(value: Any, what: str) -> dict[str, int]:
    if not isinstance(value, dict):
        _fail(what, "an object {reason: count}", value)
    for reason, n in value.items():
        _int(n, f"{what}[{check_name(reason, f'{what} reason')!r}]")
    return value


# The typed keys of a stream's counters and of a stage's extra (the runner does arithmetic and
# formatting on them); stages may add other keys, of any JSON value.
_StatCheck = Callable[[Any, str], Any]
_STREAM_STATS: dict[str, _StatCheck] = {
    "in": _int,
    "out": _int,
    "sent": _int,
    "reconnects": _int,
    "expected": _optional_int,
    "dropped": _drops,
    "lost": _bool,
    "ended": _bool,
    "error": _text,
    "state": _text,
    "latency_p50_ms": _any_float,
    "latency_p99_ms": _any_float,
}
_EXTRA_STATS: dict[str, _StatCheck] = {
    "name": _text,
    "heartbeat": _bool,
    "ready": _bool,
    "device": _text,
    "batches": _int,
    "mean_batch": _any_float,
    "rejected": _int,
    "frames_expected": _optional_int,
    "error": _text,
}


def _stat_record(value: Any, what: str, checks: dict[str, _StatCheck]) -> dict[str, Any]:
    if not isinstance(value, dict):
        _fail(what, "an object", value)
    for key, item in value.items():
        check = checks.get(key)
        if check is not None:
            check(item, f"{what}[{key!r}]")
    return value


def _check_stats(f: dict[str, Any]) -> dict[str, Any]:
    counters = f["counters"]
    if not isinstance(counters, dict):
        _fail("counters", "an object {stream: {counter: value}}", counters)
    for stream, record in counters.items():
        _stat_record(record, f"counters[{check_name(stream, 'counters stream')!r}]", _STREAM_STATS)
    return {
        "stage": check_name(f["stage"], "stage"),
        "counters": counters,
        "busy_s": _float(f["busy_s"], "busy_s", lo=0.0),
        "final": _bool(f["final"], "final"),
        "extra": _stat_record(f["extra"], "extra", _EXTRA_STATS),
    }


def _check_credit(f: dict[str, Any]) -> dict[str, Any]:
    return {
        "worker": check_name(f["worker"], "worker"),
        "frames": _int(f["frames"], "frames"),
        "done": _int(f["done"], "done"),
    }


def _check_assign(f: dict[str, Any]) -> dict[str, Any]:
    return {"frames": _int(f["frames"], "frames", hi=4096), "batch": _int(f["batch"], "batch")}


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


# --- previews: postprocess -> supervisor, the live view of --serve --------------------------------

MAX_PREVIEW_BYTES = 16 << 20
"""Largest JPEG a preview may carry."""


@dataclass(frozen=True)
class Preview:
    """One stream's annotated frame as a JPEG, for the live view (`streamseg --serve`).

    Sent as [topic, header, jpeg]: the topic is the stream id and a NUL byte (preview_topic), so
    a subscription to one stream never matches another whose id starts the same way."""

    stream: str
    frame: int
    wall_time: float
    """Capture time (Unix seconds) of the frame."""
    jpeg: bytes


def preview_topic(stream: str) -> bytes:
    return stream.encode() + b"\0"


def encode_preview(p: Preview, *, auth: str = "") -> list[bytes]:
    header = {"v": PROTOCOL_VERSION, "type": "preview", "stream": p.stream, "frame": p.frame}
    header.update(wall_time=p.wall_time, **({"auth": auth} if auth else {}))
    return [preview_topic(p.stream), json.dumps(header).encode(), bytes(p.jpeg)]


def decode_preview(parts: Sequence[Any]) -> tuple[Preview, str]:
    """(preview, the sender's auth) from [topic, header, jpeg]; ProtocolError for anything else."""
    frames = _frames(parts)
    if len(frames) != 3:
        raise ProtocolError(f"a preview has 3 parts, not {len(frames)}")
    topic, head, jpeg = (_as_buffer(f) for f in frames)
    header = _header(head)
    _check_version(header, "v")
    if header.get("type") != "preview":
        _fail("type", '"preview"', header.get("type"))
    keys = {"type", "stream", "frame", "wall_time"} | ({"auth"} & header.keys())
    _exact_keys(header, frozenset(keys), "header")
    stream = check_name(header.get("stream"), "stream")
    if bytes(topic) != preview_topic(stream):
        _fail("topic", "the stream id and a NUL byte", bytes(topic)[:64])
    if not 2 < len(jpeg) <= MAX_PREVIEW_BYTES or bytes(jpeg[:2]) != b"\xff\xd8":
        _fail("jpeg", f"a JPEG of at most {MAX_PREVIEW_BYTES} bytes", bytes(jpeg[:8]))
    auth = _text(header.get("auth", ""), "auth", max_len=_MAX_AUTH)
    preview = Preview(
        stream,
        _int(header.get("frame"), "frame"),
        _float(header.get("wall_time"), "wall_time", lo=0.0),
        bytes(jpeg),
    )
    return preview, auth
