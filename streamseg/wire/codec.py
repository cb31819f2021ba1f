"""The wire codec: every message that crosses a ZeroMQ socket is encoded and decoded here.

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
contents are valid (wire.validation) or raises ProtocolError, and it never allocates
more than a small multiple of the message's own size. Stages count and log rejected messages and
carry on. docs/protocol.md documents this for subscribers written in other languages.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from streamseg.wire.fields import MAX_AUTH, MAX_INT, ProtocolError, exact_keys, show
from streamseg.wire.messages import (
    PROTOCOL_VERSION,
    Assign,
    Credit,
    Detections,
    EndOfStream,
    Frame,
    Message,
    Stats,
    StreamStart,
)
from streamseg.wire.results import Result
from streamseg.wire.validation import check_contents

# The dtypes a buffer may carry; anything else is refused (no object arrays, ever).
_DTYPES = frozenset({"uint8", "int32", "int64", "float16", "float32", "float64", "bool"})
_MAX_HEADER = 1 << 20
"""Header bytes. The largest real headers are Results with many instances (tens of KiB)."""
_MAX_DEPTH = 16
"""JSON nesting of a header. Real ones nest 4 deep (Stats counters, Result instances)."""
_MAX_CONTAINERS = 1 << 15
"""JSON arrays and objects in a header (a Result has 4 per instance): bounds parsing memory."""
_MAX_RANK = 4

_ARRAY_FIELDS: dict[type, tuple[str, ...]] = {
    Frame: ("image",),
    Detections: ("boxes", "scores", "labels", "masks", "image", "colors"),
}
_OPTIONAL_ARRAYS: dict[type, tuple[str, ...]] = {Detections: ("image", "colors")}
_OPTIONAL_FIELDS: dict[type, dict[str, Any]] = {
    # prev: senders from before several workers; Stats: control fields typed after extra
    Frame: {"prev": -1},
    Detections: {"prev": -1},
    EndOfStream: {"prev": -1},
    Stats: {"name": "", "ready": False, "ended": False, "heartbeat": False, "busy": False},
}
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
    if len(auth) > MAX_AUTH:
        raise ValueError(f"auth of {len(auth)} characters: at most {MAX_AUTH}")
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
    parts = as_frames(parts)
    if len(parts) < 2:
        raise ProtocolError("published message needs [topic, header, ...]")
    msg, _ = _decode(parts[1:], published=True)
    assert isinstance(msg, Result)  # _decode checked the type
    if as_buffer(parts[0]) != msg.stream.encode():
        raise ProtocolError("topic does not match the result's stream")
    return msg


def as_frames(parts: Any) -> list[Any]:
    """`parts` as a list of frames; ProtocolError for a single buffer or a non-sequence."""
    if isinstance(parts, bytes | bytearray | memoryview | str):
        raise ProtocolError("message is one buffer, not a list of frames")
    try:
        return list(parts)
    except TypeError:
        raise ProtocolError("message is not a sequence of frames") from None


def _decode(parts: Sequence[Any], *, published: bool) -> tuple[Message, str]:
    parts = as_frames(parts)
    n = len(parts)
    if n == 0:
        raise ProtocolError("empty message")
    header = parse_header(as_buffer(parts[0]))
    check_version(header, "v")
    if published:
        check_version(header, "version")
    auth = "" if published else header.pop("auth", "")
    if not isinstance(auth, str) or len(auth) > MAX_AUTH:
        raise ProtocolError(f"auth must be a string of at most {MAX_AUTH} characters")
    kind = header.pop("type", None)
    if not isinstance(kind, str) or kind not in _TYPES:
        raise ProtocolError(f"unknown message type {show(kind)}")
    cls = _TYPES[kind]
    if published and cls is not Result:
        raise ProtocolError(f"published message is a {cls.__name__}, not a Result")
    meta = header.pop("arrays", []) if cls in _ARRAY_FIELDS else []
    if not isinstance(meta, list) or len(meta) != n - 1:
        count = len(meta) if isinstance(meta, list) else show(meta)
        raise ProtocolError(f"header lists {count} arrays, message has {n - 1}")
    for key, default in _OPTIONAL_FIELDS.get(cls, {}).items():
        header.setdefault(key, default)  # fields added within version 2: absent is the default
    exact_keys(header, _SCALAR_FIELDS[cls], cls.__name__)
    arrays = {name: None for name in _OPTIONAL_ARRAYS.get(cls, ())}
    for i, spec in enumerate(meta):
        name, arr = _array(spec, as_buffer(parts[i + 1]), _ARRAY_FIELDS[cls], arrays)
        arrays[name] = arr
    missing = [a for a in _ARRAY_FIELDS.get(cls, ()) if a not in arrays]
    if missing:
        raise ProtocolError(f"{cls.__name__} misses array(s) {', '.join(missing)}")
    try:
        fields = check_contents(cls, {**header, **arrays})
    except ProtocolError as e:
        raise ProtocolError(f"{cls.__name__}: {e}") from None
    return cls(**fields), auth


def check_version(header: dict[str, Any], key: str) -> None:
    v = header.pop(key, None)
    if type(v) is not int or v != PROTOCOL_VERSION:
        raise ProtocolError(f"protocol version {show(v)}, expected {PROTOCOL_VERSION}")


def as_buffer(part: Any) -> memoryview:
    """The bytes of one frame, without a copy."""
    buf = getattr(part, "buffer", part)  # zmq.Frame exposes .buffer; bytes/memoryview as is
    try:
        view = memoryview(buf)
        return view if view.format == "B" and view.ndim == 1 else view.cast("B")
    except (TypeError, ValueError):
        raise ProtocolError(f"message frame is a {type(part).__name__}, not a buffer") from None


def parse_header(buf: memoryview) -> dict[str, Any]:
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
        raise ProtocolError(f"array entry {show(spec)} is not {{name, dtype, shape}}")
    name, dtype, shape = spec["name"], spec["dtype"], spec["shape"]
    if not isinstance(name, str) or name not in allowed or seen.get(name) is not None:
        raise ProtocolError(f"unexpected array {show(name)}")
    if not isinstance(dtype, str) or dtype not in _DTYPES:
        raise ProtocolError(f"array {name}: dtype {show(dtype)} not allowed")
    if (
        not isinstance(shape, list)
        or len(shape) > _MAX_RANK
        or not all(type(d) is int and d >= 0 for d in shape)
    ):
        raise ProtocolError(f"array {name}: bad shape {show(shape)}")
    dt = np.dtype(dtype)
    # numpy refuses shapes whose non-zero dimensions span more than it can address, even for
    # zero-size arrays; Python integers here, so nothing overflows on the way.
    if math.prod(max(d, 1) for d in shape) * dt.itemsize > MAX_INT:
        raise ProtocolError(f"array {name}: bad shape {show(shape)}, larger than any message")
    expected = math.prod(shape) * dt.itemsize
    if buf.nbytes != expected:
        raise ProtocolError(
            f"array {name} of shape {shape} {dtype} needs {expected} bytes, got {buf.nbytes}"
        )
    if expected == 0:
        return name, np.empty(shape, dtype=dt)
    return name, np.frombuffer(buf, dtype=dt).reshape(shape)


# --- decoding: the contents of each message type --------------------------------------------------
