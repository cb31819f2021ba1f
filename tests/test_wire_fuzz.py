"""Property tests of the wire decoders: whatever arrives, `decode`, `decode_envelope` and
`decode_published` return a valid message or raise ProtocolError (never another exception), and
never allocate more than a small multiple of what arrived.

Three kinds of input: (a) arbitrary bytes and objects, (b) structured adversarial headers (random
JSON in every field, random dtypes and shapes, shapes past int64, deep nesting, huge declared
sizes with tiny buffers), (c) valid messages with one thing changed. Exact per-type cases are in
test_wire_contents.py.
"""

from __future__ import annotations

import dataclasses
import json
import math
import tracemalloc
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streamseg.wire.codec import decode, decode_envelope, decode_published, encode, encode_published
from streamseg.wire.fields import ProtocolError
from streamseg.wire.messages import Detections, EndOfStream, Frame, Stats, StreamStart
from streamseg.wire.results import Result

DECODERS: list[Callable[[Any], Any]] = [decode, decode_envelope, decode_published]
TYPES = {"start": StreamStart, "frame": Frame, "detections": Detections, "eos": EndOfStream,
         "result": Result, "stats": Stats}  # fmt: skip
ARRAY_NAMES = ["image", "boxes", "scores", "labels", "masks"]
DTYPES = ["uint8", "int32", "int64", "float16", "float32", "float64", "bool"]
MAX_HEADER = 1 << 20

# Peak allocation allowed while decoding: JSON parsing builds Python objects worth up to ~20x the
# header's bytes (a list of 1-character non-Latin-1 strings is the worst case); arrays wrap the
# received buffers and cost nothing. The constant covers error messages, tracebacks, wrappers.
FACTOR = 32
SLACK = 64 * 1024

SETTINGS = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def _size(parts: Any) -> int:
    """Bytes of the message's frames (0 for anything that is not a list of buffers)."""
    if not isinstance(parts, list | tuple):
        return 0
    total = 0
    for p in parts:
        try:
            total += memoryview(p).nbytes
        except TypeError:
            pass
    return total


def check_decoders(parts: Any, decoders: list[Callable[[Any], Any]] = DECODERS) -> None:
    """Each decoder on `parts`: a valid message or ProtocolError, within the memory bound; what
    passes encodes and decodes again."""
    limit = FACTOR * _size(parts) + SLACK
    for decoder in decoders:
        tracemalloc.start()  # only around the decoder: tracing hypothesis too is slow
        try:
            out = decoder(parts)
        except ProtocolError:
            out = None
        finally:
            peak = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
        assert peak <= limit, f"{decoder.__name__} allocated {peak} bytes for {_size(parts)}"
        if out is None:
            continue
        if decoder is decode_published:
            assert isinstance(out, Result)
            decode_published(encode_published(out))
        elif decoder is decode_envelope:
            msg, auth = out
            assert isinstance(auth, str) and len(auth) <= 128
            assert type(decode_envelope(_bytes(encode(msg, auth=auth)))[0]) is type(msg)
        else:
            assert type(decode(_bytes(encode(out)))) is type(out)


def _bytes(parts: list[Any]) -> list[bytes]:
    return [bytes(p) for p in parts]


def _dumps(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


# --- strategies -----------------------------------------------------------------------------------

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from([0, 1, -1, 2**31, 2**32, 2**63 - 1, 2**63, 2**64, 10**400, 16385]),
    st.floats(),  # NaN and infinities too: Python's JSON writes and reads them
    st.text(max_size=12),
    st.sampled_from(["", "/", "..", "\ud800", "a\nb", "x" * 300]),
)
json_values = st.recursive(
    scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=6,
)
shapes = st.one_of(
    st.lists(
        st.integers(0, 6) | st.sampled_from([2**31 - 1, 2**32, 2**62, 2**63, 2**64, -1, True, 3.0]),
        max_size=5,
    ),
    json_values,
)
array_specs = st.one_of(
    st.fixed_dictionaries(
        {
            "name": st.sampled_from(ARRAY_NAMES) | json_values,
            "dtype": st.sampled_from([*DTYPES, "object", "<f4", "float128", "U8"]) | json_values,
            "shape": shapes,
        },
        optional={"extra": json_values},
    ),
    json_values,
)


def _deep(depth: int, opener: str) -> str:
    closer = {"[": "]", "{": "}"}[opener]
    if opener == "{":
        return '{"a":' * depth + "1" + closer * depth
    return opener * depth + closer * depth


deep_json = st.builds(_deep, st.integers(17, 5000), st.sampled_from(["[", "{"]))  # and below


@st.composite
def adversarial_headers(draw: st.DrawFn) -> list[Any]:
    """A header with a real or random type, each field real, random or missing, random arrays
    and tiny buffers; sometimes a field nested far too deep."""
    kind = draw(st.sampled_from(list(TYPES)) | json_values)
    header: dict[str, Any] = {"v": draw(st.sampled_from([1, 1, 1, True, 1.0, 2, None]))}
    header["type"] = kind
    if draw(st.booleans()):
        header["version"] = draw(st.sampled_from([1, 1, 2, "1"]))
    if draw(st.booleans()):
        header["auth"] = draw(st.sampled_from(["", "stage", "a" * 128, "a" * 129]) | json_values)
    cls = TYPES.get(kind) if isinstance(kind, str) else None
    names = [f.name for f in dataclasses.fields(cls)] if cls else ["stream", "frames"]
    for name in names:
        if name in ARRAY_NAMES:
            continue
        if draw(st.integers(0, 4)) > 0:  # present most of the time
            header[name] = draw(json_values)
    header.update(draw(st.dictionaries(st.text(max_size=6), json_values, max_size=2)))
    specs = draw(st.lists(array_specs, max_size=6))
    if specs or draw(st.booleans()):
        header["arrays"] = specs
    text = _dumps(header)
    if draw(st.integers(0, 5)) == 0:  # nest one field deep, inside a valid-looking header
        text = text[:-1] + b',"deep":' + draw(deep_json).encode() + b"}"
    buffers = draw(st.lists(st.binary(max_size=32), max_size=6))
    return [text, *buffers]


def _valid_messages() -> list[Any]:
    image = np.arange(4 * 6 * 3, dtype=np.uint8).reshape(4, 6, 3)
    inst = {"label": 1, "label_name": "circle", "score": 0.9, "box": [1.0, 1.0, 5.0, 3.0],
            "rle": {"size": [4, 6], "counts": "35:0"}}  # fmt: skip
    return [
        StreamStart("clip", 6, 4, 30.0, 12, "clip.mp4"),
        StreamStart("cam1", 6, 4, 25.0, None, "rtsp://cam", True, 3),
        Frame("clip", 3, 0.1, 1718000000.5, image),
        Detections(
            "clip", 3, 0.1, 1718000000.5, 6, 4,
            np.array([[1, 1, 5, 3], [0, 0, 6, 4]], np.float32), np.array([0.9, 0.4], np.float32),
            np.array([1, 2], np.int64), np.full((2, 3, 3), 0.5, np.float32), image, 7.5, 2,
        ),
        Detections(
            "clip", 4, 0.2, 0.0, 6, 4, np.zeros((0, 4), np.float32), np.zeros(0, np.float32),
            np.zeros(0, np.int64), np.zeros((0, 28, 28), np.float32),
        ),
        EndOfStream("clip", 12, "truncated", True),
        Result("clip", 3, 0.1, 1718000000.5, 6, 4, [inst, inst], seq=2),
        Stats("postprocess", {"clip": {"in": 3, "out": 3, "dropped": {"stale": 1},
                                       "latency_p50_ms": math.nan}},
              0.5, True, {"startup_s": 1.5}, "postprocess", ready=True),
    ]  # fmt: skip


VALID = _valid_messages()


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    """Every path to a value inside a decoded JSON header."""
    if isinstance(node, dict):
        items: Any = node.items()
    elif isinstance(node, list):
        items = enumerate(node)
    else:
        return
    for key, child in items:
        yield (*prefix, key)
        yield from _paths(child, (*prefix, key))


def _mutate_json(draw: st.DrawFn, header: dict[str, Any]) -> dict[str, Any]:
    """`header` with one value replaced or deleted, or one key added, somewhere inside it."""
    path = draw(st.sampled_from(list(_paths(header))))
    parent: Any = header
    for key in path[:-1]:
        parent = parent[key]
    action = draw(st.sampled_from(["replace", "replace", "delete", "add"]))
    if action == "add" and isinstance(parent, dict):
        parent[draw(st.text(max_size=8))] = draw(json_values)
    elif action == "delete":
        del parent[path[-1]]
    else:
        parent[path[-1]] = draw(json_values)
    return header


def _mutate_buffers(draw: st.DrawFn, buffers: list[bytes]) -> list[bytes]:
    """One buffer cut, grown, overwritten with random bytes (NaN floats...), dropped or doubled."""
    if not buffers:
        return [draw(st.binary(max_size=64))]
    i = draw(st.integers(0, len(buffers) - 1))
    buf = buffers[i]
    action = draw(st.sampled_from(["cut", "grow", "noise", "drop", "double"]))
    if action == "cut":
        buffers[i] = buf[: draw(st.integers(0, max(0, len(buf) - 1)))]
    elif action == "grow":
        buffers[i] = buf + draw(st.binary(min_size=1, max_size=16))
    elif action == "noise":
        buffers[i] = draw(st.binary(min_size=len(buf), max_size=len(buf)))
    elif action == "drop":
        del buffers[i]
    else:
        buffers.insert(i, buf)
    return buffers


@st.composite
def mutated_messages(draw: st.DrawFn) -> list[bytes]:
    """A valid internal message with one thing in its header or its buffers changed."""
    header_bytes, *buffers = _bytes(encode(draw(st.sampled_from(VALID))))
    if draw(st.booleans()):
        return [_dumps(_mutate_json(draw, json.loads(header_bytes))), *buffers]
    return [header_bytes, *_mutate_buffers(draw, buffers)]


@st.composite
def mutated_published(draw: st.DrawFn) -> list[bytes]:
    """A valid published result with its topic or one thing in its header changed."""
    result = draw(st.sampled_from([m for m in VALID if isinstance(m, Result)]))
    topic, header = encode_published(result)
    if draw(st.integers(0, 4)) == 0:
        return [draw(st.binary(max_size=8)), header]
    return [topic, _dumps(_mutate_json(draw, json.loads(header)))]


# --- (a) arbitrary input --------------------------------------------------------------------------

any_part = st.one_of(
    st.binary(max_size=64),
    json_values.map(_dumps),
    st.binary(max_size=16).map(bytearray),
    st.binary(max_size=16).map(memoryview),
    st.text(max_size=8),
    st.integers(),
    st.none(),
    st.lists(st.integers(0, 255), max_size=4),
)


@SETTINGS
@given(st.lists(st.binary(max_size=128), max_size=6))
def test_arbitrary_bytes(parts: list[bytes]) -> None:
    check_decoders(parts)


@SETTINGS
@given(st.one_of(st.lists(any_part, max_size=5), any_part, st.tuples(any_part, any_part)))
def test_arbitrary_objects(parts: Any) -> None:
    check_decoders(parts)


# --- (b) structured adversarial headers -----------------------------------------------------------


@settings(SETTINGS, max_examples=250)
@given(adversarial_headers())
def test_adversarial_headers(parts: list[Any]) -> None:
    check_decoders(parts)


@SETTINGS
@given(adversarial_headers(), st.binary(max_size=8))
def test_adversarial_published_headers(parts: list[Any], topic: bytes) -> None:
    check_decoders([topic, *parts])


@SETTINGS
@given(
    st.sampled_from(["frame", "detections"]),
    st.sampled_from(ARRAY_NAMES),
    st.sampled_from(DTYPES),
    st.lists(st.integers(0, 2**70) | st.sampled_from([2**31 - 1, 2**32, 2**63]), max_size=4),
    st.binary(max_size=16),
)
def test_huge_declared_sizes_with_tiny_buffers(
    kind: str, name: str, dtype: str, shape: list[int], buf: bytes
) -> None:
    header = {"v": 1, "type": kind, "arrays": [{"name": name, "dtype": dtype, "shape": shape}]}
    check_decoders([_dumps(header), buf])


@pytest.mark.parametrize(
    "shape",
    [[2**32, 2**32, 3], [2**31 - 1] * 4, [2**21] * 3, [0, 2**62, 4], [2**63 // 8, 8], [2**64]],
)
@pytest.mark.parametrize("dtype", DTYPES)
def test_shapes_past_int64(shape: list[int], dtype: str) -> None:
    header = {"v": 1, "type": "frame", "stream": "s", "frame": 0, "pts": 0.0, "wall_time": 0.0,
              "arrays": [{"name": "image", "dtype": dtype, "shape": shape}]}  # fmt: skip
    for buf in (b"", b"\0" * 48):
        check_decoders([_dumps(header), buf])


@pytest.mark.parametrize("depth", [17, 1000, 100_000, 500_000])
@pytest.mark.parametrize("opener", ["[", "{"])
def test_deep_nesting(depth: int, opener: str) -> None:
    deep = _deep(depth, opener).encode()
    check_decoders([deep])
    check_decoders([b'{"v":1,"type":"eos","stream":"s","frames":' + deep + b"}"])
    check_decoders([(opener * depth).encode()])  # never closed


def _filled(item: bytes, close: bytes = b"1") -> bytes:
    """A header just under the size limit, one field of it a long JSON list of `item`."""
    head = b'{"v":1,"type":"stats","stage":"s","counters":{},"busy_s":0,"final":false,"extra":['
    n = (MAX_HEADER - len(head) - len(close) - 2) // len(item)
    return head + item * n + close + b"]}"


@pytest.mark.parametrize(
    "header",
    [
        _filled(b"[],"),  # 300k empty lists
        _filled(b"{},"),
        _filled(b"[[[[[[[[[[[[]]]]]]]]]]]],"),
        _filled(b'"ab",'),
        _filled('"ā",'.encode()),  # 1-character strings outside Latin-1: not cached by Python
        _filled(b"1.5,"),
        _filled(b"12345,"),
        _filled(b'"[[[[[[[[[[[[[[[[[[[[",', b'"\\\\"'),  # brackets inside strings do not nest
        b'{"v":1,"type":"eos","stream":"' + b"x" * (MAX_HEADER - 64) + b'","frames":1}',
        b"[" * MAX_HEADER,
        b'"' + b"\\" * (MAX_HEADER - 2) + b'"',
    ],
    ids=["lists", "dicts", "nested", "str2", "str-ucs2", "floats", "ints", "bracket-strings",
         "long-name", "open-brackets", "backslashes"],
)  # fmt: skip
def test_large_headers_stay_within_the_memory_bound(header: bytes) -> None:
    assert len(header) <= MAX_HEADER
    check_decoders([header], [decode])  # all decoders read headers alike; tracing 1 MiB is slow


# --- (c) valid messages with one thing changed ----------------------------------------------------


@settings(SETTINGS, max_examples=300)
@given(mutated_messages())
def test_valid_messages_with_one_change(parts: list[bytes]) -> None:
    check_decoders(parts)


@SETTINGS
@given(mutated_published())
def test_published_results_with_one_change(parts: list[bytes]) -> None:
    check_decoders(parts)


@pytest.mark.parametrize("msg", VALID, ids=lambda m: type(m).__name__)
def test_the_unchanged_messages_pass(msg: Any) -> None:
    """The mutations above start from valid messages (else they would prove little)."""
    out, auth = decode_envelope(_bytes(encode(msg, auth="stage")))
    assert type(out) is type(msg) and auth == "stage"
    if isinstance(msg, Result):
        assert decode_published(encode_published(msg)) == msg
